"""One batched ``polar`` call per matrix shape: how every orthokern optimiser orthogonalises many matrices."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .._polar import polar


@torch.no_grad()
def polar_by_shape(mats: Sequence[torch.Tensor], *, method: str = "auto", mode: str = "accurate",
                   rcond: Optional[float] = None, backend: Optional[str] = None) -> list[torch.Tensor]:
    """The polar factors of 2-D matrices ``mats``, in order: one ``orthokern.polar`` call per (rows, cols, dtype,
    device) bucket, on the stacked matrices. Each call costs tens of microseconds of dispatch, so grouping is what
    makes a step over a network's many same-shape layers cheap. Reads no tensor values."""
    buckets: dict[tuple, list[int]] = {}
    for i, G in enumerate(mats):
        buckets.setdefault((*G.shape, G.dtype, G.device), []).append(i)
    out: list[Optional[torch.Tensor]] = [None] * len(mats)
    for idx in buckets.values():
        # A lone matrix needs no copy: polar reads its input and never writes it.
        G = mats[idx[0]].unsqueeze(0) if len(idx) == 1 else torch.stack([mats[i] for i in idx])
        O = polar(G, method=method, mode=mode, rcond=rcond, backend=backend)
        for i, o in zip(idx, O.unbind(0)):
            out[i] = o
    return out  # type: ignore[return-value]
