"""Newton–Schulz iterations with per-step coefficients (the schedule is ``orthokern/ns_schedule.py``'s).

Works on the tall orientation, X (m x n) with m >= n, so the Gram matrix A = X^T X is the small n x n one. A step
X <- a X + X (b A + c A^2) is written X <- X P with P = a I + b A + c A^2: the residual term rides in the n x n
factor, so a step reads X twice (for A, and for X P) and writes it once. The normalisation 1/t, from the first
step's own A and A^2, rides in the first step's P.

In fast mode on a GPU the steps run in bfloat16 matmuls (as Muon does); accurate mode runs every step in float32
(float64 for float64 input): bfloat16 rounding (4e-3) is larger than the smallest significant singular values
(1e-3 at the default rcond) and would scramble their directions, which no later step can restore. NaN and Inf
propagate through the products by themselves, so a non-finite matrix gives an all-NaN result with no extra pass.
"""
from __future__ import annotations

from typing import Callable

import torch

from .. import ns_schedule as ns
from .scaling import GRAM64_BLOCK, compute_dtype, gram64, per_matrix, prepare


def low_precision_dtype(G: torch.Tensor) -> torch.dtype:
    """The matmul dtype of fast-mode steps (the Triton backend uses the same rule)."""
    # bfloat16 matmuls pay off only on tensor cores; on a CPU they are slower than float32.
    return torch.bfloat16 if G.device.type == "cuda" else compute_dtype(G.dtype)


def step_factor(A: torch.Tensor, step: ns.Step, A2: torch.Tensor | None = None) -> torch.Tensor:
    """P = a I + b A + c A^2 (n x n) of one step, from A = X^T X (and A^2 if already at hand)."""
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    P = step.a * eye + step.b * A
    if step.c != 0.0:
        P = P + step.c * (A2 if A2 is not None else A @ A)
    return P


def polar_newton_schulz(G: torch.Tensor, *, mode: str = "accurate", rcond: float,
                        switch: int | None = None) -> torch.Tensor:
    """The steps on X. With ``switch`` = k (``ns_schedule.switch_step``), steps k onwards run on the n x n side
    instead: Y = X_k^T X_k, Q = ``late_factor(Y, steps[k:])``, the result X_k Q. Their products are n^3 each
    instead of m n^2, in the same dtype: by step k every significant singular value of X_k is at least
    ns_schedule.SWITCH_FROM, so Y's condition is at most 25 and squaring it costs nothing the dtype notices."""
    X, _ = prepare(G)
    high = X.dtype
    low = low_precision_dtype(G) if mode == "fast" else high
    steps = ns.steps_for(mode, rcond, X.shape[-1], high)
    if switch is not None and not 1 <= switch < len(steps):
        raise ValueError(f"newton_schulz: switch must be in [1, {len(steps)}), got {switch}")

    A = X.mT @ X
    P = first_factor(A, A @ A, steps[0])
    for i, step in enumerate(steps):
        X = X.to(low if step.precision == "low" else high)
        if i == switch:
            return (X @ late_factor(X.mT @ X, steps[i:])).to(G.dtype)
        if i > 0:
            P = step_factor(X.mT @ X, step)
        X = X @ P.to(X.dtype)
    return X.to(G.dtype)


def late_factor(Y: torch.Tensor, steps: tuple[ns.Step, ...]) -> torch.Tensor:
    """The n x n factor Q with X Q = the result of ``steps`` applied to X, from Y = X^T X alone, X already
    normalised (``gram_side_factor`` with no normalisation in its first step). On a GPU the same products run on the
    Triton kernels (``triton_kernels/polar.py: late_factor``)."""
    return gram_side_factor(Y, steps, first=lambda A, A2, step: step_factor(A, step, A2))


def first_factor(A: torch.Tensor, A2: torch.Tensor, step: ns.Step) -> torch.Tensor:
    """The first step's factor with the normalisation in it: P_0 / t = (a I + b A / t^2 + c A^2 / t^4) / t, so that
    X P_0 / t is the first step applied to X_0 = X / t, with t = 1.01 ||A^2||_F^{1/4} (ns_schedule.NORM_SAFETY),
    1 where that is zero (a zero matrix stays zero). On a GPU one kernel (``triton_kernels/prologue.py``)
    computes the same from A, A2 and ||A2||_F."""
    t = torch.linalg.matrix_norm(A2).sqrt().sqrt() * ns.NORM_SAFETY
    t = per_matrix(torch.where(t > 0, t, torch.ones_like(t)))
    return step_factor(A / t**2, step, A2 / t**4) / t


