"""gram_eigh and newton_schulz on the Triton kernels: the reference's numerics (``orthokern/reference``) with the
matmul-shaped work moved to the kernels through the ops ``torch.ops.orthokern.triton_*`` (``torch_ops.py``).

Same scaling, zero -> zero, NaN in -> NaN out and output dtype as the reference. One deliberate difference:
accurate-mode newton_schulz can iterate on the n x n Gram side in float64 (``side="gram"``: see
``_newton_schulz_gram_side``); which side runs is the dispatch's choice (``orthokern/dispatch.py``), as is the
eigensolver gram_eigh uses. Nothing here synchronises with the device.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .. import ns_schedule as ns
from ..reference.newton_schulz import low_precision_dtype
from ..reference.scaling import compute_dtype, eigen_threshold, finish, prepare
from ._common import ACCURATE  # the precision of float32 dots: float32 accuracy on tensor cores
from .newton_schulz import ns_step

# The kernels index within one matrix in int32 (the batch offset is int64).
MAX_ELEMENTS_PER_MATRIX = 2**31 - 1


def why_not_shape(G: torch.Tensor) -> Optional[str]:
    """None when the kernels can index G, else why not."""
    if G.shape[-2] * G.shape[-1] > MAX_ELEMENTS_PER_MATRIX:
        return f"a {G.shape[-2]} x {G.shape[-1]} matrix exceeds the kernels' int32 indexing (2^31 elements)"
    return None


def _ops():
    return torch.ops.orthokern


def _pow2_scale(norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(exponent e, 2^-e as float32) with norm = mantissa * 2^e, mantissa in [0.5, 1) as in ``prepare``.

    e is clamped to [-126, 149]: 2^-e must stay a (possibly subnormal) float32. Only matrices whose norm is
    below 2^-126 are then scaled less than the reference scales them.
    """
    _, e = torch.frexp(norm)
    e = e.clamp(-126, 149)
    return e, torch.ldexp(torch.ones_like(norm, dtype=torch.float32), -e.to(torch.float32))


