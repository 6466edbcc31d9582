"""The cost model of one kernel launch, and where each op's model is registered.

``python -m orthokern.bench plan`` runs the real dispatch on fake (shape-only) tensors and asks, for every op it
records, what the op would launch on a GPU: which kernels, how many floating-point operations on which unit,
how many bytes to and from memory, and how many autotuning configurations a first call compiles. Each op that
orthokern defines registers that answer here, next to its kernels (``register_cost``), so that the model lives
with the code it describes; aten ops are modelled in ``orthokern/bench/plan.py``.

Units (what the FLOPs run on):

* ``tc16``: bfloat16 / float16 tensor cores (fp32 accumulation);
* ``tf32``: TF32 tensor cores, one pass (10-bit mantissa);
* ``tf32x3``: split-precision float32 on TF32 tensor cores (three passes, about float32 accuracy);
* ``fp64_tc``: float64 tensor cores (DMMA);
* ``fma32`` / ``fma64``: CUDA-core fused multiply-adds in float32 / float64 (no tensor cores).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

UNITS = ("tc16", "tf32", "tf32x3", "fp64_tc", "fma32", "fma64")


@dataclasses.dataclass
class Launch:
    kernel: str  # a name a reader can find in the source (e.g. "triton_kernels.gram._gram_kernel")
    flops: dict[str, float]  # unit -> floating-point operations (a multiply-add counts 2)
    bytes: float  # bytes read from and written to device memory (compulsory traffic: each operand once)
    # (autotuner key, number of configs it benchmarks on a first call), or None for a kernel that is not autotuned
    tune: tuple[str, int] | None = None

    def __post_init__(self):
        bad = set(self.flops) - set(UNITS)
        if bad:
            raise ValueError(f"Launch({self.kernel}): unknown units {sorted(bad)}; expected some of {UNITS}")


# op name as recorded by a TorchDispatchMode (e.g. "orthokern.triton_sym_gram.default") -> model
# model(args, kwargs, out) -> the launches the op makes for these (fake) arguments
CostFn = Callable[[tuple, dict, object], list[Launch]]
COSTS: dict[str, CostFn] = {}


def register_cost(op_name: str) -> Callable[[CostFn], CostFn]:
    """Decorator: the cost model of the op ``op_name`` (``"orthokern.<name>.default"``)."""

    def deco(fn: CostFn) -> CostFn:
        COSTS[op_name] = fn
        return fn

    return deco
