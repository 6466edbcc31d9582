"""``method="auto"``: the one place where the method is chosen.

The rule (measured figures behind it are in bench/RESULTS.md and README "How auto chooses"):

* CPU: ``gram_eigh``. LAPACK's eigensolver is fast at every n a gradient has, the Gram matrix costs one
  pass over G, and the accurate mode's second pass makes it meet the contract at any shape.
* GPU, fast mode: ``newton_schulz`` (bfloat16 matmuls on tensor cores) unless n <= 64, where the fused
  Gram + Jacobi kernel (or ``gram_eigh``) is both faster and exact.
* GPU, accurate mode: ``gram_eigh`` when n <= 64 (the fused kernel), or when the matrix is tall-skinny
  (m >= 4 n and n <= 512, where the Gram matrix is small next to G); otherwise ``newton_schulz``
  (float32 matmuls; torch's batched eigh is slow and squares the conditioning of large square blocks).

Breakdown fallback: a method's result is checked for non-finite values from finite input, and the
conditioning estimate that comes free with it (the largest entry of |O|, which exceeds 1 only where a
direction was amplified past the orthonormal bound) is checked against 1 + 1e-2. Matrices that fail are
recomputed with ``cholqr2`` (float64, shifted, never NaN). The check needs the device's answer, so it runs
only in eager mode: under ``torch.compile`` and CUDA-graph capture the first choice stands (every method is
NaN-free by construction on finite input; the fallback guards against the unforeseen).
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _registry

_TALL_RATIO = 4
_TALL_MAX_N = 512
_FUSED_MAX_N = 64
_BOUND_SLACK = 1e-2


def choose(m: int, n: int, device_type: str, mode: str) -> str:
    """The method for a tall batch of m x n matrices (m >= n) on ``device_type``."""
    if device_type != "cuda":
        return "gram_eigh"
    if n <= _FUSED_MAX_N:
        return "gram_eigh"
    if mode == "accurate" and m >= _TALL_RATIO * n and n <= _TALL_MAX_N:
        return "gram_eigh"
    return "newton_schulz"


def _capturing() -> bool:
    if torch.compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def broken(X: torch.Tensor, O: torch.Tensor) -> torch.Tensor:
    """(B,) bool: matrices whose result shows a breakdown (see module docstring)."""
    finite_in = torch.isfinite(X).all(dim=(-2, -1))
    finite_out = torch.isfinite(O).all(dim=(-2, -1))
    too_big = O.abs().amax(dim=(-2, -1)).float() > 1.0 + _BOUND_SLACK
    return finite_in & (~finite_out | too_big)


def polar_auto(X: torch.Tensor, *, mode: str, rcond: float, backend: Optional[str]) -> torch.Tensor:
    method = choose(X.shape[-2], X.shape[-1], X.device.type, mode)
    O = _registry.resolve(method, backend, X).fn(X, mode=mode, rcond=rcond)
    if _capturing():
        return O
    bad = broken(X, O)
    if bool(bad.any()):
        idx = bad.nonzero().squeeze(1)
        fallback = _registry.resolve("cholqr2", None, X[idx])
        O = O.clone()
        O[idx] = fallback.fn(X[idx], mode="accurate", rcond=rcond)
    return O
