"""Sharing the orthogonalisation work of a step between ranks (``torch.distributed``).

Two cases, chosen per tensor:

* **Replicated tensors** (plain tensors under DDP, or without a wrapper when every rank holds the same
  gradients): every rank has every matrix, so each shape bucket's matrices are split between the ranks, each
  rank transforms its share in one batched call, and ONE ``all_gather`` per bucket hands every rank the
  bucket's results (:func:`replicated`). The gathers are asynchronous: a bucket's exchange overlaps the next
  bucket's computation. A bucket of n matrices gives each rank n // world of them in its gather (equal parts,
  no padding); the n % world left over go to the least-loaded ranks and travel in one packed gather per dtype
  at the end, padded only to the busiest rank's leftovers.
* **Sharded DTensors** (FSDP2's ``fully_shard``: ``Shard(0)``, or ``Shard(1)`` through ``shard_placement_fn``;
  HSDP's ``(Replicate, Shard)``): a matrix split across ranks cannot be transformed where it lies. Each
  same-shape batch is given owners (each rank owns whole tensors); ONE ``all_to_all`` brings every shard of a
  tensor to its owner, the owner transforms whole plain tensors, and a reverse ``all_to_all`` returns each rank
  its shard of the result (:func:`sharded`). Ragged shards (a dimension not divisible by the world size) and
  empty ones (a rank that holds nothing of a small tensor) go through the same exchange: every rank takes part
  in every collective, in the same order, whatever it holds. DTensors with other layouts (``Partial``, strided
  or several sharded dimensions) are gathered whole on every rank instead, which is correct but shares no work.

The split (:func:`plan`): a bucket's n equal-cost matrices go n // world to each rank, and the remaining
n % world to the ranks with the least work so far, taking buckets in decreasing cost per matrix (m n^2 for the
polar factor of a tall m x n matrix). This balances the work to within about one matrix per bucket. Owners are
a function of shapes alone, so every rank computes the same plan without communicating, and no tensor value is
read (the step stays capturable).

Results equal the single-process ones bitwise where the transform of a matrix does not depend on which other
matrices share its batched call: true of the compiled CPU kernels, not of ``torch.linalg.eigh`` (MKL's batched
results depend on where each matrix lies in memory), so the pure-torch backend agrees to rounding
(``tests/test_optim_distributed.py``).

Assumption of the replicated case: the selected gradients are the same on every rank (DDP's all-reduce makes
them so). Ranks that train on different gradients without such a reduction must pass ``distributed=False``.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from typing import Callable, Optional, Sequence, Union

import torch
import torch.distributed as dist

from .transforms import buckets, oriented, unoriented

__all__ = ["Option", "Stats", "check_option", "process_group", "is_dtensor", "matrix_cost", "plan", "replicated",
           "sharded"]

# "auto" (or True): share when torch.distributed is initialised with more than one rank; False: every rank
# computes everything; a ProcessGroup: share replicated tensors over that group.
Option = Union[str, bool, "dist.ProcessGroup"]


def check_option(option, where: str):
    if option is True or option is False or option == "auto":
        return option
    if dist.is_available() and isinstance(option, dist.ProcessGroup):
        return option
    raise ValueError(f"{where}: distributed must be 'auto', True, False or a torch.distributed.ProcessGroup, "
                     f"got {option!r}")


def process_group(option, where: str = "distributed") -> Optional["dist.ProcessGroup"]:
    """The group to share replicated tensors' work over, or None to compute everything locally."""
    check_option(option, where)
    if option is False or not (dist.is_available() and dist.is_initialized()):
        return None
    group = option if isinstance(option, dist.ProcessGroup) else dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


def is_dtensor(t: torch.Tensor) -> bool:
    # A DTensor exists only once torch.distributed.tensor is imported; not importing it here keeps
    # `import orthokern` from paying for it.
    mod = sys.modules.get("torch.distributed.tensor")
    return mod is not None and isinstance(t, mod.DTensor)


def matrix_cost(m: int, n: int) -> float:
    """Relative cost of the polar factor of an m x n matrix: max(m, n) * min(m, n)^2 (Gram or Newton–Schulz)."""
    return float(max(m, n)) * float(min(m, n)) ** 2


