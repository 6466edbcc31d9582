"""``orthokern.polar``: argument checking, tall/wide handling, dispatch, the ``auto`` rule and autograd."""
from __future__ import annotations

import sys
from typing import Optional

import torch

from . import dispatch
from .dispatch import BACKENDS, METHODS, MODES

# Singular values below rcond * s_max are treated as zero (their directions are dropped from the result).
# 1e-3 follows the accuracy contract: every method resolves condition numbers up to 1e3 to the contract's
# accuracy in float32, and directions weaker than that carry little of a gradient.
DEFAULT_RCOND = 1e-3

_FLOAT_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def _check_args(G, method, mode, rcond, backend) -> float:
    if not isinstance(G, torch.Tensor):
        raise TypeError(f"polar: G must be a torch.Tensor, got {type(G).__name__}")
    if G.dim() < 2:
        raise ValueError(f"polar: G must have at least 2 dimensions (..., m, n), got shape {tuple(G.shape)}")
    if G.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"polar: G must be float64, float32, bfloat16 or float16, got {G.dtype}"
            + (" (complex input is not supported)" if G.is_complex() else "")
        )
    return check_options(method, mode, rcond, backend, where="polar")


def check_options(method, mode, rcond, backend, *, where: str) -> float:
    """Check polar()'s options (also at optimiser construction, so errors come early); returns rcond."""
    if method not in METHODS:
        raise ValueError(f"{where}: method must be one of {METHODS}, got {method!r}")
    if mode not in MODES:
        raise ValueError(f"{where}: mode must be one of {MODES}, got {mode!r}")
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"{where}: backend must be None or one of {BACKENDS}, got {backend!r}")
    if rcond is None:
        return DEFAULT_RCOND
    rcond = float(rcond)
    if not (0.0 <= rcond < 1.0):
        raise ValueError(f"{where}: rcond must be in [0, 1), got {rcond}")
    return rcond


def _polar_nograd(G: torch.Tensor, method: str, mode: str, rcond: float, backend: Optional[str]) -> torch.Tensor:
    *batch, m, n = G.shape
    wide = m < n
    if G.numel() == 0:
        return torch.empty_like(G, memory_format=torch.contiguous_format)
    X = G.mT if wide else G
    X = X.reshape(-1, *X.shape[-2:])
    O = dispatch.run(X, method, mode, rcond, backend).reshape(*batch, *X.shape[-2:])
    # clone, not .contiguous(): the same copy, and the dry-run plan can run it (see reference.scaling.per_matrix)
    return O.mT.clone(memory_format=torch.contiguous_format) if wide else O


def polar(
    G: torch.Tensor,
    *,
    method: str = "auto",
    mode: str = "accurate",
    rcond: Optional[float] = None,
    backend: Optional[str] = None,
    check_finite: bool = False,
) -> torch.Tensor:
    """Polar factor P = U V^T of each matrix of G (..., m, n), tall or wide, as a new tensor like G.

    Args:
        G: float64, float32, bfloat16 or float16 tensor with at least two dimensions; any strides. It is not
            modified.
        method: ``"auto"`` (chosen by shape, dtype and device; see README), ``"svd"``, ``"gram_eigh"``,
            ``"newton_schulz"`` or ``"cholqr2"``.
        mode: ``"accurate"`` meets the accuracy contract (README); ``"fast"`` trades accuracy for speed in the
            manner of Muon's Newton–Schulz (still more accurate than it).
        rcond: singular values below ``rcond * s_max`` count as zero and their directions are dropped
            (default 1e-3).
        backend: ``None`` for the best available, or ``"torch"``, ``"cpp"``, ``"triton"``, ``"cuda"`` to
            force one; an unavailable one raises :class:`orthokern.BackendUnavailable` (a ``RuntimeError``)
            saying why.
        check_finite: raise ``ValueError`` if G holds NaN or Inf (this synchronises with the device).
            Otherwise such matrices give NaN results.

    Differentiable: the backward solves the Sylvester equation of the polar factor in the eigenbasis of
    H = P^T G (see ``_PolarFunction``).
    """
    rcond = _check_args(G, method, mode, rcond, backend)
    if _is_dtensor(G):  # each matrix made whole where it is computed: orthokern/_dtensor.py
        from . import _dtensor

        return _dtensor.polar(G, polar, method=method, mode=mode, rcond=rcond, backend=backend,
                              check_finite=check_finite)
    if check_finite and not bool(torch.isfinite(G).all()):
        raise ValueError("polar: G contains NaN or Inf (check_finite=True)")
    if torch.is_grad_enabled() and G.requires_grad:
        return _PolarFunction.apply(G, method, mode, rcond, backend)
    with torch.no_grad():
        return _polar_nograd(G, method, mode, rcond, backend)


def _is_dtensor(G) -> bool:
    # A DTensor exists only once torch.distributed.tensor is imported (not imported here: it is slow to import).
    mod = sys.modules.get("torch.distributed.tensor")
    return mod is not None and isinstance(G, mod.DTensor)


class _PolarFunction(torch.autograd.Function):
    """Autograd for the polar factor of a tall G = P H (P^T P = I, H = P^T G symmetric positive).

    For dP = P Omega + (I - P P^T) dG H^{-1} with Omega skew, H Omega + Omega H = P^T dG - dG^T P, the
    vector-Jacobian product is

        dL/dG = P V [ (V^T (P^T Pbar - Pbar^T P) V)_ij / (s_i + s_j) ] V^T + (I - P P^T) Pbar V diag(1/s) V^T

    with H = V diag(s) V^T. Directions with s_i < rcond * s_max (where P is not differentiable) get zero
    weight instead of an Inf. Wide matrices are handled on the transpose.
    """

    @staticmethod
    def forward(ctx, G, method, mode, rcond, backend):
        with torch.no_grad():
            P = _polar_nograd(G, method, mode, rcond, backend)
        ctx.save_for_backward(G, P)
        # The directions the forward kept: those above the rcond the chosen method ran with (its floor included).
        tall = G.mT if G.shape[-2] < G.shape[-1] else G
        ctx.rcond = dispatch.method_and_rcond(tall.reshape(-1, *tall.shape[-2:]), method, mode, rcond)[1]
        return P

    @staticmethod
    def backward(ctx, Pbar):
        G, P = ctx.saved_tensors
        wide = G.shape[-2] < G.shape[-1]
        if wide:
            G, P, Pbar = G.mT, P.mT, Pbar.mT
        dtype = torch.float64 if G.dtype == torch.float64 else torch.float32
        Gc, Pc, Pb = G.to(dtype), P.to(dtype), Pbar.to(dtype)
        H = Pc.mT @ Gc
        s, V = torch.linalg.eigh(0.5 * (H + H.mT))
        keep = s > ctx.rcond * s.amax(-1, keepdim=True).clamp_min(0)
        s_safe = torch.where(keep, s, torch.ones_like(s))
        denom = s_safe[..., :, None] + s_safe[..., None, :]
        both = keep[..., :, None] & keep[..., None, :]
        S = Pc.mT @ Pb
        C = V.mT @ (S - S.mT) @ V
        M = torch.where(both, C / denom, torch.zeros_like(C))
        inv_s = torch.where(keep, 1.0 / s_safe, torch.zeros_like(s))
        Gbar = Pc @ (V @ M @ V.mT) + (Pb - Pc @ (Pc.mT @ Pb)) @ ((V * inv_s[..., None, :]) @ V.mT)
        if wide:
            Gbar = Gbar.mT
        return Gbar.to(G.dtype), None, None, None, None
