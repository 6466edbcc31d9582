"""The reference: P = U_k V_k^T from torch.linalg.svd, dropping singular values below rcond * s_max."""
from __future__ import annotations

import torch

from .scaling import finish, prepare


def polar_svd(G: torch.Tensor, *, mode: str = "accurate", rcond: float) -> torch.Tensor:
    X, finite = prepare(G)
    U, s, Vh = torch.linalg.svd(X, full_matrices=False)
    keep = s > rcond * s[..., :1]
    O = (U * keep[..., None, :].to(U.dtype)) @ Vh
    return finish(O, finite, G.dtype)