@dataclasses.dataclass
class Stats:
    """What one step's exchange did on this rank. ``bytes_*`` count the payload this rank sends to / receives
    from other ranks (its own share is not counted), whatever algorithm the backend uses to move it."""

    world_size: int = 1
    matrices: int = 0  # matrices this rank transformed
    matrices_total: int = 0  # distinct matrices of the step
    cost: float = 0.0  # sum of matrix_cost over the matrices this rank transformed
    cost_total: float = 0.0  # the same over the distinct matrices
    bytes_sent: int = 0
    bytes_received: int = 0
    collectives: int = 0

    def add_local(self, count: int, cost: float) -> None:
        self.matrices += count
        self.matrices_total += count
        self.cost += count * cost
        self.cost_total += count * cost


def plan(buckets: Sequence[tuple[int, float]], world: int) -> list[list[int]]:
    """For buckets of (n items, cost per item): how many items of each bucket each rank takes (see module doc).

    Which items: :func:`replicated` gives rank r items ``r * base .. (r + 1) * base - 1`` (base = n // world)
    and the j-th rank with one more also item ``world * base + j``; :func:`sharded` gives each rank a
    contiguous run, in rank order (its exchange has no padding to avoid).
    """
    loads = [0.0] * world
    out: list[list[int]] = [[] for _ in buckets]
    for b in sorted(range(len(buckets)), key=lambda b: (-buckets[b][1], b)):
        n, cost = buckets[b]
        base, extra = divmod(n, world)
        lucky = set(sorted(range(world), key=lambda r: (loads[r], r))[:extra])
        counts = [base + (r in lucky) for r in range(world)]
        for r in range(world):
            loads[r] += counts[r] * cost
        out[b] = counts
    return out


def _all_gather(out: torch.Tensor, inp: torch.Tensor, group):
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return fn(out, inp, group=group, async_op=True)


Apply = Callable[[torch.Tensor, object], torch.Tensor]


