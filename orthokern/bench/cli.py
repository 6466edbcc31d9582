"""``python -m orthokern.bench``: how much faster than ``torch.linalg.svd`` is ``orthokern.polar(G)``, and how
accurate?

    python -m orthokern.bench --quick              # reduced sizes (the default on a CPU): about a minute
    python -m orthokern.bench                      # on a GPU: suites resnet50, resnet18, tall, square, full size
    python -m orthokern.bench --detail             # also every method x backend x mode, with ‖O‖₂, ‖OᵀO−I‖, dist
    python -m orthokern.bench --suite resnet50 --full   # all 54 ResNet-50 gradients: one total line
    python -m orthokern.bench --suite custom --shapes 64x1152x128,4096x4096
    python -m orthokern.bench --suite train        # ResNet-50 training step: SGD vs FastOrthogonalSGD
    python -m orthokern.bench plan ...             # dry run of the GPU dispatch (orthokern.bench.plan)

Output: a header (device, torch threads, the machine's load, a warning when it is busy), one row per case
(shape, dtype, spectrum: ``polar(G)``'s time and the implementation it ran, ``torch.linalg.svd``'s, the speed-up
with its q20-q80 spread, the speed-up over the SVD of Gᵀ for wide shapes, E of both, the best accurate peer),
then one line per case, "polar(G) vs torch.linalg.svd: N x faster, E = ...", and for the ResNet suites at full
size the whole-network total. ``--detail`` adds the table of every entry. Files in ``--out``: results.json
(everything) and speedup_vs_error.png (one panel per case, each orthokern point joined to its SVD point).

Entries per case: ``polar(G)`` (``orthokern.polar(G)`` with no options, once), the other methods with
backend=None in each mode (``--backends`` names backends to run them on instead, ``all`` = every available one),
and the peers ``torch_svd`` (the baseline), ``torch_svd_tall`` (wide shapes: the SVD of Gᵀ), ``muon_ns5``,
``muon_ns5_batched``, ``polar_express``.

Timing (orthokern.bench.timing): one torch thread on a CPU unless ``--threads`` says otherwise (restored
after); interleaved rounds in rotating order, at least ``--rounds`` and more while ``--case-seconds`` lasts, up
to ``--max-rounds``; speed-ups are medians of per-round paired ratios to the SVD; on a CPU the process CPU time
is reported beside the wall time. On a GPU: CUDA events, warm-up, the same interleaving.

Exit status: 0 when every orthokern result met its accuracy contract, 1 when one did not or one raised (the
offenders are printed: a benchmark that hides wrong answers is worse than none), 2 on a usage error. A
combination that cannot run here (:class:`orthokern.BackendUnavailable`) is listed, not failed.
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
from .plot import plot_speedup_vs_error
from .timing import cpu_threads, machine_load, usable_cores

PLOT_FILE = "speedup_vs_error.png"
# On a CPU the batched reimplementation of Muon's iteration is left out unless --methods names it (torch's own
# muon_ns5 stays): its bfloat16 matmuls are tens of times slower than float32 on CPUs without bfloat16 units; they
# took most of each round at the reduced sizes, and a --full CPU run did not finish in 30 minutes.
CPU_SKIPS_PEER = "muon_ns5_batched"


def _csv(text: Optional[str]) -> Optional[list[str]]:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m orthokern.bench",
        description="How much faster than torch.linalg.svd is orthokern.polar(G), and how accurate? Per case: "
        "polar(G) against torch.linalg.svd and its peers (Muon's Newton-Schulz, Polar Express), timed in "
        "interleaved rounds, checked against the accuracy contract. `python -m orthokern.bench plan --help`: "
        "the dry run of the GPU dispatch.",
        epilog="Exit status 1 when an orthokern result breaks its accuracy contract (or raises), 2 on a usage "
        "error. Files: results.json and speedup_vs_error.png in --out.",
    )
    p.add_argument("--suite", default="all",
                   help=f"comma-separated, from {', '.join(suites.SUITES)} ('all' = the polar suites "
                   f"{', '.join(suites.POLAR_SUITES)}; 'train' = ResNet-50 training step; 'custom' needs --shapes)")
    p.add_argument("--quick", action="store_true",
                   help="reduced sizes and a smaller time budget (about a minute on a 2-core CPU); the default on "
                   "a CPU")
    p.add_argument("--full", action="store_true", help="full sizes even on a CPU (slow: minutes to hours)")
    p.add_argument("--detail", action="store_true",
                   help="also print every entry (method x backend x mode and peers) with ‖O‖₂, ‖OᵀO−I‖, dist, rounds")
    p.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="comma-separated dtypes, e.g. float32,bfloat16 (default: per suite)")
    p.add_argument("--spectra", default=None,
                   help=f"comma-separated from {', '.join(suites.ALL_SPECTRA)} or 'all'; 'real' = actual "
                   "ResNet gradients (ResNet suites only) "
                   f"(default: {','.join(suites.DEFAULT_SPECTRA)}; with --quick: {','.join(suites.QUICK_SPECTRA)})")
    p.add_argument("--methods", default=None,
                   help="comma-separated orthokern methods ('auto' is polar(G)) and peers (default: all of "
                   f"{', '.join(orthokern.METHODS)}, {', '.join(runner.PEERS)}; on a CPU without "
                   f"{CPU_SKIPS_PEER}, the same arithmetic as muon_ns5)")
    p.add_argument("--backends", default=None,
                   help="backends to run the non-auto methods on: comma-separated names, or 'all' (every available "
                   "one; Triton on a CPU only when named). Default: backend=None, the best available")
    p.add_argument("--modes", default="accurate,fast", help="modes of the mode-dependent methods (polar(G) is "
                   "always accurate, as called with no options)")
    p.add_argument("--shapes", default=None, help="BxMxN list for --suite custom, e.g. 2x64x16,32x48")
    p.add_argument("--out", default="./bench-out", help=f"directory for results.json and {PLOT_FILE}")
    p.add_argument("--results-md", default=None, help="update this RESULTS.md with the tables (e.g. bench/RESULTS.md)")
    p.add_argument("--rounds", type=int, default=None,
                   help="at least this many interleaved rounds per case (default 5; train suite: timed steps per "
                   "optimiser and rounds over the gradients, default 3 on a CPU, 10 on a GPU)")
    p.add_argument("--max-rounds", type=int, default=None,
                   help="at most this many rounds per case (default 25; 50 at full size; train: 5 on a CPU, 30 "
                   "on a GPU)")
    p.add_argument("--case-seconds", type=float, default=None,
                   help="time budget of a case's rounds: more rounds (past --rounds) while it lasts "
                   "(default 2.5 with --quick; at full size 5 on a GPU, 15 on a CPU; train: per phase, 20 on a "
                   "CPU, 60 on a GPU)")
    p.add_argument("--accuracy-matrices", type=int, default=8,
                   help="check accuracy on at most this many matrices of a batch (evenly spread)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads while benchmarking (default on a CPU: 1, restored after; on a GPU: "
                   "torch's). On a shared CPU more threads make small calls wait for descheduled threads")
    p.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    p.add_argument("--no-floor", action="store_true",
                   help="skip measuring the floor (copy bandwidth, matmul rates: a few seconds on a CPU); the "
                        "'floor x' column is then n/a")
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
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device: must be cpu or cuda[:i], got {name!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device: must be cpu or cuda[:i], got {name!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device: cuda requested but torch.cuda.is_available() is False")
    return dev


def _backends(text: Optional[str], device: torch.device) -> list[Optional[str]]:
    names = _csv(text)
    if not names:
        return [None]
    if names == ["all"]:
        return list(default_backends(device))
    for b in names:
        if b not in orthokern.BACKENDS:
            raise ValueError(f"--backends: unknown backend {b!r} (use {orthokern.BACKENDS} or 'all')")
    return list(names)


def _positive(value, name: str, minimum: float = 1) -> None:
    if value is not None and value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "plan":
        from . import plan  # the lead's dry-run planner; imported only when asked for

        return plan.main(argv[1:])
    args = build_parser().parse_args(argv)
    command = "python -m orthokern.bench " + " ".join(shlex.quote(a) for a in argv)
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
        backends = _backends(args.backends, device)
        _positive(args.threads, "--threads")
        _positive(args.rounds, "--rounds")
        _positive(args.max_rounds, "--max-rounds")
        _positive(args.accuracy_matrices, "--accuracy-matrices")
        if args.case_seconds is not None and args.case_seconds < 0:
            raise ValueError(f"--case-seconds: must be >= 0, got {args.case_seconds}")
        if args.quick and args.full:
            raise ValueError("--quick and --full exclude each other")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    if device.type == "cpu" and not args.full and not args.quick:
        if any(n != "custom" for n in names):
            print("note: on a CPU the suites run at reduced sizes (--quick); --full runs the design's sizes",
                  file=sys.stderr)
        args.quick = True
    if device.type == "cpu" and not args.methods:
        peers = [p for p in peers if p != CPU_SKIPS_PEER]
    os.makedirs(args.out, exist_ok=True)
    # The load before this process does any work: what the other processes use.
    load_start, cores = machine_load(), usable_cores()
    threads = args.threads if args.threads is not None else (1 if device.type == "cpu" else None)
    with cpu_threads(threads) as nthreads:
        status = 0
        if "train" in names:
            from . import train

            status = max(status, train.main_train(args, device, command, nthreads, load_start, cores))
            names = [n for n in names if n != "train"]
        if names:
            status = max(status, _polar_suites(args, device, command, names, dtypes, spectra, shapes, methods,
                                               peers, modes, backends, nthreads, load_start, cores))
    return status


def _polar_suites(args, device, command, names, dtypes, spectra, shapes, methods, peers, modes, backends,
                  nthreads, load_start, cores) -> int:
    policy = runner.RoundPolicy(
        min_rounds=args.rounds or 5,
        max_rounds=max(args.max_rounds or (25 if args.quick else 50), args.rounds or 5),
        budget_s=(args.case_seconds if args.case_seconds is not None
                  else 2.5 if args.quick else 5.0 if device.type == "cuda" else 15.0),
    )
    cases = suites.make_cases(names, quick=args.quick, dtypes=dtypes, spectra=spectra, shapes=shapes)
    entries = runner.make_entries(methods, peers, backends, modes)
    meta = report.environment(device, nthreads, load_start, cores)
    meta["command"] = command
    meta["round_policy"] = vars(policy)
    if not args.no_progress:
        for w in report.busy_warnings(meta):
            print(w, file=sys.stderr)

    rates = None
    if not args.no_floor:
        if not args.no_progress:
            print("measuring the floor (copy bandwidth, matmul rates)...", file=sys.stderr)
        rates = floor_mod.measure_rates(device)
    if rates is not None:
        meta["floor_rates"] = rates.as_dict()
    loads = []
    t0 = time.perf_counter()
    records, skipped, errors = runner.run_cases(cases, entries, device=device, rates=rates, policy=policy,
                                                accuracy_matrices=args.accuracy_matrices,
                                                progress=not args.no_progress,
                                                after_case=lambda: loads.append(machine_load()))
    meta["seconds"] = round(time.perf_counter() - t0, 1)
    meta["load_max"] = max((x for x in loads if x is not None), default=None)
    meta["suites"], meta["quick"] = names, args.quick

    print()
    print("\n".join(report.header_lines(meta)))
    print()
    print(report.format_summary(records))
    print()
    for line in report.answer_lines(records) + report.total_lines(records, meta["device_type"]):
        print(line)
    if args.detail:
        print()
        print(report.format_detail(records))
    if rates is not None:
        r = meta["floor_rates"]
        print(f"\nfloor: {report.floor_rates_text(r)}")
    if skipped:
        reasons = list(dict.fromkeys((s["entry"], s["reason"]) for s in skipped))
        print(f"\nskipped {len(skipped)} combinations that cannot run here:")
        for entry, reason in reasons[:5]:
            print(f"  {entry}: {reason}")
        if len(reasons) > 5:
            print(f"  ... and {len(reasons) - 5} more reasons (results.json lists them all)")

    violations = [{"case": f"{r['suite']}/{r['shape']}/{r['dtype']}/{r['spectrum']}", "entry": r["label"],
                   "why": r["violation"]} for r in records if r["violation"]] + errors
    json_path = os.path.join(args.out, "results.json")
    report.write_json(json_path, meta, records, skipped, violations)
    pngs, why_no_plot = plot_speedup_vs_error(records, os.path.join(args.out, PLOT_FILE),
                                              title=f"orthokern.polar(G) vs torch.linalg.svd on {meta['device']}")
    print(f"\nwrote {json_path}" + (f" and {', '.join(pngs)}" if why_no_plot is None else f" ({why_no_plot})"))
    if args.results_md:
        report.update_results_md(args.results_md, report.results_section(meta, records, skipped, violations,
                                                                         meta.get("floor_rates")))
        print(f"updated {args.results_md}")
    print(f"{len(cases)} cases, {len(records)} results in {meta['seconds']} s")
    if violations:
        print(f"\nACCURACY VIOLATIONS ({len(violations)}):", file=sys.stderr)
        for v in violations:
            print(f"  {v['entry']} on {v['case']}: {v['why']}", file=sys.stderr)
        return 1
    return 0
