"""The training-step benchmark on a tiny model: the same warm-up and number of timed steps for every optimiser,
the orthogonalisation measured inside the steps, the all-gradients total line, notes, and the gate."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from orthokern.bench import train


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)  # gradient 8 x 27: wide
        self.fc = nn.Linear(8, 1000)  # gradient 1000 x 8: tall

    def forward(self, x):
        return self.fc(self.conv(x).mean((-2, -1)))


def _run(monkeypatch, opt_cls="real", **kw):
    if opt_cls != "real":
        monkeypatch.setattr(train, "find_fast_orthogonal_sgd", lambda: opt_cls)
    args = dict(batch=2, image=8, methods=["auto"], modes=["accurate", "fast"], peers=["muon_ns5_batched"],
                warmup=1, min_rounds=3, max_rounds=3, budget_s=0.0, model_fn=lambda: (_Tiny(), "tiny"),
                progress=False)
    args.update(kw)
    return train.run_train(torch.device("cpu"), **args)


@pytest.fixture(scope="module")
def result():
    return train.run_train(torch.device("cpu"), batch=2, image=8, methods=["auto"], modes=["accurate", "fast"],
                           peers=["muon_ns5_batched"], warmup=1, min_rounds=3, max_rounds=3, budget_s=0.0,
                           model_fn=lambda: (_Tiny(), "tiny"), progress=True)


def test_every_optimiser_gets_the_same_steps(result):
    steps = result["steps"]
    assert [s["optimizer"] for s in steps] == [train.SGD_LABEL, "FastOrthogonalSGD()",
                                               'FastOrthogonalSGD(mode="fast")']
    assert {s["steps"] for s in steps} == {3} and {s["warmup"] for s in steps} == {1}
    for s in steps:
        assert s["step_s"] > 0 and s["forward_backward_s"] > 0 and s["optimizer_step_s"] > 0
        assert s["step_cpu_s"] > 0
    for s in steps[1:]:
        # Measured inside the same rounds as SGD's steps: the differences are paired per round.
        assert "overhead_s" in s and "orthogonalisation_s" in s and s["step_ratio"] > 0


def test_all_gradients_total_line(result):
    g = result["all_gradients"]
    assert g["gradients"] == 2 and g["shapes"] == 2 and g["rounds"] == 3
    rows = {r["label"]: r for r in g["rows"]}
    assert set(rows) == {"polar(G)", 'polar(G, mode="fast")', "muon_ns5_batched", "torch.linalg.svd",
                         "torch.linalg.svd of Gᵀ (wide shapes)"}
    assert rows["polar(G)"]["E"] < 1e-3 and rows["torch.linalg.svd"]["E"] < 1e-5
    assert rows["torch.linalg.svd"]["speedup_vs_svd"] == 1.0
    # CPU time beside wall time, and the speed-up from each, paired per round.
    assert rows["polar(G)"]["cpu_s"] > 0 and rows["polar(G)"]["speedup_cpu"] > 0
    assert rows["torch.linalg.svd"]["cpu_s"] > 0
    text = train.format_train(result)
    assert "all 2 gradients: polar(G) " in text and " vs torch.linalg.svd " in text and "in CPU time" in text
    assert "svd of Gᵀ for the wide ones" in text
    assert "issue target" not in text
    # A small batch on a CPU: the output says what the share of the step means.
    assert "compare the absolute times" in text
    assert "inside the step" in text
    assert train.train_violations(result) == []
    assert result["all_gradients"]["polar_ran_on"]["accurate"]


def test_progress_for_every_phase(capsys, monkeypatch):
    _run(monkeypatch, min_rounds=1, max_rounds=1, progress=True, modes=["accurate"], peers=[])
    err = capsys.readouterr().err
    for phrase in ("phase 1/2", "warm-up step", "round 1: step with", "phase 2/2", "first call (accuracy)",
                   "all gradients: round 1"):
        assert phrase in err


def test_without_the_optimiser_says_so(monkeypatch):
    res = _run(monkeypatch, None, min_rounds=1, max_rounds=1, modes=["accurate"], peers=[])
    assert [s["optimizer"] for s in res["steps"]] == [train.SGD_LABEL]
    assert "FastOrthogonalSGD" in res["skipped"][0]
    assert "skipped: orthokern.FastOrthogonalSGD" in train.format_train(res)


def test_gate_flags_a_wrong_polar_on_real_gradients(result):
    bad = {**result, "all_gradients": {**result["all_gradients"], "rows": [
        {**r, "E": 0.5} if r["label"] == "polar(G)" else r for r in result["all_gradients"]["rows"]]}}
    assert any("polar(G): E = 5.00e-01" in v for v in train.train_violations(bad))


def test_grouped_gradients_one_batch_per_shape():
    model = _Tiny()
    nn.CrossEntropyLoss()(model(torch.randn(2, 3, 8, 8)), torch.tensor([1, 2])).backward()
    groups = train.grouped_gradients(model)
    assert sorted(tuple(g.shape) for g in groups) == [(1, 8, 27), (1, 1000, 8)]


def test_cli_train_suite(tmp_path, capsys, monkeypatch):
    from orthokern.bench import cli

    monkeypatch.setattr(train, "resnet50", lambda: (_Tiny(), "tiny"))
    threads = []
    real_step = train._step

    def step(*a):
        threads.append(torch.get_num_threads())
        return real_step(*a)

    monkeypatch.setattr(train, "_step", step)
    before = torch.get_num_threads()
    rc = cli.main(["--suite", "train", "--device", "cpu", "--out", str(tmp_path), "--rounds", "1", "--max-rounds",
                   "1", "--train-image", "8", "--results-md", str(tmp_path / "R.md")])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "all 2 gradients: polar(G)" in out.out and "1 torch thread" in out.out
    assert set(threads) == {1} and torch.get_num_threads() == before
    assert (tmp_path / "train.json").exists() and "<!-- BEGIN train-cpu -->" in (tmp_path / "R.md").read_text()
    assert "phase 2/2" in out.err
