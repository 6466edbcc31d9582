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
    # One identity per binary a first call compiles (kernel, its constexpr specialisation, a candidate config,
    # argument dtypes): launches that share a binary share its identity, so the set over a step counts compilations.
    compiled: tuple[str, ...] = ()
    # Programs sharing the arithmetic equally (a Triton grid's working programs), or None: then the launch is assumed
    # to fill the device. With it, the arithmetic takes ceil(programs / SMs) waves of one program per SM.
    programs: int | None = None

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


@dataclasses.dataclass(frozen=True)
class DeviceModel:
    """What the plan and the dispatch's cost comparisons assume of a GPU: spec-sheet rates, not measurements."""

    name: str
    bandwidth: float  # bytes / s of device memory
    peak: dict[str, float]  # unit -> FLOP / s (dense)
    sms: int
    # Estimates, labelled as such wherever they are printed: the fraction of peak a kernel reaches, and the cost of
    # one kernel launch in an eager loop (GPU-side gap plus host issue) and inside a CUDA graph.
    efficiency: float = 0.6
    launch_s: float = 4e-6
    graph_launch_s: float = 1.5e-6


# NVIDIA H100 SXM5 data sheet (dense rates): HBM3 3.35 TB/s; FP64 34 TFLOPS, FP64 tensor core 67, FP32 67,
# TF32 tensor core 495, BF16/FP16 tensor core 989; 132 SMs. tf32x3 makes three TF32 passes. H200: the same chip
# with 4.8 TB/s of HBM3e.
_H100_PEAK = {"tc16": 989e12, "tf32": 495e12, "tf32x3": 495e12 / 3, "fp64_tc": 67e12, "fma32": 67e12,
              "fma64": 34e12}
DEVICES = {
    "h100": DeviceModel("NVIDIA H100 SXM (spec sheet)", 3.35e12, dict(_H100_PEAK), 132),
    "h200": DeviceModel("NVIDIA H200 SXM (spec sheet)", 4.8e12, dict(_H100_PEAK), 132),
}


