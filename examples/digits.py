"""SGDM vs Orthogonal-SGDM (``orthokern.FastOrthogonalSGD``) on scikit-learn's bundled 8x8 digits.

    python examples/digits.py                 # default: 30 epochs, 5 seeds, a few minutes on a CPU
    python examples/digits.py --quick         # 2 epochs, 1 seed: seconds
    python examples/digits.py --out runs/ --epochs 50 --seeds 3

The model is the paper's BasicCNN (Tuddenham et al. 2022): three stride-2 3x3 convolutions of 32 channels, each
followed by batch norm and ReLU, then one linear layer. The hyper-parameters are the paper's: learning rates
1e-2 and 1e-3, momentum 0.9, weight decay 5e-4, for both optimisers. Each (learning rate, optimiser) pair is
trained from the same initialisations and batch orders (one per seed). Writes ``digits.png`` (test accuracy
per epoch, mean over seeds with the min-max range shaded) and ``digits.json`` (every number behind it) to
``--out``, and ``digits.md``, the README's account of the run, generated from the numbers. The data set ships with
scikit-learn: nothing is downloaded.
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
from torch import nn

import orthokern
from orthokern.optim import FastOrthogonalSGD

LEARNING_RATES = (1e-2, 1e-3)
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
OPTIMISERS = ("SGDM", "Orth-SGDM")


class BasicCNN(nn.Module):
    """8x8 -> 4x4 -> 2x2 -> 1x1 with 32 channels, then 32 -> 10.

    The convolutions have no bias: the batch norm that follows would cancel it.
    """

    def __init__(self, channels: int = 32, classes: int = 10):
        super().__init__()
        layers = []
        cin = 1
        for _ in range(3):
            layers += [nn.Conv2d(cin, channels, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(channels),
                       nn.ReLU()]
            cin = channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def _need(module: str, pip_name: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as e:
        raise SystemExit(f"examples/digits.py needs {pip_name}: pip install {pip_name}") from e


def load_data(device):
    """(x_train, y_train, x_test, y_test): a fixed stratified 75/25 split, pixels scaled to [0, 1]."""
    datasets = _need("sklearn.datasets", "scikit-learn")
    model_selection = _need("sklearn.model_selection", "scikit-learn")
    digits = datasets.load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    idx_train, idx_test = model_selection.train_test_split(
        torch.arange(len(y)).numpy(), test_size=0.25, random_state=0, stratify=digits.target
    )
    idx_train, idx_test = torch.as_tensor(idx_train), torch.as_tensor(idx_test)
    return tuple(t.to(device) for t in (x[idx_train], y[idx_train], x[idx_test], y[idx_test]))


def make_optimiser(name, params, lr, method, mode):
    if name == "SGDM":
        return torch.optim.SGD(params, lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    return FastOrthogonalSGD(params, lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, method=method, mode=mode)


@torch.no_grad()
def accuracy(model, x, y) -> float:
    model.eval()
    acc = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return acc


def train_run(data, opt_name, lr, seed, epochs, batch_size, method, mode, progress):
    """One training run; returns per-epoch test accuracy and mean training loss."""
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = BasicCNN().to(x_train.device)
    opt = make_optimiser(opt_name, model.parameters(), lr, method, mode)
    order = torch.Generator().manual_seed(seed)
    test_acc, train_loss = [], []
    for _ in range(epochs):
        perm = torch.randperm(len(y_train), generator=order).to(x_train.device)
        # Summed on the device: a .item() per step would make every step wait for the GPU.
        total = torch.zeros((), device=x_train.device)
        for start in range(0, len(perm), batch_size):
            idx = perm[start:start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
        train_loss.append(total.item() / len(perm))
        test_acc.append(accuracy(model, x_test, y_test))
        progress.set_postfix_str(f"{opt_name} lr={lr:g} seed={seed} acc={test_acc[-1]:.3f}", refresh=False)
        progress.update(1)
    return test_acc, train_loss


def _stats(rows):
    n = len(rows)
    mean = [sum(col) / n for col in zip(*rows)]
    std = [math.sqrt(sum((v - m) ** 2 for v in col) / max(n - 1, 1)) for col, m in zip(zip(*rows), mean)]
    return mean, std, [min(col) for col in zip(*rows)], [max(col) for col in zip(*rows)]


def summarise(results):
    summary = {}
    for lr_key, by_opt in results.items():
        summary[lr_key] = {}
        for name, run in by_opt.items():
            mean, std, lo, hi = _stats(run["test_acc"])
            finals = [r[-1] for r in run["test_acc"]]
            summary[lr_key][name] = {
                "final_test_acc_mean": mean[-1], "final_test_acc_std": std[-1],
                "final_test_acc_min": min(finals), "final_test_acc_max": max(finals),
                "best_epoch_mean_acc": max(mean), "epochs_to_95pct_mean": next(
                    (i + 1 for i, v in enumerate(mean) if v >= 0.95), None),
            }
    return summary


def markdown(report) -> str:
    """The README's account of a run, generated from its numbers (tests/test_readme_figures.py checks that the README
    quotes this text as generated from docs/digits.json)."""
    runs, summary = report["runs"], report["summary"]
    cfg = report["config"]
    lines = []
    for lr_key in runs:
        mean = {name: _stats(runs[lr_key][name]["test_acc"])[0] for name in OPTIMISERS}
        first = ", ".join(
            f"{name} {' / '.join(f'{100 * v:.1f}' for v in mean[name][:3])} %" for name in reversed(OPTIMISERS))
        reach = ", ".join(
            f"{name} at epoch {summary[lr_key][name]['epochs_to_95pct_mean']}" if summary[lr_key][name][
                "epochs_to_95pct_mean"] else f"{name} never" for name in reversed(OPTIMISERS))
        lines.append(f"- {lr_key}: mean test accuracy after epochs 1 / 2 / 3: {first}; the mean passes 95 % "
                     f"{reach}.")
    lines.append("")
    lines.append(f"After {cfg['epochs']} epochs (mean ± std over {cfg['seeds']} seeds):")
    lines.append("")
    lines.append("| lr | " + " | ".join(OPTIMISERS) + " |")
    lines.append("|---|" + "---|" * len(OPTIMISERS))
    for lr_key, by_opt in summary.items():
        cells = [f"{100 * by_opt[n]['final_test_acc_mean']:.2f} ± {100 * by_opt[n]['final_test_acc_std']:.2f} %"
                 for n in OPTIMISERS]
        lines.append(f"| {lr_key.removeprefix('lr=')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results, epochs, path):
    matplotlib = _need("matplotlib", "matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4), sharey=True, squeeze=False)
    ep = list(range(1, epochs + 1))
    for ax, (lr_key, by_opt) in zip(axes[0], results.items()):
        for name, colour in zip(OPTIMISERS, ("tab:blue", "tab:red")):
            mean, _, lo, hi = _stats(by_opt[name]["test_acc"])
            n = len(by_opt[name]["test_acc"])
            ax.plot(ep, [100 * v for v in mean], color=colour, label=f"{name} (mean of {n})")
            ax.fill_between(ep, [100 * v for v in lo], [100 * v for v in hi], color=colour, alpha=0.2, lw=0)
        ax.set_title(f"{lr_key}, momentum {MOMENTUM}, wd {WEIGHT_DECAY:g}")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][0].set_ylim(bottom=max(0, axes[0][0].get_ylim()[0]), top=100)
    fig.suptitle("BasicCNN on sklearn digits (8x8): SGDM vs Orthogonal-SGDM (orthokern); "
                 "line: mean over seeds, shaded: min-max")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python examples/digits.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="./digits-out", help="output folder for digits.png and digits.json")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default 30; 2 with --quick)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per configuration (default 5; 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="a smoke run in seconds: 2 epochs, 1 seed")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--method", default="auto", choices=orthokern.METHODS, help="orthokern.polar method")
    p.add_argument("--mode", default="accurate", choices=orthokern.MODES, help="orthokern.polar mode")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    # One thread: the model's matrices are tiny, so threading buys nothing, and on a busy machine OpenMP
    # threads waiting for each other made an epoch up to 10x slower (measured on a shared 2-core box).
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; 0 keeps torch's)")
    args = p.parse_args(argv)
    args.epochs = args.epochs if args.epochs is not None else (2 if args.quick else 30)
    args.seeds = args.seeds if args.seeds is not None else (1 if args.quick else 5)
    if args.epochs < 1 or args.seeds < 1 or args.batch_size < 1:
        p.error("--epochs, --seeds and --batch-size must be positive")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    tqdm = _need("tqdm", "tqdm").tqdm
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = load_data(device)
    os.makedirs(args.out, exist_ok=True)

    results = {f"lr={lr:g}": {name: {"test_acc": [], "train_loss": []} for name in OPTIMISERS}
               for lr in LEARNING_RATES}
    t0 = time.perf_counter()
    total = len(LEARNING_RATES) * len(OPTIMISERS) * args.seeds * args.epochs
    with tqdm(total=total, unit="epoch", desc="digits", file=sys.stderr) as progress:
        for lr in LEARNING_RATES:
            for name in OPTIMISERS:
                for seed in range(args.seeds):
                    acc, loss = train_run(data, name, lr, seed, args.epochs, args.batch_size, args.method,
                                          args.mode, progress)
                    results[f"lr={lr:g}"][name]["test_acc"].append(acc)
                    results[f"lr={lr:g}"][name]["train_loss"].append(loss)
    elapsed = time.perf_counter() - t0

    report = {
        "config": {
            "epochs": args.epochs, "seeds": args.seeds, "batch_size": args.batch_size,
            "learning_rates": list(LEARNING_RATES), "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY,
            "method": args.method, "mode": args.mode, "device": str(device),
            "train_size": len(data[1]), "test_size": len(data[3]),
        },
        "environment": {"torch": torch.__version__, "orthokern": orthokern.__version__,
                        "python": platform.python_version(), "threads": torch.get_num_threads(),
                        "seconds": round(elapsed, 2)},
        "summary": summarise(results),
        "runs": results,
    }
    json_path = os.path.join(args.out, "digits.json")
    png_path = os.path.join(args.out, "digits.png")
    with open(json_path, "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out, "digits.md"), "w") as f:
        f.write(markdown(report))
    plot(results, args.epochs, png_path)

    print(f"{'':10s} {'optimiser':10s} {'final test acc (mean ± std over seeds)':>40s}")
    for lr_key, by_opt in report["summary"].items():
        for name, s in by_opt.items():
            mean, std = 100 * s["final_test_acc_mean"], 100 * s["final_test_acc_std"]
            print(f"{lr_key:10s} {name:10s} {mean:33.2f} ± {std:.2f} %")
    print(f"wrote {png_path} and {json_path} ({elapsed:.1f} s)")
    return report


if __name__ == "__main__":
    main()
