"""Gram matrix + symmetric eigensolver: O = X W diag(lam^-1/2) W^T with X^T X = W diag(lam) W^T.

Squaring X squares its condition number. In float32 the Gram matrix would carry an absolute error near
eps32 ||X||^2 = 6e-8 lam_max, while the smallest significant eigenvalue is rcond^2 lam_max = 1e-6 lam_max: the
eigenvectors of neighbouring small eigenvalues would mix by eps32 / (relative gap * rcond^2) (measured: E = 1e-3 ..
4e-3 at condition 500 .. 800). So accurate mode accumulates and diagonalises the Gram matrix in float64
(``gram64``). Fast mode on a CPU keeps both in float32 for float32 / bfloat16 / float16 input
(:func:`_polar_float32`): E of a few 1e-3 and ||O||_2 within 1 % of 1 (up to 6e-2 and 1.08 where a singular value
sits within the float32 Gram matrix's error of rcond), far inside fast mode's bar (Muon's five quintic steps: E 0.1 -
0.4, ||O||_2 up to 1.2 on the same inputs), for half the arithmetic's cost in LAPACK and BLAS. The n x n result
is applied to X in the compute dtype; that float32 apply amplifies rounding by the condition number, which is what
limits this method's rcond (``orthokern/dispatch.py``, RCOND_FLOOR).

Passes over full-size data: the scaling reduction and the scaled copy X (``prepare``), the Gram matrix (read X),
the apply (read X, write O). The compiled (``csrc/cpu/gram_eigh_polar.h``) and Triton kernels fold the scale into
their loads instead of copying. The float32 fast path reads G twice and writes O once: no scaling pass, since a
float32 Gram matrix of G itself is safe wherever its trace is finite and not tiny, and the few matrices where it is
not take the float64 path.
"""
from __future__ import annotations

import torch

from .scaling import gram64, per_matrix, prepare, significant


def inverse_sqrt_of(lam: torch.Tensor, W: torch.Tensor, rel: float) -> torch.Tensor:
    """W diag(lam^-1/2) W^T from an eigendecomposition (lam ascending, eigenvectors the columns of W), over the
    eigenvalues at least ``rel`` times the largest (``scaling.significant``); the others map to 0."""
    keep = significant(lam, rel)
    inv = torch.where(keep, lam.clamp_min(torch.finfo(lam.dtype).tiny).rsqrt(), torch.zeros_like(lam))
    return (W * inv.unsqueeze(-2)) @ W.mT


def inverse_sqrt(A: torch.Tensor, rcond: float) -> torch.Tensor:
    """A^{-1/2} restricted to the eigenvalues that belong to significant singular values (float64, (B, n, n))."""
    return inverse_sqrt_of(*torch.linalg.eigh(A), rcond * rcond)


# The float32 fast path decomposes a matrix's float32 Gram matrix only where its trace is finite (then no entry
# overflowed: |A_ij| <= sqrt(A_ii A_jj)) and at least this (the squares of G's entries in the directions that count,
# down to rcond^2 of the largest, then stay normal numbers with float32's full precision). A zero trace may be an
# underflow: zero matrices take the float64 path too.
FLOAT32_GRAM_MIN_TRACE = 2.0**-60
FLOAT32_KEEP_FACTOR = 0.5


def _polar_float32(G: torch.Tensor, rcond: float) -> torch.Tensor:
    """Fast mode on a CPU (float32 / bfloat16 / float16 G): X^T X and its eigensolver in float32, X = G in float32.
    Reads a value on the host (which matrices are safe), so CPU eager only."""
    X = G if G.dtype == torch.float32 else G.float()
    A = X.mT @ X
    trace = A.diagonal(dim1=-2, dim2=-1).sum(-1)
    safe = torch.isfinite(trace) & (trace >= FLOAT32_GRAM_MIN_TRACE)
    all_safe = bool(safe.all())
    lam, W = torch.linalg.eigh(A if all_safe else torch.where(per_matrix(safe), A, 0.0))
    # A float32 Gram matrix carries an error near eps32 lam_max, a few percent of rcond^2 lam_max: keep down to half of
    # that, so that a direction just above rcond is not dropped for its rounding (the contract lets the directions
    # below rcond map anywhere in [0, 1 + tol]; these map to 1 within a few percent).
    O = (X @ inverse_sqrt_of(lam, W, FLOAT32_KEEP_FACTOR * rcond * rcond)).to(G.dtype)
    if not all_safe:  # non-finite, or far from 1 in scale: the float64 path, which scales first
        idx = (~safe).nonzero().squeeze(1)
        O[idx] = polar_gram_eigh(G[idx], mode="accurate", rcond=rcond)
    return O


def polar_gram_eigh(G: torch.Tensor, *, mode: str = "accurate", rcond: float) -> torch.Tensor:
    if (mode == "fast" and G.dtype != torch.float64 and G.device.type == "cpu"
            and not torch.compiler.is_compiling()):
        return _polar_float32(G, rcond)
    X, finite = prepare(G)
    # LAPACK refuses NaN: decompose zeros instead, and make the small factor NaN so the result is all NaN.
    A = torch.where(per_matrix(finite), gram64(X), 0.0)
    M = torch.where(per_matrix(finite), inverse_sqrt(A, rcond), float("nan"))
    return (X @ M.to(X.dtype)).to(G.dtype)
