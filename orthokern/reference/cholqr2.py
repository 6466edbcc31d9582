"""Shifted CholeskyQR2 followed by the polar factor of the small R: the fallback for ill-conditioned and
rank-deficient gradients, with the lowest rcond floor of the fast methods (everything in float64).

  A1 = X^T X + s1 I,  R1 = chol(A1),  Q1 = X R1^{-1}
  A2 = Q1^T Q1 + s2 I, R2 = chol(A2),  R = R2 R1
  O  = sqrt(1 + s2) Q1 R2^{-1} polar_k(R)      (polar_k keeps the singular values sigma >= rcond * sigma_max)

The shifts are Fukaya, Kannan, Nakatsukasa, Zhang, Yamamoto's ("Shifted CholeskyQR for computing the QR
factorization of ill-conditioned matrices", SIAM J. Sci. Comput. 2020): s = 11 (m n + n (n + 1)) u ||A||, with
which the Cholesky never breaks down, even on exactly rank-deficient or zero input. With X = Q R, the result
X R^{-1} polar(R) = X (R^T R)^{-1/2}, and R^T R = A + s2 R1^T R1 = (1 + s2) A + s1 s2 I: the first shift cancels
(the second pass's Gram is formed from Q1 itself), the second scales every singular value by (1 + s2)^{-1/2}. The
factor sqrt(1 + s2) removes that bias; without it E grew like s2 / 2 = 6e-16 m n in float64 (1.6e-8 at
200000 x 128). s1 s2 ~ 1e-22 ||A|| is far below anything that counts.

The full-size work: a float64 copy of X (the triangular solve needs it), its Gram, Q1 = X R1^{-1}, Q1's Gram, and
one product Q1 M with the n x n factor M = sqrt(1 + s2) R2^{-1} polar_k(R) (the second triangular solve is done on M,
not on Q1). ``small_polar`` computes polar_k(R): LAPACK's SVD on a CPU; on a GPU, where torch's batched SVD loops
one matrix at a time, the float64 Newton–Schulz of ``newton_schulz_small`` (the dispatch passes it).
"""
from __future__ import annotations

from typing import Callable

import torch

from .. import ns_schedule as ns
from .newton_schulz import step_factor
from .scaling import per_matrix, scale_and_finite, significant

_U64 = torch.finfo(torch.float64).eps / 2


def shift(A: torch.Tensor, m: int) -> torch.Tensor:
    """Fukaya et al.'s shift for A (B, n, n), bounded below so that a zero matrix still factors.

    ||A||_2 is bounded by both the trace (A is PSD) and the largest absolute row sum; the smaller is used.
    The trace alone over-shifts the second pass, where A is close to I and its trace is n times its norm.
    """
    n = A.shape[-1]
    trace = A.diagonal(dim1=-2, dim2=-1).sum(-1)
    norm = torch.minimum(trace, A.abs().sum(-1).amax(-1))
    norm = torch.where(norm > 0, norm, torch.ones_like(norm))
    return (11.0 * (m * n + n * (n + 1)) * _U64) * norm


def _shifted_cholesky(A: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, s): R^T R = A + s I, R upper triangular."""
    s = shift(A, m)
    A = A + per_matrix(s) * torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    # cholesky_ex does not synchronise to check for failure; the shift makes failure impossible for finite A.
    return torch.linalg.cholesky_ex(A, upper=True)[0], s


def svd_small(R: torch.Tensor, rcond: float) -> torch.Tensor:
    """polar_k(R) of square R (B, n, n) by LAPACK's SVD."""
    W, sigma, Zh = torch.linalg.svd(R)
    return (W * significant(sigma, rcond).unsqueeze(-2).to(W.dtype)) @ Zh


def newton_schulz_small(R: torch.Tensor, rcond: float) -> torch.Tensor:
    """polar_k(R) of square R (B, n, n) by Newton–Schulz in R's dtype (batched matmuls only): singular values
    >= rcond sigma_max go to 1 within 8 eps, weaker ones into [0, 1]."""
    steps = ns.steps_for("accurate", rcond, R.shape[-1], R.dtype)
    t = torch.linalg.matrix_norm((R.mT @ R) @ (R.mT @ R)).sqrt().sqrt() * ns.NORM_SAFETY
    X = R / per_matrix(torch.where(t > 0, t, torch.ones_like(t)))
    for step in steps:
        X = X @ step_factor(X.mT @ X, step)
    return X


def polar_cholqr2(G: torch.Tensor, *, mode: str = "accurate", rcond: float,
                  small_polar: Callable[[torch.Tensor, float], torch.Tensor] = svd_small) -> torch.Tensor:
    scale, finite = scale_and_finite(G)
    ok = per_matrix(finite)
    X = G * per_matrix(scale.to(torch.float64))  # scaled and upcast in one multiply
    m = X.shape[-2]
    # LAPACK refuses NaN: factor zeros instead for non-finite matrices, whose result is made NaN through M.
    R1, _ = _shifted_cholesky(torch.where(ok, X.mT @ X, 0.0), m)
    Q1 = torch.linalg.solve_triangular(R1, X, upper=True, left=False)
    R2, s2 = _shifted_cholesky(torch.where(ok, Q1.mT @ Q1, 0.0), m)
    P = small_polar(R2 @ R1, rcond) * per_matrix((1.0 + s2).sqrt())
    M = torch.linalg.solve_triangular(R2, P, upper=True, left=True)
    return (Q1 @ torch.where(ok, M, float("nan"))).to(G.dtype)
