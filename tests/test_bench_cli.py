"""`python -m orthokern.bench` end to end on a tiny custom suite: the summary and its one-line answers, the
entries per case, paired speed-ups, threads, load, the accuracy gate, skips and errors, and the plan route."""
from __future__ import annotations

import importlib.util
import json
import statistics
import sys
import types

import pytest
import torch

import orthokern
from orthokern import dispatch
from orthokern.bench import cli, peers, report, runner

TINY = ["--shapes", "2x24x8,12x20", "--spectra", "decaying", "--quick", "--no-progress", "--rounds", "3",
        "--max-rounds", "3", "--case-seconds", "0", "--device", "cpu"]


def _run(tmp_path, capsys, *extra):
    """One small case (the later --shapes wins over TINY's), for the tests that need a run but not two cases."""
    out = tmp_path / "out"
    rc = cli.main([*TINY, "--shapes", "2x24x8", "--no-floor", "--out", str(out), *extra])
    captured = capsys.readouterr()
    data = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else None
    return rc, captured.out, captured.err, data


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """One default run shared by the tests that only read its output."""
    out = tmp_path_factory.mktemp("bench")
    import contextlib
    import io

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = cli.main([*TINY, "--out", str(out / "out"), "--results-md", str(out / "RESULTS.md")])
    return rc, stdout.getvalue(), stderr.getvalue(), json.loads((out / "out" / "results.json").read_text()), out


def test_default_run_answers_per_case(default_run):
    rc, stdout, stderr, data, out = default_run
    assert rc == 0, stderr
    # The one-line answer per case, with E, and the SVD of G^T beside plain SVD for the wide case only.
    lines = [ln for ln in stdout.splitlines() if "polar(G) vs torch.linalg.svd:" in ln]
    assert len(lines) == 2
    for ln in lines:
        assert (" faster" in ln or " slower" in ln) and "E = " in ln
    assert "vs svd of Gᵀ" in next(ln for ln in lines if "1x12x20" in ln)
    assert "vs svd of Gᵀ" not in next(ln for ln in lines if "2x24x8" in ln)
    # The header: threads, cores and the load; the summary's columns.
    assert "1 torch thread" in stdout and "cores" in stdout and "load average" in stdout
    for col in ("polar(G)", "svd", "speed-up", "q20-q80", "E polar(G)", "E svd", "best accurate peer"):
        assert col in stdout
    # No detail table by default: the per-method labels appear only in results.json.
    assert "newton_schulz/fast" not in stdout


def test_default_entries_polar_g_once_and_backend_none(default_run):
    rc, stdout, stderr, data, out = default_run
    results = data["results"]
    for shape in ("2x24x8", "1x12x20"):
        recs = [r for r in results if r["shape"] == shape]
        labels = [r["label"] for r in recs]
        assert labels.count("polar(G)") == 1
        assert not any(r["method"] == "auto" and r["kind"] != "polar" for r in recs)
        ours = {r["label"] for r in recs if r["kind"] == "method"}
        assert ours == {"svd", "gram_eigh/accurate", "gram_eigh/fast", "newton_schulz/accurate",
                        "newton_schulz/fast", "cholqr2"}
        assert all(r["backend"] is None for r in recs if r["kind"] != "peer")
        # On a CPU the benchmark leaves out the batched twin of torch's Muon iteration (named in --methods, it runs).
        tall = {"torch_svd_tall"} if shape == "2x24x8" else set()
        expected_peers = set(peers.PEERS) - {cli.CPU_SKIPS_PEER} - tall
        assert {r["label"] for r in recs if r["kind"] == "peer"} == expected_peers
        polar = next(r for r in recs if r["label"] == "polar(G)")
        assert polar["ran_on"] == "gram_eigh/" + dispatch.resolve("gram_eigh", None, torch.zeros(1, 24, 8)).backend


def test_speedups_are_paired_round_ratios(default_run):
    rc, stdout, stderr, data, out = default_run
    for r in data["results"]:
        svd = next(x for x in data["results"] if x["label"] == "torch_svd" and x["shape"] == r["shape"])
        assert r["rounds"] == svd["rounds"] == 3 == len(r["wall_rounds"]) == len(r["cpu_rounds"])
        paired = statistics.median(s / t for s, t in zip(svd["wall_rounds"], r["wall_rounds"]))
        assert r["speedup_vs_svd"] == pytest.approx(paired)
        assert r["speedup_q20"] <= r["speedup_vs_svd"] <= r["speedup_q80"]
        assert r["speedup_cpu"] == pytest.approx(statistics.median(
            s / t for s, t in zip(svd["cpu_rounds"], r["cpu_rounds"])))
        assert r["median_s"] > 0 and r["cpu_s"] > 0 and r["finite"]
        # The floor is measured in the same run on a CPU too: time over max(bytes / copy rate, flops / matmul rate).
        assert r["floor_s"] > 0 and r["floor_ratio"] == pytest.approx(r["median_s"] / r["floor_s"])
    assert data["violations"] == []
    assert data["meta"]["threads"] == 1 and data["meta"]["cores"] >= 1


