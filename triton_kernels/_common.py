"""Launch helpers shared by the kernels: shape buckets, SM count, dot precision, batch slicing."""
from __future__ import annotations

import functools

import torch
import triton


# Autotuning / specialisation key of a dtype (an int: the kernels take it as a plain argument).
DTYPE_KEY = {torch.float64: 0, torch.float32: 1, torch.bfloat16: 2, torch.float16: 3}


def next_pow2(x: int) -> int:
    return triton.next_power_of_2(max(int(x), 1))


def bucket(x: int, cap: int = 1 << 16) -> int:
    """Power-of-two bucket of a size: the autotuning key, so a training run tunes once per bucket."""
    return min(next_pow2(x), cap)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # the interpreter: a token parallelism so split-K still gets exercised
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def dot_precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    # fp32 operands use full fp32 products unless the caller explicitly accepts TF32's 10-bit mantissa;
    # for the other dtypes the setting is moot but "ieee" is accepted by every dot.
    return "tf32" if (dtype == torch.float32 and allow_tf32) else "ieee"


def tl_dtype(dtype: torch.dtype):
    import triton.language as tl

    return {
        torch.float64: tl.float64,
        torch.float32: tl.float32,
        torch.bfloat16: tl.bfloat16,
        torch.float16: tl.float16,
    }[dtype]


# CUDA limits grid axes 1 and 2 to 65535; the kernels put the batch on one of them, so longer batches are
# launched in slices of at most this many matrices (a module attribute so tests can shrink it).
MAX_GRID_YZ = 65535


def batch_chunks(B: int):
    """(start, stop) slices of a batch of B matrices, each at most MAX_GRID_YZ long."""
    step = MAX_GRID_YZ
    return [(b0, min(b0 + step, B)) for b0 in range(0, B, step)]


def rows(t, b0: int, b1: int):
    """t[b0:b1], or t itself when that is all of it (a single launch then sees no view, so tracing through
    wrap_triton records plain tensors as on a normal batch)."""
    return t if (b0 == 0 and b1 == t.shape[0]) else t[b0:b1]