FirstFactor = Callable[[torch.Tensor, torch.Tensor, ns.Step], torch.Tensor]


def gram_side_factor(A: torch.Tensor, steps: tuple[ns.Step, ...], first: FirstFactor = first_factor) -> torch.Tensor:
    """The n x n factor Q with X Q = the iteration's result, computed from A = X^T X alone (B, n, n).

    X_k = X Q_k for every step, and everything is a polynomial in A, so it all commutes: with the normalised
    Y_0 = A / t^2, Q_0 = I / t and P_k = a I + R_k, R_k = b Y_k + c Y_k^2,

        Q_{k+1} = Q_k P_k = a Q_k + Q_k R_k,     Y_{k+1} = P_k Y_k P_k = a (P_k Y_k) + (P_k Y_k) R_k,
        P_k Y_k = a Y_k + R_k Y_k.

    Each right-hand side is one ``baddbmm`` (the a I never formed), so a quintic step is four launches (R, Q, P Y,
    Y) and a cubic one three (R = b Y rides in the products' alpha); the last step skips Y. The first step needs no
    product for Q: Q_1 = P_0 / t (``first``, which also normalises) and Y_1 = Q_1 A Q_1. Y squares the condition
    number, so this runs in A's dtype, float64 for the accurate contract (in float32 it gave ||O||_2 = 1.0009 at
    condition 316). Q amplifies the directions below rcond by up to the product of the a's (~1e4), so X Q must be
    formed in float64 too (``apply64``). This is the reference of the fused CUDA kernel (``csrc/gram_ns_factor.h``)
    and what runs on a GPU above that kernel's size limit (with ``first`` the prologue kernel).
    """
    Q = first(A, A @ A, steps[0])
    if len(steps) > 1:
        Y = (Q @ A) @ Q
    for i, step in enumerate(steps[1:], start=1):
        last = i + 1 == len(steps)
        if step.c == 0.0:
            # R = b Y: folded into each product's alpha.
            Q = torch.baddbmm(Q, Q, Y, beta=step.a, alpha=step.b)
            if not last:
                PY = torch.baddbmm(Y, Y, Y, beta=step.a, alpha=step.b)
                Y = torch.baddbmm(PY, PY, Y, beta=step.a, alpha=step.b)
        else:
            R = torch.baddbmm(Y, Y, Y, beta=step.b, alpha=step.c)
            Q = torch.baddbmm(Q, Q, R, beta=step.a)
            if not last:
                PY = torch.baddbmm(Y, R, Y, beta=step.a)
                Y = torch.baddbmm(PY, PY, R, beta=step.a)
    return Q


def apply64(X: torch.Tensor, M: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """X @ M with float64 accumulation, stored in ``out_dtype``, converting X to float64 block by block (no
    full-size float64 copy; the blocks are those of ``scaling.gram64``)."""
    if X.dtype == torch.float64:
        return (X @ M).to(out_dtype)
    B, m, n = X.shape
    rows = max(1, GRAM64_BLOCK // max(1, B * n))
    out = torch.empty(B, m, M.shape[-1], dtype=out_dtype, device=X.device)
    for r0 in range(0, m, rows):
        out[:, r0:r0 + rows] = X[:, r0:r0 + rows].to(torch.float64) @ M
    return out


def polar_newton_schulz_gram_side(G: torch.Tensor, *, mode: str = "accurate", rcond: float) -> torch.Tensor:
    """The same polynomial steps carried out on the n x n Gram matrix in float64 (see ``gram_side_factor``):
    one pass over G for the Gram matrix, one for the result. The schedule is polished to the output dtype's
    tolerance: more float64 steps would polish digits the final rounding removes."""
    X, finite = prepare(G)
    A = torch.where(per_matrix(finite), gram64(X), 0.0)
    Q = gram_side_factor(A, ns.steps_for(mode, rcond, X.shape[-1], X.dtype))
    return apply64(X, torch.where(per_matrix(finite), Q, float("nan")), G.dtype)
