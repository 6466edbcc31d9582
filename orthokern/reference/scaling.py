"""Scaling, thresholds and the float64 Gram matrix, shared by the pure-PyTorch implementations.

Scaling. One reduction over G gives, per matrix, its largest magnitude ``amax`` (NaN and Inf propagate through it,
so the same number says whether the matrix is finite) and from it a power of two ``2^-e`` that brings ``amax`` into
[0.5, 1). A power of two changes no mantissa bit and the polar factor does not depend on the scale, so the methods
then work in a fixed range: a Gram matrix can neither overflow nor underflow, and LAPACK never sees subnormal
numbers (its iterations fail to converge on them). The exponent is clamped so that ``2^-e`` itself is a normal
number of the compute dtype; an all-subnormal float32 matrix (max ~1e-40) then lands near 1e-2, comfortably
normal.

Half precision is only a storage format: the compute dtype is float32 (float64 for float64 input). Matrices with a
NaN or Inf give an all-NaN result; each method arranges that on its small n x n factor, not with a pass over O.
"""
from __future__ import annotations

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _exponent_range(dtype: torch.dtype) -> tuple[int, int]:
    fi = torch.finfo(dtype)
    lo = torch.frexp(torch.tensor(fi.tiny, dtype=dtype))[1].item()
    hi = torch.frexp(torch.tensor(fi.max, dtype=dtype))[1].item()
    return int(lo), int(hi)


_EXPONENTS = {dt: _exponent_range(dt) for dt in (torch.float32, torch.float64)}


def per_matrix(x: torch.Tensor) -> torch.Tensor:
    """A per-matrix value (B,) shaped (B, 1, 1) to broadcast over a batch of matrices. A view, not Python
    indexing: ``python -m orthokern.bench plan`` runs this code on fake CUDA tensors, which a CPU-only torch cannot
    index (its indexing takes a CUDA device guard)."""
    return x.view(-1, 1, 1)


def scale_and_finite(G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, finite) per matrix of G (B, m, n): ``scale`` = 2^-e in the compute dtype with max|scale G| in
    [0.5, 1) (clamped to the dtype's normal range), ``finite`` = no NaN/Inf in the matrix. One pass over G, no
    temporary, nothing read on the host."""
    cdt = compute_dtype(G.dtype)
    amax = torch.linalg.vector_norm(G, float("inf"), dim=(-2, -1)).to(cdt)
    finite = torch.isfinite(amax)
    lo, hi = _EXPONENTS[cdt]
    # frexp(0) = (0, 0): a zero matrix keeps scale 1 and stays zero; NaN/Inf give exponent 0 too.
    e = torch.frexp(amax)[1].clamp(lo, hi)
    return torch.ldexp(torch.ones_like(amax), -e.to(cdt)), finite


def prepare(G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(X, finite): X = scale * G in the compute dtype (one pass: the multiply also does the cast), and the
    finite flags of :func:`scale_and_finite`. X holds NaN/Inf where G does."""
    scale, finite = scale_and_finite(G)
    return G * per_matrix(scale), finite


def significant(values: torch.Tensor, threshold: float) -> torch.Tensor:
    """Mask of the values (..., k), non-negative, that count: ``v >= threshold * v_max`` and ``v > 0``.

    The contract's convention (README, "Accuracy contract"): a singular value exactly at rcond * s_max counts.
    For eigenvalues of a Gram matrix pass ``threshold = rcond**2``. Zero never counts, so a zero matrix maps to zero.
    """
    vmax = values.amax(dim=-1, keepdim=True).clamp_min(0)
    return (values >= threshold * vmax) & (values > 0)


# Rows of X converted to float64 per step of gram64: a block of this many elements (8 MiB in float64) stays in cache
# on a CPU and is still a large launch on a GPU.
GRAM64_BLOCK = 1 << 20


def gram64(X: torch.Tensor) -> torch.Tensor:
    """X^T X (B, n, n) accumulated in float64 without a full-size float64 copy of X (B, m, n): rows are converted
    block by block. Products of float32 numbers are exact in float64, so the result carries only the summation's
    rounding, eps64 * ||X||^2 instead of eps32 * ||X||^2."""
    if X.dtype == torch.float64:
        return X.mT @ X
    B, m, n = X.shape
    rows = max(1, GRAM64_BLOCK // max(1, B * n))
    A = torch.zeros(B, n, n, dtype=torch.float64, device=X.device)
    for r0 in range(0, m, rows):
        Xb = X[:, r0:r0 + rows].to(torch.float64)
        A.baddbmm_(Xb.mT, Xb)
    return A
