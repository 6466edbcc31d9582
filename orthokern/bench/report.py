"""What the benchmark prints and writes: the header (device, threads, load), the per-case summary table, the
one-line answers, the whole-network totals, the detailed table (``--detail``), the JSON file and the sections of
``bench/RESULTS.md``."""
from __future__ import annotations

import datetime
import json
import os
import platform
import re
from typing import Optional, Sequence

import torch

from .. import dispatch, testing
from . import suites
from .runner import BASELINE, BASELINE_TALL, POLAR_G
from .timing import busy

DTYPE_SHORT = {"float64": "f64", "float32": "f32", "bfloat16": "bf16", "float16": "f16"}


def fmt_time(s: Optional[float]) -> str:
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.0f} us"


def fmt_x(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f}x"


def fmt_E(rec: Optional[dict]) -> str:
    if rec is None:
        return "-"
    return f"{rec['E']:.1e}" if rec["finite"] else "NaN"


def faster(x: float) -> str:
    """A speed-up in words: "2.0x faster" or "1.3x slower"."""
    return f"{x:.2f}x faster" if x >= 1 else f"{1 / x:.2f}x slower"


# ---------------------------------------------------------------------------------------------------- environment

def environment(device: torch.device, threads: int, load_start: Optional[float], cores: int) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({platform.processor() or platform.machine()})"
    import orthokern

    return {
        "device": name,
        "device_type": device.type,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "orthokern": orthokern.__version__,
        "backends": orthokern.available_backends(device),
        "python": platform.python_version(),
        "threads": threads,
        "cores": cores,
        # A shared machine's timings depend on what else runs: how busy it was before this run started.
        "load_start": None if load_start is None else round(load_start, 2),
        "load_max": None,  # highest 1-minute load sampled between cases (includes this run's own threads)
    }


def machine_lines(meta: dict) -> list[str]:
    """What ran where: the device and versions; on a CPU the cores, torch threads, load and busy warnings."""
    lines = [f"orthokern.bench on {meta['device']}: torch {meta['torch']}, orthokern {meta['orthokern']}, "
             f"backends {', '.join(meta['backends'])}"]
    if meta["device_type"] != "cuda":
        load = meta.get("load_start")
        lines.append(f"{meta['cores']} cores, {meta['threads']} torch thread{'s' if meta['threads'] != 1 else ''}; "
                     f"1-minute load average at start {'n/a' if load is None else f'{load:.2f}'}"
                     + ("" if meta.get("load_max") is None else f", at most {meta['load_max']:.2f} during the run"))
        lines += busy_warnings(meta)
    return lines


def header_lines(meta: dict) -> list[str]:
    """The lines above the tables: :func:`machine_lines` and how the numbers were taken."""
    if meta["device_type"] != "cuda":
        how = ("times: median wall-clock per call over interleaved rounds (rotating order); speed-up: median over "
               "rounds of (svd time / polar(G) time) in the same round, q20-q80 beside it; in brackets: the same "
               "from process CPU time (unaffected by waiting for a core)")
    else:
        how = ("times: median per call over interleaved rounds (CUDA events); speed-up: median over rounds of "
               "(svd time / polar(G) time) in the same round")
    return machine_lines(meta) + [how]


def _rate(tflops: float) -> str:
    return f"{tflops:.1f} TFLOP/s" if tflops >= 1 else f"{tflops * 1e3:.1f} GFLOP/s"


def floor_rates_text(rates: dict) -> str:
    """The measured floor rates (``floor.DeviceRates.as_dict()``) in one line ("copy N GB/s; matmul ...")."""
    mm = ", ".join(f"{k} {_rate(v)}" for k, v in rates["matmul_TFLOPs"].items())
    return f"copy {rates['copy_GBps']:.1f} GB/s; matmul {mm}"


