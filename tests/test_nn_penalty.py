"""orthokern.nn.orthogonality_penalty against its formulas (values and gradients, float64), and the regulariser's
coefficient and schedule."""
import math

import pytest
import torch
from torch import nn

from orthokern.nn import BANSAL_2018_SCHEDULE, KINDS, OrthogonalityRegulariser, orthogonality_penalty
from orthokern.nn.init import orthogonal_

F64 = torch.float64


def _weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(6, 10), (10, 6), (6, 10), (5, 5), (8, 3, 2, 2), (4, 3, 3)]  # wide, tall, repeated shape, square, conv
    return [torch.randn(s, dtype=F64, generator=g).requires_grad_() for s in shapes]


def _gap(S, gain):
    return S - gain**2 * torch.eye(S.shape[0], dtype=S.dtype)


def formula(W, kind, gain):
    """The penalty of one weight, written out plainly."""
    A = W.reshape(W.shape[0], -1)
    S = A @ A.T if A.shape[0] <= A.shape[1] else A.T @ A
    if kind == "so":
        return (_gap(S, gain) ** 2).sum()
    if kind == "dso":
        return (_gap(A.T @ A, gain) ** 2).sum() + (_gap(A @ A.T, gain) ** 2).sum()
    if kind == "mc":
        return _gap(S, gain).abs().max()
    return torch.linalg.matrix_norm(_gap(S, gain), ord=2)


