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

from .. import dispatch
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
    """``transforms[i]`` applied to each (k, m, n) block, with one call per (transform, m, n, dtype, device), or
    fewer where the dispatch merges shape buckets into one call on zero-padded matrices
    (``orthokern.dispatch.merge_buckets``: on a GPU, where small batches would leave it idle)."""
    out: list[Optional[torch.Tensor]] = [None] * len(blocks)
    # Polar blocks tall (wide ones transposed), so that transposed shapes share a call (transforms.oriented).
    views = [oriented(b, t) for b, t in zip(blocks, transforms)]
    for group in _calls(buckets(views, transforms), views):
        t = group[0][0][0]  # one transform per call
        M, N = max(key[1] for key, _ in group), max(key[2] for key, _ in group)
        members, stacks = [], []  # what is stacked into the call's input: views of the blocks, and padded copies
        for key, idx in group:
            # The transposed blocks first, so that their results go back to their orientation in one copy.
            flipped = [i for i in idx if views[i] is not blocks[i]]
            idx = flipped + [i for i in idx if views[i] is blocks[i]]
            members.append((key, idx, flipped, sum(views[i].shape[0] for i in idx)))
            if (key[1], key[2]) == (M, N):
                stacks += [views[i] for i in idx]
            else:  # zero rows and columns up to the group's shape
                X = views[idx[0]] if len(idx) == 1 else torch.cat([views[i] for i in idx])
                stacks.append(torch.nn.functional.pad(X, (0, N - key[2], 0, M - key[1])))
        # A lone block needs no copy: the transforms read their input and never write it.
        O = apply(stacks[0] if len(stacks) == 1 else torch.cat(stacks), t)
        b0 = 0
        for key, idx, flipped, count in members:
            Ok = O if len(members) == 1 else O.narrow(0, b0, count)
            b0 += count
            padded = (key[1], key[2]) != (M, N)
            if padded:  # narrow, not indexing: the dry-run plan runs this on fake CUDA tensors
                Ok = Ok.narrow(1, 0, key[1]).narrow(2, 0, key[2])
            _scatter(Ok, idx, flipped, views, blocks, out, dense=padded)
    return out  # type: ignore[return-value]


def _calls(groups: dict[tuple, list[int]], views) -> list[list[tuple[tuple, list[int]]]]:
    """The (key, indices) buckets of ``transforms.buckets`` grouped into calls: one each, except where the dispatch
    merges polar buckets of one transform, dtype and device (``dispatch.merge_buckets``)."""
    items = list(groups.items())
    calls: list[list[tuple[tuple, list[int]]]] = []
    by_call: dict[tuple, list[int]] = {}
    for j, (key, _) in enumerate(items):
        t, _, _, dtype, device = key
        if t.kind == "polar":
            by_call.setdefault((t, dtype, device), []).append(j)
        else:
            calls.append([items[j]])
    for (t, dtype, device), js in by_call.items():
        shapes = [(sum(views[i].shape[0] for i in items[j][1]), items[j][0][1], items[j][0][2]) for j in js]
        for g in dispatch.merge_buckets(shapes, method=t.method, mode=t.mode, rcond=t.rcond, backend=t.backend,
                                        dtype=dtype, device_type=device.type):
            calls.append([items[js[i]] for i in g])
    return calls


def _scatter(O: torch.Tensor, idx: list[int], flipped: list[int], views, blocks, out: list, dense: bool = False
             ) -> None:
    """The results of one bucket's blocks (indices ``idx``, the ``flipped`` ones first) from its results O, in their
    blocks' orientation. ``dense``: O is a strided view (the corner of a padded result), whose unflipped results are
    copied dense, as an unpadded call returns them (torch's fused optimisers take their fast path on dense tensors)."""
    sizes = [views[i].shape[0] for i in idx]
    # split, not indexing: the dry-run plan runs this on fake CUDA tensors (see reference.scaling.per_matrix)
    k = sum(sizes[:len(flipped)])
    head, tail = O.split([k, O.shape[0] - k])
    if dense and tail.shape[0]:
        tail = tail.clone(memory_format=torch.contiguous_format)
    parts = list(tail.split(sizes[len(flipped):]))
    if flipped:
        parts = list(unoriented(head, blocks[flipped[0]]).split(sizes[:len(flipped)])) + parts
    for i, o in zip(idx, parts):
        out[i] = o


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
