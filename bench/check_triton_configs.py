"""Compile every Triton kernel config for a real GPU target and report registers, spills, shared memory and what
the dots lower to. Needs Triton, not a GPU.

    python bench/check_triton_configs.py [--quick] [--arch 90] [--json out.json] [--jobs N]
    PYTHONPATH=/dir/with/another/triton python bench/check_triton_configs.py   # e.g. Triton 3.6 unpacked there

What is compiled is what the ops launch: every op-argument combination (operand dtypes, stored dtypes, scale /
residual, split-K or not, acc_f64, every precision) goes through the ops' own launch plans (``plan`` in
triton_kernels/gram.py, poly.py, tall_apply.py), and every candidate config of the autotune table
(triton_kernels/_configs.py) that the plan's operand class offers at any n class is compiled with the plan's
constexprs. Launch specialisation as the JIT does it on a typical launch: pointers 16-byte aligned, sizes and
strides divisible by 16, unit inner stride (a constant 1).

Per compiled kernel: registers per thread, spilled bytes (ptxas's spill stores + loads), dynamic shared memory
(Triton's metadata) and the dot lowering read from the PTX: ``wgmma`` (Hopper warpgroup MMA), ``mma`` (mma.sync,
tensor cores), ``dmma`` (mma.sync on f64 operands: the float64 tensor cores), ``fma`` (no MMA: CUDA cores).
Exit status 1 when any config spills, exceeds the shared memory of a block (227 KB on sm_90), fails to compile,
or lowers a dot to other than its operand class expects (float32 "ieee" to FMA, "tf32"/"tf32x3"/"bf16x3" and
16-bit operands to tensor-core MMA, float64 to DMMA).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import json
import os
import pathlib
import re
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, named to silence its warning

import torch  # noqa: E402
import triton  # noqa: E402

from orthokern.dispatch import _load_triton_kernels  # noqa: E402

_load_triton_kernels()
from orthokern.triton_kernels import _common, _configs, gram, poly, prologue, tall_apply  # noqa: E402

MAX_SHARED = {90: 232448, 80: 166912, 89: 101376, 100: 232448}  # bytes per block (opt-in maximum)
DTYPES = {torch.float32: "fp32", torch.float64: "fp64", torch.bfloat16: "bf16", torch.float16: "fp16",
          torch.bool: "i1"}
F32, F64, BF16, F16 = torch.float32, torch.float64, torch.bfloat16, torch.float16


def _meta(*shape, dtype=F32):
    return torch.empty(shape, dtype=dtype, device="meta")


# ---------------------------------------------------------------- what the ops launch
def op_calls(quick: bool):
    """(op label, KernelCall) for every op-argument combination, at n = each n class (m = 4 n, B = 2)."""
    n_classes = [16, 32, 64, 128, 256, 512]
    half = (BF16, F16)
    for n in n_classes:
        m = 4 * n
        # sym_gram: operand dtype x scale x split x acc_f64 x precision (x the 16-bit result NS stores)
        for gd in (F32, F64) + half:
            for acc64 in (False, True):
                if gd == F64 and not acc64:
                    continue
                precs = _common.PRECISIONS if (gd == F32 and not acc64) else ("ieee",)
                outs = [F64 if acc64 else F32] + ([gd] if gd in half and not acc64 else [])
                for prec in precs:
                    for has_scale in (False, True):
                        for splits in (1, 2):
                            for od in outs:
                                G = _meta(2, m, n, dtype=gd)
                                out = _meta(2, n, n, dtype=od)
                                sc = _meta(2) if has_scale else None
                                label = f"sym_gram G={DTYPES[gd]} acc_f64={acc64} out={DTYPES[od]} {prec}"
                                for call in gram.plan(G, sc, out, acc64, splits, prec, allocate=False):
                                    yield label, call
        # sym_poly: dtype x precision
        for ad in (F32, F64) + half:
            for prec in (_common.PRECISIONS if ad == F32 else ("ieee",)):
                A = _meta(2, n, n, dtype=ad)
                for call in poly.plan(A, A, -4.7, 2.0, prec):
                    yield f"sym_poly A={DTYPES[ad]} {prec}", call
        # apply: G dtype x Mat dtype x out dtype x scale x residual x precision. The out dtype is G's, or another as
        # the Newton–Schulz steps store it: fast mode's last bfloat16 step stores the caller's dtype (float32, or
        # float16), an accurate float32 step of a half-precision G stores that G's dtype (triton_kernels/polar.py).
        for gd in (F32, F64) + half:
            for md in (F32, F64) + half:
                if md in half and gd != md:
                    continue  # a 16-bit Mat is only used with a G of its dtype (the fast Newton–Schulz steps)
                outs = (gd,) + ((F32,) + tuple(h for h in half if h != gd) if gd in half
                                else half if (gd, md) == (F32, F32) else ())
                for od in outs:
                    for prec in (_common.PRECISIONS if md == F32 else ("ieee",)):
                        for has_scale in (False, True):
                            for alpha in (0.0, 1.5):
                                G = _meta(2, m, n, dtype=gd)
                                sc = _meta(2) if has_scale else None
                                label = f"apply G={DTYPES[gd]} Mat={DTYPES[md]} {prec}"
                                if od != gd:
                                    label += f" out={DTYPES[od]}"
                                for call in tall_apply.plan(G, _meta(2, n, n, dtype=md), sc,
                                                            _meta(2, m, n, dtype=od), alpha, 1.0, prec):
                                    yield label, call
        # the prologue kernels (no dots, not tuned): the Gram-side scaling, the first factor by (A, result) dtype
        A64 = _meta(2, n, n, dtype=F64)
        for call in prologue.gram_scale_plan(A64, A64, _meta(2, dtype=F64), _meta(2, dtype=torch.bool)):
            yield "prologue gram_scale", call
        for ad, od in ((F32, F32), (F32, BF16), (F64, F64)):
            A = _meta(2, n, n, dtype=ad)
            for call in prologue.first_factor_plan(A, A, _meta(2, dtype=ad), _meta(2, n, n, dtype=od), 8.2, -22.5,
                                                   15.9):
                yield f"prologue first_factor A={DTYPES[ad]} out={DTYPES[od]}", call
    # pow2_scale: amax in G's dtype -> the compute dtype's scale (no n)
    for gd in (F32, F64) + half:
        cd = F64 if gd == F64 else F32
        e_lo, e_hi = (-1021, 1024) if cd == F64 else (-125, 128)
        for call in prologue.pow2_scale_plan(_meta(2, dtype=gd), _meta(2, dtype=cd), _meta(2, dtype=torch.bool), e_lo,
                                             e_hi):
            yield f"prologue pow2_scale amax={DTYPES[gd]}", call


QUICK = [  # a subset for the test: one op per dot lowering (tf32x3, dmma from 16-bit loads, fma, bf16)
    "sym_gram G=fp32 acc_f64=False out=fp32 tf32x3",
    "sym_gram G=bf16 acc_f64=True out=fp64 ieee",
    "sym_poly A=fp32 ieee",
    "apply G=bf16 Mat=bf16 ieee",
]


def jobs(quick: bool, only: str | None = None):
    """Unique (kernel, specialisation, config) compile jobs, each with the op labels and n classes that use it;
    ``only``: a regular expression the op label must match."""
    out: dict[str, dict] = {}
    seen_quick = set()
    for label, call in op_calls(quick):
        if only and not re.search(only, label):
            continue
        if quick:
            # the largest n class, the first argument combination of each listed op
            if label not in QUICK or call.args.get("N") != 512 or (label, call.name) in seen_quick:
                continue
            seen_quick.add((label, call.name))
        family = _configs.family_of(call.kernel)
        n = call.args.get("N", 16)
        if family is None:
            configs = [None]  # the split reduction: one fixed block size in call.meta
        else:
            configs = _configs.candidates(family, call.args, call.meta, gpu=True)
            if quick:
                configs = configs[:1]
        for cfg in configs:
            sig, consts, attrs = specialise(call, cfg)
            opts = ({"num_warps": cfg.num_warps, "num_stages": cfg.num_stages} if cfg is not None
                    else {"num_warps": call.meta.get("num_warps", 4), "num_stages": 1})
            key = json.dumps([call.name, sig, {k: repr(v) for k, v in consts.items()}, opts], sort_keys=True)
            if key not in out:
                out[key] = dict(kernel=call.name, sig=sig, consts=consts, attrs=attrs, opts=opts, ops=set(),
                                n_classes=set(), meta={k: v for k, v in call.meta.items() if k != "num_warps"},
                                config=dict(cfg.kwargs) if cfg is not None else {})
            out[key]["ops"].add(label)
            out[key]["n_classes"].add(_common.n_class(n))
    return list(out.values())


def specialise(call, cfg):
    """Triton signature, constexprs and attributes of a launch, as the JIT would specialise a typical one."""
    sig, consts, attrs = {}, {}, {}
    fn = _jit_fn(call.kernel)
    names = fn.arg_names
    values = {**call.args, **call.meta, **(cfg.kwargs if cfg is not None else {})}
    values.pop("num_warps", None)
    for i, name in enumerate(names):
        v = values[name]
        if isinstance(v, torch.Tensor):
            sig[name] = "*" + DTYPES[v.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in call.meta or (cfg is not None and name in cfg.kwargs) or isinstance(v, (bool, str)):
            sig[name] = "constexpr"
            consts[name] = v
        elif isinstance(v, float):
            sig[name] = "fp64"  # the kernels annotate their float arguments tl.float64
        elif isinstance(v, int):
            if v == 1:
                sig[name] = "constexpr"
                consts[name] = 1
            else:
                sig[name] = "i32"
                if v % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            raise TypeError(f"{call.name}: argument {name} of type {type(v)}")
    return sig, consts, attrs


def _jit_fn(kernel):
    while not isinstance(kernel, triton.runtime.jit.JITFunction):
        kernel = kernel.fn
    return kernel


KERNELS = {"gram._gram_kernel": gram._gram_kernel, "gram._reduce_splits_kernel": gram._reduce_splits_kernel,
           "poly._sym_poly_kernel": poly._sym_poly_kernel, "tall_apply._apply_kernel": tall_apply._apply_kernel,
           "prologue._pow2_scale_kernel": prologue._pow2_scale_kernel,
           "prologue._gram_scale_kernel": prologue._gram_scale_kernel,
           "prologue._first_factor_kernel": prologue._first_factor_kernel}


# ---------------------------------------------------------------- compile and read
def compile_job(job: dict, arch: int, cache_dir: str) -> dict:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    # Compile afresh (ptxas prints its log only on a real compile) into a private cache.
    triton.knobs.nvidia.dump_ptxas_log = True
    triton.knobs.compilation.always_compile = True
    triton.knobs.cache.dir = cache_dir
    fn = _jit_fn(KERNELS[job["kernel"]])
    src = ASTSource(fn, job["sig"], job["consts"], job["attrs"])
    log = io.StringIO()
    row = {k: job[k] for k in ("kernel", "opts", "config")}
    row.update(meta={k: v for k, v in job["meta"].items()}, ops=sorted(job["ops"]), n_classes=sorted(job["n_classes"]),
               dtypes={k: v for k, v in job["sig"].items() if v.startswith("*")})
    try:
        with contextlib.redirect_stdout(log):
            k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(job["opts"]))
    except Exception as e:  # a config that does not compile is a finding, not a crash of the check
        row.update(error=f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}")
        return row
    text = log.getvalue()
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    stack = re.search(r"(\d+) bytes stack frame", text)
    ptx = k.asm["ptx"]
    row.update(regs=int(regs.group(1)) if regs else None,
               spill_bytes=int(spill.group(1)) + int(spill.group(2)) if spill else None,
               stack_bytes=int(stack.group(1)) if stack else None, shared=int(k.metadata.shared),
               lowering=lowering(ptx))
    return row


def lowering(ptx: str) -> str:
    if re.search(r"mma\.sync\.aligned\.\S*\.f64\.f64", ptx):
        return "dmma"
    if "wgmma.mma_async" in ptx:
        kinds = sorted(set(re.findall(r"wgmma\.mma_async\.sync\.aligned\.m\d+n\d+k\d+\.f32\.(\w+)\.", ptx)))
        return "wgmma." + "+".join(kinds)
    if "mma.sync" in ptx:
        kinds = sorted(set(re.findall(r"mma\.sync\.aligned\.m\d+n\d+k\d+\.row\.col\.f32\.(\w+)\.", ptx)))
        return "mma." + "+".join(kinds)
    return "fma"


def expected_lowering(row: dict) -> str | None:
    """What the dots of a kernel must lower to, from its operand class (None: a kernel without dots)."""
    if row["kernel"] == "gram._reduce_splits_kernel" or row["kernel"].startswith("prologue."):
        return None  # no dots
    meta = row["meta"]
    if meta.get("ACC_F64"):
        return "dmma"
    dot = row["dtypes"]["MAT"] if row["kernel"] == "tall_apply._apply_kernel" else row["dtypes"].get(
        "G", row["dtypes"].get("A"))
    if dot in ("*bf16", "*fp16"):
        return "tc"
    return "fma" if meta.get("PRECISION") == "ieee" else "tc"


def verdict(row: dict, arch: int) -> str:
    if "error" in row:
        return "FAIL"
    problems = []
    if row["spill_bytes"]:
        problems.append("SPILL")
    if row["shared"] > MAX_SHARED.get(arch, MAX_SHARED[90]):
        problems.append("SMEM")
    want, got = expected_lowering(row), row["lowering"]
    if want == "tc" and not (got.startswith("wgmma") or got.startswith("mma")):
        problems.append("NOT-TC")
    elif want in ("dmma", "fma") and got != want:
        problems.append(f"NOT-{want.upper()}")
    return ",".join(problems) or "ok"


def format_table(rows: list[dict], arch: int) -> str:
    cols = ["kernel", "dtypes", "specialisation", "config", "n classes", "regs", "spill B", "smem KB", "lowering",
            "status"]
    lines = [f"Triton {triton.__version__}, target sm_{arch}: {len(rows)} compiled kernels", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cfg = " ".join(f"{k[6:] if k.startswith('BLOCK_') else k}={v}" for k, v in r["config"].items())
        cfg += f" w{r['opts']['num_warps']} s{r['opts']['num_stages']}"
        spec = " ".join(f"{k}={v}" for k, v in r["meta"].items() if k != "BLOCK_N" or not r["config"])
        dts = " ".join(f"{k}:{v[1:]}" for k, v in r["dtypes"].items() if k not in ("SCALE",)
                       or r["meta"].get("HAS_SCALE"))
        cells = [r["kernel"], dts, spec, cfg, ",".join(map(str, r["n_classes"])),
                 str(r.get("regs", "")), str(r.get("spill_bytes", "")),
                 f"{r['shared'] / 1024:.0f}" if "shared" in r else "", r.get("lowering", r.get("error", "")),
                 r["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    bad = [r for r in rows if r["status"] != "ok"]
    lines += ["", f"{len(rows) - len(bad)} ok, {len(bad)} with problems"
              + (f", worst regs {max(r.get('regs') or 0 for r in rows)}" if rows else "")]
    return "\n".join(lines)


def run(quick: bool = False, arch: int = 90, n_jobs: int = 1, only: str | None = None) -> list[dict]:
    todo = jobs(quick, only)
    with tempfile.TemporaryDirectory(prefix="orthokern_check_") as cache_dir:
        if n_jobs > 1:
            with concurrent.futures.ProcessPoolExecutor(n_jobs) as ex:
                rows = list(ex.map(compile_job, todo, [arch] * len(todo), [cache_dir] * len(todo)))
        else:
            rows = [compile_job(j, arch, cache_dir) for j in todo]
    for r in rows:
        r["status"] = verdict(r, arch)
    rows.sort(key=lambda r: (r["kernel"], json.dumps(r["dtypes"]), json.dumps(r["meta"], default=str),
                             json.dumps(r["config"])))
    return rows


# ---------------------------------------------------------------- what a first optimiser step compiles
def first_step_compiles(shapes: dict[tuple[int, int], int], mode: str = "accurate", dtype=F32, sms: int = 132):
    """The autotune keys the Triton backend hits on one polar step over gradients of ``shapes`` ((out, in) ->
    number of layers, e.g. orthokern.bench.suites.RESNET50_SHAPES), grouped by shape as the optimiser groups
    them, with ``method="auto"`` on a GPU of ``sms`` SMs: {"keys": {key: configs}, "configs": total,
    "untuned": {kernel specialisation, ...}} (the untuned kernels compile once per specialisation).

    Runs the Triton implementations that the dispatch's auto rule picks for CUDA (``choose_method`` with
    device "cuda", then ``resolve(..., "triton")``) on fake tensors and asks each recorded op's cost model;
    the fake tensors are CPU ones because a CPU-only torch cannot run every op of triton_kernels/polar.py on
    fake CUDA tensors (indexing raises "PyTorch is not linked with support for cuda devices"), so polar.py's one
    device-dependent choice, bfloat16 fast-mode steps, is made as on CUDA here.
    """
    import dataclasses

    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode

    from orthokern import DEFAULT_RCOND, _cost, _env, dispatch

    tp = dispatch.triton_polar()
    env = dataclasses.replace(_env.CURRENT, triton=None, cuda_available=True, interpret=True)

    class Recorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if str(func) in _cost.COSTS:
                self.calls.append((str(func), args, kwargs or {}, out))
            return out

    keys: dict[str, int] = {}
    untuned: set[str] = set()
    low = tp.low_precision_dtype
    tp.low_precision_dtype = lambda G: torch.bfloat16
    with contextlib.ExitStack() as stack:
        stack.callback(setattr, tp, "low_precision_dtype", low)
        stack.enter_context(FakeTensorMode())
        stack.enter_context(_common.assume_sm_count(sms))
        for (out_f, in_f), count in shapes.items():
            m, n = max(out_f, in_f), min(out_f, in_f)
            G = torch.empty(count, m, n, dtype=dtype)
            with Recorder() as rec:
                method = dispatch.choose_method(m, n, "cuda", mode)
                dispatch.resolve(method, "triton", G, env).fn(G, mode=mode, rcond=DEFAULT_RCOND)
            for name, args, kwargs, out in rec.calls:
                for launch in _cost.COSTS[name](args, kwargs, out):
                    if launch.tune is not None:
                        keys[launch.tune[0]] = launch.tune[1]
                    else:
                        untuned.add(f"{launch.kernel}{tuple(str(a.dtype) for a in args if hasattr(a, 'dtype'))}")
    return {"keys": keys, "configs": sum(keys.values()), "untuned": untuned}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a subset: one config per dot lowering")
    p.add_argument("--arch", type=int, default=90, help="compute capability to compile for (default 90)")
    p.add_argument("--jobs", type=int, default=1, help="compile in this many processes")
    p.add_argument("--only", help="only the ops whose label matches this regular expression (e.g. 'apply G=bf16')")
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--resnet50", action="store_true",
                   help="instead: the autotune keys and configs a first ResNet-50 polar step compiles (no compile)")
    args = p.parse_args(argv)
    if args.resnet50:
        from orthokern.bench.suites import RESNET50_SHAPES

        for mode in ("accurate", "fast"):
            r = first_step_compiles(RESNET50_SHAPES, mode)
            print(f"ResNet-50, mode={mode}: {len(r['keys'])} autotune keys, {r['configs']} configs to compile; "
                  f"{len(r['untuned'])} untuned kernel specialisations")
            for k, v in sorted(r["keys"].items()):
                print(f"  {v}  {k}")
            for k in sorted(r["untuned"]):
                print(f"  1  {k} (not autotuned)")
        return 0
    if _common.interpreting():
        p.error("TRITON_INTERPRET is set: the kernels are interpreted, not compiled; unset it")
    rows = run(args.quick, args.arch, args.jobs, args.only)
    print(format_table(rows, args.arch))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"triton": triton.__version__, "arch": args.arch, "rows": rows}, f, indent=1, default=str)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
