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

import torch

from .. import ns_schedule as ns
from .scaling import compute_dtype, prepare


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


def polar_newton_schulz(G: torch.Tensor, *, mode: str = "accurate", rcond: float) -> torch.Tensor:
    X, _ = prepare(G)
    high = X.dtype
    low = low_precision_dtype(G) if mode == "fast" else high
    steps = ns.steps_for(mode, rcond, X.shape[-1], high)

    # Normalisation X0 = X / t with t = 1.01 ||A^2||_F^{1/4} (see ns_schedule.NORM_SAFETY), from step 0's own A.
    A = X.mT @ X
    A2 = A @ A
    t = torch.linalg.matrix_norm(A2).sqrt().sqrt() * ns.NORM_SAFETY
    t = torch.where(t > 0, t, torch.ones_like(t))[:, None, None]
    P = step_factor(A / t**2, steps[0], A2 / t**4) / t
    for i, step in enumerate(steps):
        X = X.to(low if step.precision == "low" else high)
        if i > 0:
            P = step_factor(X.mT @ X, step)
        X = X @ P.to(X.dtype)
    return X.to(G.dtype)
