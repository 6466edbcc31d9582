"""What an orthokern optimiser puts in place of each gradient matrix, and which matrices share one batched call.

``transform=`` (optimiser argument, also a per-group key):

* ``"polar"`` (default): the polar factor U V^T (``orthokern.polar``): Orthogonal-SGDM;
* ``"norm"``: G / ||G||_F, the whole matrix normalised: the paper's N-SGDM baseline;
* ``"comp_norm"``: each component (row of the components x fan-in matrix) divided by its own norm: the paper's
  CN-SGDM baseline.

A zero matrix (or zero row, for ``comp_norm``) stays zero; a matrix with a NaN or Inf gives NaN, as ``polar``
does. The norms are taken in float32 (float64 for float64 input) on a copy scaled by a power of two, which is
exact and keeps the sum of squares from overflowing or underflowing whatever the gradient's magnitude.
"""
from __future__ import annotations

import dataclasses
from typing import Hashable, Optional, Sequence

import torch

from .._polar import check_options

__all__ = ["TRANSFORMS", "Transform", "normalise_frobenius", "normalise_rows", "buckets", "check_transform"]

TRANSFORMS = ("polar", "norm", "comp_norm")


def check_transform(value, where: str) -> str:
    if value not in TRANSFORMS:
        raise ValueError(f"{where}: transform must be one of {TRANSFORMS}, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class Transform:
    """One transform with its options, hashable: matrices with equal Transform, shape, dtype and device go
    through one call. The polar options are kept only for ``"polar"`` (the normalisations have none), and
    ``rcond=None`` is resolved to the default, so that equal computations compare equal."""

    kind: str
    method: Optional[str] = None
    mode: Optional[str] = None
    rcond: Optional[float] = None
    backend: Optional[str] = None

    @classmethod
    def make(cls, kind: str, method: str = "auto", mode: str = "accurate", rcond: Optional[float] = None,
             backend: Optional[str] = None, *, where: str = "transform") -> "Transform":
        check_transform(kind, where)
        rcond = check_options(method, mode, rcond, backend, where=where)
        if kind != "polar":
            return cls(kind)
        return cls(kind, method, mode, rcond, backend)

    @property
    def shared(self) -> bool:
        """Worth splitting across ranks: the polar factor costs ~m n^2 per matrix; a normalisation costs about
        what sending its result would, so every rank computes those itself."""
        return self.kind == "polar"


def _scaled(X: torch.Tensor, dim) -> tuple[torch.Tensor, torch.Tensor]:
    """(Y, finite): X in its compute dtype with NaN/Inf-holding matrices zeroed, scaled by a power of two so that
    max |Y| over ``dim`` lies in [0.5, 1) (zero stays zero)."""
    dtype = torch.float64 if X.dtype == torch.float64 else torch.float32
    Y = X.to(dtype)
    finite = torch.isfinite(Y).all(dim=(-2, -1), keepdim=True)
    Y = torch.where(finite, Y, torch.zeros((), dtype=dtype, device=Y.device))
    _, exp = torch.frexp(Y.abs().amax(dim=dim, keepdim=True))
    return torch.ldexp(Y, -exp.to(dtype)), finite


def _normalise(X: torch.Tensor, dim) -> torch.Tensor:
    Y, finite = _scaled(X, dim)
    norm = torch.linalg.vector_norm(Y, dim=dim, keepdim=True)
    # A zero matrix (row) has norm 0 and entries 0: 0 / tiny = 0.
    out = Y / norm.clamp_min(torch.finfo(Y.dtype).tiny)
    out = torch.where(finite, out, torch.full((), float("nan"), dtype=Y.dtype, device=Y.device))
    return out.to(X.dtype)


def normalise_frobenius(X: torch.Tensor) -> torch.Tensor:
    """X / ||X||_F for each matrix of X (..., m, n) (N-SGDM)."""
    return _normalise(X, (-2, -1))


def normalise_rows(X: torch.Tensor) -> torch.Tensor:
    """Each row of each matrix of X (..., m, n) divided by its norm (CN-SGDM)."""
    return _normalise(X, -1)


def oriented(block: torch.Tensor, transform) -> torch.Tensor:
    """``block`` (k, m, n) as ``transform`` computes it. The polar factor of a wide matrix is the transpose of its
    transpose's, which is how ``orthokern.polar`` computes it, so a polar block is taken tall: a wide one as its
    (k, n, m) transposed view. Layers whose gradients are transposes of each other in shape (a 1x1 convolution
    from 512 to 2048 channels and one from 2048 to 512) then share one bucket: fewer, larger batched calls. The
    normalisations depend on the orientation and keep it."""
    if getattr(transform, "kind", None) == "polar" and block.shape[-2] < block.shape[-1]:
        return block.mT
    return block


def unoriented(result: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """A result computed on ``oriented(block, ...)`` in ``block``'s orientation, contiguous as ``orthokern.polar``
    returns a wide result (torch's fused optimisers read gradients as dense memory in the parameter's layout)."""
    if result.shape[-2:] == block.shape[-2:]:
        return result
    return result.mT.clone(memory_format=torch.contiguous_format)


def buckets(blocks: Sequence[torch.Tensor], transforms: Sequence[Hashable]) -> dict[tuple, list[int]]:
    """Indices of the (k, m, n) ``blocks`` grouped by (transform, m, n, dtype, device), in order of first
    appearance: each group is one batched call. Reads shapes only."""
    out: dict[tuple, list[int]] = {}
    for i, (b, t) in enumerate(zip(blocks, transforms)):
        out.setdefault((t, b.shape[-2], b.shape[-1], b.dtype, b.device), []).append(i)
    return out
