"""Launch helpers shared by the kernels: dot precision, the device model (SM count), the device guard, shape
classes, batch slicing, and :class:`KernelCall`, the record of one launch that both runs it and describes it
(autotune key, cost model).
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from typing import Callable, Iterator, Optional

import torch
import triton

from .._env import interpreting

# The dtypes the kernels load and store.
DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def check_dtype(op: str, name: str, t: torch.Tensor) -> None:
    if t.dtype not in DTYPES:
        raise TypeError(f"{op}: {name} must be float64/float32/bfloat16/float16, got {t.dtype}")


# ---------------------------------------------------------------- dot precision
# The precision of a float32-operand tl.dot (``input_precision``), a plain string so that it is part of every op's
# schema and of every autotune key:
#   "ieee"   full float32 products on the CUDA cores (FMA);
#   "tf32"   one TF32 tensor-core pass (10-bit mantissa: relative error ~1e-3 per product);
#   "tf32x3" three TF32 passes on the split a = a_hi + a_lo (about float32 accuracy, tensor cores);
#   "bf16x3" three bfloat16 passes on a split (about 16 mantissa bits, tensor cores);
#   "fp16x3" three float16 passes on the split a = hi + lo / 2^11 (about float32 accuracy at twice tf32x3's
#            rate; orthokern's own, ``_dot.py``; only for operands well inside float16's range).
# What each lowers to on sm_90 is checked by bench/check_triton_configs.py (tensor-core wgmma/mma for all but
# "ieee", FMA for "ieee"). Operands of other dtypes ignore it: bfloat16/float16 dots always run on the 16-bit
# tensor cores and float64 dots on the float64 ones (DMMA).
PRECISIONS = ("ieee", "tf32", "tf32x3", "bf16x3", "fp16x3")
# What accurate float32 work uses: float32 accuracy on the tensor cores. Products whose operands are bounded (the
# Newton–Schulz steps on a normalised X: triton_kernels/polar.py) use BOUNDED, the same accuracy at twice the rate.
ACCURATE = "tf32x3"
BOUNDED = "fp16x3"


def check_precision(op: str, precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"{op}: precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def dot_precision(dtype: torch.dtype, precision: str) -> str:
    """The ``input_precision`` of a dot whose operands have ``dtype``: only float32 operands have a choice; the
    rest get "ieee", which every dot accepts."""
    return precision if dtype == torch.float32 else "ieee"


# Triton's interpreter computes every float32 dot in float32 with numpy whatever ``input_precision`` says, and its
# frontend rejects "bf16x3": an interpreted launch passes "ieee" for it, which is what the interpreter computes for
# every precision anyway. Plans (and so the cost models) keep "bf16x3": they describe the GPU launch.
INTERPRETER_PRECISION = {"bf16x3": "ieee"}


# ---------------------------------------------------------------- the device model
# Split-K choices depend on the number of SMs. On a real GPU it is read from the device; the dry-run plan
# (python -m orthokern.bench plan) runs the ops on fake CUDA tensors on a machine without one, and sets it here.
_ASSUMED_SMS: contextvars.ContextVar[Optional[int]] = contextvars.ContextVar("orthokern_triton_sms", default=None)
INTERPRETER_SMS = 4  # under the interpreter: a token parallelism so that split-K still gets exercised


@contextlib.contextmanager
def assume_sm_count(sms: int) -> Iterator[None]:
    """Within the block, the kernels' launch choices assume a GPU with ``sms`` SMs (132 for an H100 SXM)."""
    if int(sms) < 1:
        raise ValueError(f"assume_sm_count: sms must be >= 1, got {sms}")
    token = _ASSUMED_SMS.set(int(sms))
    try:
        yield
    finally:
        _ASSUMED_SMS.reset(token)


