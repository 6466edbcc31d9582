"""Orthogonal-SGDM under FSDP2 on CPU: the digits BasicCNN (examples/digits.py) sharded over ranks with
``fully_shard``, trained by ``orthokern.FastOrthogonalSGD``, which shares the orthogonalisation between ranks.

    torchrun --standalone --nproc_per_node=2 examples/distributed_digits.py                # 2 ranks, gloo, CPU
    torchrun --standalone --nproc_per_node=2 examples/distributed_digits.py --every-rank   # the comparison
    python examples/distributed_digits.py                                                  # one process

``--every-rank`` makes every rank orthogonalise every matrix (``distributed=False``).

Each parameter is a DTensor sharded on its first dimension. At each step every rank computes the gradient of its
slice of the global batch; FSDP2 reduce-scatters the gradients; then the optimiser gives each parameter an owner
rank, sends the owner the shards (one all_to_all per same-shape batch), the owner orthogonalises whole
matrices, and a reverse all_to_all returns the shards. Rank 0 prints the test accuracy per epoch and, at the end,
what the optimiser did per rank: matrices orthogonalised, time in the optimiser step, bytes exchanged.
The hyper-parameters are the paper's (lr 1e-2, momentum 0.9, weight decay 5e-4). Needs scikit-learn.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from digits import MOMENTUM, WEIGHT_DECAY, BasicCNN, load_data  # noqa: E402  (the example beside this one)

import orthokern  # noqa: E402
from orthokern.optim import FastOrthogonalSGD  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="torchrun --standalone --nproc_per_node=2 examples/distributed_digits.py",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32, help="global batch (split evenly between ranks)")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--method", default="auto", choices=orthokern.METHODS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--every-rank", action="store_true",
                   help="distributed=False: every rank orthogonalises every matrix (the comparison)")
    p.add_argument("--json", default=None, help="rank 0 writes the accuracies and per-rank figures here")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1:
        p.error("--epochs and --batch-size must be positive")
    return args


def init_distributed() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment, or a one-process group when run without torchrun."""
    if "RANK" not in os.environ:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29531")
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("gloo", timeout=datetime.timedelta(minutes=5))
    return dist.get_rank(), dist.get_world_size()


@torch.no_grad()
def accuracy(model, x, y) -> float:
    model.eval()
    acc = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return acc


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)  # the ranks share the CPU
    rank, world = init_distributed()
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} must be divisible by the number of ranks ({world})")
    mesh = init_device_mesh("cpu", (world,))
    x_train, y_train, x_test, y_test = load_data("cpu")
    torch.manual_seed(args.seed)  # the same initial weights on every rank, before sharding
    model = BasicCNN()
    for layer in model.features:
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.BatchNorm2d)):
            fully_shard(layer, mesh=mesh)
    fully_shard(model.classifier, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = FastOrthogonalSGD(model.parameters(), lr=args.lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
                            method=args.method, distributed=False if args.every_rank else "auto")

    order = torch.Generator().manual_seed(args.seed)  # the same batch order on every rank
    per_rank = args.batch_size // world
    step_s, accs = [], []
    for epoch in range(args.epochs):
        perm = torch.randperm(len(y_train), generator=order)
        # Whole global batches only, so that every rank takes the same number of steps.
        for start in range(0, len(perm) - args.batch_size + 1, args.batch_size):
            idx = perm[start + rank * per_rank:start + (rank + 1) * per_rank]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
            t0 = time.perf_counter()
            opt.step()
            step_s.append(time.perf_counter() - t0)
        accs.append(accuracy(model, x_test, y_test))
        if rank == 0:
            print(f"epoch {epoch + 1}: test accuracy {100 * accs[-1]:.2f} %", flush=True)

    stats = opt.orthokern_stats
    mine = {"rank": rank, "matrices": stats.matrices, "matrices_total": stats.matrices_total,
            "bytes_sent": stats.bytes_sent, "bytes_received": stats.bytes_received,
            "collectives": stats.collectives, "step_ms_median": 1e3 * statistics.median(step_s)}
    per_rank_figures = [None] * world
    dist.all_gather_object(per_rank_figures, mine)
    report = {"world_size": world, "every_rank": args.every_rank, "epochs": args.epochs,
              "batch_size": args.batch_size, "lr": args.lr, "method": args.method, "test_accuracy": accs,
              "per_rank": per_rank_figures}
    if rank == 0:
        print(f"{world} rank(s), {'every rank orthogonalises everything' if args.every_rank else 'shared'}:")
        for r in per_rank_figures:
            print(f"  rank {r['rank']}: {r['matrices']} of {r['matrices_total']} matrices, optimiser step "
                  f"{r['step_ms_median']:.2f} ms (median), sent {r['bytes_sent']} B, received "
                  f"{r['bytes_received']} B in {r['collectives']} collectives per step")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1)
    dist.destroy_process_group()
    return report


if __name__ == "__main__":
    main()
