"""How a parameter's gradient is viewed as matrices, and the optional per-shape learning-rate scale.

The Orthogonal-SGDM paper views every weight as components x fan-in: ``g.reshape(shape[0], -1)``, so a conv
weight (out, in, kh, kw) is one (out, in*kh*kw) matrix. Two other views are common in transformer code:

* ``batch_dims=k``: the first k dimensions index separate matrices. A stacked experts weight (E, out, in) with
  ``batch_dims=1`` is E matrices (out, in), each orthogonalised on its own; (E, H, d, n) with ``batch_dims=2``
  is E*H matrices (d, n). The trailing dimensions are viewed as components x fan-in, as in the default.
* ``split=(sizes, dim)``: the tensor is cut along ``dim`` into pieces of ``sizes`` first, and each piece is
  viewed as above. A fused QKV weight (3d, d) with ``split=((d, d, d), 0)`` is three (d, d) matrices, a fused
  gate-up weight (2h, d) with ``split=((h, h), 0)`` two (h, d) ones.

A view is chosen per parameter: an attribute set with :func:`set_view` (``param.orthokern_view``) wins, then the
optimiser's ``view=`` argument (a :class:`MatrixView` for every parameter, or ``callable(param) -> MatrixView |
None``), then the default. Every matrix is handled as a block (k, m, n) of k same-shape matrices, which is what
``orthokern.polar`` batches over.

The learning-rate scale (``lr_scale=``) multiplies each orthogonalised matrix by a factor of its shape (m rows =
components, n columns = fan-in), before the base optimiser's step:

* ``"spectral"`` (default): 1, the paper's rule (the update has unit spectral norm);
* ``"muon"``: ``sqrt(max(1, m / n))``, as KellerJordan/Muon scales its update;
* ``"match_adamw_rms"``: ``0.2 * sqrt(max(m, n))``, Moonlight's (Liu et al. 2025) rule, which gives the update
  about the RMS of an AdamW update so that AdamW's learning rate and weight decay carry over.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Sequence, Union

import torch

__all__ = ["MatrixView", "set_view", "view_of", "LR_SCALES", "lr_scale_factor", "VIEW_ATTR"]

# The attribute set_view() puts on a parameter.
VIEW_ATTR = "orthokern_view"

LR_SCALES = ("spectral", "muon", "match_adamw_rms")


@dataclasses.dataclass(frozen=True)
class MatrixView:
    """How a tensor is cut into matrices: ``batch_dims`` leading batch dimensions, an optional ``split=(sizes,
    dim)`` first; the remaining dimensions are components (the first) x fan-in (the rest, flattened)."""

    batch_dims: int = 0
    split: Optional[tuple[tuple[int, ...], int]] = None

    def __post_init__(self):
        if isinstance(self.batch_dims, bool) or not isinstance(self.batch_dims, int) or self.batch_dims < 0:
            raise ValueError(f"MatrixView: batch_dims must be an int >= 0, got {self.batch_dims!r}")
        if self.split is not None:
            try:
                sizes, dim = self.split
                sizes = tuple(sizes)
            except (TypeError, ValueError):
                raise ValueError(
                    f"MatrixView: split must be (sizes, dim), e.g. ((d, d, d), 0), got {self.split!r}"
                ) from None
            if not sizes or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
                raise ValueError(f"MatrixView: split sizes must be positive ints, got {sizes!r}")
            if isinstance(dim, bool) or not isinstance(dim, int):
                raise ValueError(f"MatrixView: split dim must be an int, got {dim!r}")
            object.__setattr__(self, "split", (sizes, dim))

    def _split_dim(self, ndim: int) -> int:
        dim = self.split[1]
        return dim + ndim if dim < 0 else dim

    def check(self, shape: Sequence[int], where: str = "MatrixView") -> None:
        """Raise ``ValueError`` if a tensor of ``shape`` cannot be viewed this way."""
        ndim = len(shape)
        if ndim - self.batch_dims < 2:
            raise ValueError(f"{where}: a tensor of shape {tuple(shape)} has no matrix after batch_dims="
                             f"{self.batch_dims} (it needs at least batch_dims + 2 dimensions)")
        if self.split is not None:
            sizes, _ = self.split
            dim = self._split_dim(ndim)
            if not (self.batch_dims <= dim < ndim):
                raise ValueError(f"{where}: split dim {self.split[1]} of a tensor of shape {tuple(shape)} must be "
                                 f"one of its matrix dimensions (>= batch_dims={self.batch_dims})")
            if sum(sizes) != shape[dim]:
                raise ValueError(f"{where}: split sizes {sizes} add up to {sum(sizes)}, but dimension {dim} of "
                                 f"shape {tuple(shape)} is {shape[dim]}")

    def _pieces_shapes(self, shape: Sequence[int]) -> list[tuple[int, ...]]:
        if self.split is None:
            return [tuple(shape)]
        sizes, _ = self.split
        dim = self._split_dim(len(shape))
        return [tuple(shape[:dim]) + (s,) + tuple(shape[dim + 1:]) for s in sizes]

    def _block_shape(self, piece: Sequence[int]) -> tuple[int, int, int]:
        k = math.prod(piece[:self.batch_dims])
        m = piece[self.batch_dims]
        return k, m, math.prod(piece[self.batch_dims + 1:])

    def block_shapes(self, shape: Sequence[int]) -> list[tuple[int, int, int]]:
        """The (k, m, n) of each block a tensor of ``shape`` becomes (from the shape alone)."""
        return [self._block_shape(p) for p in self._pieces_shapes(shape)]

    def blocks(self, t: torch.Tensor) -> list[torch.Tensor]:
        """``t`` as a list of (k, m, n) blocks (views where the layout allows)."""
        self.check(t.shape)
        pieces = [t] if self.split is None else list(t.split(list(self.split[0]), dim=self._split_dim(t.dim())))
        return [p.reshape(self._block_shape(p.shape)) for p in pieces]

    def assemble(self, blocks: Sequence[torch.Tensor], shape: Sequence[int]) -> torch.Tensor:
        """The inverse of :meth:`blocks`: a tensor of ``shape`` from its blocks."""
        pieces = [b.reshape(s) for b, s in zip(blocks, self._pieces_shapes(shape))]
        if self.split is None:
            return pieces[0]
        return torch.cat(pieces, dim=self._split_dim(len(shape)))


DEFAULT_VIEW = MatrixView()

ViewRule = Union[None, MatrixView, Callable[[torch.Tensor], Optional[MatrixView]]]


def as_view(value, where: str) -> MatrixView:
    """A MatrixView from a MatrixView or a dict of its fields (``{"batch_dims": 1}``)."""
    if isinstance(value, MatrixView):
        return value
    if isinstance(value, dict):
        try:
            return MatrixView(**value)
        except TypeError as e:
            raise ValueError(f"{where}: a view dict takes the keys batch_dims and split, got {sorted(value)}") from e
    raise TypeError(f"{where}: expected a MatrixView (or a dict of batch_dims / split), got {type(value).__name__}")


def check_view_rule(rule: ViewRule, where: str) -> ViewRule:
    """Validate the optimiser's ``view=`` argument (a MatrixView, a dict, a callable or None)."""
    if rule is None or callable(rule) and not isinstance(rule, (MatrixView, dict)):
        return rule
    return as_view(rule, f"{where}: view")


