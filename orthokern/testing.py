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


class Reference:
    """The float64 SVD of G (B, m, n), computed once, against which any number of results are measured.

    A benchmark compares many methods' results with the same G (an SVD of 4096 x 11008 costs tens of seconds);
    :func:`accuracy` is the one-off form. ``max_matrices`` keeps an evenly spread subset of a large batch (first
    and last included). The SVD stays on G's device.
    """

    def __init__(self, G: torch.Tensor, rcond: float = 1e-3, max_matrices: Optional[int] = None):
        G = G.detach()
        if G.dim() != 3:
            raise ValueError(f"Reference: G must be (B, m, n), got shape {tuple(G.shape)}")
        self.wide = G.shape[-2] < G.shape[-1]
        B = G.shape[0]
        if max_matrices is not None and B > max_matrices:
            self.index = torch.linspace(0, B - 1, max_matrices).round().long().unique()
        else:
            self.index = torch.arange(B)
        Gd = G[self.index.to(G.device)].to(torch.float64)
        if self.wide:
            Gd = Gd.mT
        U, s, Vh = torch.linalg.svd(Gd, full_matrices=False)
        if s.shape[-1] == 0:  # a zero-size dimension: nothing to map
            self.zero = torch.ones(len(self.index), dtype=torch.bool)
            self.k = torch.zeros(len(self.index), dtype=torch.long)
        else:
            smax = s[:, :1]
            self.zero = (smax[:, 0] == 0).cpu()
            self.k = (s >= rcond * smax).sum(-1).cpu()
        self.U, self.V = U, Vh.mT

    def measure(self, O: torch.Tensor) -> Accuracy:
        """The contract's measures of O (same shape as G) as its polar factor; worst case over the batch."""
        Od = O.detach()[self.index.to(O.device)].to(torch.float64)
        if self.wide:
            Od = Od.mT
        finite = bool(torch.isfinite(Od).all())
        E = norm2 = orth = dist = 0.0
        for i, o in enumerate(Od):
            if bool(self.zero[i]):
                norm2 = max(norm2, float(o.abs().max()) if o.numel() else 0.0)
                continue
            k = int(self.k[i])
            Uk, Vk = self.U[i, :, :k], self.V[i, :, :k]
            Ik = torch.eye(k, dtype=torch.float64, device=o.device)
            E = max(E, float(torch.linalg.matrix_norm(Uk.mT @ o @ Vk - Ik) / math.sqrt(k)))
            if finite:
                # ||O||_2 from the small Gram matrix: cheaper than an SVD of O, exact enough in float64 for
                # values near 1 (what the bound is about).
                lam = torch.linalg.eigvalsh(o.mT @ o)
                norm2 = max(norm2, float(lam[-1].clamp_min(0).sqrt()))
            else:
                norm2 = math.inf
            # O^T O restricted to the significant input directions should be the identity there.
            orth = max(orth, float(torch.linalg.matrix_norm(Vk.mT @ (o.mT @ o) @ Vk - Ik) / math.sqrt(k)))
            dist = max(dist, float(torch.linalg.matrix_norm(o @ Vk - Uk) / math.sqrt(k)))
        return Accuracy(E=E, norm2=norm2, orth=orth, dist=dist, finite=finite)


def accuracy(G: torch.Tensor, O: torch.Tensor, rcond: float = 1e-3) -> Accuracy:
    """The contract's measures of O as the polar factor of G (any batch shape; worst case over the batch)."""
    if G.shape != O.shape:
        raise ValueError(f"accuracy: G and O must have the same shape, got {tuple(G.shape)} and {tuple(O.shape)}")
    G3 = G.detach().cpu().reshape(-1, *G.shape[-2:])
    O3 = O.detach().cpu().reshape(-1, *O.shape[-2:])
    return Reference(G3, rcond).measure(O3)


def assert_contract(G: torch.Tensor, O: torch.Tensor, rcond: float = 1e-3, *, what: str = "") -> Accuracy:
    """Assert that O meets accurate mode's contract as the polar factor of G: same shape and dtype, finite,
    ``E <= E_BOUND[dtype]`` and ``||O||_2 <= 1 + NORM_SLACK[dtype]``. Returns the measures."""
    label = f"{what}: " if what else ""
    assert O.shape == G.shape and O.dtype == G.dtype, (
        f"{label}got {tuple(O.shape)} {O.dtype} for {tuple(G.shape)} {G.dtype}")
    acc = accuracy(G, O, rcond)
    assert acc.finite, f"{label}non-finite output from finite input"
    assert acc.E <= E_BOUND[G.dtype], f"{label}E = {acc.E:.3e} > {E_BOUND[G.dtype]:.0e} ({tuple(G.shape)} {G.dtype})"
    assert acc.norm2 <= 1 + NORM_SLACK[G.dtype], (
        f"{label}||O||_2 - 1 = {acc.norm2 - 1:.3e} > {NORM_SLACK[G.dtype]:.0e} ({tuple(G.shape)} {G.dtype})")
    return acc


def devices() -> list[str]:
    """The devices tests run on here: "cpu", and "cuda" where a GPU is present (torchvision's cpu_and_cuda())."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def triton_device() -> str:
    """Where the Triton kernels run in this process: "cuda" on a GPU, else "cpu" (only under TRITON_INTERPRET=1)."""
    from . import _env

    return "cpu" if _env.interpreting() or not torch.cuda.is_available() else "cuda"
