"""orthokern.optim.Layca: the per-step angle of each layer is its rate (atan(rate) exactly), its norm stays at its
initial value, and the rest is the base optimiser's."""
import copy
import math

import pytest
import torch
from torch import nn

from orthokern.optim import Layca

F64 = torch.float64


def angle(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    return math.atan2(torch.linalg.vector_norm(a * b.norm() - b * a.norm()).item(),
                      torch.linalg.vector_norm(a * b.norm() + b * a.norm()).item()) * 2


def _net(dtype=F64):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4)).to(dtype)


def _loss(net, step):
    g = torch.Generator().manual_seed(step)
    x = torch.randn(32, 10, generator=g, dtype=F64).to(next(net.parameters()).dtype)
    return (net(x) - torch.sin(x[:, :4] * 3)).square().mean()


@pytest.mark.parametrize("base,kwargs", [
    (torch.optim.SGD, {"momentum": 0.9}),
    (torch.optim.SGD, {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
    (torch.optim.Adam, {"betas": (0.9, 0.99)}),
    (torch.optim.AdamW, {"weight_decay": 0.1}),
])
@pytest.mark.parametrize("rate", [1e-3, 2e-2])
def test_angle_per_step_is_the_rate_and_the_norm_is_kept(base, kwargs, rate):
    net = _net()
    weights = [m.weight for m in net if isinstance(m, nn.Linear)]
    norms0 = [w.detach().norm().item() for w in weights]
    opt = Layca(net.parameters(), lr=rate, base=base, **kwargs)
    for step in range(20):
        before = [w.detach().clone() for w in weights]
        opt.zero_grad()
        _loss(net, step).backward()
        opt.step()
        for w, b, n0 in zip(weights, before, norms0):
            a = angle(w, b)
            assert abs(a - math.atan(rate)) <= 1e-9 * rate  # the exact per-step rotation
            assert abs(a / rate - 1) <= 1e-3  # "equals the rate for small rates"
            assert abs(w.detach().norm().item() / n0 - 1) <= 1e-12


def test_float32_angle_and_norm():
    net = _net(torch.float32)
    w = net[2].weight
    n0 = w.detach().norm().item()
    opt = Layca(net.parameters(), lr=1e-2, momentum=0.9)
    for step in range(10):
        before = w.detach().clone()
        opt.zero_grad()
        _loss(net, step).backward()
        opt.step()
        assert abs(angle(w, before) / 1e-2 - 1) <= 1e-3
        assert abs(w.detach().norm().item() / n0 - 1) <= 1e-5


def test_excluded_parameters_take_the_base_step():
    # Biases (1-D) are not rotated: they follow torch.optim.SGD exactly, given the same forward passes.
    net = _net()
    ref = copy.deepcopy(net)
    opt = Layca(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)
    sgd = torch.optim.SGD([p for p in ref.parameters() if p.dim() < 2], lr=0.05, momentum=0.9, weight_decay=1e-2)
    for step in range(5):
        for model, o in ((net, opt), (ref, sgd)):
            o.zero_grad()
            _loss(model, step).backward()
            o.step()
        for a, b in zip(net.parameters(), ref.parameters()):
            if a.dim() < 2:
                assert torch.equal(a, b)
            else:
                with torch.no_grad():
                    b.copy_(a)


def test_layca_group_key_selects_what_rotates():
    net = _net()
    first, rest = net[0], [p for m in list(net)[1:] for p in m.parameters()]
    opt = Layca([{"params": first.parameters(), "layca": False}, {"params": rest}], lr=0.05)
    w0, n0 = first.weight.detach().clone(), first.weight.detach().norm()
    opt.zero_grad()
    _loss(net, 0).backward()
    g = first.weight.grad.clone()
    opt.step()
    assert torch.allclose(first.weight, w0 - 0.05 * g)  # plain SGD
    assert first.weight.detach().norm() != n0
    assert opt.param_groups[0]["layca"] is False and opt.param_groups[1]["layca"] == "auto"


def test_zero_update_leaves_the_layer_unchanged():
    net = _net()
    opt = Layca(net.parameters(), lr=0.1)
    w0 = [p.detach().clone() for p in net.parameters()]
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert all(torch.equal(p, w) for p, w in zip(net.parameters(), w0))


def test_scheduler_sets_the_rate_and_shares_the_groups():
    net = _net()
    opt = Layca(net.parameters(), lr=0.02, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    assert opt.param_groups is opt.base.param_groups and opt.state is opt.base.state
    w = net[0].weight
    for step, rate in enumerate([0.02, 0.01, 0.005]):
        before = w.detach().clone()
        opt.zero_grad()
        _loss(net, step).backward()
        opt.step()
        sched.step()
        assert abs(angle(w, before) - math.atan(rate)) <= 1e-12


def test_state_dict_round_trip_continues_identically():
    net_a = _net()
    opt_a = Layca(net_a.parameters(), lr=0.03, base=torch.optim.Adam)
    for step in range(3):
        opt_a.zero_grad()
        _loss(net_a, step).backward()
        opt_a.step()
    # a fresh optimiser on a copy whose norms have changed: the loaded initial norms must win
    net_b = copy.deepcopy(net_a)
    with torch.no_grad():
        for p in net_b.parameters():
            p.mul_(1.5)
    opt_b = Layca(net_b.parameters(), lr=0.03, base=torch.optim.Adam)
    with torch.no_grad():
        for p, q in zip(net_a.parameters(), net_b.parameters()):
            q.copy_(p)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    assert opt_b.param_groups is opt_b.base.param_groups and opt_b.state is opt_b.base.state
    for step in range(3, 6):
        for net, opt in ((net_a, opt_a), (net_b, opt_b)):
            opt.zero_grad()
            _loss(net, step).backward()
            opt.step()
    for p, q in zip(net_a.parameters(), net_b.parameters()):
        assert torch.allclose(p, q, rtol=1e-12, atol=1e-14)


def test_bad_input_names_the_argument():
    net = _net()
    with pytest.raises(TypeError, match="base"):
        Layca(net.parameters(), lr=0.1, base=nn.Linear)
    with pytest.raises(TypeError, match="LBFGS"):
        Layca(net.parameters(), lr=0.1, base=torch.optim.LBFGS)
    with pytest.raises(ValueError, match="lr"):
        Layca(net.parameters(), lr=-0.1)
    with pytest.raises(ValueError, match="layca"):
        Layca(net.parameters(), lr=0.1, layca="conv")
    with pytest.raises(ValueError, match="norm 0"):
        Layca([nn.Parameter(torch.zeros(3, 3))], lr=0.1)


def test_non_finite_gradient_raises_and_changes_nothing():
    net = _net()
    opt = Layca(net.parameters(), lr=0.1, momentum=0.9)
    _loss(net, 0).backward()
    net[2].weight.grad[0, 0] = float("inf")
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(FloatingPointError, match=r"group 0 #2 \(16, 16\)"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before))
