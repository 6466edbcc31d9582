"""orthokern.monitor.LayerRotation: the cosine distance to the initialisation, the history, the hook and the plot."""
import json
import math

import pytest
import torch
from torch import nn

from orthokern.monitor import LayerRotation


def cosine_distance(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    return 1.0 - (a @ b / (a.norm() * b.norm())).item()


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.LayerNorm(8), nn.Linear(8, 3), nn.Conv1d(3, 2, 2))


def test_distance_matches_the_formula():
    model = _model()
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    rot = LayerRotation(model)
    assert rot.names == ["0.weight", "3.weight", "4.weight"]  # >= 2-D only, in depth order
    assert rot.history["step"] == [0] and all(v == [0.0] for v in rot.history["cosine_distance"].values())
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
        model[3].weight.mul_(-2.0)  # opposite direction, other norm: distance near 2, scale-free
    d = rot.update()
    for n, p in model.named_parameters():
        if p.dim() >= 2:
            assert math.isclose(d[n], cosine_distance(p, w0[n]), rel_tol=1e-5, abs_tol=1e-7), n
    assert d["3.weight"] > 1.0  # turned past a right angle
    assert rot.history["step"] == [0, 1]


def test_small_rotations_are_resolved_in_float32():
    # 1 - cos written directly cancels to 0 in float32 below ~1e-7; the half-chord form keeps it.
    W = nn.Parameter(torch.randn(64, 64))
    rot = LayerRotation([("w", W)])
    theta = 1e-4
    U = torch.randn(64, 64)
    U = U - (U.flatten() @ W.detach().flatten()) / W.detach().square().sum() * W.detach()
    with torch.no_grad():
        W.copy_(math.cos(theta) * W + math.sin(theta) * U * (W.norm() / U.norm()))
    assert math.isclose(rot.update()["w"], 1 - math.cos(theta), rel_tol=1e-2)


def test_hook_records_every_kth_step_and_history_is_plain_data(tmp_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rot = LayerRotation(model, include=lambda name, p: name != "4.weight")
    assert rot.names == ["0.weight", "3.weight"]
    handle = rot.hook(opt, every=2)
    for _ in range(5):
        opt.zero_grad()
        model[:4](torch.randn(4, 5)).square().sum().backward()
        opt.step()
    handle.remove()
    opt.step()
    assert rot.history["step"] == [0, 2, 4]
    assert json.loads(json.dumps(rot.history)) == rot.history
    ds = rot.history["cosine_distance"]["0.weight"]
    assert ds[0] == 0.0 and 0 < ds[1] < ds[2] < 1
    assert rot.final() == {n: v[-1] for n, v in rot.history["cosine_distance"].items()}


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    model = _model()
    rot = LayerRotation(model)
    for step in range(1, 4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        rot.update(step=10 * step)
    path = tmp_path / "rot.png"
    fig = rot.plot(path, title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = fig.axes[0]
    assert len(ax.lines) == 3 and list(ax.lines[0].get_xdata()) == [0, 10, 20, 30]
    colours = [tuple(line.get_color()) for line in ax.lines]
    assert len(set(colours)) == 3  # coloured by depth


def test_bad_input_and_non_finite_weights():
    with pytest.raises(ValueError, match="all zeros"):
        LayerRotation({"z": torch.zeros(3, 3), "ok": torch.ones(2, 2)})
    with pytest.raises(ValueError, match="no layer"):
        LayerRotation(nn.LayerNorm(3))
    with pytest.raises(TypeError, match="weights"):
        LayerRotation(42)
    W = torch.randn(3, 3)
    rot = LayerRotation({"w": W})
    with pytest.raises(ValueError, match="every"):
        rot.hook(torch.optim.SGD([nn.Parameter(W)], lr=0.1), every=0)
    W[0, 0] = float("nan")
    with pytest.warns(RuntimeWarning, match=r"\['w'\]"):
        d = rot.update()
    assert math.isnan(d["w"]) and math.isnan(rot.history["cosine_distance"]["w"][-1])
