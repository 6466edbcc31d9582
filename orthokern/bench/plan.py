"""``python -m orthokern.bench plan``: what the GPU path would do, worked out on any machine.

It runs the real dispatch (``orthokern/dispatch.py``, told by ``dispatch.assume`` that it is on a GPU machine with
orthokern's CUDA kernels and Triton) on fake CUDA tensors (``FakeTensorMode``: shapes and dtypes, no data), and a
recorder (a ``TorchDispatchMode``) costs every op the dispatch issues: kernel launches, floating-point operations by
the unit that runs them (``orthokern/_cost.py``), bytes to and from memory, host synchronisations, eigensolver calls
(and whether torch would run them one matrix at a time), and the autotuning configurations a first call compiles.
orthokern's own ops carry their cost models next to their kernels (``_cost.register_cost``); aten ops are modelled
here. From the totals it gives the floor (the input read and the output written once at the device's bandwidth,
and the arithmetic at its peak) and a modelled time, an estimate from spec-sheet rates, an assumed efficiency and
an assumed launch cost, all printed with it. Nothing is measured: compare with ``python -m orthokern.bench`` on a
GPU (bench/RESULTS.md has both side by side once a GPU run has been made).

    python -m orthokern.bench plan                       # ResNet-50 optimiser step, tall and square cases
    python -m orthokern.bench plan --suite tall --mode fast --device h200 --json plan.json
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import sys
from collections import Counter, defaultdict
from typing import Optional, Sequence

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from .. import _cost, _env, dispatch
from .._cost import Launch
from .suites import RESNET50_SHAPES, SQUARE_SHAPES, TALL_SHAPES

# ---------------------------------------------------------------------------------------------------- aten models
# Ops that move no data (views, metadata, allocation without a fill).
_FREE = {
    "aten.empty.memory_format", "aten.empty_like.default", "aten.empty_strided.default", "aten.new_empty.default",
    "aten.new_empty_strided.default", "aten.lift_fresh.default", "aten.detach.default", "aten._unsafe_view.default",
    "aten._reshape_alias.default", "aten.alias.default",
    # a Python number wrapped as a 0-dim CPU tensor for an elementwise op: no device work
    "aten.scalar_tensor.default",
}
# Ops that read a value back to the host: a synchronisation with the device.
_SYNC = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.is_nonzero.default", "aten.equal.default",
         "aten.allclose.default"}
_MATMUL = {"aten.mm.default", "aten.bmm.default", "aten.addmm.default", "aten.baddbmm.default",
           "aten.addbmm.default", "aten.matmul.default"}
# cuSOLVER routines torch batches (syevjBatched, gesvdjBatched) only for n <= 32; above that torch runs one matrix at
# a time (pytorch issue 175585 for eigh).
_EIGENSOLVERS = {"aten._linalg_eigh.default": 9.0, "aten.linalg_eigh.default": 9.0, "aten._linalg_svd.default": 22.0,
                 "aten.linalg_svd.default": 22.0}
_TORCH_BATCHED_EIGEN_MAX_N = 32


def _tensors(x):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for y in x:
            yield from _tensors(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _tensors(y)


def _nbytes(t: torch.Tensor) -> float:
    return float(t.numel() * t.element_size())


def _matmul_unit(dtype: torch.dtype) -> str:
    if dtype == torch.float64:
        return "fp64_tc"  # cuBLAS DGEMM runs on DMMA from sm_80 on
    if dtype in (torch.bfloat16, torch.float16):
        return "tc16"
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fma32"


def aten_launches(name: str, func, args, kwargs, out) -> list[Launch]:
    """The cost model of an aten op on a GPU (one launch per op unless it moves no data)."""
    if name in _FREE or name.startswith("prim.") or getattr(func, "is_view", False):
        return []
    outs = list(_tensors(out))
    ins = [t for t in _tensors((args, kwargs)) if isinstance(t, torch.Tensor)]
    bytes_ = sum(_nbytes(t) for t in ins) + sum(_nbytes(t) for t in outs)
    if name in _MATMUL:
        a, b = [t for t in args if isinstance(t, torch.Tensor)][-2:]
        k = a.shape[-1]
        flops = 2.0 * outs[0].numel() * k
        return [Launch(f"cuBLAS {name.split('.')[1]}", {_matmul_unit(a.dtype): flops}, bytes_)]
    if name in _EIGENSOLVERS:
        A = ins[0]
        n, batch = A.shape[-1], A.numel() // max(1, A.shape[-1] ** 2)
        unit = "fma64" if A.dtype == torch.float64 else "fma32"
        return [Launch(f"cuSOLVER {name.split('.')[1]}", {unit: _EIGENSOLVERS[name] * batch * n**3}, bytes_)]
    return [Launch(f"aten {name.split('.')[1]}", {}, bytes_)]


# ---------------------------------------------------------------------------------------------------- the recorder
@dataclasses.dataclass
class Record:
    op: str
    launches: list[Launch]
    largest: int  # elements of the largest tensor the op reads or writes (a full-size pass if B m n)


class Recorder(TorchDispatchMode):
    """Records the cost of every op dispatched inside it (above a FakeTensorMode)."""

    def __init__(self):
        super().__init__()
        self.records: list[Record] = []
        self.syncs: list[str] = []
        self.eigensolvers: list[tuple[str, int, int]] = []  # (op, batch, n)
        self.missing: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        if name in _SYNC:
            self.syncs.append(name)
            if name == "aten.nonzero.default":
                return torch.empty(0, args[0].dim(), dtype=torch.long, device=args[0].device)
            return False if name != "aten._local_scalar_dense.default" else 0
        out = func(*args, **kwargs)
        if name.startswith("orthokern."):
            model = _cost.COSTS.get(name)
            if model is None:
                self.missing.add(name)
                launches = []
            else:
                launches = model(args, kwargs, out)
        else:
            launches = aten_launches(name, func, args, kwargs, out)
        if name in _EIGENSOLVERS:
            A = args[0]
            self.eigensolvers.append((name, A.numel() // max(1, A.shape[-1] ** 2), A.shape[-1]))
        largest = max((t.numel() for t in _tensors((args, kwargs, out))), default=0)
        self.records.append(Record(name, launches, largest))
        return out


# ---------------------------------------------------------------------------------------------------- cases
@dataclasses.dataclass
class Case:
    name: str
    shapes: list[tuple[int, int, int]]  # (batch, m, n) buckets, as given (tall or wide)
    dtype: torch.dtype
    # Plan a whole FastOrthogonalSGD step over parameters of these shapes (batch = how many share the shape), plus
    # ``extra`` 1-D parameters (biases, norm scales), instead of one polar call per bucket.
    optimiser_step: bool = False
    extra: int = 0
    # Also plan torch's Muon step (``peers.muon_ns5_batched``: five bfloat16 quintic steps in cuBLAS matmuls) on the
    # same matrices, the fast mode's reference.
    peer: bool = False


# ResNet-50's parameters besides the 54 weight matrices: batch-norm scales and shifts (2 x 26,560) and the fc bias.
RESNET50_OTHER_PARAMS = 2 * 26560 + 1000
# One ResNet-50 training step (batch 256, float32) measured once by the project on an H100 (docs/design.md, section 8):
# the optimiser's overhead is reported against it.
RESNET50_TRAIN_STEP_S = 137e-3


def cases(suite: str, dtype: torch.dtype) -> list[Case]:
    if suite == "resnet50":
        return [Case("ResNet-50 FastOrthogonalSGD step (54 weights)",
                     [(c, m, n) for (m, n), c in RESNET50_SHAPES.items()], dtype, optimiser_step=True,
                     extra=RESNET50_OTHER_PARAMS)]
    if suite == "tall":
        return [Case(f"{b}x{m}x{n}", [(b, m, n)], dtype) for b, m, n in TALL_SHAPES]
    if suite == "square":
        return [Case(f"{b}x{m}x{n}", [(b, m, n)], dt, peer=True) for b, m, n in SQUARE_SHAPES
                for dt in ((dtype, torch.bfloat16) if dtype != torch.bfloat16 else (dtype,))]
    raise ValueError(f"--suite: one of resnet50, tall, square, all, got {suite!r}")


# A GPU machine with orthokern's CUDA kernels built and Triton installed.
GPU_ENV = _env.Env(extension=None, cuda_ops=None, triton=None, interpret=False, cuda_available=True)


@contextlib.contextmanager
def _device_model(device: _cost.DeviceModel):
    """Kernel launchers that size their grids by the GPU's SM count get the model's (there is no GPU here)."""
    dispatch.triton_polar()  # loads orthokern.triton_kernels
    common = importlib.import_module("orthokern.triton_kernels._common")
    with common.assume_sm_count(device.sms):
        yield


def record(case: Case, mode: str, device: _cost.DeviceModel, rcond: float = 1e-3) -> tuple[Recorder, list[str]]:
    """Run the dispatch of ``polar(G, mode=mode)`` for every bucket of ``case`` on fake CUDA tensors, recorded;
    returns the recorder and the method each bucket ran."""
    rec = Recorder()
    methods = []
    with _device_model(device), dispatch.assume(GPU_ENV), FakeTensorMode(allow_non_fake_inputs=True):
        grads = [torch.empty(b, m, n, dtype=case.dtype, device="cuda") for b, m, n in case.shapes]
        for G in grads:
            X = G.mT if G.shape[-2] < G.shape[-1] else G
            methods.append(dispatch.method_and_rcond(X, "auto", mode, rcond)[0])
        if case.optimiser_step:
            opt = _stepped_optimiser(case, mode, rcond)
            with rec:
                opt.step()
        else:
            with rec:
                for G in grads:
                    dispatch.run(G.mT if G.shape[-2] < G.shape[-1] else G, "auto", mode, rcond, None)
    return rec, methods


def _stepped_optimiser(case: Case, mode: Optional[str], rcond: float) -> torch.optim.Optimizer:
    """FastOrthogonalSGD (``mode``) or, with ``mode=None``, the torch SGD it wraps (same hyperparameters, foreach)
    over fake CUDA parameters of ``case``'s shapes, after one step: the first step allocates the momentum buffers, so
    the caller records a steady-state step."""
    from ..optim import FastOrthogonalSGD

    params = [torch.nn.Parameter(torch.empty(m, n, dtype=case.dtype, device="cuda"))
              for b, m, n in case.shapes for _ in range(b)]
    if case.extra:
        params.append(torch.nn.Parameter(torch.empty(case.extra, dtype=case.dtype, device="cuda")))
    for p in params:
        p.grad = torch.empty_like(p)
    if mode is None:
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, foreach=True)
    else:
        opt = FastOrthogonalSGD(params, lr=0.1, momentum=0.9, mode=mode, rcond=rcond, foreach=True,
                                distributed=False)
    opt.step()
    return opt


def record_base_optimiser(case: Case, device: _cost.DeviceModel) -> Recorder:
    """A step of the torch SGD that FastOrthogonalSGD wraps, alone, over ``case``'s parameters, recorded on fake CUDA
    tensors: what the orthogonalisation adds is the difference."""
    rec = Recorder()
    with _device_model(device), FakeTensorMode(allow_non_fake_inputs=True):
        opt = _stepped_optimiser(case, None, 1e-3)
        with rec:
            opt.step()
    return rec


def record_peer(case: Case, device: _cost.DeviceModel) -> Recorder:
    """``peers.muon_ns5_batched`` on every bucket of ``case``, recorded on fake CUDA tensors."""
    from .peers import muon_ns5_batched

    rec = Recorder()
    with _device_model(device), FakeTensorMode(allow_non_fake_inputs=True):
        grads = [torch.empty(b, m, n, dtype=case.dtype, device="cuda") for b, m, n in case.shapes]
        with rec:
            for G in grads:
                muon_ns5_batched(G)
    return rec


def plan_case(case: Case, mode: str, device: _cost.DeviceModel, rcond: float = 1e-3) -> dict:
    """The plan of one case: ``record`` it and total it (and torch's Muon step on it where ``case.peer``)."""
    rec, methods = record(case, mode, device, rcond)
    row = summarise(case, mode, device, rec, methods)
    if case.peer:
        row["muon_ns5_graph_s"] = _graph_seconds(record_peer(case, device), device)
    if case.optimiser_step:
        row["base_optimiser_graph_s"] = _graph_seconds(record_base_optimiser(case, device), device)
    return row


def _graph_seconds(rec: Recorder, device: _cost.DeviceModel) -> float:
    launches = [x for r in rec.records for x in r.launches]
    return sum(_cost.launch_seconds(x, device) for x in launches) + len(launches) * device.graph_launch_s


def summarise(case: Case, mode: str, device: _cost.DeviceModel, rec: Recorder, methods: list[str]) -> dict:
    launches = [x for r in rec.records for x in r.launches]
    by_kernel = Counter(x.kernel for x in launches)
    flops: dict[str, float] = defaultdict(float)
    for x in launches:
        for u, f in x.flops.items():
            flops[u] += f
    tune_keys = {x.tune[0]: x.tune[1] for x in launches if x.tune}
    compiled = {b for x in launches for b in x.compiled}
    elem = torch.empty((), dtype=case.dtype).element_size()
    io_bytes = sum(2.0 * b * m * n * elem for b, m, n in case.shapes)  # read G once, write O once
    compute_floor = sum(f / device.peak[u] for u, f in flops.items())
    memory_floor = io_bytes / device.bandwidth
    work = sum(_cost.launch_seconds(x, device) for x in launches)
    loops = [e for e in rec.eigensolvers if e[1] > 1 and e[2] > _TORCH_BATCHED_EIGEN_MAX_N]
    return {
        "case": case.name, "dtype": str(case.dtype).removeprefix("torch."), "mode": mode, "device": device.name,
        "methods": sorted(Counter(methods).items()),
        "launches": len(launches), "launches_by_kernel": dict(by_kernel.most_common()),
        "flops_by_unit": dict(flops), "bytes": sum(x.bytes for x in launches), "io_bytes": io_bytes,
        "host_syncs": len(rec.syncs), "eigensolver_calls": len(rec.eigensolvers), "per_matrix_eigensolver_loops":
        len(loops), "autotune_keys": len(tune_keys), "autotune_configs": sum(tune_keys.values()),
        "kernels_compiled": len(compiled),
        "memory_floor_s": memory_floor, "compute_floor_s": compute_floor, "floor_s": max(memory_floor, compute_floor),
        "modelled_s": work + len(launches) * device.launch_s,
        "modelled_graph_s": work + len(launches) * device.graph_launch_s,
        "ops_without_cost_model": sorted(rec.missing),
        "share_of_resnet50_train_step": (work + len(launches) * device.graph_launch_s) / RESNET50_TRAIN_STEP_S
        if case.optimiser_step else None,
    }


# ---------------------------------------------------------------------------------------------------- report
def _fmt_s(s: float) -> str:
    return f"{s * 1e3:.3f} ms" if s >= 1e-4 else f"{s * 1e6:.1f} us"


def format_plan(rows: Sequence[dict], device: _cost.DeviceModel) -> str:
    out = [f"Dry-run plan of the GPU dispatch on {device.name}: nothing here was measured.",
           f"Modelled time = sum over launches of max(bytes / (bandwidth x {device.efficiency}), FLOPs / (peak x "
           f"{device.efficiency}) x waves) + launches x {device.launch_s * 1e6:.1f} us (eager) or "
           f"{device.graph_launch_s * 1e6:.1f} us (CUDA graph): an estimate. waves = ceil(programs / {device.sms} SMs) "
           f"x {device.sms} / programs for the Triton launches, 1 for the others.",
           f"Floor = max(memory floor, FLOPs at peak); memory floor = input read + output written once at "
           f"{device.bandwidth / 1e12:.2f} TB/s; '/ mem floor' = the graph-captured time over the memory floor.",
           ""]
    head = (f"{'case':44s} {'dtype':8s} {'mode':8s} {'launches':>8s} {'syncs':>5s} {'eig loops':>9s} "
            f"{'compiles':>9s} {'floor':>10s} {'modelled':>10s} {'graph':>10s} {'/ mem floor':>11s}  FLOPs by unit")
    out.append(head)
    out.append("-" * len(head))
    for r in rows:
        units = ", ".join(f"{u} {f / 1e9:.2f} G" for u, f in sorted(r["flops_by_unit"].items()) if f)
        out.append(f"{r['case'][:44]:44s} {r['dtype']:8s} {r['mode']:8s} {r['launches']:8d} {r['host_syncs']:5d} "
                   f"{r['per_matrix_eigensolver_loops']:9d} {r['kernels_compiled']:9d} {_fmt_s(r['floor_s']):>10s} "
                   f"{_fmt_s(r['modelled_s']):>10s} {_fmt_s(r['modelled_graph_s']):>10s} "
                   f"{r['modelled_graph_s'] / r['memory_floor_s']:11.1f}  {units}")
        if r.get("muon_ns5_graph_s"):
            out.append(f"   torch's Muon step on the same matrices (five bfloat16 quintic steps in cuBLAS): "
                       f"{_fmt_s(r['muon_ns5_graph_s'])} graph-captured; this {r['mode']} path "
                       f"{r['muon_ns5_graph_s'] / r['modelled_graph_s']:.2f}x its speed")
        if r["share_of_resnet50_train_step"] is not None:
            share = 100 * r["share_of_resnet50_train_step"]
            out.append(f"   the whole optimiser step, graph-captured: {share:.1f} % of a "
                       f"{RESNET50_TRAIN_STEP_S * 1e3:.0f} ms ResNet-50 training step (batch 256, H100; measured "
                       "once, docs/design.md section 8)")
        if r.get("base_optimiser_graph_s") is not None:
            base = r["base_optimiser_graph_s"]
            out.append(f"   of which torch's SGD step alone (momentum, foreach, all parameters): {_fmt_s(base)}; "
                       f"the orthogonalisation (stacking the shape buckets, polar, unstacking): "
                       f"{_fmt_s(r['modelled_graph_s'] - base)}")
        if r["ops_without_cost_model"]:
            out.append(f"   ops without a cost model (not counted): {', '.join(r['ops_without_cost_model'])}")
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m orthokern.bench plan", description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", default="all", help="resnet50, tall, square or all (comma-separated)")
    p.add_argument("--mode", default="accurate,fast", help="accurate, fast or both (comma-separated)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16, float16 or float64")
    p.add_argument("--device", default="h100", choices=sorted(_cost.DEVICES), help="device model (spec-sheet rates)")
    p.add_argument("--json", default=None, help="also write the plan as JSON to this path")
    p.add_argument("--results-md", default=None, help="also write the plan into this RESULTS.md (its section only)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        dtype = getattr(torch, args.dtype)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise AttributeError
    except AttributeError:
        print(f"error: --dtype: not a floating dtype: {args.dtype!r}", file=sys.stderr)
        return 2
    suites = ["resnet50", "tall", "square"] if args.suite == "all" else args.suite.split(",")
    modes = args.mode.split(",")
    for m in modes:
        if m not in dispatch.MODES:
            print(f"error: --mode: one of {dispatch.MODES}, got {m!r}", file=sys.stderr)
            return 2
    if _env.CURRENT.triton is not None:
        print(f"error: the plan traces the Triton kernels' launchers, and {_env.CURRENT.triton}", file=sys.stderr)
        return 2
    device = _cost.DEVICES[args.device]
    try:
        rows = [plan_case(c, mode, device) for s in suites for c in cases(s, dtype) for mode in modes]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = format_plan(rows, device)
    print(text)
    if args.results_md:
        import datetime

        from .report import _section, update_results_md

        body = "\n".join([
            f"## Dry-run plan of the GPU path: {device.name}", "",
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}; torch {torch.__version__}, orthokern "
            f"{importlib.import_module('orthokern').__version__}",
            f"- command: `python -m orthokern.bench plan {' '.join(argv if argv is not None else sys.argv[1:])}`",
            "- nothing in this section was measured: it is the dispatch's own ops costed by the model in "
            "`orthokern/_cost.py` (docs/design.md, section 6)", "", "```", text, "```"])
        update_results_md(args.results_md, _section("plan", body))
        print(f"updated {args.results_md}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": dataclasses.asdict(device), "rows": rows}, f, indent=1)
        print(f"\nwrote {args.json}")
    return 0
