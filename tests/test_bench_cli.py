"""`python -m orthokern.bench` end to end on a tiny custom suite: outputs, table, skips and the accuracy gate."""
from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

import orthokern
from orthokern import dispatch
from orthokern.bench import cli, peers, report

TINY = ["--shapes", "2x24x8,12x20", "--spectra", "decaying,rank_deficient", "--quick", "--no-progress",
        "--rounds", "2", "--max-entry-seconds", "0.05", "--device", "cpu"]


def _run(tmp_path, capsys, *extra):
    out = tmp_path / "out"
    rc = cli.main([*TINY, "--out", str(out), *extra])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err, out


def test_quick_custom_suite_writes_json_png_and_full_table(tmp_path, capsys):
    rc, stdout, stderr, out = _run(tmp_path, capsys, "--results-md", str(tmp_path / "RESULTS.md"))
    assert rc == 0, stderr
    data = json.loads((out / "results.json").read_text())
    results = data["results"]
    backends = cli.default_backends(torch.device("cpu"))
    assert "torch" in backends and "triton" not in backends  # interpreted Triton is not benchmarked
    cases = {(r["shape"], r["spectrum"]) for r in results}
    assert cases == {(s, sp) for s in ("2x24x8", "1x12x20") for sp in ("decaying", "rank_deficient")}
    for case in cases:
        got = {(r["method"], r["backend"], r["mode"]) for r in results if (r["shape"], r["spectrum"]) == case}
        key = f"custom/{case[0]}/float32/{case[1]}"
        skipped = {s["entry"] for s in data["skipped"] if s["case"] == key}
        for m in orthokern.METHODS:
            for b in backends:
                modes = ("accurate", "fast") if m in ("auto", "gram_eigh", "newton_schulz") else ("accurate",)
                for mode in modes:
                    # Every combination ran, or is listed as one that cannot run here (a compiled backend
                    # may lack a method or a shape); the pure-torch reference always runs.
                    assert (m, b, mode) in got or (b != "torch" and f"{m}/{b}/{mode}" in skipped), \
                        f"{m}/{b}/{mode} missing for {case}"
        for p in peers.PEERS:
            assert (p, "peer", "-") in got
    for r in results:
        assert r["median_s"] > 0 and r["finite"]
        assert r["speedup_vs_svd"] == pytest.approx(
            next(x["median_s"] for x in results if x["method"] == "torch_svd" and x["shape"] == r["shape"]
                 and x["spectrum"] == r["spectrum"]) / r["median_s"])
        assert r["floor_ratio"] is None  # no floor on a CPU
    assert data["violations"] == []
    # The printed table names every method and peer, and says the floor is n/a here.
    for name in [*orthokern.METHODS, *peers.PEERS]:
        assert name in stdout
    assert "n/a" in stdout
    if importlib.util.find_spec("matplotlib") is not None:
        png = out / "time_vs_error.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "matplotlib is not installed" in stdout
    md = (tmp_path / "RESULTS.md").read_text()
    assert "<!-- BEGIN cpu -->" in md and "No GPU run has been made yet" in md
    assert "| gram_eigh | torch | accurate | 2x24x8 |" in md and "| ‖O‖₂ |" in md


def test_accuracy_gate_fails_on_a_wrong_method(tmp_path, capsys, monkeypatch):
    good = dispatch.resolve("gram_eigh", "torch", torch.zeros(1, 4, 2))

    def wrong(G, *, mode, rcond):
        # Plausible-looking but not the polar factor: just G scaled to unit spectral norm.
        O = good.fn(G, mode=mode, rcond=rcond)
        return (O + 0.05 * G / torch.linalg.matrix_norm(G, 2)[:, None, None]).to(G.dtype)

    monkeypatch.setitem(dispatch.TABLE, ("gram_eigh", "torch"),
                        dispatch.Impl("gram_eigh", "torch", wrong, good.why_not))
    rc, stdout, stderr, out = _run(tmp_path, capsys, "--methods", "gram_eigh,svd,torch_svd")
    assert rc == 1
    assert "ACCURACY VIOLATIONS" in stderr and "gram_eigh/torch/accurate" in stderr
    assert "svd/torch" not in stderr  # the correct method is not blamed
    data = json.loads((out / "results.json").read_text())
    assert {v["entry"] for v in data["violations"]} == {"gram_eigh/torch/accurate"}


def test_unavailable_backend_is_skipped_and_listed(tmp_path, capsys):
    rc, stdout, stderr, out = _run(tmp_path, capsys, "--methods", "svd", "--backends", "torch,cuda")
    assert rc == 0, stderr
    assert "skipped" in stdout and "svd/cuda/accurate" in stdout
    data = json.loads((out / "results.json").read_text())
    assert {r["backend"] for r in data["results"]} == {"torch"}
    assert data["skipped"]


@pytest.mark.parametrize("args, word", [(["--suite", "bogus"], "--suite"), (["--dtype", "int8"], "--dtype"),
                                        (["--methods", "qr"], "--methods"), (["--spectra", "flat"], "--spectra"),
                                        (["--shapes", "2xx3"], "--shapes"), (["--modes", "turbo"], "--modes")])
def test_usage_errors_name_the_argument(args, word, capsys, tmp_path):
    assert cli.main([*args, "--out", str(tmp_path)]) == 2
    assert word in capsys.readouterr().err


def test_results_md_keeps_the_other_device_section(tmp_path):
    path = str(tmp_path / "R.md")
    report.update_results_md(path, "<!-- BEGIN gpu -->\n## GPU: H100\nnumbers\n<!-- END gpu -->")
    report.update_results_md(path, "<!-- BEGIN cpu -->\n## CPU\nquick\n<!-- END cpu -->")
    text = open(path).read()
    assert "## GPU: H100\nnumbers" in text and "## CPU\nquick" in text and "No GPU run" in text  # train-gpu
    report.update_results_md(path, "<!-- BEGIN cpu -->\n## CPU\nagain\n<!-- END cpu -->")
    text = open(path).read()
    assert "again" in text and "quick" not in text and text.count("<!-- BEGIN cpu -->") == 1
    assert os.path.getsize(path) > 0


def test_a_crashing_method_fails_the_run(tmp_path, capsys, monkeypatch):
    good = dispatch.resolve("cholqr2", "torch", torch.zeros(1, 4, 2))

    def crash(G, *, mode, rcond):
        raise torch.linalg.LinAlgError("factorisation failed")

    monkeypatch.setitem(dispatch.TABLE, ("cholqr2", "torch"), dispatch.Impl("cholqr2", "torch", crash, good.why_not))
    rc, stdout, stderr, out = _run(tmp_path, capsys, "--methods", "cholqr2,svd")
    assert rc == 1
    assert "cholqr2/torch/accurate" in stderr and "LinAlgError" in stderr