def test_default_run_writes_a_paired_plot_and_results_md(default_run):
    rc, stdout, stderr, data, out = default_run
    if importlib.util.find_spec("matplotlib") is not None:
        png = out / "out" / cli.PLOT_FILE
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "matplotlib is not installed" in stdout
    md = (out / "RESULTS.md").read_text()
    assert "<!-- BEGIN cpu -->" in md and "No GPU run has been made yet" in md
    assert "| custom | 2x24x8 | f32 | decaying |" in md
    assert "polar(G) vs torch.linalg.svd:" in md and "<summary>Every method</summary>" in md
    assert "- measured floor rates: copy " in md and " its floor" in md


def test_detail_and_backends(tmp_path, capsys):
    rc, stdout, stderr, data = _run(tmp_path, capsys, "--detail", "--backends", "torch,cpp", "--methods",
                                    "auto,gram_eigh,torch_svd,muon_ns5_batched")
    assert rc == 0, stderr
    labels = {r["label"] for r in data["results"] if r["shape"] == "2x24x8"}
    assert labels == {"polar(G)", "gram_eigh/torch/accurate", "gram_eigh/torch/fast", "gram_eigh/cpp/accurate",
                      "gram_eigh/cpp/fast", "torch_svd", "muon_ns5_batched"} or \
        "cpp" not in orthokern.available_backends("cpu")
    for label in labels:
        assert label in stdout  # the detail table lists every entry
    assert "‖O‖₂" in stdout


def test_one_thread_by_default_restored_after_and_threads_override(tmp_path, capsys, monkeypatch):
    seen = []

    def probe(G):
        seen.append(torch.get_num_threads())
        return peers.torch_svd(G)

    monkeypatch.setitem(peers.PEERS, "torch_svd", probe)
    before = torch.get_num_threads()
    rc, *_ = _run(tmp_path, capsys, "--methods", "auto,torch_svd")
    assert rc == 0 and set(seen) == {1} and torch.get_num_threads() == before
    seen.clear()
    rc, stdout, stderr, data = _run(tmp_path, capsys, "--methods", "auto,torch_svd", "--threads", "2")
    assert rc == 0 and set(seen) == {2} and data["meta"]["threads"] == 2 and "2 torch threads" in stdout
    assert torch.get_num_threads() == before


def test_busy_machine_warns(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "machine_load", lambda: 7.5)
    monkeypatch.setattr(cli, "usable_cores", lambda: 2)
    rc, stdout, stderr, data = _run(tmp_path, capsys, "--methods", "auto,torch_svd")
    assert rc == 0
    assert "WARNING: the machine is busy (1-minute load 7.50 on 2 cores" in stdout
    assert data["meta"]["load_start"] == 7.5


def test_quiet_machine_does_not_warn(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "machine_load", lambda: 0.2)
    monkeypatch.setattr(cli, "usable_cores", lambda: 4)
    rc, stdout, stderr, data = _run(tmp_path, capsys, "--methods", "auto,torch_svd")
    assert rc == 0 and "WARNING" not in stdout


def _patch(monkeypatch, method, backend, fn):
    good = dispatch.TABLE[(method, backend)]
    monkeypatch.setitem(dispatch.TABLE, (method, backend), dispatch.Impl(method, backend, fn, good.why_not))
    return good


def test_accuracy_gate_fails_on_a_wrong_method(tmp_path, capsys, monkeypatch):
    good = dispatch.TABLE[("gram_eigh", "torch")]

    def wrong(G, *, mode, rcond):
        # Plausible-looking but not the polar factor: the right answer plus a little of G.
        O = good.fn(G, mode=mode, rcond=rcond)
        return (O + 0.05 * G / torch.linalg.matrix_norm(G, 2)[:, None, None]).to(G.dtype)

    _patch(monkeypatch, "gram_eigh", "torch", wrong)
    rc, stdout, stderr, data = _run(tmp_path, capsys, "--methods", "gram_eigh,svd,torch_svd", "--backends", "torch")
    assert rc == 1
    assert "ACCURACY VIOLATIONS" in stderr and "gram_eigh/torch/accurate" in stderr
    assert "svd/torch" not in stderr  # the correct method is not blamed
    assert {v["entry"] for v in data["violations"]} == {"gram_eigh/torch/accurate"}


