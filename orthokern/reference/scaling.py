"""Pre- and post-processing shared by the pure-PyTorch implementations.

Every method works on a copy of G in its compute dtype (float64 for float64 input, float32 otherwise: half
precision is only a storage format here), scaled by a power of two so that max |G_ij| lies in [0.5, 1). The
polar factor does not depend on the scale, a power of two changes no mantissa bit, and the Gram matrix can
then neither overflow nor underflow in float32 whatever the gradient's magnitude. (The largest entry, not the
Frobenius norm, sets the scale: the norm itself overflows float32 for entries above ~1e19.)

Matrices with a NaN or Inf are computed on zeros (LAPACK may refuse non-finite input) and their result is
set to NaN afterwards, so a non-finite input always gives a non-finite output and never a plausible one.
"""
from __future__ import annotations

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def prepare(G: torch.Tensor, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(X, finite): G (B, m, n) in ``dtype`` scaled to max |X_ij| in [0.5, 1), non-finite matrices zeroed.

    ``finite`` is a (B,) bool tensor; nothing here synchronises with the device.
    """
    dtype = dtype or compute_dtype(G.dtype)
    X = G.to(dtype)
    finite = torch.isfinite(X).all(dim=(-2, -1))
    X = torch.where(finite[:, None, None], X, torch.zeros((), dtype=dtype, device=X.device))
    amax = X.abs().amax(dim=(-2, -1))
    # frexp gives amax = mantissa * 2**exp with mantissa in [0.5, 1); zero gives exp 0, so zero matrices keep
    # scale 1 and stay zero.
    _, exp = torch.frexp(amax)
    X = torch.ldexp(X, -exp[:, None, None].to(dtype))
    return X, finite


def finish(O: torch.Tensor, finite: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast back to the caller's dtype and turn the results of non-finite inputs into NaN."""
    nan = torch.full((), float("nan"), dtype=O.dtype, device=O.device)
    return torch.where(finite[:, None, None], O, nan).to(dtype)


def eigen_threshold(lam: torch.Tensor, rcond: float) -> torch.Tensor:
    """Mask of the eigenvalues of a Gram matrix that belong to significant singular values.

    Singular value s_i is significant when s_i >= rcond * s_max, i.e. lam_i >= rcond**2 * lam_max. The
    comparison is strict so that an all-zero matrix keeps nothing (and maps to zero).
    """
    lam_max = lam.amax(dim=-1, keepdim=True).clamp_min(0)
    return lam > (rcond * rcond) * lam_max
