"""The ``check_finite=True`` check of the orthokern optimisers that change weights in place (Layca, StiefelSGD)."""
from __future__ import annotations

import torch


def check_params_finite(optimizer: torch.optim.Optimizer, who: str) -> None:
    """Raise FloatingPointError naming every parameter with a gradient whose value or gradient holds NaN or Inf,
    before anything is changed. One host read for all parameters (the flags are stacked first)."""
    names, flags = [], []
    for gi, group in enumerate(optimizer.param_groups):
        for i, p in enumerate(group["params"]):
            if p.grad is None:
                continue
            names.append(f"group {gi} #{i} {tuple(p.shape)}")
            g = p.grad.coalesce().values() if p.grad.is_sparse else p.grad
            flags.append(torch.isfinite(g).all() & torch.isfinite(p).all())
    if not flags:
        return
    ok = torch.stack([f.to(flags[0].device) for f in flags]).tolist()
    bad = [n for n, good in zip(names, ok) if not good]
    if bad:
        raise FloatingPointError(f"{who}: parameters {bad} or their gradients hold NaN or Inf; no parameter was "
                                 "changed (check_finite=True)")