def busy_warnings(meta: dict) -> list[str]:
    out = []
    cores, threads = meta["cores"], meta["threads"]
    if meta["device_type"] == "cuda":
        return out  # the host's load hardly moves device timings
    if busy(meta.get("load_start"), cores, threads):
        out.append(f"WARNING: the machine is busy (1-minute load {meta['load_start']:.2f} on {cores} cores, this run "
                   f"uses {threads} thread{'s' if threads != 1 else ''}): times are inflated; the speed-ups, paired "
                   "round by round, suffer less")
    load_max = meta.get("load_max")
    # During the run the load includes this run's own threads: the others used about load - threads.
    if meta["device_type"] != "cuda" and load_max is not None and busy(load_max - threads, cores, threads) \
            and not out:
        out.append(f"WARNING: the machine became busy during the run (1-minute load up to {load_max:.2f} on {cores} "
                   "cores): times are inflated; the paired speed-ups suffer less")
    return out


# ---------------------------------------------------------------------------------------------------- per case

def case_key(rec: dict) -> tuple:
    return rec["suite"], rec["shape"], rec["dtype"], rec["spectrum"]


def by_case(records: Sequence[dict]) -> dict[tuple, dict[str, dict]]:
    """{case: {label: record}} in the order the cases ran."""
    out: dict[tuple, dict[str, dict]] = {}
    for r in records:
        out.setdefault(case_key(r), {})[r["label"]] = r
    return out


def best_peer(recs: dict[str, dict]) -> Optional[dict]:
    """The fastest peer other than the SVD baselines whose E meets accurate mode's bound for the dtype; if none
    does, the most accurate one (a fast peer far from the polar factor is no alternative to polar(G))."""
    peers = [r for r in recs.values() if r["kind"] == "peer" and r["label"] not in (BASELINE, BASELINE_TALL)]
    if not peers:
        return None
    bound = testing.E_BOUND[getattr(torch, peers[0]["dtype"])]
    good = [r for r in peers if r["finite"] and r["E"] <= bound and r["speedup_vs_svd"] is not None]
    if good:
        return max(good, key=lambda r: r["speedup_vs_svd"])
    return min(peers, key=lambda r: r["E"] if r["finite"] else float("inf"))


def _peer_text(rec: Optional[dict]) -> str:
    if rec is None:
        return "-"
    return f"{rec['label']} {fmt_x(rec['speedup_vs_svd'])} E {fmt_E(rec)}"


def _with_cpu(rec: Optional[dict]) -> str:
    if rec is None:
        return "-"
    t = fmt_time(rec["median_s"])
    return t if rec.get("cpu_s") is None else f"{t} ({fmt_time(rec['cpu_s'])})"


SUMMARY_COLUMNS = ("suite", "shape", "dtype", "spectrum", "polar(G)", "runs", "svd", "speed-up", "q20-q80",
                   "vs svd(Gᵀ)", "floor x", "E polar(G)", "E svd", "best accurate peer (vs svd, E)")


def summary_rows(records: Sequence[dict]) -> list[list[str]]:
    rows = []
    for (suite, shape, dtype, spectrum), recs in by_case(records).items():
        p, s = recs.get(POLAR_G), recs.get(BASELINE)
        tall = recs.get(BASELINE_TALL)
        spread = "-" if p is None or p["speedup_q20"] is None else f"{p['speedup_q20']:.2f}-{p['speedup_q80']:.2f}"
        speedup = "-" if p is None else fmt_x(p["speedup_vs_svd"])
        if p is not None and p.get("speedup_cpu") is not None:
            speedup += f" ({fmt_x(p['speedup_cpu'])})"
        rows.append([
            suite, shape, DTYPE_SHORT.get(dtype, dtype), spectrum, _with_cpu(p), p["ran_on"] if p else "-",
            _with_cpu(s), speedup, spread,
            fmt_x(p["speedup_vs_svd_tall"]) if p is not None and tall is not None else "-",
            "-" if p is None or p.get("floor_ratio") is None else fmt_x(p["floor_ratio"]),
            fmt_E(p), fmt_E(s), _peer_text(best_peer(recs)),
        ])
    return rows


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool,
           groups: Optional[Sequence[tuple]] = None) -> str:
    if markdown:
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(columns)]
    out = ["  ".join(h.ljust(w) for h, w in zip(columns, widths)).rstrip(), "  ".join("-" * w for w in widths)]
    prev = None
    for i, r in enumerate(rows):
        if groups is not None:
            if prev is not None and groups[i] != prev:
                out.append("")
            prev = groups[i]
        out.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(out)


