"""Newton–Schulz iterations with per-step coefficients (see ``orthokern.ns_schedule``).

Works on the tall orientation, X (m x n) with m >= n, so the Gram matrix A = X^T X is the small n x n one:
X <- a X + X (b A + c A^2). In the fast mode on a GPU the steps run in bfloat16 matmuls (as Muon does); the
accurate mode runs every step in float32 (float64 for float64 input): bfloat16 rounding (4e-3) is larger
than the smallest significant singular values (1e-3 at the default rcond) and would scramble their
directions, which no later float32 step can restore.
"""
from __future__ import annotations

import torch

from .. import ns_schedule as ns
from .scaling import compute_dtype, finish, prepare


def low_precision_dtype(G: torch.Tensor) -> torch.dtype:
    """The matmul dtype of fast-mode steps (the Triton backend uses the same rule)."""
    # bfloat16 matmuls pay off only on tensor cores; on a CPU they are slower than float32.
    return torch.bfloat16 if G.device.type == "cuda" else compute_dtype(G.dtype)


def polar_newton_schulz(G: torch.Tensor, *, mode: str = "accurate", rcond: float) -> torch.Tensor:
    X, finite = prepare(G)
    n = X.shape[-1]
    steps = ns.steps_for(mode, rcond, n, X.dtype)
    high = X.dtype
    low = low_precision_dtype(G) if mode == "fast" else high

    # Normalise with the first step's own Gram matrix (see ns_schedule.NORM_SAFETY); it is reused by step 0.
    A = X.mT @ X
    t = torch.linalg.matrix_norm(A @ A).sqrt().sqrt() * ns.NORM_SAFETY
    t = torch.where(t > 0, t, torch.ones_like(t))[:, None, None]
    X, A = X / t, A / (t * t)
    for i, step in enumerate(steps):
        dt = low if step.precision == "low" else high
        Xw = X.to(dt)
        Aw = A.to(dt) if i == 0 else Xw.mT @ Xw
        B = step.b * Aw + step.c * (Aw @ Aw) if step.c != 0.0 else step.b * Aw
        X = (step.a * Xw + Xw @ B).to(high)
    return finish(X, finite, G.dtype)

