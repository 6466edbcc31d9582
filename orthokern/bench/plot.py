"""Speed-up against accuracy, one panel per case: where each method sits next to ``torch.linalg.svd`` on the
same input.

x: speed-up over ``torch.linalg.svd`` (paired per round, log scale; SVD itself sits at 1, on the dashed
vertical line); y: E, the accuracy contract's measure (log scale; lower is better). A grey line joins the SVD
point to every orthokern point of the panel, so each can be read against its own baseline. ``polar(G)`` (the
call users make) is the large red star. Colours and markers mean the same method in every panel; the legend sits
outside the panels.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from .. import testing
from .runner import BASELINE, POLAR_G

# Panels per figure: past this, one figure (file) per suite.
MAX_PANELS = 30
COLS = 4
E_FLOOR = 1e-17  # E can be exactly 0 (an exact float64 result): keep it on the log axis
# Red and black are kept for polar(G) and the SVD; the others take the tab10 colours without red, grey and black.
PALETTE = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan",
           "gold", "navy", "lime", "teal")
SPEEDUP_TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


def _style(label: str, kind: str, index: int) -> dict:
    if label == POLAR_G:
        return {"color": "red", "marker": "*", "s": 180, "zorder": 5}
    if label == BASELINE:
        return {"color": "black", "marker": "s", "s": 60, "zorder": 4}
    color = PALETTE[index % len(PALETTE)]
    if kind == "peer":
        return {"color": color, "marker": "^v<>Dph"[index % 7], "s": 45, "zorder": 3}
    return {"color": color, "marker": "o", "s": 40, "zorder": 3}


def _E(rec: dict) -> float:
    return max(rec["E"], E_FLOOR) if rec["finite"] else 1.0


def plot_speedup_vs_error(records: Sequence[dict], path: str, title: str = "") -> tuple[list[str], Optional[str]]:
    """Write the panels to ``path`` (or, past :data:`MAX_PANELS` cases, one file per suite next to it, named
    ``<stem>_<suite>.png``). Returns (paths written, why no plot or None)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: F401 (imported here: matplotlib is optional)
    except ImportError:
        return [], "matplotlib is not installed: no plot (pip install matplotlib)"
    recs = [r for r in records if r.get("speedup_vs_svd") is not None]
    if not recs:
        return [], "no case has a torch.linalg.svd baseline to plot against"
    cases: dict[tuple, list[dict]] = {}
    for r in recs:
        cases.setdefault((r["suite"], r["shape"], r["dtype"], r["spectrum"]), []).append(r)
    # One style per label across every panel, in the order entries first appear.
    labels: dict[str, dict] = {}
    for r in recs:
        if r["label"] not in labels:
            others = sum(1 for k in labels if k not in (POLAR_G, BASELINE))
            labels[r["label"]] = _style(r["label"], r["kind"], others)
    if len(cases) <= MAX_PANELS:
        pages = [(path, list(cases.items()))]
    else:
        stem, ext = path.rsplit(".", 1) if "." in path else (path, "png")
        suites: dict[str, list] = {}
        for key, rs in cases.items():
            suites.setdefault(key[0], []).append((key, rs))
        pages = [(f"{stem}_{s}.{ext}", items) for s, items in suites.items()]
    written = []
    for page_path, items in pages:
        _page(items, labels, page_path, title)
        written.append(page_path)
    return written, None


def _page(items, labels: dict[str, dict], path: str, title: str) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullFormatter

    n = len(items)
    cols = min(COLS, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols + 2.6, 3.0 * rows + 0.9), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, ((suite, shape, dtype, spectrum), rs) in zip(axes.flat, items):
        svd = next((r for r in rs if r["label"] == BASELINE), None)
        for r in rs:
            st = labels[r["label"]]
            x, y = r["speedup_vs_svd"], _E(r)
            if svd is not None and r["kind"] != "peer":
                ax.plot([1.0, x], [_E(svd), y], color="0.6", lw=0.8, zorder=1)
            ax.scatter([x], [y], color=st["color"], marker=st["marker"], s=st["s"], zorder=st["zorder"],
                       edgecolors="white" if r["label"] == POLAR_G else "none", linewidths=0.6)
            if not r["finite"]:
                ax.annotate("NaN", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.axvline(1.0, color="0.3", lw=0.8, ls="--", zorder=0)
        bound = testing.E_BOUND[getattr(torch, dtype)]
        ax.axhline(bound, color="0.5", lw=0.8, ls=":", zorder=0)
        ax.set_xscale("log")
        ax.set_yscale("log")
        xs = [r["speedup_vs_svd"] for r in rs] + [1.0]
        lo, hi = min(xs), max(xs)
        pad = max((hi / lo) ** 0.08, 1.15)
        ax.set_xlim(lo / pad, hi * pad)
        ticks = [t for t in SPEEDUP_TICKS if lo / pad <= t <= hi * pad]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ys = [_E(r) for r in rs] + [bound]
        ax.set_ylim(min(ys) / 4, max(ys) * 4)
        ax.set_title(f"{suite} {shape}\n{dtype}, {spectrum}", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="major", alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("speed-up over torch.linalg.svd (x)", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("E (lower is better)", fontsize=8)
    handles = [Line2D([], [], color=st["color"], marker=st["marker"], ls="", markersize=8 if lab == POLAR_G else 6,
                      label=lab) for lab, st in labels.items()]
    handles += [Line2D([], [], color="0.6", lw=0.8, label="orthokern vs its svd"),
                Line2D([], [], color="0.5", lw=0.8, ls=":", label="accurate-mode E bound")]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0 - 2.5 / fig.get_figwidth(), 0.5),
               fontsize=8, frameon=False)
    fig.suptitle(title or "orthokern.polar: speed-up over torch.linalg.svd vs accuracy", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1.0 - 2.6 / fig.get_figwidth(), 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
