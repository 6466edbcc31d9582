"""Autotuning configurations: a few per kernel chosen for Hopper (H100/H200; not yet run on one), one tiny one
under the interpreter.

Keys are power-of-two shape buckets (see ``_common.bucket``) so that a training run, whose shapes repeat every
step, tunes once per bucket and never again. Under ``TRITON_INTERPRET=1`` a single small config avoids the
autotuner's benchmarking (which would run every config through the slow interpreter).
"""
from __future__ import annotations

import triton

from .._env import interpreting


def _c(num_warps: int, num_stages: int, **blocks) -> triton.Config:
    return triton.Config(blocks, num_warps=num_warps, num_stages=num_stages)


def gram_configs(f64: bool) -> list[triton.Config]:
    if interpreting():
        return [_c(1, 1, BLOCK_N=16, BLOCK_K=16)]
    if f64:
        # fp64 tiles cost twice the registers of fp32 ones and DMMA tiles are small: stay at <= 64.
        return [_c(4, 2, BLOCK_N=32, BLOCK_K=32), _c(4, 3, BLOCK_N=64, BLOCK_K=16), _c(8, 2, BLOCK_N=64, BLOCK_K=32)]
    return [
        _c(4, 4, BLOCK_N=32, BLOCK_K=64),
        _c(4, 3, BLOCK_N=64, BLOCK_K=64),
        _c(8, 3, BLOCK_N=128, BLOCK_K=32),
        _c(8, 3, BLOCK_N=128, BLOCK_K=64),
    ]


def reduce_configs() -> list[triton.Config]:
    if interpreting():
        return [_c(1, 1, BLOCK_N=16)]
    return [_c(4, 1, BLOCK_N=32), _c(4, 1, BLOCK_N=64)]


def poly_configs(f64: bool) -> list[triton.Config]:
    if interpreting():
        return [_c(1, 1, BLOCK_N=16, BLOCK_K=16)]
    if f64:
        return [_c(4, 2, BLOCK_N=32, BLOCK_K=32), _c(8, 2, BLOCK_N=64, BLOCK_K=16)]
    return [
        _c(4, 4, BLOCK_N=32, BLOCK_K=64),  # small n (the tall iteration's A is n x n with n often <= 64)
        _c(4, 4, BLOCK_N=64, BLOCK_K=64),
        _c(8, 3, BLOCK_N=128, BLOCK_K=64),
        _c(8, 4, BLOCK_N=128, BLOCK_K=32),
    ]


def apply_configs(f64: bool) -> list[triton.Config]:
    if interpreting():
        return [_c(1, 1, BLOCK_M=16, BLOCK_N=16, BLOCK_K=16)]
    if f64:
        return [_c(4, 2, BLOCK_M=64, BLOCK_N=32, BLOCK_K=16), _c(8, 2, BLOCK_M=64, BLOCK_N=64, BLOCK_K=16)]
    return [
        _c(4, 4, BLOCK_M=64, BLOCK_N=64, BLOCK_K=32),
        _c(4, 3, BLOCK_M=128, BLOCK_N=32, BLOCK_K=32),
        _c(8, 3, BLOCK_M=128, BLOCK_N=128, BLOCK_K=32),
        _c(8, 3, BLOCK_M=128, BLOCK_N=256, BLOCK_K=64),
    ]


def prune_by_n(configs, named_args, **kwargs):
    """Drop tiles wider than the (padded) matrix: a 128-wide tile over n = 32 computes 75% padding."""
    n = named_args["N"]
    cap = max(16, triton.next_power_of_2(n))
    kept = [c for c in configs if c.kwargs["BLOCK_N"] <= cap]
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_N"])]
