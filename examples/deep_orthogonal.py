"""A deep narrow tanh network from Gaussian and from orthogonal initialisation (``orthokern.nn.init.orthogonal_``),
and the soft versus the gain-adjusted orthogonality penalty (``orthokern.nn.orthogonality_penalty``) on it.

    python examples/deep_orthogonal.py            # depths 4-32, 3 seeds, 800 steps: a few minutes on one CPU core
    python examples/deep_orthogonal.py --quick    # depths 2 and 4, 1 seed, 40 steps: seconds
    python examples/deep_orthogonal.py --out runs/ --steps 3000 --seeds 5

Saxe, McClelland & Ganguli (2014) showed that deep linear networks from orthogonal initialisation learn in a
number of steps nearly independent of depth, while scaled Gaussian initialisation slows down with depth; Pennington,
Schoenholz & Ganguli (2017) extended this to tanh networks at the critical weight scale (dynamical isometry).
Sokol & Park (ICLR 2020) found that a soft orthogonality penalty ||W^T W - I||^2 erases the gain sigma of an
initialisation W = sigma V, and that the gain-adjusted penalty ||W^T W - sigma^2 I||^2 keeps it and trained better.

Part 1: networks of L tanh layers of width 64 on scikit-learn's 8x8 digits (64 standardised pixels in, 10 classes
out through one more linear layer), for L in --depths, with every weight drawn either Gaussian with variance
1 / fan-in (the variance-preserving scale, the critical point of tanh without biases) or orthogonal with gain 1;
SGD with momentum, the same batches for every run; the training loss of every step.
Part 2: depth 32, orthogonal initialisation with gain --gain, trained with no penalty, with the soft penalty
(gain 1) and with the gain-adjusted penalty (gain --gain), each weighted by --penalty-weight; the training loss and
the RMS singular value of the hidden layers, sqrt(||W||_F^2 / 64), over training.

Writes ``deep_orthogonal.png`` and ``deep_orthogonal.json`` (every number behind it, and a summary) to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import sys
import time

import torch
import torch.nn.functional as F
from digits import _need, load_data
from torch import nn

import orthokern
from orthokern.nn import orthogonality_penalty
from orthokern.nn.init import orthogonal_

WIDTH = 64
BATCH_SIZE = 64
LR, MOMENTUM = 0.01, 0.9
INITS = ("gaussian", "orthogonal")
PENALTIES = ("none", "soft (gain 1)", "gain-adjusted")
# "Steps to reach a loss": the first step where the mean loss of the last SMOOTH steps is below LOSS_TARGET.
LOSS_TARGET, SMOOTH = 0.5, 20


class DeepTanh(nn.Module):
    def __init__(self, depth: int, width: int = WIDTH, inputs: int = 64, classes: int = 10):
        super().__init__()
        dims = [inputs] + [width] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = nn.Linear(width, classes)

    def forward(self, x):
        for layer in self.hidden:
            x = torch.tanh(layer(x))
        return self.out(x)

    def init(self, kind: str, gain: float, generator: torch.Generator) -> None:
        with torch.no_grad():
            for layer in [*self.hidden, self.out]:
                if kind == "orthogonal":
                    orthogonal_(layer.weight, gain, generator=generator)
                else:
                    fan_in = layer.weight.shape[1]
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * (gain / fan_in ** 0.5))
                layer.bias.zero_()


def rms_singular_value(model: DeepTanh) -> float:
    """sqrt(mean over hidden layers of ||W||_F^2 / n): 1 for orthonormal layers, sigma for sigma * orthonormal."""
    with torch.no_grad():
        return math.sqrt(sum(float(m.weight.square().sum()) / m.weight.shape[0] for m in model.hidden)
                         / len(model.hidden))


def train(data, depth, init, gain, steps, seed, penalty=None, penalty_weight=0.0, progress=None, record_every=10):
    """Training loss per step (and the RMS singular value every ``record_every`` steps) of one run."""
    x, y = data
    model = DeepTanh(depth)
    model.init(init, gain, torch.Generator().manual_seed(seed))
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    order = torch.Generator().manual_seed(1000 + seed)
    weights = [m.weight for m in model.hidden]
    losses, scale = [], []
    perm, pos = torch.randperm(len(y), generator=order), 0
    for step in range(steps):
        if pos + BATCH_SIZE > len(perm):
            perm, pos = torch.randperm(len(y), generator=order), 0
        idx = perm[pos:pos + BATCH_SIZE]
        pos += BATCH_SIZE
        if step % record_every == 0:
            scale.append(rms_singular_value(model))
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        total = loss
        if penalty is not None:
            total = loss + penalty_weight * orthogonality_penalty(weights, "so", gain=penalty)
        total.backward()
        opt.step()
        losses.append(float(f"{loss.item():.5g}"))  # 5 significant digits: the JSON holds every step
        if progress is not None:
            progress.update(1)
    scale.append(rms_singular_value(model))
    return {"loss": losses, "rms_singular_value": scale, "record_every": record_every}


def steps_to_target(losses):
    for i in range(SMOOTH, len(losses) + 1):
        if sum(losses[i - SMOOTH:i]) / SMOOTH < LOSS_TARGET:
            return i
    return None


def smooth(values, k=SMOOTH):
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= k:
            acc -= values[i - k]
        out.append(acc / min(i + 1, k))
    return out


def dumps(report) -> str:
    """JSON with the structure indented and each list of numbers on one line (the loss curves are long)."""
    text = json.dumps(report, indent=1)
    return re.sub(r"\[\s+([-+0-9.eE,\s]+?)\s+\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)


def summarise(depth_runs, penalty_runs):
    def mean(xs):
        xs = [v for v in xs if v is not None]
        return sum(xs) / len(xs) if xs else None

    part1 = {}
    for init, by_depth in depth_runs.items():
        part1[init] = {}
        for depth, runs in by_depth.items():
            reached = [steps_to_target(r["loss"]) for r in runs]
            part1[init][depth] = {
                "steps_to_loss_target": reached,
                "steps_to_loss_target_mean": mean(reached),
                "runs_reaching_target": sum(r is not None for r in reached),
                "final_loss_mean": mean([sum(r["loss"][-SMOOTH:]) / SMOOTH for r in runs]),
            }
    part2 = {}
    for name, runs in penalty_runs.items():
        part2[name] = {
            "final_loss_mean": mean([sum(r["loss"][-SMOOTH:]) / SMOOTH for r in runs]),
            "steps_to_loss_target_mean": mean([steps_to_target(r["loss"]) for r in runs]),
            "rms_singular_value_start": mean([r["rms_singular_value"][0] for r in runs]),
            "rms_singular_value_end": mean([r["rms_singular_value"][-1] for r in runs]),
        }
    return {"loss_target": LOSS_TARGET, "smoothing_steps": SMOOTH, "depth_sweep": part1, "penalties": part2}


def markdown(report) -> str:
    """The README's tables of a run, generated from its numbers (tests/test_readme_figures.py checks that the README
    quotes them as generated from docs/deep_orthogonal.json)."""
    cfg, s = report["config"], report["summary"]
    lines = [f"Steps until the {s['smoothing_steps']}-step mean training loss falls below {s['loss_target']}, per "
             f"seed ({cfg['steps']} steps at most):", "",
             "| depth | Gaussian (variance 1/fan-in) | orthogonal (gain 1) |", "|---|---|---|"]
    for depth in cfg["depths"]:
        cells = [", ".join(str(v) if v is not None else "never" for v in s["depth_sweep"][init][str(depth)][
            "steps_to_loss_target"]) for init in INITS]
        lines.append(f"| {depth} | " + " | ".join(cells) + " |")
    lines += ["", f"| depth {cfg['penalty_depth']}, orthogonal gain {cfg['gain']:g} | final training loss "
              f"({s['smoothing_steps']}-step mean, {cfg['seeds']} seeds) | RMS singular value of the hidden layers, "
              "start → end |", "|---|---|---|"]
    labels = {"none": "no penalty", "soft (gain 1)": "soft penalty (gain 1)",
              "gain-adjusted": f"gain-adjusted penalty (gain {cfg['gain']:g})"}
    for name, e in s["penalties"].items():
        lines.append(f"| {labels.get(name, name)} | {e['final_loss_mean']:.4f} | "
                     f"{e['rms_singular_value_start']:.3f} → {e['rms_singular_value_end']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(depth_runs, penalty_runs, args, path):
    matplotlib = _need("matplotlib", "matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.3))
    cmap = matplotlib.colormaps["viridis"]
    depths = args.depths
    for ax, init in zip(axes[:2], INITS):
        for i, depth in enumerate(depths):
            rows = [smooth(r["loss"]) for r in depth_runs[init][str(depth)]]
            ax.plot([sum(c) / len(c) for c in zip(*rows)], color=cmap(i / max(len(depths) - 1, 1)),
                    label=f"{depth} layers")
        ax.set_title(f"{init} init (gain 1): training loss")
        ax.set_xlabel("step")
        ax.set_ylabel(f"training loss ({SMOOTH}-step mean, mean of seeds)")
        ax.set_yscale("log")
        ax.axhline(LOSS_TARGET, color="grey", lw=0.8, ls=":")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    lo = min(a.get_ylim()[0] for a in axes[:2])
    hi = max(a.get_ylim()[1] for a in axes[:2])
    for a in axes[:2]:
        a.set_ylim(lo, hi)
    colours = ("tab:blue", "tab:red", "tab:green")
    for name, colour in zip(PENALTIES, colours):
        runs = penalty_runs[name]
        rows = [smooth(r["loss"]) for r in runs]
        axes[2].plot([sum(c) / len(c) for c in zip(*rows)], color=colour, label=name)
        every = runs[0]["record_every"]
        sv = [sum(c) / len(c) for c in zip(*[r["rms_singular_value"] for r in runs])]
        axes[3].plot([min(i * every, args.steps) for i in range(len(sv))], sv, color=colour, label=name)
    axes[2].set_title(f"depth {args.penalty_depth}, orthogonal init gain {args.gain:g}: training loss")
    axes[2].set_yscale("log")
    axes[2].set_ylabel(f"training loss ({SMOOTH}-step mean)")
    axes[3].set_title("RMS singular value of the hidden layers")
    axes[3].axhline(1.0, color="grey", lw=0.8, ls=":")
    axes[3].axhline(args.gain, color="grey", lw=0.8, ls="--")
    for ax in axes[2:]:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title=f"penalty x {args.penalty_weight:g}")
    fig.suptitle(f"Deep tanh networks of width {WIDTH} on sklearn digits, SGD lr {LR} momentum {MOMENTUM}, "
                 f"{args.seeds} seed(s): orthokern.nn.init.orthogonal_ and orthokern.nn.orthogonality_penalty")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python examples/deep_orthogonal.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="./deep-orthogonal-out", help="output folder for deep_orthogonal.png and .json")
    p.add_argument("--depths", type=int, nargs="+", default=None, help="tanh layers (default 4 8 16 32)")
    p.add_argument("--steps", type=int, default=None, help="SGD steps per run (default 800; 40 with --quick)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per configuration (default 3; 1 with --quick)")
    p.add_argument("--gain", type=float, default=1.2, help="part 2: the orthogonal initialisation's gain")
    p.add_argument("--penalty-weight", type=float, default=1e-2, help="part 2: the penalties' coefficient")
    p.add_argument("--penalty-depth", type=int, default=None, help="part 2: depth (default 32; 4 with --quick)")
    p.add_argument("--quick", action="store_true", help="a smoke run in seconds")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; 0 keeps torch's)")
    args = p.parse_args(argv)
    args.depths = args.depths or ([2, 4] if args.quick else [4, 8, 16, 32])
    args.steps = args.steps if args.steps is not None else (40 if args.quick else 800)
    args.seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    args.penalty_depth = args.penalty_depth or (4 if args.quick else 32)
    if args.steps < 1 or args.seeds < 1 or min(args.depths) < 1 or args.penalty_depth < 1:
        p.error("--steps, --seeds, --depths and --penalty-depth must be positive")
    if not (args.gain > 0 and args.penalty_weight >= 0):
        p.error("--gain must be > 0 and --penalty-weight >= 0")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    tqdm = _need("tqdm", "tqdm").tqdm
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    x_train, y_train, _, _ = load_data(torch.device("cpu"))
    x = x_train.flatten(1)
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-3)  # standardised pixels (the border pixels are nearly constant)
    data = (x, y_train)
    os.makedirs(args.out, exist_ok=True)

    penalty_gain = {"none": None, "soft (gain 1)": 1.0, "gain-adjusted": args.gain}
    total = args.steps * args.seeds * (len(INITS) * len(args.depths) + len(PENALTIES))
    depth_runs = {init: {str(d): [] for d in args.depths} for init in INITS}
    penalty_runs = {name: [] for name in PENALTIES}
    t0 = time.perf_counter()
    with tqdm(total=total, unit="step", desc="deep orthogonal", file=sys.stderr, mininterval=0.5) as progress:
        for init in INITS:
            for depth in args.depths:
                for seed in range(args.seeds):
                    progress.set_postfix_str(f"{init} depth={depth} seed={seed}", refresh=False)
                    depth_runs[init][str(depth)].append(train(data, depth, init, 1.0, args.steps, seed,
                                                              progress=progress))
        for name in PENALTIES:
            for seed in range(args.seeds):
                progress.set_postfix_str(f"penalty {name} seed={seed}", refresh=False)
                penalty_runs[name].append(train(data, args.penalty_depth, "orthogonal", args.gain, args.steps, seed,
                                                penalty=penalty_gain[name], penalty_weight=args.penalty_weight,
                                                progress=progress))
    elapsed = time.perf_counter() - t0

    report = {
        "config": {"width": WIDTH, "depths": args.depths, "steps": args.steps, "seeds": args.seeds,
                   "batch_size": BATCH_SIZE, "lr": LR, "momentum": MOMENTUM, "gain": args.gain,
                   "penalty_weight": args.penalty_weight, "penalty_depth": args.penalty_depth,
                   "penalty_kind": "so", "train_size": len(y_train)},
        "environment": {"torch": torch.__version__, "orthokern": orthokern.__version__,
                        "python": platform.python_version(), "threads": torch.get_num_threads(),
                        "seconds": round(elapsed, 2)},
        "summary": summarise(depth_runs, penalty_runs),
        "runs": {"depth_sweep": depth_runs, "penalties": penalty_runs},
    }
    json_path = os.path.join(args.out, "deep_orthogonal.json")
    png_path = os.path.join(args.out, "deep_orthogonal.png")
    with open(json_path, "w") as f:
        f.write(dumps(report))
    with open(os.path.join(args.out, "deep_orthogonal.md"), "w") as f:
        f.write(markdown(report))
    plot(depth_runs, penalty_runs, args, png_path)

    s = report["summary"]
    print(f"steps to a {SMOOTH}-step mean training loss below {LOSS_TARGET} (mean over seeds that reach it):")
    print(f"{'depth':>6s} " + " ".join(f"{init:>14s}" for init in INITS))
    for depth in args.depths:
        cells = []
        for init in INITS:
            e = s["depth_sweep"][init][str(depth)]
            cells.append(f"{e['steps_to_loss_target_mean']:.0f} ({e['runs_reaching_target']}/{args.seeds})"
                         if e["steps_to_loss_target_mean"] is not None else f"never (0/{args.seeds})")
        print(f"{depth:6d} " + " ".join(f"{c:>14s}" for c in cells))
    print(f"depth {args.penalty_depth}, orthogonal gain {args.gain:g}, penalty weight {args.penalty_weight:g}:")
    for name, e in s["penalties"].items():
        print(f"  {name:15s} final loss {e['final_loss_mean']:.4f}  RMS singular value "
              f"{e['rms_singular_value_start']:.3f} -> {e['rms_singular_value_end']:.3f}")
    print(f"wrote {png_path} and {json_path} ({elapsed:.1f} s)")
    return report


if __name__ == "__main__":
    main()
