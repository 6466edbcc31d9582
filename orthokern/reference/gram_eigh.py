"""Gram matrix + symmetric eigensolver: O = X W diag(lam^-1/2) W^T with X^T X = W diag(lam) W^T.

Squaring X squares its condition number. In float32 the Gram matrix would carry an absolute error near
eps32 ||X||^2 = 6e-8 lam_max, while the smallest significant eigenvalue is rcond^2 lam_max = 1e-6 lam_max: the
eigenvectors of neighbouring small eigenvalues would mix by eps32 / (relative gap * rcond^2) (measured: E = 1e-3 ..
4e-3 at condition 500 .. 800). So the Gram matrix is accumulated and diagonalised in float64 (``gram64``), in
either mode: a float32 Gram cannot resolve singular values just above rcond, and a "fast" mode that drops them lost
to Muon's accuracy. The n x n result is applied to X in the compute dtype; that float32 apply amplifies rounding by
the condition number, which is what limits this method's rcond (``orthokern/dispatch.py``, RCOND_FLOOR).

Passes over full-size data: the scaling reduction and the scaled copy X (``prepare``), the Gram matrix (read X),
the apply (read X, write O). The compiled (``csrc/cpu/gram_eigh_polar.h``) and Triton kernels fold the scale into
their loads instead of copying.
"""
from __future__ import annotations

import torch

from .scaling import gram64, per_matrix, prepare, significant


def inverse_sqrt(A: torch.Tensor, rcond: float) -> torch.Tensor:
    """A^{-1/2} restricted to the eigenvalues that belong to significant singular values (float64, (B, n, n))."""
    lam, W = torch.linalg.eigh(A)
    keep = significant(lam, rcond * rcond)
    inv = torch.where(keep, lam.clamp_min(torch.finfo(lam.dtype).tiny).rsqrt(), torch.zeros_like(lam))
    return (W * inv.unsqueeze(-2)) @ W.mT


def polar_gram_eigh(G: torch.Tensor, *, mode: str = "accurate", rcond: float) -> torch.Tensor:
    X, finite = prepare(G)
    # LAPACK refuses NaN: decompose zeros instead, and make the small factor NaN so the result is all NaN.
    A = torch.where(per_matrix(finite), gram64(X), 0.0)
    M = torch.where(per_matrix(finite), inverse_sqrt(A, rcond), float("nan"))
    return (X @ M.to(X.dtype)).to(G.dtype)
