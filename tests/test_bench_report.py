"""The report on hand-made records: the summary row per case, the best accurate peer, the one-line answers, the
ResNet whole-network total, the busy warnings, and the plot's panels."""
from __future__ import annotations

import importlib.util

import pytest

from orthokern.bench import plot, report, suites


def rec(label, kind="peer", *, shape=(1, 64, 16), suite="custom", dtype="float32", spectrum="decaying", t=1e-3,
        speedup=1.0, E=1e-6, finite=True, full_shape=None, cpu=True):
    b, m, n = shape
    return {"suite": suite, "shape": f"{b}x{m}x{n}", "batch": b, "m": m, "n": n, "full_shape": full_shape,
            "dtype": dtype, "spectrum": spectrum, "label": label, "kind": kind, "method": label, "backend": None,
            "mode": "accurate" if kind != "peer" else "-", "ran_on": "gram_eigh/torch" if kind != "peer" else "x",
            "source": "", "median_s": t, "q20_s": t, "q80_s": t, "cpu_s": t if cpu else None, "rounds": 5,
            "iterations": 1, "E": E, "norm2": 1.0, "orth": E, "dist": E, "finite": finite,
            "speedup_vs_svd": speedup, "speedup_q20": speedup * 0.9, "speedup_q80": speedup * 1.1,
            "speedup_cpu": speedup if cpu else None, "speedup_vs_svd_tall": None, "floor_s": None,
            "floor_ratio": None, "violation": None}


def case(shape=(1, 64, 16), **kw):
    return [rec("polar(G)", "polar", shape=shape, t=1e-3, speedup=4.0, E=2e-6, **kw),
            rec("gram_eigh/fast", "method", shape=shape, t=5e-4, speedup=8.0, E=3e-3, **kw),
            rec("torch_svd", shape=shape, t=4e-3, speedup=1.0, E=1e-6, **kw),
            rec("muon_ns5", shape=shape, t=2e-4, speedup=20.0, E=0.2, **kw),
            rec("polar_express", shape=shape, t=2e-3, speedup=2.0, E=9e-7, **kw)]


def test_best_peer_is_the_fastest_that_meets_the_bound():
    recs = {r["label"]: r for r in case()}
    assert report.best_peer(recs)["label"] == "polar_express"  # muon is faster but E = 0.2
    recs["polar_express"]["E"] = 0.05
    assert report.best_peer(recs)["label"] == "polar_express"  # none meets it: the most accurate
    del recs["polar_express"], recs["muon_ns5"]
    assert report.best_peer(recs) is None  # the SVD is the baseline, not a peer


def test_summary_row_and_answer():
    recs = case()
    rows = report.summary_rows(recs)
    assert len(rows) == 1
    row = dict(zip(report.SUMMARY_COLUMNS, rows[0]))
    assert row["polar(G)"] == "1.00 ms (1.00 ms)" and row["svd"] == "4.00 ms (4.00 ms)"
    assert row["speed-up"] == "4.00x (4.00x)" and row["q20-q80"] == "3.60-4.40"
    assert row["E polar(G)"] == "2.0e-06" and row["E svd"] == "1.0e-06" and row["runs"] == "gram_eigh/torch"
    assert row["best accurate peer (vs svd, E)"] == "polar_express 2.00x E 9.0e-07"
    assert report.answer_lines(recs) == [
        "custom 1x64x16 float32 decaying: polar(G) vs torch.linalg.svd: 4.00x faster (in CPU time: 4.00x faster), "
        "E = 2.0e-06 (svd 1.0e-06)"]
    slow = case()
    slow[0]["speedup_vs_svd"], slow[0]["speedup_cpu"] = 0.5, None
    assert "polar(G) vs torch.linalg.svd: 2.00x slower, E = 2.0e-06" in report.answer_lines(slow)[0]
    text = report.format_summary(recs)
    assert text.splitlines()[0].startswith("suite") and "polar_express 2.00x" in text


def test_wide_case_compares_with_the_svd_of_the_transpose():
    recs = case(shape=(1, 16, 64))
    recs[0]["speedup_vs_svd_tall"] = 3.0
    recs.append(rec("torch_svd_tall", shape=(1, 16, 64), speedup=1.33))
    assert report.answer_lines(recs)[0].endswith("; vs svd of Gᵀ: 3.00x faster")
    assert dict(zip(report.SUMMARY_COLUMNS, report.summary_rows(recs)[0]))["vs svd(Gᵀ)"] == "3.00x"


