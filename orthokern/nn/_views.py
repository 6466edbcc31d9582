"""The (components x fan-in) matrix view of a weight, and the collection of weights from a module or an iterable.

orthokern reads every weight as the matrix its optimisers orthogonalise (``orthokern/optim/orthogonal.py``): a
linear weight (out, in) as it is, a convolution (out, in/groups, kh, kw) as (out, in/groups * kh * kw), and in
general ``w.reshape(w.shape[0], -1)``. A leading batch of matrices (experts, heads: ``batch_dims=k``) and the groups
of a grouped convolution (``groups=g``: out is split into g blocks of out/g components) are independent matrices.
"""
from __future__ import annotations

from typing import Iterable, Union

import torch
from torch import nn

from ..optim.stiefel import check_gain

Weights = Union[nn.Module, torch.Tensor, Iterable]

__all__ = ["Weights", "check_gain", "matrix_view", "named_weights"]


def matrix_view(t: torch.Tensor, *, batch_dims: int = 0, groups: int = 1, where: str, arg: str = "tensor"
                ) -> torch.Tensor:
    """``t`` as a (B, components, fan-in) stack of matrices, a view where ``t`` is contiguous.

    B is the product of the ``batch_dims`` leading sizes times ``groups``; components = ``t.shape[batch_dims] //
    groups``; fan-in = the product of the remaining sizes.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{where}: {arg} must be a torch.Tensor, got {type(t).__name__}")
    if isinstance(batch_dims, bool) or not isinstance(batch_dims, int) or batch_dims < 0:
        raise ValueError(f"{where}: batch_dims must be an int >= 0, got {batch_dims!r}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{where}: groups must be an int >= 1, got {groups!r}")
    if t.dim() - batch_dims < 2:
        raise ValueError(
            f"{where}: {arg} must have at least 2 dimensions after its {batch_dims} batch dimension(s) "
            f"(components x fan-in), got shape {tuple(t.shape)}"
        )
    batch, rows = t.shape[:batch_dims], t.shape[batch_dims]
    if rows % groups:
        raise ValueError(f"{where}: groups={groups} must divide {arg}.shape[{batch_dims}] = {rows}")
    fan_in = 1
    for s in t.shape[batch_dims + 1:]:
        fan_in *= s
    count = groups
    for s in batch:
        count *= s
    return t.reshape(count, rows // groups, fan_in)


def named_weights(weights: Weights, where: str) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) for every weight with at least 2 dimensions in ``weights``.

    ``weights`` is a module (its parameters), one tensor (which must have at least 2 dimensions), a dict
    {name: tensor}, or an iterable of tensors or of (name, tensor) pairs (``model.named_parameters()``). Tensors
    with fewer than 2 dimensions in a module or an iterable (biases, norm scales) are left out, as orthokern's
    optimisers leave them out; a tensor is never listed twice.
    """
    if isinstance(weights, nn.Module):
        items = list(weights.named_parameters())
    elif isinstance(weights, torch.Tensor):
        if weights.dim() < 2:
            raise ValueError(f"{where}: weights must have at least 2 dimensions (components x fan-in), got shape "
                             f"{tuple(weights.shape)}")
        return [("weights", weights)]
    elif isinstance(weights, dict):
        items = list(weights.items())
    else:
        try:
            entries = list(weights)
        except TypeError:
            raise TypeError(f"{where}: weights must be a module, a tensor, a dict or an iterable of tensors or "
                            f"(name, tensor) pairs, got {type(weights).__name__}") from None
        items = []
        for i, e in enumerate(entries):
            if isinstance(e, torch.Tensor):
                items.append((str(i), e))
            elif isinstance(e, tuple) and len(e) == 2 and isinstance(e[1], torch.Tensor):
                items.append((str(e[0]), e[1]))
            else:
                raise TypeError(f"{where}: weights[{i}] must be a tensor or a (name, tensor) pair, got "
                                f"{type(e).__name__}")
    out, seen = [], set()
    for name, t in items:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{where}: weights[{name!r}] must be a tensor, got {type(t).__name__}")
        if t.dim() < 2 or id(t) in seen:
            continue
        seen.add(id(t))
        out.append((name, t))
    return out
