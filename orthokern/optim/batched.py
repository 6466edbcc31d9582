"""One batched call per matrix shape: how every orthokern optimiser transforms many matrices.

Each ``orthokern.polar`` call costs tens of microseconds of dispatch, so a step over a network's many same-shape
layers is cheap only when they are stacked into one call. :func:`by_shape` does that for blocks of matrices and
any :class:`~orthokern.optim.transforms.Transform`; :func:`polar_by_shape` is the polar-only entry point for 2-D
matrices that other optimisers use. Under ``torch.distributed`` the calls are shared between ranks
(:mod:`orthokern.optim.distributed`). Nothing here reads a tensor value.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .._polar import polar
from . import distributed as sharing
from .transforms import Transform, buckets, normalise_frobenius, normalise_rows, oriented, unoriented


def apply(X: torch.Tensor, t: Transform) -> torch.Tensor:
    """``t`` on every matrix of the stack X (B, m, n)."""
    if t.kind == "polar":
        return polar(X, method=t.method, mode=t.mode, rcond=t.rcond, backend=t.backend)
    if t.kind == "norm":
        return normalise_frobenius(X)
    return normalise_rows(X)


@torch.no_grad()
def by_shape(blocks: Sequence[torch.Tensor], transforms: Sequence[Transform]) -> list[torch.Tensor]:
    """``transforms[i]`` applied to each (k, m, n) block, with one call per (transform, m, n, dtype, device)."""
    out: list[Optional[torch.Tensor]] = [None] * len(blocks)
    # Polar blocks tall (wide ones transposed), so that transposed shapes share a call (transforms.oriented).
    views = [oriented(b, t) for b, t in zip(blocks, transforms)]
    for key, idx in buckets(views, transforms).items():
        # The transposed blocks first, so that their results go back to their orientation in one copy.
        flipped = [i for i in idx if views[i] is not blocks[i]]
        idx = flipped + [i for i in idx if views[i] is blocks[i]]
        # A lone block needs no copy: the transforms read their input and never write it.
        X = views[idx[0]] if len(idx) == 1 else torch.cat([views[i] for i in idx])
        O = apply(X, key[0])
        sizes = [views[i].shape[0] for i in idx]
        parts = list(O.split(sizes))
        if flipped:
            # split, not indexing: the dry-run plan runs this on fake CUDA tensors (see reference.scaling.per_matrix)
            k = sum(sizes[:len(flipped)])
            head = O.split([k, O.shape[0] - k])[0]
            parts[:len(flipped)] = unoriented(head, blocks[flipped[0]]).split(sizes[:len(flipped)])
        for i, o in zip(idx, parts):
            out[i] = o
    return out  # type: ignore[return-value]


@torch.no_grad()
def polar_by_shape(mats: Sequence[torch.Tensor], *, method: str = "auto", mode: str = "accurate",
                   rcond: Optional[float] = None, backend: Optional[str] = None,
                   distributed: sharing.Option = "auto") -> list[torch.Tensor]:
    """The polar factors of 2-D matrices ``mats``, in order: one ``orthokern.polar`` call per (rows, cols, dtype,
    device) bucket, on the stacked matrices.

    ``distributed``: ``"auto"`` (default) shares the work when ``torch.distributed`` is initialised with more
    than one rank: each rank computes its share of each bucket and the results are gathered
    (:func:`orthokern.optim.distributed.replicated`). That assumes every rank passes the same matrices, as
    DDP-reduced gradients and replicated parameters are; pass ``False`` for rank-local matrices, or a
    ``ProcessGroup`` to share over that group. DTensor matrices (FSDP2) are computed whole on one owner rank and
    returned as DTensors with their input's placements (with ``False``: whole on every rank).
    """
    t = Transform.make("polar", method, mode, rcond, backend, where="polar_by_shape")
    group = sharing.process_group(distributed, where="polar_by_shape")
    mats = list(mats)
    for i, G in enumerate(mats):
        if G.dim() != 2:
            raise ValueError(f"polar_by_shape: mats[{i}] must be a 2-D matrix, got shape {tuple(G.shape)}")
    out: list[Optional[torch.Tensor]] = [None] * len(mats)
    is_dt = [sharing.is_dtensor(G) for G in mats]
    plain = [i for i in range(len(mats)) if not is_dt[i]]
    blocks = [mats[i].unsqueeze(0) for i in plain]
    ts = [t] * len(blocks)
    results = sharing.replicated(blocks, ts, apply, group) if group is not None else by_shape(blocks, ts)
    for i, o in zip(plain, results):
        out[i] = o[0]
    dt = [i for i in range(len(mats)) if is_dt[i]]
    if dt:
        def update(indices: list[int], wholes: list[torch.Tensor]) -> list[torch.Tensor]:
            return [o[0] for o in by_shape([w.unsqueeze(0) for w in wholes], [t] * len(wholes))]

        costs = [sharing.matrix_cost(*mats[i].shape) for i in dt]
        results = sharing.sharded([mats[i] for i in dt], costs, update, share=distributed is not False)
        for i, o in zip(dt, results):
            out[i] = o
    return out  # type: ignore[return-value]
