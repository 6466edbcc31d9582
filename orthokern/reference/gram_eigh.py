"""Gram matrix + symmetric eigensolver: O = G W diag(lam^-1/2) W^T with G^T G = W diag(lam) W^T.

Squaring G squares its condition number. In float32 the Gram matrix carries an absolute error near
eps32 ||G||^2 = 6e-8 lam_max, while the smallest significant eigenvalue is rcond^2 lam_max = 1e-6 lam_max:
the eigenvectors of neighbouring small eigenvalues then mix by eps32 / (relative gap * rcond^2), and a second
float32 pass (as in CholeskyQR2) does not undo that mixing (measured: E = 1e-3 .. 4e-3 at condition 500 ..
800, n = 64 .. 200). So the accurate mode accumulates the Gram matrix and solves the eigenproblem in float64,
where the same error is 1e-16 / 1e-6, and applies the n x n result to G in the compute dtype (error
eps * cond). The fast mode does all of it in float32 (bfloat16/float16 inputs are upcast).
"""
from __future__ import annotations

import torch

from .scaling import eigen_threshold, finish, prepare


def inverse_sqrt_gram(X: torch.Tensor, rcond: float, gram_dtype: torch.dtype) -> torch.Tensor:
    """(X^T X)^{-1/2} restricted to the significant subspace, computed in ``gram_dtype``."""
    Xg = X.to(gram_dtype)
    A = Xg.mT @ Xg
    lam, W = torch.linalg.eigh(A)
    keep = eigen_threshold(lam, rcond)
    inv_sqrt = torch.where(keep, lam.clamp_min(torch.finfo(lam.dtype).tiny).rsqrt(), torch.zeros_like(lam))
    return (W * inv_sqrt[..., None, :]) @ W.mT


def polar_gram_eigh(G: torch.Tensor, *, mode: str = "accurate", rcond: float) -> torch.Tensor:
    X, finite = prepare(G)
    gram_dtype = torch.float64 if mode == "accurate" else X.dtype
    O = X @ inverse_sqrt_gram(X, rcond, gram_dtype).to(X.dtype)
    return finish(O, finite, G.dtype)

