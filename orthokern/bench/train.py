"""ResNet-50 training step: torch.optim.SGD against orthokern.FastOrthogonalSGD, and the optimiser-only cost.

The issue's target is the optimiser's overhead: orthogonalising every ResNet-50 gradient (grouped by shape,
one batched polar call per shape) should cost at most 5% of a batch-256 float32 training step on an H100.
Both are measured here: a full forward/backward/step per optimiser, and the polar calls alone on the real
gradients of the last backward. On a CPU the model runs at a tiny batch and image size (the polar cost does
not depend on them; the step time does, so the percentage is only meaningful on the GPU).
"""
from __future__ import annotations

import copy
import json
import os
import sys
from collections import defaultdict
from typing import Optional

import torch
from torch import nn

import orthokern

from . import report, runner
from .peers import PEERS
from .resnet import resnet50
from .timing import synchronize, time_fn


# The goal for the optimiser-only cost, in percent of the plain SGD step (batch 256, float32, H100).
TARGET_PCT = 5.0


def find_fast_orthogonal_sgd():
    """orthokern.FastOrthogonalSGD, or None while it is not part of this installation."""
    opt = getattr(orthokern, "FastOrthogonalSGD", None)
    if opt is None:
        try:
            from orthokern.optim import FastOrthogonalSGD as opt  # type: ignore
        except ImportError:
            opt = None
    return opt


def grouped_gradients(model: nn.Module) -> list[torch.Tensor]:
    """The gradients of every >= 2-dim parameter as (count, out, in*k*k) batches, one per distinct shape."""
    groups: dict[tuple[int, int], list[torch.Tensor]] = defaultdict(list)
    for p in model.parameters():
        if p.dim() >= 2 and p.grad is not None:
            g = p.grad.reshape(p.shape[0], -1)
            groups[tuple(g.shape)].append(g)
    return [torch.stack(gs) for gs in groups.values()]


def _train_step(model, opt, x, y, loss_fn):
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()


