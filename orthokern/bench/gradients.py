"""The "real" spectrum: actual ResNet weight gradients (random init, random images and labels), grouped by
shape. Conv gradients of such a model are well conditioned (sigma_max/sigma_min 3 - 20, measured by the project on
ResNet-50 at batch 64) while the fc gradient has rank batch - 1, the rank-deficient case as it happens in training.
"""
from __future__ import annotations

import functools
from collections import defaultdict

import torch
from torch import nn

from . import resnet

REAL = "real"


@functools.lru_cache(maxsize=4)
def real_gradients(suite: str, device: str, batch: int, image: int, seed: int = 0) -> dict:
    """{(out, in*k*k): float32 tensor (count, out, in*k*k)} from one forward/backward of the suite's model."""
    if suite not in ("resnet50", "resnet18"):
        raise ValueError(f"real_gradients: suite must be resnet50 or resnet18, got {suite!r}")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = resnet.resnet50_builtin() if suite == "resnet50" else resnet.resnet18_builtin()
    model = model.to(device)
    x = torch.randn(batch, 3, image, image, generator=gen).to(device)
    y = torch.randint(0, 1000, (batch,), generator=gen).to(device)
    nn.CrossEntropyLoss()(model(x), y).backward()
    groups: dict[tuple[int, int], list[torch.Tensor]] = defaultdict(list)
    for p in model.parameters():
        if p.dim() >= 2:
            g = p.grad.detach().reshape(p.shape[0], -1)
            groups[tuple(g.shape)].append(g)
    return {shape: torch.stack(gs) for shape, gs in groups.items()}


def real_batch(suite: str, m: int, n: int, count: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The gradients of the suite's layers of shape (m, n), as (count, m, n) in ``dtype``."""
    cuda = torch.device(device).type == "cuda"
    grads = real_gradients(suite, str(device), 64 if cuda else 8, 224 if cuda else 64)
    if (m, n) not in grads or grads[(m, n)].shape[0] != count:
        raise ValueError(f"real_batch: {suite} has no {count} layers of gradient shape ({m}, {n})")
    return grads[(m, n)].to(dtype)