def launch_seconds(launch: Launch, device: DeviceModel) -> float:
    """Modelled time of one launch: the slower of its memory traffic and its arithmetic (each unit at the assumed
    efficiency of its peak; for a launch that says how many programs share the arithmetic, the waves they take:
    108 programs on 132 SMs leave 24 idle, 133 take two waves). An estimate."""
    compute = sum(f / (device.peak[u] * device.efficiency) for u, f in launch.flops.items())
    if launch.programs:
        compute *= -(-launch.programs // device.sms) * device.sms / launch.programs
    return max(launch.bytes / (device.bandwidth * device.efficiency), compute)


def _programs(B: int, m: int, n: int) -> tuple[int, int]:
    """(programs of a symmetric n x n product, of an apply) on a (B, m, n) batch: 64-wide tiles of the triangle, and
    128 x 64 tiles of X (the common tiles of triton_kernels/_configs.py)."""
    return B * (-(-n // 64)) * (-(-n // 64) + 1) // 2, B * (-(-m // 128)) * (-(-n // 64))


def _tall_steps_seconds(B: int, m: int, n: int, steps: int, quintics: int, elem_bytes: int, unit: str,
                        device: DeviceModel, passes: int, waves: bool = False) -> float:
    """The arithmetic and traffic of ``steps`` steps on X (launch costs apart): per step the symmetric Gram (read X)
    and the apply (read X, write X), per quintic step the symmetric square of the n x n Gram matrix. With ``waves``,
    each launch's arithmetic takes whole waves of its programs (``_programs``)."""
    mn, mn2, n3 = B * m * n, B * m * n * n, B * n**3
    sym, tall = _programs(B, m, n) if waves else (None, None)
    per = [Launch("gram", {unit: passes * mn2}, 2 * elem_bytes * mn, programs=sym),
           Launch("apply", {unit: passes * 2 * mn2}, 2 * elem_bytes * mn, programs=tall)]
    return steps * sum(launch_seconds(x, device) for x in per) + quintics * launch_seconds(
        Launch("poly", {unit: passes * n3}, 0.0, programs=sym), device)


def newton_schulz_tall_gram(B: int, m: int, n: int, steps: tuple, switch: int, elem_bytes: int, unit: str,
                            device: DeviceModel, passes: int = 1, waves: bool = False) -> float:
    """Modelled seconds of the tall side handing steps ``switch`` onwards (``steps``: (a, b, c, ...) tuples, as
    ns_schedule.Step) to the n x n side (``triton_kernels/polar.py: late_factor``): the first ``switch`` steps on X
    as in ``newton_schulz_sides``, the Gram matrix of X_k, per late quintic step the symmetric square and per late step
    three symmetric n x n products (one on the last step; the first step's Q is R plus a diagonal), each one triangle
    of a product, and the apply of Q to X_k.
    Launches at the graph-captured rate; ``waves`` as in ``_tall_steps_seconds``. An estimate, like the rest of this
    module."""
    early, late = steps[:switch], steps[switch:]
    mn, mn2, n3, nn = B * m * n, B * m * n * n, B * n**3, B * n * n
    t = _tall_steps_seconds(B, m, n, len(early), sum(1 for s in early if s[2] != 0.0), elem_bytes, unit, device,
                            passes, waves)
    sym, tall = _programs(B, m, n) if waves else (None, None)
    launches = 7 + 3 * len(early)
    calls = [Launch("gram", {unit: passes * mn2}, elem_bytes * (mn + nn), programs=sym)]
    for i, s in enumerate(late):
        last = i + 1 == len(late)
        if s[2] != 0.0:
            calls.append(Launch("poly", {unit: passes * n3}, 2 * elem_bytes * nn, programs=sym))
        applies = (1 if i > 0 else 0) + (0 if last else 2)
        calls += [Launch("sym_mul", {unit: passes * n3}, 3 * elem_bytes * nn, programs=sym)] * applies
        if i == 0:
            calls.append(Launch("diagonal", {}, 2 * elem_bytes * B * n))
    calls.append(Launch("apply", {unit: passes * 2 * mn2}, elem_bytes * (2 * mn + nn), programs=tall))
    return t + sum(launch_seconds(x, device) for x in calls) + (launches + len(calls)) * device.graph_launch_s


def newton_schulz_sides(B: int, m: int, n: int, steps: int, quintics: int, elem_bytes: int, unit: str,
                        device: DeviceModel, passes: int = 1, fused_nxn_flops: float | None = None,
                        waves: bool = False) -> tuple[float, float]:
    """(tall side, Gram side) modelled seconds of ``steps`` Newton–Schulz steps (``quintics`` of them quintic) on a
    tall (B, m, n) batch: the tall side in ``passes`` passes on ``unit`` on elements of ``elem_bytes`` (read X twice
    and write it once per step; FLOPs of the symmetric Gram, its square and the apply), the Gram side as a float64
    Gram, the n x n float64 products (four per quintic step and three per cubic one, each reading three n x n
    operands and writing one, unless one fused kernel keeps them on chip: then ``fused_nxn_flops``, its float64
    tensor-core FLOPs, ``compiled.gram_ns_factor_flops``), and a float64 apply. Each side also pays its launches at
    the graph-captured rate: the tall side 7 before its steps and 3 per step, the Gram side 5 where one fused kernel
    runs the whole n x n iteration, else 9 and one per n x n product. The dispatch picks the cheaper. ``waves``: the
    tall side's launches take whole waves of their programs (``_tall_steps_seconds``), for comparing batches of
    different sizes (``dispatch.merge_buckets``)."""
    mn, mn2, n3 = B * m * n, B * m * n * n, B * n**3
    tall = _tall_steps_seconds(B, m, n, steps, quintics, elem_bytes, unit, device, passes, waves)
    tall += (7 + 3 * steps) * device.graph_launch_s
    g = [Launch("gram", {"fp64_tc": mn2}, 4 * mn), Launch("apply", {"fp64_tc": 2 * mn2}, 8 * mn)]
    products = 4 * quintics + 3 * (steps - quintics)
    if fused_nxn_flops is not None:  # the n x n matrices stay in shared memory: A read once, Q written once
        g.append(Launch("nxn", {"fp64_tc": fused_nxn_flops}, 16 * B * n * n))
    else:  # one baddbmm per product: three n x n float64 operands read, one written
        g += [Launch("nxn", {"fp64_tc": 2 * n3}, 32 * B * n * n)] * products
    gram_launches = 5 if fused_nxn_flops is not None else 9 + products
    return tall, sum(launch_seconds(x, device) for x in g) + gram_launches * device.graph_launch_s
