"""Sharded orthogonalisation under torch.distributed: work per rank and bytes exchanged, per world size.

    PYTHONPATH=. python bench/bench_distributed.py [--worlds 1,2,4] [--suite resnet18] [--rounds 5] [--json out.json]

For each world size W it spawns W processes (gloo on a CPU, NCCL with one GPU per rank where there are enough
GPUs) holding the weight gradients of a network, and times ``FastOrthogonalSGD.step()`` two ways:

* ``shared``: the default (``distributed="auto"``): each rank transforms its share of every shape bucket and the
  results are exchanged (:mod:`orthokern.optim.distributed`);
* ``every rank``: ``distributed=False``: every rank transforms every matrix (after gathering the whole
  gradients, for FSDP2 layouts), which is what DDP does without orthokern's sharing.

Both for replicated gradients (plain tensors, as under DDP) and for FSDP2's layout (DTensors sharded on dim 0).
Per rank it reports the CPU (or GPU) time spent inside the polar calls (the orthogonalisation work this rank
does), the wall time of the whole step (work + exchange + the SGD update) and the bytes this rank sent and
received, as medians over ``--rounds`` steps after one warm-up step; the table shows the busiest rank.

CPU time per rank (``time.process_time``) is the measure that means something when the ranks share fewer cores
than there are ranks (4 ranks on 2 cores): wall times then include waiting for a core. Each rank runs torch on
one thread.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist

LAYOUTS = ("replicated", "fsdp2")
MODES = ("shared", "every rank")


def suite_shapes(name: str) -> list[tuple[int, int]]:
    """(out, fan-in) of every weight of the network, with repetitions."""
    if name == "digits":  # examples/digits.py's BasicCNN
        return [(32, 9), (32, 288), (32, 288), (10, 32)]
    from orthokern.bench import suites

    table = {"resnet18": suites.RESNET18_SHAPES, "resnet50": suites.RESNET50_SHAPES}[name]
    return [shape for shape, count in table.items() for _ in range(count)]


class _PolarClock:
    """Accumulates the CPU (or CUDA) time spent in the optimiser's batched transform calls on this rank."""

    def __init__(self, device):
        import orthokern.optim.batched as batched

        self.batched, self.real, self.device, self.seconds = batched, batched.apply, device, 0.0

    def __enter__(self):
        def timed(X, t):
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = self.real(X, t)
                end.record()
                end.synchronize()
                self.seconds += start.elapsed_time(end) / 1e3
                return out
            t0 = time.process_time()
            out = self.real(X, t)
            self.seconds += time.process_time() - t0
            return out

        # Both the local path (batched.by_shape) and the shared one (distributed.replicated, handed
        # batched.apply by the optimiser) look the function up on the module at each call.
        self.batched.apply = timed
        return self

    def __exit__(self, *exc):
        self.batched.apply = self.real


def _worker(rank: int, world: int, args, tmp: str) -> None:
    torch.set_num_threads(1)
    use_cuda = torch.cuda.is_available() and torch.cuda.device_count() >= world
    device = torch.device("cuda", rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if use_cuda else "gloo", init_method=f"file://{tmp}/store_{world}",
                            rank=rank, world_size=world, timeout=datetime.timedelta(seconds=600))
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from orthokern.optim import FastOrthogonalSGD

    mesh = init_device_mesh(device.type, (world,))
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(s, generator=gen).to(dtype) / s[1] ** 0.5 for s in suite_shapes(args.suite)]
    rows = []
    for layout in LAYOUTS:
        for mode in MODES:
            if layout == "fsdp2":
                params = [torch.nn.Parameter(distribute_tensor(torch.zeros(g.shape, dtype=dtype, device=device),
                                                               mesh, [Shard(0)])) for g in grads]
                for p, g in zip(params, grads):
                    p.grad = distribute_tensor(g.to(device), mesh, [Shard(0)])
            else:
                params = [torch.nn.Parameter(torch.zeros(g.shape, dtype=dtype, device=device)) for g in grads]
                for p, g in zip(params, grads):
                    p.grad = g.to(device)
            opt = FastOrthogonalSGD(params, lr=1e-3, method=args.method,
                                    distributed="auto" if mode == "shared" else False)
            polar_s, step_s, stats = [], [], None
            for r in range(args.rounds + 1):
                dist.barrier()
                if use_cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                with _PolarClock(device) as clock:
                    opt.step()
                if use_cuda:
                    torch.cuda.synchronize()
                if r > 0:  # the first step is the warm-up
                    step_s.append(time.perf_counter() - t0)
                    polar_s.append(clock.seconds)
                stats = opt.orthokern_stats
            rows.append({"world": world, "rank": rank, "layout": layout, "mode": mode,
                         "polar_s": statistics.median(polar_s), "step_s": statistics.median(step_s),
                         "matrices": stats.matrices, "matrices_total": stats.matrices_total,
                         "bytes_sent": stats.bytes_sent, "bytes_received": stats.bytes_received,
                         "collectives": stats.collectives, "device": str(device)})
    with open(os.path.join(tmp, f"rows_{world}_{rank}.json"), "w") as f:
        json.dump(rows, f)
    dist.destroy_process_group()


