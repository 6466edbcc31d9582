"""copy.deepcopy, pickle and state_dict round trips of the orthokern optimisers: the copies keep every setting
and keep orthogonalising (a copy that silently became the base optimiser is the failure this guards against),
or the copy is refused with an error that names the argument that cannot be copied."""
import copy
import io
import pickle
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from orthokern.optim import FastOrthogonalSGD, MatrixView, Orthogonal, orthogonalise
from orthokern.optim import orthogonal as orthogonal_mod


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).double()


def train(model, opt, steps, start=0):
    for i in range(start, start + steps):
        g = torch.Generator().manual_seed(i)
        x, y = torch.randn(8, 2, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def plain_sgd_would_give(model_seed, steps):
    model = make_model(model_seed)
    train(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), steps)
    return model


def module_level_predicate(p):
    return p.dim() > 2


def module_level_view(p):
    return MatrixView(split=((2, 2), 0)) if p.dim() == 4 else None


OPTIMISERS = {
    "FastOrthogonalSGD": lambda ps: FastOrthogonalSGD(ps, lr=0.1, method="svd", transform="polar", lr_scale="muon",
                                                     orthogonalise=module_level_predicate, view=module_level_view),
    "Orthogonal(Adam)": lambda ps: Orthogonal(torch.optim.Adam)(ps, lr=1e-2, method="cholqr2", rcond=0.01),
    "orthogonalise(AdamW)": lambda ps: orthogonalise(torch.optim.AdamW(ps, lr=1e-2), transform="comp_norm"),
    "orthogonalise(SGD)": lambda ps: orthogonalise(torch.optim.SGD(ps, lr=0.1, momentum=0.9), method="svd"),
}


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("name", list(OPTIMISERS))
def test_copies_keep_orthogonalising(name, how):
    model = make_model()
    opt = OPTIMISERS[name](model.parameters())
    train(model, opt, 2)
    if how == "deepcopy":
        model2, opt2 = copy.deepcopy((model, opt))
    else:
        model2, opt2 = pickle.loads(pickle.dumps((model, opt)))
    assert type(opt2) is type(opt)
    assert opt2._orthokern.defaults == opt._orthokern.defaults
    assert opt2._orthokern.predicate is opt._orthokern.predicate or how == "pickle"
    train(model, opt, 2, start=2)
    train(model2, opt2, 2, start=2)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
    if name == "orthogonalise(SGD)":
        # Not the base optimiser: plain SGD from the same start ends elsewhere.
        plain = plain_sgd_would_give(0, 4)
        assert (plain[0].weight - model2[0].weight).abs().max() > 1e-3


def test_copy_keeps_hooks_and_the_amp_opt_out():
    model = make_model()
    opt = FastOrthogonalSGD(model.parameters(), lr=0.1, fused=True)
    assert opt._step_supports_amp_scaling is False
    copied = copy.deepcopy(opt)
    assert copied._step_supports_amp_scaling is False
    seen = []
    copied.register_step_post_hook(lambda o, a, k: seen.append(1))
    for p in copied.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    copied.step()
    assert seen == [1]


def test_unpicklable_settings_are_refused_by_name():
    model = make_model()
    opt = FastOrthogonalSGD(model.parameters(), lr=0.1, orthogonalise=lambda p: p.dim() > 2)
    with pytest.raises(TypeError, match="orthogonalise="):
        pickle.dumps(opt)
    opt = FastOrthogonalSGD(model.parameters(), lr=0.1, view=lambda p: None)
    with pytest.raises(TypeError, match="view="):
        pickle.dumps(opt)
    # deepcopy shares callables, so it works with a lambda.
    copied = copy.deepcopy(opt)
    assert copied._orthokern.view is opt._orthokern.view


def test_orthogonal_classes_pickle_by_reference():
    cls = Orthogonal(torch.optim.Adam)
    assert pickle.loads(pickle.dumps(cls)) is cls
    assert cls.__name__ == "OrthogonalAdam" and "." not in cls.__qualname__
    assert getattr(orthogonal_mod, cls.__qualname__) is cls
    with pytest.raises(AttributeError, match="cannot be found"):
        orthogonal_mod.__getattr__("Orthogonal[torch/optim/adam:NoSuchOptimizer]")
    with pytest.raises(AttributeError):
        orthogonal_mod.__getattr__("NotAClass")


def test_unpickled_in_a_fresh_process(tmp_path):
    # A fresh interpreter has never called Orthogonal(Adam): the class is rebuilt from its name on load.
    model = make_model()
    opt = Orthogonal(torch.optim.Adam)(model.parameters(), lr=1e-2, method="svd", lr_scale="match_adamw_rms")
    train(model, opt, 1)
    path = tmp_path / "opt.pkl"
    path.write_bytes(pickle.dumps((model, opt)))
    train(model, opt, 1, start=1)
    expected = model[0].weight.detach().clone()
    code = f"""
import pickle, torch
import torch.nn.functional as F
model, opt = pickle.loads(open({str(path)!r}, "rb").read())
assert type(opt).__name__ == "OrthogonalAdam", type(opt)
assert opt.param_groups[0]["lr_scale"] == "match_adamw_rms" and opt.param_groups[0]["method"] == "svd"
g = torch.Generator().manual_seed(1)
x, y = torch.randn(8, 2, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)
opt.zero_grad()
F.cross_entropy(model(x), y).backward()
opt.step()
torch.save(model[0].weight.detach(), {str(tmp_path / "w.pt")!r})
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert torch.equal(torch.load(tmp_path / "w.pt"), expected)


def test_state_dict_round_trip_keeps_the_settings():
    model = make_model()
    opt = FastOrthogonalSGD([{"params": list(model[0].parameters())},
                             {"params": list(model[3].parameters()), "transform": "norm", "lr_scale": "muon"}],
                            lr=0.1, method="cholqr2", mode="accurate", rcond=0.02, backend="torch")
    train(model, opt, 2)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)  # only plain values: safe to load without unpickling code
    clone = make_model(seed=1)
    clone.load_state_dict(model.state_dict())
    other = FastOrthogonalSGD([{"params": list(clone[0].parameters())}, {"params": list(clone[3].parameters())}],
                              lr=1.0, method="svd")
    other.load_state_dict(saved)
    for g, h in zip(opt.param_groups, other.param_groups):
        for key in ("orthogonalise", "transform", "lr_scale", "method", "mode", "rcond", "backend", "lr"):
            assert g[key] == h[key], key
    train(model, opt, 2, start=2)
    train(clone, other, 2, start=2)
    for p, q in zip(model.parameters(), clone.parameters()):
        assert torch.equal(p, q)


def test_state_dict_of_orthogonalised_instance_loads_into_the_class():
    model = make_model()
    inst = orthogonalise(torch.optim.Adam(model.parameters(), lr=1e-2), method="svd")
    train(model, inst, 2)
    clone = copy.deepcopy(model)
    cls_opt = Orthogonal(torch.optim.Adam)(clone.parameters(), lr=1.0)
    cls_opt.load_state_dict(copy.deepcopy(inst.state_dict()))
    assert cls_opt.param_groups[0]["method"] == "svd"
    train(model, inst, 1, start=2)
    train(clone, cls_opt, 1, start=2)
    for p, q in zip(model.parameters(), clone.parameters()):
        assert torch.equal(p, q)