def _scaled_gram64(G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A, finite, scale): the float64 Gram of (scale G), the finite mask, the power-of-two scale (B,).

    The kernel forms the float64 Gram of the raw G: products of float32 values are exact in float64 and the
    range of float64 holds the square of any float32/bfloat16/float16, so no pre-scaling pass over G is
    needed. The reference's power-of-two scale comes from the trace (= ||G||_F^2) instead, and an Inf or NaN
    in G always reaches the diagonal, so a non-finite Gram flags exactly the non-finite inputs (whose A is
    zeroed, as ``prepare`` zeroes them).
    """
    A = _ops().triton_sym_gram(G, None, True, torch.float64, 0, ACCURATE)
    finite = torch.isfinite(A).all(dim=(-2, -1))
    A = torch.where(finite[:, None, None], A, torch.zeros((), dtype=A.dtype, device=A.device))
    e, scale = _pow2_scale(torch.diagonal(A, dim1=-2, dim2=-1).sum(-1).sqrt())
    return torch.ldexp(A, (-2 * e)[:, None, None].to(A.dtype)), finite, scale


def _apply_or_nan(G: torch.Tensor, Mat: torch.Tensor, finite: torch.Tensor, scale: torch.Tensor,
                  work: torch.dtype) -> torch.Tensor:
    """(scale G) @ Mat in G's dtype, NaN for the non-finite inputs.

    A NaN small matrix turns the whole product NaN (0 * NaN = NaN): the reference's "non-finite input ->
    NaN result" without a pass over the output.
    """
    Mat = torch.where(finite[:, None, None], Mat.to(work), torch.full((), float("nan"), dtype=work, device=Mat.device))
    return _ops().triton_apply(G, Mat, scale, 0.0, 1.0, G.dtype, ACCURATE)


def polar_gram_eigh(G: torch.Tensor, *, mode: str = "accurate", rcond: float,
                    eigh: Callable = torch.linalg.eigh) -> torch.Tensor:
    """Triton Gram -> ``eigh`` of the n x n Gram (float64 in accurate mode, float32 in fast mode, as the
    reference) -> Triton apply."""
    if mode == "accurate" or G.dtype == torch.float64:
        A, finite, scale = _scaled_gram64(G)
    else:
        # Fast mode: a float32 Gram (as the reference's fast mode), which needs G scaled first or it could
        # overflow / underflow; one norm pass (accumulated in float64, so it cannot overflow) gives the scale,
        # which the kernel applies on load.
        norm = torch.linalg.vector_norm(G, dim=(-2, -1), dtype=torch.float64)
        finite = torch.isfinite(norm)
        _, scale = _pow2_scale(torch.where(finite, norm, torch.zeros_like(norm)))
        A = _ops().triton_sym_gram(G, scale, False, torch.float32, 0, ACCURATE)
        A = torch.where(finite[:, None, None], A, torch.zeros((), dtype=A.dtype, device=A.device))
    lam, W = eigh(A)
    keep = eigen_threshold(lam, rcond)
    inv_sqrt = torch.where(keep, lam.clamp_min(torch.finfo(lam.dtype).tiny).rsqrt(), torch.zeros_like(lam))
    return _apply_or_nan(G, (W * inv_sqrt[..., None, :]) @ W.mT, finite, scale, compute_dtype(G.dtype))


def polar_newton_schulz(G: torch.Tensor, *, mode: str = "accurate", rcond: float, side: str = "tall") -> torch.Tensor:
    """The reference's schedule and normalisation, iterated on X (``side="tall"``) or on its n x n Gram matrix
    (``side="gram"``)."""
    if side == "gram":
        return _newton_schulz_gram_side(G, mode, rcond)
    if side != "tall":
        raise ValueError(f"newton_schulz: side must be None, 'tall' or 'gram', got {side!r}")
    return _newton_schulz_tall(G, mode, rcond)


def _newton_schulz_tall(G: torch.Tensor, mode: str, rcond: float) -> torch.Tensor:
    """Each step three fused kernels on X (m x n) (``ns_step``)."""
    ops = _ops()
    X, finite = prepare(G)
    n = X.shape[-1]
    high = X.dtype
    low = low_precision_dtype(G) if mode == "fast" else high
    steps = ns.steps_for(mode, rcond, n, high)
    dts = [low if s.precision == "low" else high for s in steps] + [high]

    # Normalisation by ||A^2||_F^{1/4} (see ns_schedule.NORM_SAFETY) from the first Gram and its square, in
    # step 0's dtype (bfloat16 tensor-core products in fast mode on a GPU: a float32 A and A^2 would cost
    # about as much as all five bfloat16 steps at n = 4096, and a 0.4% error in ||A^2||_F moves t by 0.1%,
    # well inside the 1% safety factor). Step 0's polynomial is then formed from them with the 1/t^2, 1/t^4
    # folded into its coefficients (an n x n elementwise op), and X is scaled once for step 0.
    X0 = X.to(dts[0])
    A = ops.triton_sym_gram(X0, None, dts[0] == torch.float64, dts[0], 0, ACCURATE)
    A2 = ops.triton_sym_poly(A, 0.0, 1.0, ACCURATE)
    A, A2 = A.to(high), A2.to(high)
    t = torch.linalg.matrix_norm(A2).sqrt().sqrt() * ns.NORM_SAFETY
    t = torch.where(t > 0, t, torch.ones_like(t))[:, None, None]
    s0 = steps[0]
    B0 = ((s0.b / (t * t)) * A + (s0.c / (t * t) ** 2) * A2).to(dts[0])
    X = ops.triton_apply((X / t).to(dts[0]), B0, None, s0.a, 1.0, dts[1], ACCURATE)
    for i in range(1, len(steps)):
        step = steps[i]
        X = ns_step(X.to(dts[i]), step.a, step.b, step.c, out_dtype=dts[i + 1])
    return finish(X, finite, G.dtype)


def _newton_schulz_gram_side(G: torch.Tensor, mode: str, rcond: float) -> torch.Tensor:
    """The same polynomial steps carried out on the n x n Gram matrix, in float64, and one apply at the end.

    With X_k = X_0 Q_k, every Q_k is a polynomial in A_0 = X_0^T X_0, so everything commutes:
    with P_k = a I + b A_k + c A_k^2,  Q_{k+1} = Q_k P_k  and  A_{k+1} = X_{k+1}^T X_{k+1} = A_k P_k^2.
    Only n x n products remain, then O = X_0 Q_K (one pass over G). Iterating on A squares the condition
    number, so it runs in float64 (in float32 it measured ||O||_2 = 1.0009 at condition 316, 512 x 128,
    outside the contract); the Gram comes from the float64-accumulating kernel.
    """
    ops = _ops()
    A, finite, scale = _scaled_gram64(G)
    n = A.shape[-1]
    # The tolerance of the output dtype: more float64 steps would polish digits the apply rounds away.
    steps = ns.steps_for(mode, rcond, n, compute_dtype(G.dtype))
    A2 = ops.triton_sym_poly(A, 0.0, 1.0, ACCURATE)
    t = torch.linalg.matrix_norm(A2).sqrt().sqrt() * ns.NORM_SAFETY
    t = torch.where(t > 0, t, torch.ones_like(t))[:, None, None]
    s0 = steps[0]
    # X_0 = X / t: A_0 = A / t^2, and step 0's b A_0 + c A_0^2 from A and the A^2 already at hand.
    C = (s0.b / (t * t)) * A + (s0.c / (t * t) ** 2) * A2
    A = A / (t * t)
    Q = torch.eye(n, dtype=A.dtype, device=A.device) / t  # Q_0 = I / t, then Q_1 = Q_0 P_0 below
    for i, step in enumerate(steps):
        if i > 0:
            C = ops.triton_sym_poly(A, step.b, step.c, ACCURATE)
        Q = ops.triton_apply(Q, C, None, step.a, 1.0, A.dtype, ACCURATE)  # Q P = a Q + Q C
        if i + 1 < len(steps):
            T = ops.triton_apply(A, C, None, step.a, 1.0, A.dtype, ACCURATE)  # A P
            A = ops.triton_apply(T, C, None, step.a, 1.0, A.dtype, ACCURATE)  # A P P
    # Q is applied in float64: the schedule multiplies directions below rcond by up to prod(a_k) ~ 1e4 (as
    # the tall iteration does to them), so Q has entries ~1e4 there and a float32 apply would add rounding
    # ~eps32 * 1e4 to every direction (measured: ||O||_2 = 1 + 1.3e-4 on a rank-deficient 136 x 16). The
    # float64 apply runs at about the float32 (non-tensor-core) rate on H100/H200.
    return _apply_or_nan(G, Q, finite, scale, torch.float64)

