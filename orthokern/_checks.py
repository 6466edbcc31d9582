"""The check every numeric option of the optimisers and regularisers goes through: one rule, one message shape."""
from __future__ import annotations

import math

import torch


def finite_number(value, name: str, where: str, *, lo: float = 0.0, strict: bool = False, about: str = "") -> float:
    """``value`` as a float (a one-element tensor's too), which must be finite and >= ``lo`` (> ``lo`` with
    ``strict``); else a TypeError (not a number) or a ValueError (out of range) naming ``where`` and ``name``.
    ``about`` says what the option is, in the ValueError."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    bound = f"{'>' if strict else '>='} {lo:g}"
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{where}: {name} must be a number {bound}, got {value!r}") from None
    if not ((v > lo if strict else v >= lo) and math.isfinite(v)):
        raise ValueError(f"{where}: {name}{about} must be finite and {bound}, got {value!r}")
    return v