@pytest.mark.parametrize("kind", ["so", "dso", "mc"])
@pytest.mark.parametrize("gain", [1.0, 1.5])
def test_penalty_and_gradient_equal_the_formula(kind, gain):
    ws = _weights()
    got = orthogonality_penalty(ws, kind, gain)
    assert got.dtype == F64 and got.dim() == 0
    gw = torch.autograd.grad(got, ws)
    ref = sum(formula(W, kind, gain) for W in ws)
    rw = torch.autograd.grad(ref, ws)
    assert torch.allclose(got, ref, rtol=1e-12, atol=0)
    for a, b in zip(gw, rw):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_srip_equals_its_power_iteration_formula_with_the_same_start():
    # Bansal et al.'s estimate, two products with M = S - gain^2 I: v1 = M v0 / ||M v0||, sigma = ||M v1||, with v0
    # drawn as documented: torch.randn(B, k, generator=...) in the compute dtype, normalised.
    W = torch.randn(7, 12, dtype=F64, generator=torch.Generator().manual_seed(1)).requires_grad_()
    gain = 1.3
    got = orthogonality_penalty(W, "srip", gain, generator=torch.Generator().manual_seed(5))
    (gw,) = torch.autograd.grad(got, W)
    v0 = torch.randn(1, 7, dtype=F64, generator=torch.Generator().manual_seed(5))[0]
    v0 = v0 / v0.norm()
    M = W @ W.T - gain**2 * torch.eye(7, dtype=F64)
    v1 = M @ v0 / (M @ v0).norm()
    ref = (M @ v1).norm()
    (rw,) = torch.autograd.grad(ref, W)
    assert torch.allclose(got, ref, rtol=1e-12)
    assert torch.allclose(gw, rw, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("gain", [1.0, 0.7])
def test_srip_converges_to_the_spectral_norm_and_its_gradient(gain):
    ws = _weights(3)
    got = orthogonality_penalty(ws, "srip", gain, power_iters=300, generator=torch.Generator().manual_seed(0))
    gw = torch.autograd.grad(got, ws)
    ref = sum(formula(W, "srip", gain) for W in ws)
    rw = torch.autograd.grad(ref, ws)
    assert torch.allclose(got, ref, rtol=1e-9)
    for a, b in zip(gw, rw):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    # two steps (the default) give a lower bound
    few = orthogonality_penalty(ws, "srip", gain, generator=torch.Generator().manual_seed(0))
    assert few <= ref * (1 + 1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_zero_with_zero_gradient_at_gain_times_orthonormal(kind):
    gain = 1.8
    ws = [orthogonal_(torch.empty(s, dtype=F64), gain, generator=torch.Generator().manual_seed(i)).requires_grad_()
          for i, s in enumerate([(6, 10), (10, 6), (8, 3, 2, 2)])]
    if kind == "dso":  # for non-square weights one of the two Gram matrices cannot be the identity
        ws = [orthogonal_(torch.empty(5, 5, dtype=F64), gain).requires_grad_()]
    p = orthogonality_penalty(ws, kind, gain)
    grads = torch.autograd.grad(p, ws)
    assert p.item() <= 1e-9
    for g in grads:
        assert torch.isfinite(g).all()
        # "mc" and "srip" are norms of S - gain^2 I, not smooth at 0: like |x|, their (sub)gradient there has size
        # O(1) in the direction of the rounding-level residue. The squared ones vanish.
        if kind in ("so", "dso"):
            assert g.abs().max() <= 1e-7


def test_gain_adjusted_keeps_a_scaled_orthogonal_init_the_plain_one_does_not():
    W = orthogonal_(torch.empty(8, 8, dtype=F64), 1.5)
    assert orthogonality_penalty(W, "so", 1.5).item() <= 1e-20
    assert math.isclose(orthogonality_penalty(W, "so", 1.0).item(), 8 * (1.5**2 - 1) ** 2, rel_tol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", KINDS)
def test_half_precision_is_computed_in_float32(dtype, kind):
    W = torch.randn(16, 24, generator=torch.Generator().manual_seed(0)).to(dtype).requires_grad_()
    got = orthogonality_penalty(W, kind, generator=torch.Generator().manual_seed(1))
    assert got.dtype == torch.float32
    W32 = W.detach().float()
    ref = orthogonality_penalty(W32, kind, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(got, ref, rtol=1e-6)
    (g,) = torch.autograd.grad(got, W)
    assert g.dtype == dtype and torch.isfinite(g.float()).all()


def test_module_input_skips_biases_and_norms_and_batches_by_shape():
    model = nn.Sequential(nn.Linear(6, 6), nn.LayerNorm(6), nn.Linear(6, 6), nn.Conv1d(3, 4, 2)).double()
    got = orthogonality_penalty(model, "so")
    ref = sum(formula(p, "so", 1.0) for p in model.parameters() if p.dim() >= 2)
    assert torch.allclose(got, ref, rtol=1e-12)
    named = orthogonality_penalty(model.named_parameters(), "so")
    assert torch.allclose(named, ref, rtol=1e-12)
    assert orthogonality_penalty(dict(model.named_parameters()), "so").item() == pytest.approx(ref.item(), rel=1e-12)


def test_mixed_precisions_sum_in_the_widest_and_nothing_gives_zero():
    a = torch.randn(4, 6, dtype=F64)
    b = torch.randn(4, 6, dtype=torch.float32)
    got = orthogonality_penalty([a, b], "so")
    assert got.dtype == F64
    assert torch.allclose(got, formula(a, "so", 1.0) + formula(b.double(), "so", 1.0), rtol=1e-6)
    empty = orthogonality_penalty(nn.Sequential(nn.LayerNorm(4)), "so")
    assert empty.item() == 0.0 and empty.dtype == torch.float32


@pytest.mark.parametrize("call,exc,words", [
    (lambda: orthogonality_penalty(torch.randn(4, 4), "l2"), ValueError, ["kind"]),
    (lambda: orthogonality_penalty(torch.randn(4, 4), "so", 0.0), ValueError, ["gain"]),
    (lambda: orthogonality_penalty(torch.randn(4, 4), "so", -2), ValueError, ["gain"]),
    (lambda: orthogonality_penalty(torch.randn(4), "so"), ValueError, ["weights", "2 dimensions"]),
    (lambda: orthogonality_penalty(torch.randn(4, 4), "srip", power_iters=0), ValueError, ["power_iters"]),
    (lambda: orthogonality_penalty(3.0, "so"), TypeError, ["weights"]),
    (lambda: orthogonality_penalty([torch.randn(3, 3), "w"], "so"), TypeError, ["weights[1]"]),
])
def test_bad_input_names_the_argument(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_non_finite_weights_give_a_non_finite_penalty_or_a_named_error():
    ws = {"good": torch.randn(3, 4), "bad": torch.randn(3, 4)}
    ws["bad"][1, 2] = float("inf")
    assert not torch.isfinite(orthogonality_penalty(ws, "so"))
    with pytest.raises(ValueError, match=r"\['bad'\]"):
        orthogonality_penalty(ws, "so", check_finite=True)


def test_regulariser_adds_the_weighted_penalty_with_a_piecewise_schedule():
    W = torch.randn(5, 7, dtype=F64, requires_grad=True)
    reg = OrthogonalityRegulariser([W], 0.1, "so", gain=1.2, schedule={2: 0.5, 4: 0.0})
    loss = torch.tensor(3.0, dtype=F64)
    expected = [1.0, 1.0, 0.5, 0.5, 0.0, 0.0]
    for step, factor in enumerate(expected):
        assert reg.steps == step and reg.factor == factor
        out = reg(loss)
        if factor == 0.0:
            assert out is loss
        else:
            assert torch.allclose(out, loss + 0.1 * factor * formula(W, "so", 1.2), rtol=1e-12)
        reg.step()
    state = reg.state_dict()
    fresh = OrthogonalityRegulariser([W], 0.1, "so", gain=1.2, schedule={2: 0.5, 4: 0.0})
    fresh.load_state_dict(state)
    assert fresh.steps == 6 and fresh.factor == 0.0


def test_regulariser_gradient_flows_and_callable_schedule():
    W = torch.randn(4, 6, dtype=F64, requires_grad=True)
    reg = OrthogonalityRegulariser(W, 2.0, "dso", schedule=lambda step: 0.5**step)
    reg.step()
    (g,) = torch.autograd.grad(reg(), W)
    (r,) = torch.autograd.grad(1.0 * formula(W, "dso", 1.0), W)
    assert torch.allclose(g, r, rtol=1e-12)


def test_bansal_schedule_factors():
    reg = OrthogonalityRegulariser(torch.randn(3, 3), 0.01, schedule=BANSAL_2018_SCHEDULE)
    seen = {}
    for epoch in range(130):
        seen[epoch] = reg.current_coefficient
        reg.step()
    assert seen[0] == seen[19] == 0.01
    assert seen[20] == pytest.approx(1e-5) and seen[50] == pytest.approx(1e-6) and seen[70] == pytest.approx(1e-8)
    assert seen[119] == pytest.approx(1e-8) and seen[120] == 0.0


@pytest.mark.parametrize("kwargs,exc,word", [
    ({"coefficient": -1.0}, ValueError, "coefficient"),
    ({"coefficient": "a"}, TypeError, "coefficient"),
    ({"coefficient": 1.0, "kind": "x"}, ValueError, "kind"),
    ({"coefficient": 1.0, "schedule": {-1: 1.0}}, ValueError, "schedule"),
    ({"coefficient": 1.0, "schedule": {1: -1.0}}, ValueError, "schedule[1]"),
    ({"coefficient": 1.0, "schedule": [1, 2]}, TypeError, "schedule"),
    ({"coefficient": 1.0, "gain": 0}, ValueError, "gain"),
])
def test_regulariser_bad_input(kwargs, exc, word):
    with pytest.raises(exc, match=word.replace("[", r"\[").replace("]", r"\]")):
        OrthogonalityRegulariser(torch.randn(3, 3), **kwargs)
