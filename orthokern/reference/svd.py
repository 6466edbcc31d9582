"""The reference: P = U_k V_k^T from an SVD, keeping the singular values s >= rcond * s_max (and s > 0).

The SVD runs in float64 whatever the input (half and float32 inputs are upcast, exactly): it is the method that
defines the answer and the last resort, so it resolves every singular value float64 can (``orthokern/dispatch.py``,
RCOND_FLOOR), at the price of speed.
"""
from __future__ import annotations

import torch

from .scaling import per_matrix, scale_and_finite, significant


def polar_svd(G: torch.Tensor, *, mode: str = "accurate", rcond: float) -> torch.Tensor:
    scale, finite = scale_and_finite(G)
    # Scale and upcast in one multiply (type promotion), then zero the non-finite matrices: LAPACK refuses NaN.
    X = torch.where(per_matrix(finite), G * per_matrix(scale.to(torch.float64)), 0.0)
    U, s, Vh = torch.linalg.svd(X, full_matrices=False)
    keep = significant(s, rcond)
    Vh = torch.where(per_matrix(finite), Vh * keep.unsqueeze(-1).to(Vh.dtype), float("nan"))
    return (U @ Vh).to(G.dtype)