@torch.no_grad()
def replicated(blocks: Sequence[torch.Tensor], transforms: Sequence, apply: Apply, group,
               stats: Optional[Stats] = None) -> list[torch.Tensor]:
    """``apply(stack, transform)`` on every (k, m, n) block, the work split between the ranks of ``group``.

    Every rank must pass the same blocks (shapes and values) in the same order. Each matrix of a block is one
    item; items with equal (transform, m, n, dtype, device) form a bucket. Transforms whose ``shared`` is False
    are computed by every rank. Returns the results like :func:`orthokern.optim.batched.by_shape`.
    """
    stats = stats if stats is not None else Stats()
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    stats.world_size = world
    # One item per matrix: (block index, index in block), as a (1, m, n) view.
    items = [(b, j) for b, blk in enumerate(blocks) for j in range(blk.shape[0])]
    # Polar items tall (wide ones transposed, transposed back at the end), as in batched.by_shape.
    views = [oriented(blocks[b][j:j + 1], transforms[b]) for b, j in items]
    keys = [transforms[b] for b, _ in items]
    results: list[Optional[torch.Tensor]] = [None] * len(items)
    grouped = list(buckets(views, keys).items())
    shared = [(key, idx) for key, idx in grouped if key[0].shared]
    for key, idx in grouped:
        if not key[0].shared:
            X = torch.cat([views[i] for i in idx])
            for i, o in zip(idx, apply(X, key[0]).unbind(0)):
                results[i] = o
            stats.add_local(len(idx), float(key[1] * key[2]))
    counts_all = plan([(len(idx), matrix_cost(key[1], key[2])) for key, idx in shared], world)
    pending = []
    # Remainders, per (dtype, device): [(rank, item index, m, n)] in bucket order, and this rank's results.
    leftover: dict[tuple, list[tuple[int, int, int, int]]] = {}
    leftover_mine: dict[tuple, list[torch.Tensor]] = {}
    for (key, idx), counts in zip(shared, counts_all):
        t, m, n, dtype, device = key
        base = len(idx) // world
        lucky = [r for r in range(world) if counts[r] > base]
        mine = idx[rank * base:(rank + 1) * base]
        if rank in lucky:
            mine = mine + [idx[world * base + lucky.index(rank)]]
        O = apply(torch.cat([views[i] for i in mine]), t) if mine else None
        cost = matrix_cost(m, n)
        stats.matrices += len(mine)
        stats.matrices_total += len(idx)
        stats.cost += len(mine) * cost
        stats.cost_total += len(idx) * cost
        if base:
            # The even part: base matrices from every rank, no padding; gathered while later buckets compute.
            recv = torch.empty((world * base, m, n), dtype=dtype, device=device)
            pending.append((_all_gather(recv, O[:base].contiguous(), group), recv, idx[:world * base]))
            nbytes = base * m * n * recv.element_size()
            stats.bytes_sent += (world - 1) * nbytes
            stats.bytes_received += (world - 1) * nbytes
            stats.collectives += 1
        for j, r in enumerate(lucky):
            leftover.setdefault((dtype, device), []).append((r, idx[world * base + j], m, n))
        if rank in lucky:
            leftover_mine.setdefault((dtype, device), []).append(O[base].reshape(-1))
    # The remainders (at most one matrix per bucket per rank) go in one packed gather per dtype, padded to the
    # busiest rank's length: padding each bucket's gather instead would send up to world - 1 unused matrices
    # per bucket (ResNet-18 at 4 ranks: 61.5 MiB received per rank instead of 35.9).
    for (dtype, device), entries in leftover.items():
        sizes = [sum(m * n for r2, _, m, n in entries if r2 == r) for r in range(world)]
        longest = max(sizes)
        send = torch.zeros(longest, dtype=dtype, device=device)
        mine_flat = leftover_mine.get((dtype, device), [])
        if mine_flat:
            send[:sizes[rank]] = torch.cat(mine_flat)
        recv = torch.empty(world * longest, dtype=dtype, device=device)
        work = _all_gather(recv, send, group)
        pending.append((work, recv, [(r, i, m, n) for r, i, m, n in entries], longest))
        stats.bytes_sent += (world - 1) * longest * recv.element_size()
        stats.bytes_received += (world - 1) * longest * recv.element_size()
        stats.collectives += 1
    for entry in pending:
        entry[0].wait()
        if len(entry) == 3:
            _, recv, idx = entry
            for i, o in zip(idx, recv.unbind(0)):
                results[i] = o
        else:
            _, recv, entries, longest = entry
            offset = [r * longest for r in range(world)]
            for r, i, m, n in entries:
                results[i] = recv[offset[r]:offset[r] + m * n].view(m, n)
                offset[r] += m * n
    results = [unoriented(r, blocks[b]) for r, (b, _) in zip(results, items)]
    out = []
    pos = 0
    for blk in blocks:
        k = blk.shape[0]
        if k == 1:
            out.append(results[pos].unsqueeze(0))
        else:
            out.append(torch.stack(results[pos:pos + k]) if k else torch.empty_like(blk))
        pos += k
    return out


# Sharded DTensors ------------------------------------------------------------------------------------------------

