"""Test matrices with a controlled spectrum and the accuracy contract's measures, shared by tests and benchmarks.

The contract (README, "Accuracy"): with k = #{i : s_i >= rcond * s_max} and U_k, V_k the matching singular
vectors of the input *as given* (computed in float64 from the same values),

    E = ||U_k^T O V_k - I_k||_F / sqrt(k)      and      ||O||_2 <= 1 + tol.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch

# Accurate-mode bound on E per dtype of the input (and output).
E_BOUND = {torch.float64: 1e-8, torch.float32: 1e-3, torch.bfloat16: 1e-2, torch.float16: 1e-2}
# Bound on ||O||_2 - 1: the result's own rounding (half precision stores 1 with an error up to 2^-8).
NORM_SLACK = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3}

SPECTRA = ("well", "decaying", "decay2", "rank_deficient", "gaussian")


def spectrum(kind: str, n: int, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """n singular values, largest first, max 1.

    ``well``: log-spaced in [1, 1e-1]; ``decaying``: log-spaced in [1, 10^-2.5] (inside the default rcond with
    a margin, so that which directions count is not decided by rounding); ``decay2``: s_i = i^-2 floored at
    10^-2.5 (clustered small values); ``rank_deficient``: rank max(1, n // 8), the rest exactly zero;
    ``gaussian``: not a fixed spectrum: :func:`random_matrix` draws i.i.d. normal entries.
    """
    i = torch.arange(1, n + 1, dtype=dtype, device=device)
    if kind == "well":
        return torch.logspace(0, -1, n, dtype=dtype, device=device)
    if kind == "decaying":
        return torch.logspace(0, -2.5, n, dtype=dtype, device=device)
    if kind == "decay2":
        return (i**-2).clamp_min(10**-2.5)
    if kind == "rank_deficient":
        r = max(1, n // 8)
        s = torch.zeros(n, dtype=dtype, device=device)
        s[:r] = torch.logspace(0, -2, r, dtype=dtype, device=device)
        return s
    raise ValueError(f"spectrum: kind must be one of {SPECTRA[:-1]}, got {kind!r}")


def _haar(batch, m, k, generator, device) -> torch.Tensor:
    Z = torch.randn(*batch, m, k, dtype=torch.float64, generator=generator, device=device)
    Q, R = torch.linalg.qr(Z)
    return Q * torch.sign(torch.diagonal(R, dim1=-2, dim2=-1)).unsqueeze(-2)


def random_matrix(
    batch: tuple[int, ...] | int,
    m: int,
    n: int,
    kind: str = "decaying",
    *,
    dtype: torch.dtype = torch.float32,
    device=None,
    seed: Optional[int] = None,
    scale: float = 1.0,
) -> torch.Tensor:
    """A fresh (batch..., m, n) matrix U diag(s) V^T with Haar-random U, V and the spectrum ``kind``."""
    batch = (batch,) if isinstance(batch, int) else tuple(batch)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed if seed is not None else torch.seed() % (2**63))
    if kind == "gaussian":
        G = torch.randn(*batch, m, n, dtype=torch.float64, generator=gen) / math.sqrt(max(m, n))
    else:
        k = min(m, n)
        s = spectrum(kind, k)
        U = _haar(batch, m, k, gen, None)
        V = _haar(batch, n, k, gen, None)
        G = (U * s) @ V.mT
    return (G * scale).to(dtype=dtype, device=device)


@dataclasses.dataclass
class Accuracy:
    E: float  # worst over the batch
    norm2: float  # worst ||O||_2 over the batch
    orth: float  # worst ||O^T O - P_k||_F / sqrt(k) (P_k: identity on the significant subspace)
    dist: float  # worst ||O - P_ref||_F / sqrt(k) against the float64 polar factor of the significant part
    finite: bool


def accuracy(G: torch.Tensor, O: torch.Tensor, rcond: float = 1e-3) -> Accuracy:
    """The contract's measures of O as the polar factor of G (batched; worst case over the batch)."""
    if G.shape != O.shape:
        raise ValueError(f"accuracy: G and O must have the same shape, got {tuple(G.shape)} and {tuple(O.shape)}")
    Gd = G.detach().to(torch.float64, copy=True).cpu()
    Od = O.detach().to(torch.float64, copy=True).cpu()
    if Gd.shape[-2] < Gd.shape[-1]:
        Gd, Od = Gd.mT, Od.mT
    Gd = Gd.reshape(-1, *Gd.shape[-2:])
    Od = Od.reshape(-1, *Od.shape[-2:])
    finite = bool(torch.isfinite(Od).all())
    E = norm2 = orth = dist = 0.0
    for g, o in zip(Gd, Od):
        U, s, Vh = torch.linalg.svd(g, full_matrices=False)
        if s.numel() == 0 or s[0] == 0:
            E, norm2 = max(E, 0.0), max(norm2, float(o.abs().max()) if o.numel() else 0.0)
            continue
        k = int((s >= rcond * s[0]).sum())
        Uk, Vk = U[:, :k], Vh[:k].mT
        Ik = torch.eye(k, dtype=torch.float64)
        E = max(E, float(torch.linalg.matrix_norm(Uk.mT @ o @ Vk - Ik) / math.sqrt(k)))
        norm2 = max(norm2, float(torch.linalg.matrix_norm(o, 2)) if finite else math.inf)
        # O^T O restricted to the significant input directions should be the identity there.
        orth = max(orth, float(torch.linalg.matrix_norm(Vk.mT @ (o.mT @ o) @ Vk - Ik) / math.sqrt(k)))
        dist = max(dist, float(torch.linalg.matrix_norm(o @ Vk - Uk) / math.sqrt(k)))
    return Accuracy(E=E, norm2=norm2, orth=orth, dist=dist, finite=finite)
