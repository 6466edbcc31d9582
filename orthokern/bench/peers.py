"""The methods orthokern is compared against, each run the way its users run it.

* ``torch_svd``: ``torch.linalg.svd`` then U V^T, the method of the Orthogonal-SGDM paper (Tuddenham et al.).
  Half-precision input is upcast to float32 (``linalg.svd`` has no bfloat16 kernel). The baseline of every
  speed-up.
* ``torch_svd_tall``: the same on the tall orientation, ``torch.linalg.svd`` of G^T when G is wide (transposed
  back after). orthokern computes on the tall orientation too, and LAPACK's SVD of a wide matrix can cost more
  than of its transpose, so this is the fair SVD baseline for wide shapes (issue 10). Identical to ``torch_svd``
  on tall input, where the runner does not run it.
* ``muon_ns5``: the 5-step Newton–Schulz quintic that ``torch.optim.Muon`` applies, calling torch's own
  ``torch.optim._muon._zeropower_via_newtonschulz`` once per matrix as the optimiser does per parameter.
  Where the installed torch has no Muon, ``muon_ns5`` is the reimplementation below instead (credited to
  Keller Jordan's Muon, https://github.com/KellerJordan/Muon, whose arithmetic torch ships).
* ``muon_ns5_batched``: the same arithmetic (bfloat16, Frobenius normalisation, a, b, c = 3.4445, -4.7750,
  2.0315, 5 steps) over the whole batch at once: what a grouped-by-shape Muon would cost.
* ``polar_express``: the Polar Express iteration (Amsel, Persson, Musco, Gower 2025) in plain torch, batched,
  with the coefficients of ``orthokern.ns_schedule.POLAR_EXPRESS`` (8 steps), in the input's dtype for
  float32/bfloat16 as in the paper's reference code (float32 for float16/float64 on a CPU).

Each takes (B, m, n) and returns (B, m, n) in the input dtype.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .. import ns_schedule

MUON_STEPS = 5
MUON_EPS = 1e-7  # torch.optim._muon.EPS


def _torch_muon_fn() -> Optional[Callable]:
    try:
        from torch.optim import _muon
    except ImportError:
        return None
    return getattr(_muon, "_zeropower_via_newtonschulz", None)


def torch_svd(G: torch.Tensor) -> torch.Tensor:
    X = G if G.dtype in (torch.float32, torch.float64) else G.float()
    U, _, Vh = torch.linalg.svd(X, full_matrices=False)
    return (U @ Vh).to(G.dtype)


def torch_svd_tall(G: torch.Tensor) -> torch.Tensor:
    if G.shape[-2] >= G.shape[-1]:
        return torch_svd(G)
    return torch_svd(G.mT).mT


def muon_ns5_batched(G: torch.Tensor, steps: int = MUON_STEPS) -> torch.Tensor:
    """Muon's quintic on a batch: wide orientation (the small Gram X X^T), bfloat16 throughout."""
    X = G.bfloat16()
    # a view, not indexing: the dry-run plan runs this on fake CUDA tensors (see reference.scaling.per_matrix)
    X = X / torch.linalg.matrix_norm(X).clamp(min=MUON_EPS).view(-1, 1, 1)
    return _iterate_wide(X, [ns_schedule.MUON_QUINTIC] * steps).to(G.dtype)


def _iterate_wide(X: torch.Tensor, coeffs) -> torch.Tensor:
    """X <- a X + (b A + c A^2) X with A = X X^T on the wide orientation (the small Gram), per (a, b, c)."""
    tall = X.shape[-2] > X.shape[-1]
    if tall:
        X = X.mT
    for a, b, c in coeffs:
        A = X @ X.mT
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)
        X = torch.baddbmm(X, B, X, beta=a)
    return X.mT if tall else X


def muon_ns5(G: torch.Tensor) -> torch.Tensor:
    fn = _torch_muon_fn()
    if fn is None:
        return muon_ns5_batched(G)
    coeffs = ns_schedule.MUON_QUINTIC
    # torch's function normalises ``grad.bfloat16()`` in place, which *is* the input when it is already
    # bfloat16 (harmless inside Muon, whose update is a temporary): copy so the benchmark's G stays intact.
    copy = G.dtype == torch.bfloat16
    return torch.stack([fn(g.clone() if copy else g, coeffs, MUON_STEPS, MUON_EPS) for g in G]).to(G.dtype)


def polar_express(G: torch.Tensor) -> torch.Tensor:
    """Polar Express: X0 = G / (1.01 ||G||_F), then X <- a X + (b A + c A^2) X, A = X X^T (wide side)."""
    dt = G.dtype if G.dtype in (torch.float32, torch.bfloat16) else torch.float32
    if G.dtype == torch.float16 and G.is_cuda:
        dt = torch.float16
    X = G.to(dt)
    X = X / (torch.linalg.matrix_norm(X.float()) * 1.01 + 1e-7).to(dt)[:, None, None]
    return _iterate_wide(X, ns_schedule.POLAR_EXPRESS).to(G.dtype)


PEERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "torch_svd": torch_svd,
    "torch_svd_tall": torch_svd_tall,
    "muon_ns5": muon_ns5,
    "muon_ns5_batched": muon_ns5_batched,
    "polar_express": polar_express,
}


def peer_source(name: str) -> str:
    """Where a peer's implementation comes from, for the report."""
    if name == "muon_ns5":
        return "torch.optim._muon" if _torch_muon_fn() is not None else "reimplementation (torch has no Muon)"
    return {"torch_svd": "torch.linalg.svd", "torch_svd_tall": "torch.linalg.svd of G^T when G is wide",
            "muon_ns5_batched": "reimplementation of torch Muon, batched",
            "polar_express": "plain torch, Amsel et al. 2025"}[name]
