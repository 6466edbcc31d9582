"""Time against accuracy, one marker per method: where each sits between fast-and-rough and slow-and-exact."""
from __future__ import annotations

from typing import Optional, Sequence


def plot_time_vs_error(records: Sequence[dict], path: str, title: str = "") -> Optional[str]:
    """Write a log-log PNG of median time vs E per method; returns None, or why no plot was made."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot (pip install matplotlib)"
    fig, ax = plt.subplots(figsize=(8, 5.5))
    labels = sorted({(r["method"], r["backend"], r["mode"]) for r in records})
    markers = "os^vD<>pPhX*"
    for i, (method, backend, mode) in enumerate(labels):
        pts = [r for r in records if (r["method"], r["backend"], r["mode"]) == (method, backend, mode)]
        # E can be exactly 0 (an exact result in float64) or NaN: floor it so it stays on a log axis.
        name = method if backend == "peer" else f"{method}/{backend}/{mode}"
        color = f"C{i % 10}"
        # Filled markers for float32/float64 inputs, hollow ones for half precision (whose E floor is the
        # storage rounding, a few 1e-3).
        for half in (False, True):
            sel = [r for r in pts if (r["dtype"] in ("bfloat16", "float16")) == half]
            if not sel:
                continue
            xs = [r["median_s"] * 1e3 for r in sel]
            ys = [max(r["E"], 1e-17) if r["finite"] else 1.0 for r in sel]
            ax.scatter(xs, ys, marker=markers[i % len(markers)], alpha=0.8,
                       facecolors="none" if half else color, edgecolors=color,
                       label=name if not half or not any(r["dtype"] not in ("bfloat16", "float16") for r in pts)
                       else None)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("median time per call (ms)")
    ax.set_ylabel("E (accuracy contract; lower is better)")
    ax.axhline(1e-3, color="grey", lw=0.8, ls="--")
    ax.text(ax.get_xlim()[0], 1e-3, " float32 accurate bound", va="bottom", fontsize=8, color="grey")
    ax.set_title((title or "orthokern polar: time vs accuracy") + "\n(hollow markers: bfloat16/float16 input)",
                 fontsize=10)
    ax.legend(fontsize=7, loc="best")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None