def run(args) -> list[dict]:
    import torch.multiprocessing as mp

    rows = []
    for world in args.worlds:
        with tempfile.TemporaryDirectory() as tmp:
            mp.start_processes(_worker, args=(world, args, tmp), nprocs=world, join=True, start_method="spawn")
            for rank in range(world):
                with open(os.path.join(tmp, f"rows_{world}_{rank}.json")) as f:
                    rows += json.load(f)
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: per (layout, world, mode) the busiest rank's polar time and step time, and its traffic."""
    out = ["| layout | ranks | mode | matrices on the busiest rank | polar time, busiest rank | step time, busiest "
           "rank | sent / received per rank |",
           "|---|---|---|---|---|---|---|"]
    keys = sorted({(r["layout"], r["world"], r["mode"]) for r in rows},
                  key=lambda k: (LAYOUTS.index(k[0]), k[1], MODES.index(k[2])))
    for layout, world, mode in keys:
        rs = [r for r in rows if (r["layout"], r["world"], r["mode"]) == (layout, world, mode)]
        busiest = max(rs, key=lambda r: r["polar_s"])
        sent = max(r["bytes_sent"] for r in rs) / 2**20
        received = max(r["bytes_received"] for r in rs) / 2**20
        out.append(f"| {layout} | {world} | {mode} | {max(r['matrices'] for r in rs)} of {rs[0]['matrices_total']} "
                   f"| {busiest['polar_s'] * 1e3:.1f} ms | {max(r['step_s'] for r in rs) * 1e3:.1f} ms "
                   f"| {sent:.2f} / {received:.2f} MiB |")
    return "\n".join(out)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python bench/bench_distributed.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--worlds", default="1,2,4", help="comma-separated world sizes (default 1,2,4)")
    p.add_argument("--suite", default="resnet18", choices=("digits", "resnet18", "resnet50"),
                   help="whose weight shapes (default resnet18: 21 matrices, 11.7 M weights)")
    p.add_argument("--method", default="auto", help="orthokern.polar method (default auto)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float64"))
    p.add_argument("--rounds", type=int, default=5, help="timed steps after one warm-up step (default 5)")
    p.add_argument("--json", default=None, help="write the rows and the environment here")
    p.add_argument("--results-md", default=None, help="also write the table into this RESULTS.md (its section only)")
    args = p.parse_args(argv)
    args.worlds = [int(w) for w in args.worlds.split(",")]
    if any(w < 1 for w in args.worlds) or args.rounds < 1:
        p.error("--worlds and --rounds must be positive")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    env = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
           "load_average_at_start": os.getloadavg()[0], "threads_per_rank": 1,
           "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:])}
    rows = run(args)
    env["load_average_at_end"] = os.getloadavg()[0]
    print(f"{args.suite} weight gradients, {args.dtype}, method={args.method}; medians of {args.rounds} steps; "
          f"{env['cpus']} CPUs, load average {env['load_average_at_start']:.1f} -> {env['load_average_at_end']:.1f}")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "config": vars(args), "rows": rows}, f, indent=1)
    if args.results_md:
        from orthokern.bench.report import _section, update_results_md

        body = "\n".join([
            "## Distributed orthogonalisation (CPU, gloo)", "",
            f"- date: {env['date']}; torch {env['torch']}, Python {env['python']}; {env['cpus']} CPUs, one torch "
            f"thread per rank, load average {env['load_average_at_start']:.1f} -> {env['load_average_at_end']:.1f}",
            f"- command: `python bench/{env['command']}`",
            f"- {args.suite} weight gradients, {args.dtype}, method={args.method}; medians of {args.rounds} steps",
            "", table(rows)])
        update_results_md(args.results_md, _section("distributed-cpu", body))
        print(f"updated {args.results_md}")
    return rows


if __name__ == "__main__":
    main()
