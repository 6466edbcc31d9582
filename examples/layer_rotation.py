"""Layer rotation on scikit-learn's digits: SGD, SGD + weight decay and Layca (``orthokern.optim.Layca``), with the
layer-rotation curves of each (``orthokern.monitor.LayerRotation``) and their test accuracy.

    python examples/layer_rotation.py              # 40 epochs, 3 seeds: one to two minutes on one CPU core
    python examples/layer_rotation.py --quick      # 2 epochs, 1 seed: seconds
    python examples/layer_rotation.py --out runs/ --epochs 80 --seeds 5

Carbonnelle & De Vleeschouwer ("Layer rotation: a surprisingly powerful indicator of generalization in deep
networks?", 2019) report that the networks that generalise best are those whose layers all end far from their
initialisation (cosine distance near 1, uniformly across layers), that plain SGD leaves the layers at small and
uneven rotations, that weight decay increases them, and that Layca, which sets each layer's rotation per step
directly, reaches large uniform rotations. This example measures the same things on a small problem: a 6-layer
ReLU MLP (64 -> 128 x 5 -> 10) on the 8x8 digits, each optimiser trained from the same initialisations and batch
orders, with the same learning-rate decay (x0.2 at half and at three quarters of the epochs). Writes
``layer_rotation.png`` (the curves of the first seed, one line per layer coloured by depth, and the test accuracy
and training loss per epoch) and ``layer_rotation.json`` (every number behind it, and a summary) to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F
from digits import _need, load_data
from torch import nn

import orthokern
from orthokern.monitor import LayerRotation
from orthokern.optim import Layca

WIDTH, HIDDEN_LAYERS = 128, 5
BATCH_SIZE = 32
# The optimisers compared, with their hyper-parameters. SGD's rate is a common one for this model. Weight decay is
# 5e-3: with the usual 5e-4 the final rotations were within 0.02 of plain SGD's (seed 0), i.e. it does not act
# within 40 epochs of 42 steps. Layca's rate: 3^-3 is the paper's initial rate for Layca on SGD; on this network it
# made training collapse to chance (measured), so 3^-4 is shown beside it.
OPTIMISERS = {
    "SGD": {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.0},
    "SGD + weight decay": {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-3},
    "Layca rate 3^-4": {"lr": 3.0 ** -4, "momentum": 0.9, "weight_decay": 0.0},
    "Layca rate 3^-3": {"lr": 3.0 ** -3, "momentum": 0.9, "weight_decay": 0.0},
}
COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red")
DECAY_AT, DECAY = (0.5, 0.75), 0.2


class MLP(nn.Sequential):
    def __init__(self, width: int = WIDTH, hidden: int = HIDDEN_LAYERS, classes: int = 10):
        layers, fan_in = [], 64
        for _ in range(hidden):
            layers += [nn.Linear(fan_in, width), nn.ReLU()]
            fan_in = width
        layers.append(nn.Linear(fan_in, classes))
        super().__init__(*layers)
        # He initialisation for ReLU, zero biases. torch's default Linear init (variance 1 / (3 fan_in)) shrinks
        # the signal's scale by sqrt(6) per ReLU layer, and SGD then stayed at chance for two epochs.
        for m in self:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)


def make_optimiser(name, model):
    h = OPTIMISERS[name]
    if name.startswith("Layca"):
        return Layca(model.parameters(), lr=h["lr"], base=torch.optim.SGD, momentum=h["momentum"])
    return torch.optim.SGD(model.parameters(), lr=h["lr"], momentum=h["momentum"], weight_decay=h["weight_decay"])


@torch.no_grad()
def accuracy(model, x, y) -> float:
    return (model(x).argmax(1) == y).float().mean().item()


def train_run(data, name, seed, epochs, progress):
    """One run; per-epoch test accuracy, mean training loss, and the layer-rotation history (one point per epoch)."""
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = MLP()
    opt = make_optimiser(name, model)
    milestones = sorted({max(1, round(f * epochs)) for f in DECAY_AT})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=DECAY)
    rotation = LayerRotation(model)
    order = torch.Generator().manual_seed(seed)
    test_acc, train_loss = [], []
    for epoch in range(epochs):
        perm = torch.randperm(len(y_train), generator=order)
        total = 0.0
        for start in range(0, len(perm), BATCH_SIZE):
            idx = perm[start:start + BATCH_SIZE]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        train_loss.append(total / len(perm))
        test_acc.append(accuracy(model, x_test, y_test))
        rotation.update(step=epoch + 1)
        progress.set_postfix_str(f"{name} seed={seed} acc={test_acc[-1]:.3f}", refresh=False)
        progress.update(1)
    return {"test_acc": test_acc, "train_loss": train_loss, "rotation": rotation.history}, rotation


def summarise(runs):
    out = {}
    for name, seeds in runs.items():
        finals = [r["test_acc"][-1] for r in seeds]
        # final rotation of each layer, mean over seeds; then the range across layers (uniformity)
        layers = seeds[0]["rotation"]["layers"]
        final_rot = {layer: sum(r["rotation"]["cosine_distance"][layer][-1] for r in seeds) / len(seeds)
                     for layer in layers}
        mean = sum(finals) / len(finals)
        std = math.sqrt(sum((a - mean) ** 2 for a in finals) / max(len(finals) - 1, 1))
        out[name] = {
            "final_test_acc_mean": mean, "final_test_acc_std": std,
            "final_test_acc_min": min(finals), "final_test_acc_max": max(finals),
            "final_train_loss_mean": sum(r["train_loss"][-1] for r in seeds) / len(seeds),
            "final_rotation_per_layer": final_rot,
            "final_rotation_min": min(final_rot.values()), "final_rotation_max": max(final_rot.values()),
        }
    return out


def markdown(report) -> str:
    """The README's table of a run, generated from its numbers (tests/test_readme_figures.py checks that the README
    quotes it as generated from docs/layer_rotation.json)."""
    cfg = report["config"]
    lines = [f"Final values after {cfg['epochs']} epochs, mean over {cfg['seeds']} seeds "
             f"({cfg['train_size']} training / {cfg['test_size']} test images):", "",
             "| optimiser | test accuracy | final layer rotation, layers 1 … " f"{cfg['hidden_layers'] + 1}"
             " | min … max |", "|---|---|---|---|"]
    for name, s in report["summary"].items():
        rot = " ".join(f"{v:.2f}" for v in s["final_rotation_per_layer"].values())
        lines.append(f"| {name} | {100 * s['final_test_acc_mean']:.2f} ± {100 * s['final_test_acc_std']:.2f} % | "
                     f"{rot} | {s['final_rotation_min']:.2f} … {s['final_rotation_max']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(runs, rotations, epochs, path):
    matplotlib = _need("matplotlib", "matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(runs)
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.2))
    panels = list(axes.flat)
    for ax, name in zip(panels, names):
        rotations[name].plot(ax=ax, xlabel="epoch", title=f"{name}: layer rotation (seed 0)")
    ep = list(range(1, epochs + 1))
    acc_ax, loss_ax = panels[len(names)], panels[len(names) + 1]
    for name, colour in zip(names, COLOURS):
        for ax, key, scale in ((acc_ax, "test_acc", 100.0), (loss_ax, "train_loss", 1.0)):
            rows = [r[key] for r in runs[name]]
            mean = [scale * sum(col) / len(col) for col in zip(*rows)]
            ax.plot(ep, mean, color=colour, label=name)
            ax.fill_between(ep, [scale * min(col) for col in zip(*rows)], [scale * max(col) for col in zip(*rows)],
                            color=colour, alpha=0.2, lw=0)
    seeds = len(runs[names[0]])
    acc_ax.set_ylabel("test accuracy (%)")
    acc_ax.set_ylim(0, 100)
    acc_ax.set_title(f"test accuracy (mean of {seeds} seeds, min-max shaded)")
    loss_ax.set_ylabel("training loss (epoch mean)")
    loss_ax.set_yscale("log")
    loss_ax.set_title(f"training loss (mean of {seeds} seeds, min-max shaded)")
    for ax in (acc_ax, loss_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    for ax in panels[len(names) + 2:]:
        ax.axis("off")
    fig.suptitle(f"MLP 64-{WIDTH}x{HIDDEN_LAYERS}-10 on sklearn digits: layer rotation "
                 "(orthokern.monitor.LayerRotation) for SGD, SGD + weight decay and Layca (orthokern.optim.Layca)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python examples/layer_rotation.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="./layer-rotation-out", help="output folder for layer_rotation.png and .json")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default 40; 2 with --quick)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per optimiser (default 3; 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="a smoke run in seconds: 2 epochs, 1 seed")
    # One thread: the matrices are tiny, and on a shared machine OpenMP threads waiting for each other only
    # slow it down (examples/digits.py measured this).
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; 0 keeps torch's)")
    args = p.parse_args(argv)
    args.epochs = args.epochs if args.epochs is not None else (2 if args.quick else 40)
    args.seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    if args.epochs < 1 or args.seeds < 1:
        p.error("--epochs and --seeds must be positive")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    tqdm = _need("tqdm", "tqdm").tqdm
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    x_train, y_train, x_test, y_test = load_data(torch.device("cpu"))
    data = (x_train.flatten(1), y_train, x_test.flatten(1), y_test)
    os.makedirs(args.out, exist_ok=True)

    runs = {name: [] for name in OPTIMISERS}
    rotations = {}
    t0 = time.perf_counter()
    with tqdm(total=len(OPTIMISERS) * args.seeds * args.epochs, unit="epoch", desc="layer rotation",
              file=sys.stderr) as progress:
        for name in OPTIMISERS:
            for seed in range(args.seeds):
                run, rotation = train_run(data, name, seed, args.epochs, progress)
                runs[name].append(run)
                rotations.setdefault(name, rotation)
    elapsed = time.perf_counter() - t0

    report = {
        "config": {"epochs": args.epochs, "seeds": args.seeds, "batch_size": BATCH_SIZE, "width": WIDTH,
                   "hidden_layers": HIDDEN_LAYERS, "optimisers": OPTIMISERS,
                   "lr_decay": {"at_fraction_of_epochs": list(DECAY_AT), "factor": DECAY},
                   "train_size": len(y_train), "test_size": len(y_test)},
        "environment": {"torch": torch.__version__, "orthokern": orthokern.__version__,
                        "python": platform.python_version(), "threads": torch.get_num_threads(),
                        "seconds": round(elapsed, 2)},
        "summary": summarise(runs),
        "runs": runs,
    }
    json_path = os.path.join(args.out, "layer_rotation.json")
    png_path = os.path.join(args.out, "layer_rotation.png")
    with open(json_path, "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out, "layer_rotation.md"), "w") as f:
        f.write(markdown(report))
    plot(runs, rotations, args.epochs, png_path)

    print(f"{'optimiser':22s} {'final test acc':>22s} {'final layer rotation (min .. max over layers)':>48s}")
    for name, s in report["summary"].items():
        acc = f"{100 * s['final_test_acc_mean']:.2f} ± {100 * s['final_test_acc_std']:.2f} %"
        print(f"{name:22s} {acc:>22s} {s['final_rotation_min']:>36.3f} .. {s['final_rotation_max']:.3f}")
    print(f"wrote {png_path} and {json_path} ({elapsed:.1f} s)")
    return report


if __name__ == "__main__":
    main()