def format_summary(records: Sequence[dict], markdown: bool = False) -> str:
    """One row per case: polar(G) against torch.linalg.svd and the best accurate peer."""
    return _table(SUMMARY_COLUMNS, summary_rows(records), markdown)


def answer_lines(records: Sequence[dict]) -> list[str]:
    """Per case: "polar(G) vs torch.linalg.svd: N x faster, E = ..." (and against the SVD of G^T when G is wide)."""
    lines = []
    for (suite, shape, dtype, spectrum), recs in by_case(records).items():
        p, s = recs.get(POLAR_G), recs.get(BASELINE)
        if p is None or s is None or p["speedup_vs_svd"] is None:
            continue
        cpu = "" if p.get("speedup_cpu") is None else f" (in CPU time: {faster(p['speedup_cpu'])})"
        text = (f"{suite} {shape} {dtype} {spectrum}: polar(G) vs torch.linalg.svd: {faster(p['speedup_vs_svd'])}"
                f"{cpu}, E = {fmt_E(p)} (svd {fmt_E(s)})")
        if recs.get(BASELINE_TALL) is not None and p["speedup_vs_svd_tall"] is not None:
            text += f"; vs svd of Gᵀ: {faster(p['speedup_vs_svd_tall'])}"
        if p.get("floor_ratio") is not None:
            text += f"; {fmt_x(p['floor_ratio'])} its floor"
        lines.append(text)
    return lines


RESNET_SHAPES = {"resnet50": suites.RESNET50_SHAPES, "resnet18": suites.RESNET18_SHAPES}


def total_lines(records: Sequence[dict], device_type: str = "cpu") -> list[str]:
    """Whole-network totals of the ResNet suites: every gradient shape at full size, one polar(G) call per shape
    (grouped as FastOrthogonalSGD does), summed over the shapes' medians; or why there is none. Where the run timed
    fast mode too, a second line: per shape the method ``auto`` runs in fast mode on ``device_type``, fast."""
    lines = []
    for suite, shapes in RESNET_SHAPES.items():
        recs = [r for r in records if r["suite"] == suite]
        if not recs:
            continue
        n_grads = sum(shapes.values())
        groups: dict[tuple, dict] = {}
        for r in recs:
            groups.setdefault((r["dtype"], r["spectrum"]), {}).setdefault(r["label"], []).append(r)
        for (dtype, spectrum), by_label in groups.items():
            polar, svd = by_label.get(POLAR_G, []), by_label.get(BASELINE, [])
            got = {(r["m"], r["n"]): r["batch"] for r in polar if r["full_shape"] is None}
            if got != shapes or len(svd) != len(polar):
                lines.append(f"{suite} {dtype} {spectrum}: no whole-network total: {len(got)} of its {len(shapes)} "
                             "gradient shapes ran at full size (--suite " + suite + " --full gives it; "
                             "--suite train measures the real ResNet-50 gradients)")
                continue
            tp = sum(r["median_s"] for r in polar)
            ts = sum(r["median_s"] for r in svd)
            # On a tall shape the SVD of the tall orientation is torch_svd itself (not run twice).
            tall = {(r["m"], r["n"]): r["median_s"] for r in by_label.get(BASELINE_TALL, [])}
            tt = sum(tall.get((r["m"], r["n"]), r["median_s"]) for r in svd)
            lines.append(f"{suite} {dtype} {spectrum}: all {n_grads} gradients ({len(shapes)} shapes, one call per "
                         f"shape): polar(G) {fmt_time(tp)} vs torch.linalg.svd {fmt_time(ts)}: {faster(ts / tp)} "
                         f"(svd of Gᵀ for the wide ones: {fmt_time(tt)}, {faster(tt / tp)})")
            fast = _fast_mode_records(polar, by_label, device_type)
            if fast:
                tf = sum(r["median_s"] for r in fast)
                methods = "/".join(sorted({r["method"] for r in fast}))
                lines.append(f"{suite} {dtype} {spectrum}: all {n_grads} gradients in fast mode ({methods}, the "
                             f"method auto runs in fast mode): {fmt_time(tf)} vs torch.linalg.svd {fmt_time(ts)}: "
                             f"{faster(ts / tf)}, E at most {max(r['E'] for r in fast):.1e}")
    return lines


