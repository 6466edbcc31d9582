"""Shifted CholeskyQR2 followed by the polar factor of the small R: the fallback for ill-conditioned and
rank-deficient gradients.

  A1 = X^T X + s1 I,  R1 = chol(A1),  Q1 = X R1^{-1}
  A2 = Q1^T Q1 + s2 I, R2 = chol(A2), Q  = Q1 R2^{-1},  R = R2 R1
  P  = Q W_k Z_k^T     where R = W diag(sigma) Z^T and sigma_i >= rcond * sigma_max

Everything runs in float64 (the input is upcast, exactly): the Gram matrix of a float32 matrix is then exact
to 1e-16 and the shift that guarantees a successful Cholesky, s = 11 (m n + n (n + 1)) u ||A||
(Fukaya, Kannan, Nakatsukasa, Zhang, Yamamoto, "Shifted CholeskyQR for computing the QR factorization of
ill-conditioned matrices", SIAM J. Sci. Comput. 2020), stays around 1e-11 ||A||: it only touches directions
far below rcond. With the shift the Cholesky never breaks down, even on exactly rank-deficient or zero
input, and the second pass restores the orthogonality the first loses. Because G = Q R holds whatever Q's
quality in the null space, P = G Z_k sigma_k^{-1} Z_k^T: the significant directions come out right and the
rest are dropped, with no NaN.
"""
from __future__ import annotations

import torch

from .scaling import finish, prepare

_U64 = torch.finfo(torch.float64).eps / 2


def shift(A: torch.Tensor, m: int) -> torch.Tensor:
    """Fukaya et al.'s shift for A (B, n, n), bounded below so that a zero matrix still factors.

    ||A||_2 is bounded by both the trace (A is PSD) and the largest absolute row sum; the smaller is used.
    The trace alone over-shifts the second pass, where A is close to I and its trace is n times its norm:
    measured, float64 1152 x 128, E = 1.3e-8 with the trace against 1.0e-10 with the row sum.
    """
    n = A.shape[-1]
    trace = A.diagonal(dim1=-2, dim2=-1).sum(-1)
    norm = torch.minimum(trace, A.abs().sum(-1).amax(-1))
    norm = torch.where(norm > 0, norm, torch.ones_like(norm))
    return (11.0 * (m * n + n * (n + 1)) * _U64) * norm


def cholqr_pass(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shifted CholeskyQR: (Q, R) with X = Q R; X (B, m, n) float64."""
    A = X.mT @ X
    A = A + shift(A, X.shape[-2])[:, None, None] * torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    # cholesky_ex does not synchronise to check for failure; the shift makes failure impossible for finite A.
    R, _ = torch.linalg.cholesky_ex(A, upper=True)
    Q = torch.linalg.solve_triangular(R, X, upper=True, left=False)
    return Q, R


def polar_of_small(R: torch.Tensor, rcond: float) -> torch.Tensor:
    """Polar factor of the n x n factor R, dropping singular values below rcond * sigma_max."""
    W, sigma, Zh = torch.linalg.svd(R)
    keep = sigma > rcond * sigma[..., :1]
    return (W * keep[..., None, :].to(W.dtype)) @ Zh


def polar_cholqr2(G: torch.Tensor, *, mode: str = "accurate", rcond: float) -> torch.Tensor:
    X, finite = prepare(G, torch.float64)
    Q1, R1 = cholqr_pass(X)
    Q, R2 = cholqr_pass(Q1)
    O = Q @ polar_of_small(R2 @ R1, rcond)
    return finish(O, finite, G.dtype)

