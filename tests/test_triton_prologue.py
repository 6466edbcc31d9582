"""The prologue kernels (triton_kernels/prologue.py) against the torch code they replace, value for value.

Each replaces a dozen small eager launches per shape bucket; here they must give what that torch code gives: the
same powers of two (bit for bit, at and around every boundary: zero, subnormals, powers of two and their
neighbours, the largest finite values, Inf, NaN), the same finite flags, and the first Newton–Schulz factor to the
working precision. Run on CPU with ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import math

import pytest
import torch

from orthokern import ns_schedule as ns
from orthokern.reference.newton_schulz import first_factor as torch_first_factor
from orthokern.reference.scaling import per_matrix, scale_and_finite
from orthokern.testing import random_matrix, triton_device

pytestmark = pytest.mark.triton_interpret

DEVICE = triton_device()


@pytest.fixture(scope="module")
def ops():
    from orthokern import dispatch

    dispatch._load_triton_kernels()
    return torch.ops.orthokern


def _edge_values(dtype: torch.dtype) -> list[float]:
    fi = torch.finfo(dtype)
    vals = [0.0, fi.tiny, fi.tiny / 2, fi.tiny * 0.75, fi.max, fi.max / 2, fi.eps, 0.5, 1.0, 2.0, 3.0, 0.75, 1e-3,
            123456.0, math.inf, math.nan]
    if dtype == torch.float64:
        vals += [5e-324, 1e300, 2.0**1023, 1e-310]
    if dtype == torch.float32:
        vals += [1.4e-45, 1e-40]
    one = torch.tensor(1.0, dtype=dtype)
    # powers of two and their neighbours, where an exponent read with any rounding would be off by one
    for k in (-100, -20, -1, 0, 1, 7, 60):
        p = torch.tensor(2.0**k, dtype=dtype)
        vals += [p.item(), torch.nextafter(p, 0 * one).item(), torch.nextafter(p, 4 * p).item()]
    return vals


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_pow2_scale_is_scale_and_finite_bit_for_bit(ops, dtype):
    vals = [v for v in _edge_values(dtype) if not (math.isfinite(v) and abs(v) > torch.finfo(dtype).max)]
    amax = torch.tensor(vals, dtype=dtype, device=DEVICE)
    # The reference reads amax off the matrices themselves: one 1 x 1 matrix per value.
    ref_scale, ref_finite = scale_and_finite(amax.view(-1, 1, 1))
    scale, finite = ops.triton_pow2_scale(amax, ref_scale.dtype)
    assert scale.dtype == ref_scale.dtype and finite.dtype == torch.bool
    torch.testing.assert_close(scale, ref_scale, rtol=0, atol=0, equal_nan=False)
    assert torch.equal(finite, ref_finite)


def test_pow2_scale_of_real_matrices_and_empty(ops):
    G = random_matrix(5, 30, 7, "decaying", device=DEVICE, seed=3) * torch.tensor(
        [1e-30, 1e-3, 1.0, 1e3, 1e30], device=DEVICE).view(-1, 1, 1)
    amax = torch.linalg.vector_norm(G, float("inf"), dim=(-2, -1))
    scale, finite = ops.triton_pow2_scale(amax, torch.float32)
    ref_scale, ref_finite = scale_and_finite(G)
    assert torch.equal(scale, ref_scale) and torch.equal(finite, ref_finite)
    assert bool(((G * per_matrix(scale)).abs().amax(dim=(-2, -1)) < 1).all())
    empty = ops.triton_pow2_scale(torch.empty(0, device=DEVICE), torch.float64)
    assert empty[0].shape == (0,) and empty[1].shape == (0,)


def _torch_gram_scale(A: torch.Tensor):
    """What triton_kernels/polar.py computed with eager torch ops before the kernel (the reference)."""
    trace = torch.diagonal(A, dim1=-2, dim2=-1).sum(-1)
    finite = torch.isfinite(trace)
    e = torch.frexp(torch.where(finite, trace, 0.0).sqrt())[1]
    scale = torch.ldexp(torch.ones_like(trace), -e.to(torch.float64))
    A = A * per_matrix(scale * scale)
    return torch.where(per_matrix(finite), A, 0.0), scale, finite


@pytest.mark.parametrize("n", [1, 5, 33])
def test_gram_scale_matches_the_torch_code(ops, n):
    scales = [1e-38, 1e-20, 1e-3, 1.0, 7.0, 1e20, 3e38]
    G = random_matrix(len(scales), 2 * n + 3, n, "decaying", device=DEVICE, seed=n).double()
    G = (G * torch.tensor(scales, dtype=torch.float64, device=DEVICE).view(-1, 1, 1)).float()
    G[3, 0, 0] = float("inf")
    G[4, 1, 0] = float("nan")
    G[5].zero_()
    A = G.double().mT @ G.double()
    out, scale, finite = ops.triton_gram_scale(A)
    ref_out, ref_scale, ref_finite = _torch_gram_scale(A)
    assert torch.equal(finite, ref_finite) and finite.tolist() == [True, True, True, False, False, True, True]
    assert torch.equal(scale, ref_scale)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)
    # what the scale is for: the scaled Gram has a trace in [1/4, 1) wherever the matrix is finite and nonzero
    tr = torch.diagonal(out, dim1=-2, dim2=-1).sum(-1)
    assert bool(((tr >= 0.25) & (tr < 1))[[0, 1, 2, 6]].all()) and tr[5] == 0


def test_gram_scale_at_power_of_four_traces(ops):
    # sqrt(trace) exactly a power of two: the exponent must not round either way.
    A = torch.diag_embed(torch.tensor([[4.0**k, 0.0, 0.0] for k in (-30, -1, 0, 1, 40)], dtype=torch.float64,
                                      device=DEVICE))
    out, scale, _ = ops.triton_gram_scale(A)
    assert torch.equal(scale, _torch_gram_scale(A)[1])
    assert torch.equal(torch.diagonal(out, dim1=-2, dim2=-1)[:, 0], torch.full((5,), 0.25, dtype=torch.float64,
                                                                                device=DEVICE))


def test_gram_scale_rejects_bad_input(ops):
    from orthokern.triton_kernels import prologue

    with pytest.raises(TypeError, match="gram_scale: A must be float64"):
        prologue.gram_scale(torch.eye(3, device=DEVICE)[None])
    with pytest.raises(ValueError, match=r"gram_scale: A must be \(B, n, n\)"):
        prologue.gram_scale(torch.zeros(2, 3, 4, dtype=torch.float64, device=DEVICE))


@pytest.mark.parametrize("dtype,out_dtype", [(torch.float32, torch.float32), (torch.float32, torch.bfloat16),
                                             (torch.float64, torch.float64)])
@pytest.mark.parametrize("step", [ns.Step(8.2, -22.5, 15.9, "high"), ns.Step(1.5, -0.5, 0.0, "high")],
                         ids=["quintic", "cubic"])
def test_first_factor_matches_the_reference(ops, dtype, out_dtype, step):
    X = random_matrix(3, 70, 37, "decaying", dtype=dtype, device=DEVICE, seed=11)
    X[2].zero_()
    A = X.mT @ X
    A2 = A @ A
    P = ops.triton_first_factor(A, A2, torch.linalg.matrix_norm(A2), step.a, step.b, step.c, out_dtype)
    ref = torch_first_factor(A.double(), A2.double(), step)
    assert P.dtype == out_dtype
    tol = {torch.float32: 1e-6, torch.bfloat16: 8e-3, torch.float64: 1e-14}[out_dtype]
    assert (P.double() - ref).abs().max() <= tol * ref.abs().max()
    # a zero matrix: t = 1, P = a I in the working dtype
    assert torch.equal(P[2], (step.a * torch.eye(37, dtype=dtype, device=DEVICE)).to(out_dtype))


def test_first_factor_of_a_nonfinite_matrix_is_nan(ops):
    A = torch.eye(4, device=DEVICE).repeat(2, 1, 1)
    A[1, 0, 1] = float("nan")
    A2 = A @ A
    P = ops.triton_first_factor(A, A2, torch.linalg.matrix_norm(A2), 1.5, -0.5, 0.25, torch.float32)
    assert bool(torch.isfinite(P[0]).all()) and bool(torch.isnan(P[1]).any())


def test_first_factor_rejects_bad_input(ops):
    from orthokern.triton_kernels import prologue

    A = torch.eye(3, device=DEVICE)[None]
    with pytest.raises(ValueError, match="first_factor: A and A2 must be"):
        prologue.first_factor(A, torch.eye(4, device=DEVICE)[None], torch.ones(1, device=DEVICE), 1, 1, 1,
                              torch.float32)
    with pytest.raises(ValueError, match=r"first_factor: norm must be \(B,\)"):
        prologue.first_factor(A, A, torch.ones(2, device=DEVICE), 1, 1, 1, torch.float32)


def test_prologue_ops_opcheck(ops):
    A = random_matrix(2, 9, 6, "decaying", device=DEVICE, seed=5).double()
    A = A.mT @ A
    torch.library.opcheck(ops.triton_gram_scale, (A,))
    torch.library.opcheck(ops.triton_pow2_scale, (torch.tensor([0.3, 5.0], device=DEVICE), torch.float32))
    A2 = A @ A
    torch.library.opcheck(ops.triton_first_factor, (A, A2, torch.linalg.matrix_norm(A2), 1.5, -0.5, 0.25,
                                                     torch.float64))