def _fast_mode_records(polar: list[dict], by_label: dict, device_type: str) -> list[dict]:
    """Per shape of ``polar``, the fast-mode record of the method ``auto`` picks in fast mode; [] if one is missing."""
    out = []
    for r in polar:
        m, n = max(r["m"], r["n"]), min(r["m"], r["n"])
        method = dispatch.choose_method(m, n, device_type, "fast", 1e-3, getattr(torch, r["dtype"]))
        match = [x for x in by_label.get(f"{method}/fast", []) if (x["m"], x["n"]) == (r["m"], r["n"])]
        if not match:
            return []
        out.append(match[0])
    return out


# ---------------------------------------------------------------------------------------------------- detail

DETAIL_COLUMNS = ("entry", "runs", "median", "q20-q80", "cpu", "vs svd", "q20-q80 ", "cpu vs svd", "E", "‖O‖₂",
                  "‖OᵀO−I‖", "dist", "floor x", "rounds")


def _detail_row(rec: dict) -> list[str]:
    fr = rec.get("floor_ratio")
    flag = "  <-- " + rec["violation"] if rec.get("violation") else ""
    sp = rec.get("speedup_vs_svd")
    fin = rec["finite"]
    return [
        rec["label"], rec["ran_on"] if rec["kind"] != "peer" else "peer",
        fmt_time(rec["median_s"]), f"{fmt_time(rec['q20_s'])}-{fmt_time(rec['q80_s'])}", fmt_time(rec.get("cpu_s")),
        fmt_x(sp), "-" if sp is None else f"{rec['speedup_q20']:.2f}-{rec['speedup_q80']:.2f}",
        fmt_x(rec.get("speedup_cpu")),
        f"{rec['E']:.1e}" if fin else "NaN", f"{rec['norm2']:.4f}" if fin else "NaN",
        f"{rec['orth']:.1e}" if fin else "NaN", f"{rec['dist']:.1e}" if fin else "NaN",
        f"{fr:.1f}" if fr is not None else "n/a", f"{rec['rounds']}x{rec['iterations']}" + flag,
    ]


def format_detail(records: Sequence[dict], markdown: bool = False) -> str:
    """Every entry of every case (``--detail``): one block per case."""
    blocks = []
    for (suite, shape, dtype, spectrum), recs in by_case(records).items():
        title = f"{suite} {shape} {dtype} {spectrum}"
        rows = [_detail_row(r) for r in recs.values()]
        blocks.append((f"#### {title}\n\n" if markdown else f"{title}\n") + _table(DETAIL_COLUMNS, rows, markdown))
    return "\n\n".join(blocks)


# ---------------------------------------------------------------------------------------------------- files

def write_json(path: str, meta: dict, records, skipped, violations) -> None:
    with open(path, "w") as f:
        json.dump({"meta": meta, "results": records, "skipped": skipped, "violations": violations}, f, indent=1)


GPU_PLACEHOLDER = (
    "**No GPU run has been made yet.** The numbers for the suites at full size come from\n"
    "`python -m orthokern.bench --suite all --results-md bench/RESULTS.md` on a CUDA machine, which replaces\n"
    "this section (and keeps the CPU one)."
)

_HEADER = (
    "# orthokern benchmark results\n\n"
    "Generated by `python -m orthokern.bench ... --results-md bench/RESULTS.md`; do not edit by hand (each run\n"
    "replaces the section of its device type and keeps the other). One row per case: `polar(G)` is\n"
    "`orthokern.polar(G)` called with no options (\"runs\": the implementation it dispatched to), against\n"
    "`torch.linalg.svd` (the Orthogonal-SGDM paper's method) on the same input. Times are medians per call over\n"
    "interleaved rounds; the speed-up is the median over rounds of the two times' ratio within a round, with its\n"
    "q20-q80 spread (on a CPU, the same from process CPU time in brackets, one torch thread unless stated);\n"
    "\"vs svd(Gᵀ)\" compares with `torch.linalg.svd`\n"
    "run on the tall orientation, for wide shapes. E is the accuracy contract's measure (README, \"Accuracy\";\n"
    "accurate-mode bound 1e-3 in float32, 1e-2 in bfloat16), worst matrix of the batch. The best accurate peer is\n"
    "the fastest of `muon_ns5` (torch.optim.Muon's own Newton–Schulz, per matrix), `muon_ns5_batched` and\n"
    "`polar_express` (plain torch) whose E meets that bound. The detailed tables list every method.\n"
)


