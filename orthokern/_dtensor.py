"""``orthokern.polar`` on a DTensor, and sharding rules for orthokern's ops, so that neither raises DTensor's
"Operator ... does not have a sharding strategy registered".

A polar factor needs each matrix whole. For a DTensor G (..., m, n):

* shards of batch dimensions (any dimension but the last two) are whole matrices already: each rank computes
  its own, with no communication;
* shards of a matrix dimension (m or n) are moved to a batch dimension when G has one that is not already
  sharded and has at least as many matrices as that mesh dimension has ranks (one ``all_to_all``), so the ranks
  still share the work; otherwise the matrix dimension is gathered (``Replicate``), and every rank of that
  mesh dimension computes the same result;
* ``Partial`` placements (pending sums) are reduced first: the polar factor of a sum is not a sum of polar
  factors.

The result comes back in the input's placements (an ``all_to_all`` back, or a local slice of a replicated
result), except that ``Partial`` becomes ``Replicate``. Autograd goes through the same redistributions.

Importing this module registers the sharding rules of the compiled ops (``orthokern._C``) and of the Triton
ops that are loaded, so that calling one of them directly on a DTensor redistributes as above: batch shards
stay, everything else is replicated.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard

__all__ = ["polar", "compute_placements", "register_op_shardings"]


def compute_placements(shape: tuple[int, ...], placements, mesh) -> list:
    """Where each matrix of a DTensor of ``shape`` is whole: ``placements`` with matrix-dimension shards moved
    to a free batch dimension (when one is large enough) or replicated, and Partial replicated."""
    ndim = len(shape)
    out = list(placements)
    used = {p.dim % ndim for p in placements if type(p) is Shard}
    for i, p in enumerate(placements):
        if p.is_replicate() or (type(p) is Shard and p.dim % ndim < ndim - 2):
            continue  # whole matrices already
        free = [d for d in range(ndim - 2) if d not in used and shape[d] >= mesh.size(i)]
        if type(p) is Shard and free:
            d = max(free, key=lambda d: (shape[d], -d))  # the largest batch dimension, the first on ties
            out[i] = Shard(d)
            used.add(d)
        else:  # Partial (reduced), strided shards and matrix shards with no batch dimension to move to
            out[i] = Replicate()
    return out


def polar(G: DTensor, local_polar: Callable[..., torch.Tensor], **options) -> DTensor:
    """``local_polar(local, **options)`` (``orthokern.polar`` on plain tensors) on each matrix of the DTensor
    ``G``, the matrices made whole first (see the module doc)."""
    check_finite = options.pop("check_finite", False)
    if check_finite and not bool(torch.isfinite(G).all().full_tensor()):
        # Decided on the reduced value: every rank raises, none waits in a collective for the others.
        raise ValueError("polar: G contains NaN or Inf (check_finite=True)")
    mesh, placements = G.device_mesh, tuple(G.placements)
    work = tuple(compute_placements(tuple(G.shape), placements, mesh))
    X = G.redistribute(mesh, work) if work != placements else G
    local = local_polar(X.to_local(), **options)
    O = DTensor.from_local(local, mesh, work, run_check=False, shape=G.shape,
                           stride=torch.empty(G.shape, device="meta").stride())
    out = tuple(Replicate() if isinstance(p, Partial) else p for p in placements)
    return O.redistribute(mesh, out) if out != work else O


def _batch_rule(n_outputs: int, min_ndim: int):
    """The sharding rule of an op whose tensor arguments and outputs all index matrices by dimension 0 (B, ...):
    a shard of dimension 0 stays, anything else runs replicated. Inputs with fewer than ``min_ndim`` dimensions
    have no batch dimension and always run replicated."""

    def rule(*args):
        tensors = [a for a in args if hasattr(a, "shape")]
        rules = [([Replicate()] * n_outputs, [Replicate() if hasattr(a, "shape") else None for a in args])]
        if tensors and len(tensors[0].shape) >= min_ndim:
            rules.append(([Shard(0)] * n_outputs, [Shard(0) if hasattr(a, "shape") else None for a in args]))
        return rules

    return rule


# op name -> (outputs, dimensions of the first input when it has a batch dimension)
_OP_RULES = {
    "gram_eigh_polar": (1, 3),
    "cholqr2_polar": (1, 3),
    "gram_ns_factor": (1, 3),
    "column_norm_max": (1, 3),
    "triton_sym_gram": (1, 3),
    "triton_sym_poly": (1, 3),
    "triton_sym_mul": (1, 3),
    "triton_apply": (1, 3),
}


def register_op_shardings() -> list[str]:
    """Register the sharding rules of the orthokern ops that exist now (the compiled extension's, and the Triton
    ones where they are loaded); returns their names."""
    from torch.distributed.tensor.experimental import register_sharding

    done = []
    for name, (n_outputs, min_ndim) in _OP_RULES.items():
        packet = getattr(torch.ops.orthokern, name, None)
        if packet is not None:
            register_sharding(packet.default)(_batch_rule(n_outputs, min_ndim))
            done.append(name)
    return done


REGISTERED = register_op_shardings()
