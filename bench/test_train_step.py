"""ResNet-50 training step with torch.optim.SGD vs orthokern.FastOrthogonalSGD, and the optimiser-only cost
(the polar of every gradient, grouped by shape). GPU: batch 256, 224x224, float32 (the issue's target: the
polar calls cost <= 5% of the SGD step on an H100). CPU: batch 2, 64x64, single rounds (a smoke run).
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import orthokern
from orthokern.bench.resnet import resnet50
from orthokern.bench.timing import synchronize
from orthokern.bench.train import find_fast_orthogonal_sgd, grouped_gradients

pytestmark = pytest.mark.bench


@pytest.fixture(scope="module")
def setup(device):
    torch.manual_seed(0)
    model, source = resnet50()
    model = model.to(device)
    cuda = device.type == "cuda"
    batch, image = (256, 224) if cuda else (2, 64)
    x = torch.randn(batch, 3, image, image, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    return {"model": model, "state": copy.deepcopy(model.state_dict()), "x": x, "y": y, "source": source,
            "rounds": 10 if cuda else 1, "warmup": 2 if cuda else 0, "cuda": cuda}


def _step_target(s, opt):
    model, x, y, loss_fn = s["model"], s["x"], s["y"], nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        synchronize(x.device)

    return step


OPTIMISERS = ["sgd", "orthogonal/auto/accurate", "orthogonal/auto/fast"]


# A "shape" parameter like the polar benchmarks', so that --benchmark-group-by=param:shape works on all of bench/.
@pytest.mark.parametrize("shape", ["resnet50-step"])
@pytest.mark.parametrize("optimizer", OPTIMISERS)
def test_train_step(benchmark, setup, optimizer, shape):
    s = setup
    s["model"].load_state_dict(s["state"])
    params = s["model"].parameters()
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    else:
        FastOrthogonalSGD = find_fast_orthogonal_sgd()
        if FastOrthogonalSGD is None:
            pytest.skip("orthokern.FastOrthogonalSGD is not in this installation (not merged yet)")
        _, method, mode = optimizer.split("/")
        opt = FastOrthogonalSGD(params, lr=1e-3, momentum=0.9, method=method, mode=mode)
    benchmark.group = f"resnet50 train step batch {s['x'].shape[0]}"
    benchmark.extra_info.update({"model": s["source"], "batch": s["x"].shape[0], "image": s["x"].shape[-1]})
    benchmark.pedantic(_step_target(s, opt), rounds=s["rounds"], warmup_rounds=max(1, s["warmup"]), iterations=1)


@pytest.mark.parametrize("shape", ["resnet50-all-gradients"])
@pytest.mark.parametrize("mode", ["accurate", "fast"])
def test_optimizer_only(benchmark, setup, mode, shape):
    """orthokern.polar (auto) over the real gradients of one backward, one batched call per shape."""
    s = setup
    s["model"].load_state_dict(s["state"])
    s["model"].zero_grad(set_to_none=True)
    nn.CrossEntropyLoss()(s["model"](s["x"]), s["y"]).backward()
    groups = grouped_gradients(s["model"])
    assert sum(g.shape[0] for g in groups) == 54  # every conv and the fc layer of ResNet-50

    def target():
        out = [orthokern.polar(G, mode=mode) for G in groups]
        synchronize(s["x"].device)
        return out

    benchmark.group = "resnet50 optimizer only"
    benchmark.extra_info.update({"groups": len(groups), "mode": mode})
    benchmark.pedantic(target, rounds=s["rounds"], warmup_rounds=s["warmup"], iterations=1)
