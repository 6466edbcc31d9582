"""``python -m orthokern.bench``: time every orthokern method and backend against its peers, check accuracy.

Exit status: 0 when every orthokern result met its accuracy contract, 1 when one did not (the offenders are
printed: a benchmark that hides wrong answers is worse than none), 2 on a usage error.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from typing import Optional, Sequence

import torch

import orthokern

from . import floor as floor_mod
from . import report, runner, suites
from .plot import plot_time_vs_error


def _csv(text: Optional[str]) -> Optional[list[str]]:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m orthokern.bench",
        description="Benchmark orthokern.polar (every method x backend) against torch.linalg.svd, Muon's "
        "Newton-Schulz and Polar Express; print a table, write JSON and a time-vs-error plot.",
    )
    p.add_argument("--suite", default="all",
                   help=f"comma-separated, from {', '.join(suites.SUITES)} ('all' = the polar suites "
                   f"{', '.join(suites.POLAR_SUITES)}; 'train' = ResNet-50 training step; 'custom' needs --shapes)")
    p.add_argument("--quick", action="store_true",
                   help="reduced sizes and fewer rounds (under a minute on a small CPU); the default on a CPU")
    p.add_argument("--full", action="store_true", help="full sizes even on a CPU (slow: minutes to hours)")
    p.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="comma-separated dtypes, e.g. float32,bfloat16 (default: per suite)")
    p.add_argument("--spectra", default=None,
                   help=f"comma-separated from {', '.join(suites.ALL_SPECTRA)} or 'all'; 'real' = actual "
                   "ResNet gradients (ResNet suites only) "
                   f"(default: {','.join(suites.DEFAULT_SPECTRA)}; with --quick: {','.join(suites.QUICK_SPECTRA)})")
    p.add_argument("--methods", default=None,
                   help="comma-separated orthokern methods and peers (default: all of "
                   f"{', '.join(orthokern.METHODS)}, {', '.join(runner.PEERS)})")
    p.add_argument("--backends", default=None,
                   help="comma-separated (default: every available backend; Triton on a CPU only when named)")
    p.add_argument("--modes", default="accurate,fast", help="modes for the mode-dependent methods")
    p.add_argument("--shapes", default=None, help="BxMxN list for --suite custom, e.g. 2x64x16,32x48")
    p.add_argument("--out", default="./bench-out", help="directory for results.json and time_vs_error.png")
    p.add_argument("--results-md", default=None, help="update this RESULTS.md with the table (e.g. bench/RESULTS.md)")
    p.add_argument("--rounds", type=int, default=None, help="timing rounds per entry (default 5; 3 with --quick)")
    p.add_argument("--max-entry-seconds", type=float, default=None,
                   help="time budget per entry: fewer rounds (never < 3) past it (default 3; 0.3 with --quick)")
    p.add_argument("--accuracy-matrices", type=int, default=8,
                   help="check accuracy on at most this many matrices of a batch (evenly spread)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's). On a shared CPU, 1 gives far steadier timings: "
                   "idle OpenMP threads waiting for a busy core stall small calls by a scheduler slice")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--train-batch", type=int, default=None,
                   help="train suite: batch size (default: 256 on a GPU, 32 with --quick; 2 on a CPU)")
    p.add_argument("--train-image", type=int, default=None,
                   help="train suite: image size (default: 224 on a GPU, 64 on a CPU)")
    return p


def default_backends(device: torch.device) -> list[str]:
    """Every backend that can run on ``device``, except Triton on a CPU: there it runs only in the
    interpreter (TRITON_INTERPRET=1), which tests kernels but says nothing about their speed. An explicit
    ``--backends triton`` still runs it."""
    backends = orthokern.available_backends(device)
    return [b for b in backends if not (b == "triton" and device.type != "cuda")]


def _device(name: Optional[str]) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device: cuda requested but torch.cuda.is_available() is False")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device: must be cpu or cuda, got {name!r}")
    return dev


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    command = "python -m orthokern.bench " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                               else sys.argv[1:]))
    try:
        device = _device(args.device)
        names = suites.expand_suites(_csv(args.suite) or ["all"])
        dtypes = [suites.parse_dtype(d) for d in _csv(args.dtype)] if args.dtype else None
        spectra = _csv(args.spectra)
        if spectra == ["all"]:
            spectra = list(suites.ALL_SPECTRA)
        for s in spectra or ():
            if s not in suites.ALL_SPECTRA:
                raise ValueError(f"--spectra: unknown spectrum {s!r} (use {suites.ALL_SPECTRA})")
        shapes = suites.parse_shapes(args.shapes) if args.shapes else None
        if shapes and "custom" not in names:
            names = ["custom"]
        methods, peers = runner.split_methods(_csv(args.methods))
        modes = _csv(args.modes) or ["accurate"]
        for m in modes:
            if m not in orthokern.MODES:
                raise ValueError(f"--modes: unknown mode {m!r} (use {orthokern.MODES})")
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"--threads: must be >= 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        backends = _csv(args.backends) or default_backends(device)
        for b in backends:
            if b not in orthokern.BACKENDS:
                raise ValueError(f"--backends: unknown backend {b!r} (use {orthokern.BACKENDS})")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    if args.quick and args.full:
        print("error: --quick and --full exclude each other", file=sys.stderr)
        return 2
    if device.type == "cpu" and not args.full and not args.quick:
        if any(n != "custom" for n in names):
            print("note: on a CPU the suites run at reduced sizes (--quick); --full runs the design's sizes",
                  file=sys.stderr)
        args.quick = True
    os.makedirs(args.out, exist_ok=True)
    status = 0
    if "train" in names:
        from . import train

        status = max(status, train.main_train(args, device, command))
        names = [n for n in names if n != "train"]
        if not names:
            return status

    rounds = args.rounds or (3 if args.quick else 5)
    max_entry = args.max_entry_seconds if args.max_entry_seconds is not None else (0.3 if args.quick else 3.0)
    cases = suites.make_cases(names, quick=args.quick, dtypes=dtypes, spectra=spectra, shapes=shapes)
    entries = runner.make_entries(methods, peers, backends, modes)
    meta = report.environment(device)
    meta["command"] = command

    rates = None
    if device.type == "cuda":
        print("measuring the floor (copy bandwidth, matmul rates)...", file=sys.stderr)
        rates = floor_mod.measure_rates(device)
        meta["floor_rates"] = rates.as_dict()
    t0 = time.perf_counter()
    records, skipped, errors = runner.run_cases(cases, entries, device=device, rates=rates, rounds=rounds,
                                        max_entry_s=max_entry, accuracy_matrices=args.accuracy_matrices,
                                        progress=not args.no_progress)
    meta["seconds"] = round(time.perf_counter() - t0, 1)
    meta["suites"], meta["quick"] = names, args.quick

    print(f"\northokern.bench on {meta['device']} — torch {meta['torch']}, Triton {meta['triton']}; "
          f"backends {', '.join(backends)}")
    print(report.format_table(records))
    if rates is None:
        print("floor x: n/a (the floor is only measured on a GPU)")
    else:
        r = meta["floor_rates"]
        print(f"floor: copy {r['copy_GBps']:.0f} GB/s, matmul " +
              ", ".join(f"{k} {v:.1f} TFLOP/s" for k, v in r["matmul_TFLOPs"].items()))
    if skipped:
        print(f"\nskipped {len(skipped)} combinations that cannot run here:")
        seen = set()
        for s in skipped:
            if (s["entry"], s["reason"]) not in seen:
                seen.add((s["entry"], s["reason"]))
                print(f"  {s['entry']}: {s['reason']}")

    violations = [{"case": f"{r['suite']}/{r['shape']}/{r['dtype']}/{r['spectrum']}",
                   "entry": f"{r['method']}/{r['backend']}/{r['mode']}", "why": r["violation"]}
                  for r in records if r["violation"]] + errors
    json_path = os.path.join(args.out, "results.json")
    report.write_json(json_path, meta, records, skipped, violations)
    png_path = os.path.join(args.out, "time_vs_error.png")
    why_no_plot = plot_time_vs_error(records, png_path, title=f"orthokern.bench on {meta['device']}")
    print(f"\nwrote {json_path}" + (f" and {png_path}" if why_no_plot is None else f" ({why_no_plot})"))
    if args.results_md:
        report.update_results_md(args.results_md, report.results_section(meta, records, skipped, violations,
                                                                         meta.get("floor_rates")))
        print(f"updated {args.results_md}")
    print(f"{len(records)} results in {meta['seconds']} s")
    if violations:
        print(f"\nACCURACY VIOLATIONS ({len(violations)}):", file=sys.stderr)
        for v in violations:
            print(f"  {v['entry']} on {v['case']}: {v['why']}", file=sys.stderr)
        status = 1
    return status