def test_resnet50_total_line_sums_every_shape():
    recs = []
    for (m, n), count in suites.RESNET50_SHAPES.items():
        recs.append(rec("polar(G)", "polar", suite="resnet50", shape=(count, m, n), t=0.01))
        recs.append(rec("torch_svd", suite="resnet50", shape=(count, m, n), t=0.03))
        if m < n:
            recs.append(rec("torch_svd_tall", suite="resnet50", shape=(count, m, n), t=0.02))
    (line,) = report.total_lines(recs)
    n_shapes = len(suites.RESNET50_SHAPES)
    n_wide = sum(1 for m, n in suites.RESNET50_SHAPES if m < n)
    assert line.startswith(f"resnet50 float32 decaying: all 54 gradients ({n_shapes} shapes")
    tp, ts, tt = n_shapes * 0.01, n_shapes * 0.03, n_wide * 0.02 + (n_shapes - n_wide) * 0.03
    assert f"polar(G) {report.fmt_time(tp)} vs torch.linalg.svd {report.fmt_time(ts)}: 3.00x faster" in line
    assert f"svd of Gᵀ for the wide ones: {report.fmt_time(tt)}, {ts / tp * tt / ts:.2f}x faster" in line


def test_resnet50_fast_mode_total_takes_autos_fast_method_per_shape():
    recs = []
    for (m, n), count in suites.RESNET50_SHAPES.items():
        recs.append(rec("polar(G)", "polar", suite="resnet50", shape=(count, m, n), t=0.01))
        recs.append(rec("torch_svd", suite="resnet50", shape=(count, m, n), t=0.03))
        fast = rec("gram_eigh/fast", "method", suite="resnet50", shape=(count, m, n), t=0.005, E=3e-3)
        fast["method"] = "gram_eigh"
        recs.append(fast)
        recs.append(rec("newton_schulz/fast", "method", suite="resnet50", shape=(count, m, n), t=1e-4, E=0.1))
    acc, fast = report.total_lines(recs, "cpu")  # on a CPU auto runs gram_eigh in fast mode too
    n_shapes = len(suites.RESNET50_SHAPES)
    assert fast.startswith("resnet50 float32 decaying: all 54 gradients in fast mode (gram_eigh, ")
    assert (f"{report.fmt_time(n_shapes * 0.005)} vs torch.linalg.svd {report.fmt_time(n_shapes * 0.03)}: "
            "6.00x faster, E at most 3.0e-03") in fast
    recs = [r for r in recs if not (r["label"] == "gram_eigh/fast" and r["m"] == 64 and r["n"] == 147)]
    assert len(report.total_lines(recs, "cpu")) == 1  # a shape without its fast record: no fast total


def test_no_total_for_a_partial_or_reduced_suite():
    recs = [rec("polar(G)", "polar", suite="resnet50", shape=(3, 64, 576)),
            rec("torch_svd", suite="resnet50", shape=(3, 64, 576)),
            rec("polar(G)", "polar", suite="resnet50", shape=(3, 512, 128), full_shape="3x2048x512"),
            rec("torch_svd", suite="resnet50", shape=(3, 512, 128), full_shape="3x2048x512")]
    (line,) = report.total_lines(recs)
    assert "no whole-network total: 1 of its 21 gradient shapes ran at full size" in line
    assert report.total_lines(case()) == []  # no ResNet suite, no line


def _meta(load_start, load_max, cores=2, threads=1, device_type="cpu"):
    return {"device": "CPU", "device_type": device_type, "torch": "t", "orthokern": "o", "backends": ["torch"],
            "cores": cores, "threads": threads, "load_start": load_start, "load_max": load_max}


@pytest.mark.parametrize("load_start, load_max, expected", [
    (0.3, 1.2, None), (1.5, 2.0, "busy (1-minute load 1.50"), (0.3, 2.6, "became busy during the run"),
    (None, None, None),
])
def test_busy_warnings(load_start, load_max, expected):
    warnings = report.busy_warnings(_meta(load_start, load_max))
    if expected is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and expected in warnings[0]
    assert report.busy_warnings(_meta(5.0, 5.0, device_type="cuda")) == []
    header = "\n".join(report.header_lines(_meta(load_start, load_max)))
    assert "2 cores, 1 torch thread" in header and "speed-up" in header


needs_mpl = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs matplotlib")


@needs_mpl
def test_plot_one_panel_per_case(tmp_path):
    recs = case() + case(shape=(2, 64, 16)) + case(shape=(1, 16, 64))
    recs[-1]["finite"] = False  # a NaN peer is drawn, not dropped
    paths, why = plot.plot_speedup_vs_error(recs, str(tmp_path / "p.png"))
    assert why is None and paths == [str(tmp_path / "p.png")]
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_mpl
def test_plot_splits_by_suite_past_the_panel_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(plot, "MAX_PANELS", 1)
    recs = case(suite="tall") + case(suite="square")
    paths, why = plot.plot_speedup_vs_error(recs, str(tmp_path / "p.png"))
    assert why is None and paths == [str(tmp_path / "p_tall.png"), str(tmp_path / "p_square.png")]


def test_plot_without_a_baseline_says_why(tmp_path):
    recs = case()
    for r in recs:
        r["speedup_vs_svd"] = None
    paths, why = plot.plot_speedup_vs_error(recs, str(tmp_path / "p.png"))
    assert paths == [] and why is not None