def run_train(device: torch.device, *, batch: int, image: int, methods, modes, peers, rounds: int,
              max_entry_s: float, warmup: int = 1, lr: float = 1e-3, model_fn=resnet50) -> dict:
    """Time one training step per optimiser and the optimiser-only polar calls.

    ``warmup=0`` times single cold calls (rounds of one iteration): only for the CPU smoke run, where the
    full set of ResNet-50 polar calls takes seconds per call.
    """
    torch.manual_seed(0)
    base, source = model_fn()
    base = base.to(device)
    x = torch.randn(batch, 3, image, image, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    loss_fn = nn.CrossEntropyLoss()
    state = copy.deepcopy(base.state_dict())
    out = {"model": source, "batch": batch, "image": image, "steps": [], "optimizer_only": [], "skipped": []}

    def timed_step(make_opt, label, method="-", mode="-"):
        base.load_state_dict(state)
        opt = make_opt(base.parameters())
        t = time_fn(lambda: _train_step(base, opt, x, y, loss_fn), device=device, rounds=rounds,
                    warmup=max(warmup, 1), max_total_s=max_entry_s)
        out["steps"].append({"optimizer": label, "method": method, "mode": mode, "median_s": t.median,
                             "q20_s": t.q20, "q80_s": t.q80, "rounds": t.rounds})
        print(f"  step with {label:<40} {t.median * 1e3:9.2f} ms", file=sys.stderr, flush=True)
        return t.median

    sgd_t = timed_step(lambda ps: torch.optim.SGD(ps, lr=lr, momentum=0.9), "torch.optim.SGD(momentum=0.9)")
    FastOrthogonalSGD = find_fast_orthogonal_sgd()
    if FastOrthogonalSGD is None:
        out["skipped"].append("orthokern.FastOrthogonalSGD: not found in this installation (not merged yet); "
                              "only torch.optim.SGD and the optimiser-only cost were measured")
    else:
        for method in methods:
            for mode in modes if method in runner.MODE_SENSITIVE else ("accurate",):
                label = f"FastOrthogonalSGD(method={method}, mode={mode})"
                try:
                    t = timed_step(lambda ps: FastOrthogonalSGD(ps, lr=lr, momentum=0.9, method=method, mode=mode),
                                   label, method, mode)
                except RuntimeError as e:
                    out["skipped"].append(f"{label}: {e}")
                    continue
                out["steps"][-1]["overhead_s"] = t - sgd_t
                out["steps"][-1]["overhead_pct"] = 100 * (t - sgd_t) / sgd_t

    # Optimiser-only: the polar calls on the real gradients of a backward, one batched call per shape.
    base.load_state_dict(state)
    base.zero_grad(set_to_none=True)
    loss_fn(base(x), y).backward()
    groups = grouped_gradients(base)
    out["gradient_groups"] = [list(g.shape) for g in groups]
    entries = [(m, mode, (lambda G, m=m, mode=mode: orthokern.polar(G, method=m, mode=mode)))
               for m in methods for mode in (modes if m in runner.MODE_SENSITIVE else ("accurate",))]
    entries += [(p, "-", PEERS[p]) for p in peers]
    for method, mode, fn in entries:
        t = time_fn(lambda: [fn(G) for G in groups], device=device, rounds=rounds, warmup=warmup,
                    iterations=None if warmup else 1, max_total_s=max_entry_s)
        out["optimizer_only"].append({"method": method, "mode": mode, "median_s": t.median,
                                      "pct_of_sgd_step": 100 * t.median / sgd_t})
        print(f"  polar of all gradients, {method}/{mode:<10} {t.median * 1e3:9.2f} ms", file=sys.stderr, flush=True)
    synchronize(device)
    return out


def format_train(res: dict) -> str:
    lines = [f"ResNet-50 ({res['model']}), batch {res['batch']}, {res['image']}x{res['image']} images, float32",
             "", f"{'training step':<48} {'median':>10} {'overhead vs SGD':>16}"]
    for s in res["steps"]:
        ov = f"{s['overhead_s'] * 1e3:+.2f} ms ({s['overhead_pct']:+.1f}%)" if "overhead_s" in s else "-"
        lines.append(f"{s['optimizer']:<48} {s['median_s'] * 1e3:>7.2f} ms {ov:>16}")
    lines += ["", f"{'optimiser only: polar of all ' + str(len(res['gradient_groups'])) + ' shape groups':<48} "
                  f"{'median':>10} {'% of SGD step':>16}"]
    for o in res["optimizer_only"]:
        lines.append(f"{o['method'] + '/' + o['mode']:<48} {o['median_s'] * 1e3:>7.2f} ms {o['pct_of_sgd_step']:>15.1f}%")
    for s in res["skipped"]:
        lines.append(f"skipped: {s}")
    auto = [o for o in res["optimizer_only"] if o["method"] == "auto"]
    if auto:
        verdict = ", ".join(f"auto/{o['mode']} {o['pct_of_sgd_step']:.1f}%" for o in auto)
        meaningful = res["batch"] >= 256 and res.get("meta", {}).get("device_type") == "cuda"
        lines.append(f"issue target: optimiser-only <= {TARGET_PCT:.0f}% of a batch-256 float32 step on an H100: "
                     f"{verdict}" + ("" if meaningful else " (not comparable here: CPU or small batch)"))
    return "\n".join(lines)


def main_train(args, device: torch.device, command: str) -> int:
    cuda = device.type == "cuda"
    batch = args.train_batch or (256 if cuda and not args.quick else 32 if cuda else 2)
    image = args.train_image or (224 if cuda else 64)
    if args.methods:
        methods, peers = runner.split_methods([m.strip() for m in args.methods.split(",")])
    elif cuda:
        methods, peers = list(orthokern.METHODS), list(PEERS)
    else:
        # The full ResNet-50 gradient set takes seconds per polar call on a CPU: the smoke run keeps the
        # optimiser's default and Muon's iteration (what the issue compares).
        methods, peers = ["auto"], ["muon_ns5_batched"]
    modes = [m.strip() for m in args.modes.split(",")] if args.modes else ["accurate"]
    smoke = not cuda and args.quick
    rounds = args.rounds or (1 if smoke else 3 if args.quick else 10)
    max_entry = args.max_entry_seconds if args.max_entry_seconds is not None else (2.0 if args.quick else 10.0)
    print(f"train suite: ResNet-50, batch {batch}, image {image}, on {device}", file=sys.stderr)
    res = run_train(device, batch=batch, image=image, methods=methods, modes=modes, peers=peers, rounds=rounds,
                    max_entry_s=max_entry, warmup=0 if smoke else 1)
    meta = report.environment(device)
    meta["command"] = command
    res["meta"] = meta
    text = format_train(res)
    print(text)
    path = os.path.join(args.out, "train.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    print(f"wrote {path}")
    if args.results_md:
        kind = "train-gpu" if cuda else "train-cpu"
        body = (f"## Training step ({'GPU' if cuda else 'CPU'}): {meta['device']}\n\n- date: {meta['date']}\n"
                f"- torch {meta['torch']}, orthokern {meta['orthokern']}\n- command: `{command}`\n\n```\n{text}\n```")
        report.update_results_md(args.results_md, f"<!-- BEGIN {kind} -->\n{body}\n<!-- END {kind} -->")
        print(f"updated {args.results_md}")
    return 0