@functools.lru_cache(maxsize=None)
def _device_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _is_fake(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import is_fake

    return is_fake(t)


def sm_count(t: torch.Tensor) -> int:
    """SMs of the device that holds ``t``: :func:`assume_sm_count` if set, else the real device's."""
    assumed = _ASSUMED_SMS.get()
    if assumed is not None:
        return assumed
    if t.device.type == "cpu":
        return INTERPRETER_SMS
    if t.device.type != "cuda" or _is_fake(t):
        raise RuntimeError(f"orthokern.triton_kernels: a fake or {t.device.type} tensor has no SM count; run under "
                           "orthokern.triton_kernels.assume_sm_count(n) (the dry-run plan sets it)")
    return _device_sms(t.device.index if t.device.index is not None else torch.cuda.current_device())


def device_guard(t: torch.Tensor):
    """Make ``t``'s GPU current for a launch: Triton launches on the current device, whichever device the
    pointers belong to (a tensor on cuda:1 while cuda:0 is current would fault or corrupt memory). Nothing to do
    for CPU tensors (the interpreter) or fake ones (tracing, the dry-run plan), which touch no device."""
    if t.device.type != "cuda" or _is_fake(t) or torch._guards.detect_fake_mode() is not None:
        return contextlib.nullcontext()
    return torch.cuda.device(t.device)


# ---------------------------------------------------------------- shapes
def next_pow2(x: int) -> int:
    return triton.next_power_of_2(max(int(x), 1))


# Shape classes of the autotune keys: the power of two at or above n, capped. A training run's shapes repeat every
# step, so it tunes once per class and never again; the cap keeps every large n in one class (their candidate
# configs are the same).
N_CLASS_CAP = 512


def n_class(n: int) -> int:
    return min(max(next_pow2(n), 16), N_CLASS_CAP)


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


# ---------------------------------------------------------------- one launch
@dataclasses.dataclass
class KernelCall:
    """One kernel launch, fully determined before it runs: what the op launches (``run``), which autotune key it
    hits (``_configs.tune_key``) and what it costs (the cost models in ``torch_ops.py``) all read this one record.

    ``args`` are the kernel's runtime arguments by name, in its parameter order; ``meta`` the constexpr ones the
    caller sets (the autotuner adds the block sizes); ``grid(meta) -> tuple`` with the chosen config's meta.
    """

    kernel: object  # a triton Autotuner or JITFunction
    name: str  # "module.kernel", as in the cost model's Launch.kernel
    args: dict
    meta: dict
    grid: Callable[[dict], tuple]
    flops: dict = dataclasses.field(default_factory=dict)  # unit -> FLOPs (a multiply-add counts 2)
    bytes: float = 0.0  # compulsory traffic: each operand read once, each result written once
    # programs that do the arithmetic (at the first candidate's block sizes), for the cost model's wave count; None:
    # not modelled
    programs: Optional[int] = None

    def run(self, launch: Optional[Callable] = None) -> None:
        kernel = launch(self.kernel) if launch is not None else self.kernel
        meta = self.meta
        if "PRECISION" in meta and interpreting():
            meta = {**meta, "PRECISION": INTERPRETER_PRECISION.get(meta["PRECISION"], meta["PRECISION"])}
        kernel[self.grid](*self.args.values(), **meta)


def run_all(calls: list[KernelCall], guard_tensor: torch.Tensor, launch: Optional[Callable] = None) -> None:
    """Launch ``calls`` in order on ``guard_tensor``'s device."""
    with device_guard(guard_tensor):
        for call in calls:
            call.run(launch)


def dot_unit(dtype: torch.dtype, precision: str) -> tuple[str, int]:
    """(unit of orthokern._cost, passes) a dot with operands of ``dtype`` runs on (see PRECISIONS above): its
    FLOPs are counted ``passes`` times on that unit. float64 dots lower to DMMA (mma.sync ... f64) on sm_90
    with Triton 3.6 and 3.9 (bench/check_triton_configs.py --lowering shows it)."""
    if dtype == torch.float64:
        return "fp64_tc", 1
    if dtype in (torch.bfloat16, torch.float16):
        return "tc16", 1
    if precision == "ieee":
        return "fma32", 1
    if precision == "tf32":
        return "tf32", 1
    if precision == "tf32x3":
        return "tf32x3", 1  # the unit itself stands for the three passes (orthokern/_cost.py)
    return "tc16", 3  # bf16x3 / fp16x3: three 16-bit passes


def element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype, device="meta").element_size()