def _section(kind: str, body: str) -> str:
    return f"<!-- BEGIN {kind} -->\n{body.rstrip()}\n<!-- END {kind} -->"


def _load(value: Optional[float]) -> str:
    return "unknown" if value is None else f"{value:.2f}"


def results_section(meta: dict, records, skipped, violations, rates: Optional[dict]) -> str:
    title = "GPU" if meta["device_type"] == "cuda" else "CPU"
    lines = [
        f"## Polar suites ({title}): {meta['device']}",
        "",
        f"- date: {meta['date']}",
        f"- torch {meta['torch']}" + (f" (CUDA {meta['cuda']})" if meta.get("cuda") else "")
        + f", Triton {meta['triton']}, orthokern {meta['orthokern']}, Python {meta['python']}",
        f"- backends: {', '.join(meta['backends'])}",
        f"- command: `{meta['command']}`",
    ]
    if title == "CPU":
        lines.append(f"- {meta['cores']} cores, {meta['threads']} torch threads, 1-minute load average at start "
                     f"{_load(meta.get('load_start'))}, highest between cases {_load(meta.get('load_max'))}")
        lines += [f"- {w}" for w in busy_warnings(meta)]
    if rates:
        lines.append(f"- measured floor rates: {floor_rates_text(rates)}")
    reduced = sorted({(r["suite"], r["shape"], r["full_shape"]) for r in records if r.get("full_shape")})
    if reduced:
        lines.append("- reduced sizes (--quick): " + ", ".join(f"{s} {q} (full {f})" for s, q, f in reduced))
    lines += ["", format_summary(records, markdown=True), ""]
    lines += [f"- {a}" for a in answer_lines(records) + total_lines(records, meta["device_type"])]
    lines += ["", "<details><summary>Every method</summary>", "", format_detail(records, markdown=True), "",
              "</details>", ""]
    if skipped:
        lines.append(f"Skipped (cannot run here): {len(skipped)} combinations, e.g. "
                     f"{skipped[0]['entry']}: {skipped[0]['reason']}")
    if violations:
        lines.append("**Accuracy violations:** " + "; ".join(f"{v['entry']} on {v['case']}: {v['why']}"
                                                             for v in violations))
    else:
        lines.append("Accuracy gate: every orthokern result met its contract.")
    return _section("gpu" if title == "GPU" else "cpu", "\n".join(lines))


def update_results_md(path: str, section: str) -> None:
    """Write ``section`` into the file at ``path``, replacing the same device type's section only."""
    kind = re.match(r"<!-- BEGIN ([\w-]+) -->", section).group(1)
    old = open(path).read() if os.path.exists(path) else ""
    sections = dict(_find_sections(old))
    sections[kind] = section
    if "gpu" not in sections:
        sections["gpu"] = _section("gpu", "## GPU\n\n" + GPU_PLACEHOLDER)
    if "train-gpu" not in sections:
        sections["train-gpu"] = _section("train-gpu", "## Training step (GPU)\n\n" + GPU_PLACEHOLDER.replace(
            "--suite all", "--suite train"))
    order = ["gpu", "train-gpu", "cpu", "train-cpu"]
    keys = [k for k in order if k in sections] + [k for k in sections if k not in order]
    with open(path, "w") as f:
        f.write(_HEADER + "\n" + "\n\n".join(sections[k] for k in keys) + "\n")


def _find_sections(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(0)) for m in re.finditer(r"(?s)<!-- BEGIN ([\w-]+) -->.*?<!-- END \1 -->", text)]