def set_view(param: torch.Tensor, view: Optional[MatrixView] = None, *, batch_dims: int = 0,
             split: Optional[tuple[Sequence[int], int]] = None) -> torch.Tensor:
    """Attach a view to ``param`` (``set_view(p, batch_dims=1)``, ``set_view(p, split=((d, d, d), 0))`` or
    ``set_view(p, MatrixView(...))``); returns ``param``. The view is checked against the shape now.

    It is stored as the attribute ``param.orthokern_view`` and wins over the optimiser's ``view=``. Wrappers that
    replace parameters by new objects (FSDP2's ``fully_shard``) do not carry attributes over: set views after
    wrapping, or use the optimiser's ``view=`` callable.
    """
    if view is not None and (batch_dims or split is not None):
        raise ValueError("set_view: pass either a MatrixView or batch_dims=/split=, not both")
    view = as_view(view, "set_view") if view is not None else MatrixView(batch_dims, split)
    view.check(param.shape, "set_view")
    setattr(param, VIEW_ATTR, view)
    return param


def view_of(param: torch.Tensor, rule: ViewRule) -> MatrixView:
    """The view of ``param``: its own attribute, else the optimiser's rule, else the default."""
    own = getattr(param, VIEW_ATTR, None)
    if own is not None:
        return as_view(own, f"parameter attribute {VIEW_ATTR}")
    if rule is None:
        return DEFAULT_VIEW
    if isinstance(rule, MatrixView):
        return rule
    got = rule(param)
    return DEFAULT_VIEW if got is None else as_view(got, "view callable")


def check_lr_scale(value, where: str) -> str:
    if value not in LR_SCALES:
        raise ValueError(f"{where}: lr_scale must be one of {LR_SCALES}, got {value!r}")
    return value


def lr_scale_factor(kind: str, m: int, n: int) -> float:
    """The factor ``lr_scale=kind`` applies to an orthogonalised m x n matrix (m components, n fan-in)."""
    if kind == "spectral":
        return 1.0
    if kind == "muon":
        return math.sqrt(max(1.0, m / n)) if n else 1.0
    if kind == "match_adamw_rms":
        return 0.2 * math.sqrt(max(m, n))
    raise ValueError(f"lr_scale must be one of {LR_SCALES}, got {kind!r}")