def _chunk_sizes(size: int, world: int) -> list[int]:
    """Sizes of the ``world`` shards of a dimension of ``size`` under DTensor's Shard (torch.chunk's rule:
    ceil(size / world) each, the last ones shorter or empty)."""
    c = -(-size // world)
    return [max(0, min(size, (r + 1) * c) - r * c) for r in range(world)]


@dataclasses.dataclass
class _Sharded:
    """A DTensor with exactly one sharded mesh dimension (of size > 1): where its shards are."""

    index: int
    local: torch.Tensor
    group: object
    world: int
    rank: int
    dim: int  # the sharded tensor dimension
    shape: tuple
    sizes: list[int]  # the shard of each rank along ``dim``

    def shard_shape(self, r: int) -> tuple:
        return self.shape[:self.dim] + (self.sizes[r],) + self.shape[self.dim + 1:]

    def shard_numel(self, r: int) -> int:
        return math.prod(self.shard_shape(r))


def _classify(i: int, t) -> Union[str, _Sharded]:
    """"local" (the local tensor is whole), "gather" (layouts other than one Shard), or a :class:`_Sharded`."""
    from torch.distributed.tensor import Shard

    mesh = t.device_mesh
    split = [(d, p) for d, p in enumerate(t.placements) if mesh.size(d) > 1 and not p.is_replicate()]
    if not split:
        return "local"
    if len(split) > 1 or type(split[0][1]) is not Shard:
        return "gather"
    mesh_dim, placement = split[0]
    dim = placement.dim % t.dim()
    world, rank = mesh.size(mesh_dim), mesh.get_local_rank(mesh_dim)
    sh = _Sharded(i, t.to_local(), mesh.get_group(mesh_dim), world, rank, dim, tuple(t.shape),
                  _chunk_sizes(t.shape[dim], world))
    if tuple(sh.local.shape) != sh.shard_shape(rank):
        # Another sharding rule than DTensor's own (a custom FSDP2 shard_placement_fn would use
        # _StridedShard, which lands in "gather"): do not guess where the shards are.
        return "gather"
    return sh


def _from_local(local: torch.Tensor, like):
    from torch.distributed.tensor import DTensor, Replicate

    placements = [Replicate() if p.is_partial() else p for p in like.placements]
    return DTensor.from_local(local, like.device_mesh, placements, run_check=False, shape=like.shape,
                              stride=like.stride())


def _gathered(t, update_one) -> "torch.Tensor":
    """Every rank gathers the whole tensor, transforms it, and keeps its own shard of the result."""
    from torch.distributed.tensor import Replicate, distribute_tensor

    whole = t.full_tensor()
    out = update_one(whole)
    placements = [Replicate() if p.is_partial() else p for p in t.placements]
    # src_data_rank=None: every rank holds the same full result, so each takes its shard without communicating.
    return distribute_tensor(out, t.device_mesh, placements, src_data_rank=None)


Update = Callable[[list[int], list[torch.Tensor]], list[torch.Tensor]]


@torch.no_grad()
def sharded(tensors: Sequence[torch.Tensor], costs: Sequence[float], update: Update, *, share: bool = True,
            stats: Optional[Stats] = None, matrices: Optional[Sequence[int]] = None) -> list[torch.Tensor]:
    """``update`` on the whole value of each DTensor of ``tensors``; returns DTensors like the inputs (``Partial``
    placements become ``Replicate``) holding this rank's part of each result.

    ``update(indices, wholes)`` receives plain whole tensors (``wholes[k]`` is the value of
    ``tensors[indices[k]]``) and returns the results, same shapes and dtypes. ``costs[i]`` is the relative cost
    of tensor i (for balancing), ``matrices[i]`` how many matrices it holds (for ``stats``; default 1). Every
    rank of the tensors' meshes must call this with the same tensors (shapes, placements, order).
    ``share=False``: every rank gathers every tensor and computes everything (the baseline).
    """
    stats = stats if stats is not None else Stats()
    count = list(matrices) if matrices is not None else [1] * len(tensors)
    out: list[Optional[torch.Tensor]] = [None] * len(tensors)
    kinds = [_classify(i, t) if share else "gather" for i, t in enumerate(tensors)]
    for i, (t, kind) in enumerate(zip(tensors, kinds)):
        if kind == "local":
            out[i] = _from_local(update([i], [t.to_local()])[0], t)
            stats.add_local(count[i], costs[i] / max(count[i], 1))
        elif kind == "gather":
            out[i] = _gathered(t, lambda w, i=i: update([i], [w])[0])
            world = t.device_mesh.size()
            stats.world_size = max(stats.world_size, world)
            stats.add_local(count[i], costs[i] / max(count[i], 1))
            stats.bytes_received += t.numel() * t.element_size() * (world - 1) // world
            stats.bytes_sent += t.numel() * t.element_size() * (world - 1) // world
            stats.collectives += 1
    # Same-shape batches: (group, dim, shape, dtype, device) in order of first appearance.
    batches: dict[tuple, list[_Sharded]] = {}
    for t, kind in zip(tensors, kinds):
        if isinstance(kind, _Sharded):
            key = (kind.group, kind.dim, kind.shape, t.dtype, t.device)
            batches.setdefault(key, []).append(kind)
    counts_by_group: dict[object, list] = {}
    for key, members in batches.items():
        counts_by_group.setdefault(key[0], []).append((key, members))
    owners: dict[tuple, list[int]] = {}
    for entries in counts_by_group.values():
        world = entries[0][1][0].world
        counts_all = plan([(len(members), costs[members[0].index]) for _, members in entries], world)
        for (key, _), counts in zip(entries, counts_all):
            owners[key] = [r for r in range(world) for _ in range(counts[r])]

    # 1. Every forward exchange is issued first, so that later batches travel while earlier ones compute.
    forward = []
    for key, members in batches.items():
        group, dim, shape, dtype, device = key
        own = owners[key]
        first = members[0]
        world, rank = first.world, first.rank
        in_splits = [0] * world
        for sh, o in zip(members, own):
            in_splits[o] += sh.shard_numel(rank)
        mine = [sh for sh, o in zip(members, own) if o == rank]
        out_splits = [sum(sh.shard_numel(r) for sh in mine) for r in range(world)]
        send = torch.cat([sh.local.reshape(-1) for sh in members])
        recv = torch.empty(sum(out_splits), dtype=dtype, device=device)
        work = dist.all_to_all_single(recv, send, out_splits, in_splits, group=group, async_op=True)
        forward.append((work, key, members, own, mine, recv, out_splits))
        isz = torch.empty((), dtype=dtype).element_size()
        stats.world_size = max(stats.world_size, world)
        stats.bytes_sent += (sum(in_splits) - in_splits[rank]) * isz
        stats.bytes_received += (sum(out_splits) - out_splits[rank]) * isz
        stats.collectives += 1
        stats.matrices += sum(count[sh.index] for sh in mine)
        stats.matrices_total += sum(count[sh.index] for sh in members)
        stats.cost += len(mine) * costs[first.index]
        stats.cost_total += len(members) * costs[first.index]

    # 2. Per batch: wait for its shards, rebuild the owned tensors, transform them, send the results back.
    backward = []
    for work, key, members, own, mine, recv, out_splits in forward:
        group, dim, shape, dtype, device = key
        world, rank = members[0].world, members[0].rank
        work.wait()
        pieces: list[list[torch.Tensor]] = [[] for _ in mine]
        for r, chunk in enumerate(recv.split(out_splits)):
            for k, (sh, part) in enumerate(zip(mine, chunk.split([sh.shard_numel(r) for sh in mine]))):
                pieces[k].append(part.view(sh.shard_shape(r)))
        results = update([sh.index for sh in mine], [torch.cat(p, dim=dim) for p in pieces]) if mine else []
        send_parts = []
        in_splits = [0] * world
        for r in range(world):
            for sh, res in zip(mine, results):
                off = sum(sh.sizes[:r])
                send_parts.append(res.narrow(dim, off, sh.sizes[r]).reshape(-1))
                in_splits[r] += sh.shard_numel(r)
        back_splits = [0] * world
        for sh, o in zip(members, own):
            back_splits[o] += sh.shard_numel(rank)
        send = torch.cat(send_parts) if send_parts else torch.empty(0, dtype=dtype, device=device)
        back = torch.empty(sum(back_splits), dtype=dtype, device=device)
        work2 = dist.all_to_all_single(back, send, back_splits, in_splits, group=group, async_op=True)
        backward.append((work2, members, back))
        isz = back.element_size()
        stats.bytes_sent += (sum(in_splits) - in_splits[rank]) * isz
        stats.bytes_received += (sum(back_splits) - back_splits[rank]) * isz
        stats.collectives += 1

    # 3. Each rank's shards of the results, in the batch's order (owners are contiguous and in rank order).
    for work2, members, back in backward:
        work2.wait()
        rank = members[0].rank
        for sh, part in zip(members, back.split([sh.shard_numel(rank) for sh in members])):
            out[sh.index] = _from_local(part.view(sh.shard_shape(rank)), tensors[sh.index])
    return out  # type: ignore[return-value]