def test_a_crashing_method_fails_the_run(tmp_path, capsys, monkeypatch):
    def crash(G, *, mode, rcond):
        raise torch.linalg.LinAlgError("factorisation failed")

    _patch(monkeypatch, "cholqr2", "torch", crash)
    rc, stdout, stderr, data = _run(tmp_path, capsys, "--methods", "cholqr2,torch_svd", "--backends", "torch")
    assert rc == 1
    assert "cholqr2/torch" in stderr and "LinAlgError" in stderr


def test_cannot_run_is_classified_by_type_not_message(tmp_path, capsys, monkeypatch):
    """BackendUnavailable is a skip; any other RuntimeError is a failure, whatever its message says."""
    def unavailable(G, *, mode, rcond):
        raise orthokern.BackendUnavailable("no such hardware here")

    def lookalike(G, *, mode, rcond):
        raise RuntimeError("cannot run: this text must not make it a skip")

    _patch(monkeypatch, "cholqr2", "torch", unavailable)
    _patch(monkeypatch, "newton_schulz", "torch", lookalike)
    rc, stdout, stderr, data = _run(tmp_path, capsys, "--methods", "cholqr2,newton_schulz,torch_svd",
                                    "--backends", "torch", "--modes", "accurate")
    assert rc == 1
    assert {s["entry"] for s in data["skipped"]} == {"cholqr2/torch"}
    assert {v["entry"] for v in data["violations"]} == {"newton_schulz/torch/accurate"}
    assert "skipped" in stdout and "no such hardware here" in stdout


def test_unavailable_backend_is_skipped_and_listed(tmp_path, capsys):
    rc, stdout, stderr, data = _run(tmp_path, capsys, "--methods", "svd,torch_svd", "--backends", "torch,cuda")
    assert rc == 0, stderr
    assert "skipped" in stdout and "svd/cuda" in stdout
    assert {r["backend"] for r in data["results"] if r["kind"] == "method"} == {"torch"}


def test_plan_subcommand_is_routed_lazily(monkeypatch):
    got = []
    fake = types.ModuleType("orthokern.bench.plan")
    fake.main = lambda argv: got.append(list(argv)) or 7
    monkeypatch.setitem(sys.modules, "orthokern.bench.plan", fake)
    import orthokern.bench as pkg

    monkeypatch.setattr(pkg, "plan", fake, raising=False)
    assert cli.main(["plan", "--shapes", "2x3x4"]) == 7
    assert got == [["--shapes", "2x3x4"]]


@pytest.mark.parametrize("args, word", [(["--suite", "bogus"], "--suite"), (["--dtype", "int8"], "--dtype"),
                                        (["--methods", "qr"], "--methods"), (["--spectra", "flat"], "--spectra"),
                                        (["--shapes", "2xx3"], "--shapes"), (["--modes", "turbo"], "--modes"),
                                        (["--backends", "gpu"], "--backends"), (["--threads", "0"], "--threads"),
                                        (["--rounds", "0"], "--rounds"), (["--device", "tpu"], "--device"),
                                        (["--case-seconds", "-1"], "--case-seconds"),
                                        (["--quick", "--full"], "--quick")])
def test_usage_errors_name_the_argument(args, word, capsys, tmp_path):
    assert cli.main([*args, "--out", str(tmp_path)]) == 2
    assert word in capsys.readouterr().err


def test_help_documents_the_interface(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--detail", "--threads", "--rounds", "--case-seconds", "--backends", "plan"):
        assert flag in text


def test_results_md_keeps_the_other_device_section(tmp_path):
    path = str(tmp_path / "R.md")
    report.update_results_md(path, "<!-- BEGIN gpu -->\n## GPU: H100\nnumbers\n<!-- END gpu -->")
    report.update_results_md(path, "<!-- BEGIN cpu -->\n## CPU\nquick\n<!-- END cpu -->")
    text = open(path).read()
    assert "## GPU: H100\nnumbers" in text and "## CPU\nquick" in text and "No GPU run" in text  # train-gpu
    report.update_results_md(path, "<!-- BEGIN cpu -->\n## CPU\nagain\n<!-- END cpu -->")
    text = open(path).read()
    assert "again" in text and "quick" not in text and text.count("<!-- BEGIN cpu -->") == 1


def test_entries_and_labels():
    entries = runner.make_entries(["auto", "svd", "newton_schulz"], ["muon_ns5", "torch_svd_tall", "torch_svd"],
                                  [None, "torch"], ["accurate", "fast"])
    labels = [e.label for e in entries]
    assert labels == ["polar(G)", "svd", "svd/torch", "newton_schulz/accurate", "newton_schulz/fast",
                      "newton_schulz/torch/accurate", "newton_schulz/torch/fast", "torch_svd", "torch_svd_tall",
                      "muon_ns5"]
    assert runner.split_methods(["polar(G)", "muon_ns5"]) == (["auto"], ["muon_ns5"])
