"""The orthogonality-toolkit examples run with --quick and write a PNG and a sane JSON."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn", reason="the examples need scikit-learn")
pytest.importorskip("matplotlib", reason="the examples need matplotlib")
pytest.importorskip("tqdm", reason="the examples need tqdm")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(script, out):
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wrote" in proc.stdout
    return proc


def _png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000


def test_layer_rotation_quick(tmp_path):
    _run("layer_rotation.py", tmp_path)
    _png(tmp_path / "layer_rotation.png")
    report = json.loads((tmp_path / "layer_rotation.json").read_text())
    assert report["config"]["epochs"] == 2 and report["config"]["seeds"] == 1
    assert report["config"]["train_size"] + report["config"]["test_size"] == 1797
    assert set(report["runs"]) == set(report["summary"]) and len(report["runs"]) == 4
    for name, (run,) in report["runs"].items():
        rot = run["rotation"]
        assert rot["step"] == [0, 1, 2] and len(rot["layers"]) == 6  # 5 hidden + output, biases left out
        for layer in rot["layers"]:
            d = rot["cosine_distance"][layer]
            assert d[0] == 0.0 and all(0.0 <= v <= 2.0 for v in d), (name, layer, d)
            assert d[-1] > 0.0  # every optimiser moved every layer
        assert len(run["test_acc"]) == 2 and all(0.0 <= a <= 1.0 for a in run["test_acc"])
        assert all(math.isfinite(v) for v in run["train_loss"])
        s = report["summary"][name]
        assert s["final_test_acc_mean"] == run["test_acc"][-1]
        assert s["final_rotation_min"] <= s["final_rotation_max"]
    # chance is 10 %; two epochs of SGD from He initialisation get far beyond it (measured: 90 %)
    assert report["runs"]["SGD"][0]["test_acc"][-1] > 0.5


def test_deep_orthogonal_quick(tmp_path):
    _run("deep_orthogonal.py", tmp_path)
    _png(tmp_path / "deep_orthogonal.png")
    report = json.loads((tmp_path / "deep_orthogonal.json").read_text())
    cfg = report["config"]
    assert cfg["depths"] == [2, 4] and cfg["steps"] == 40 and cfg["seeds"] == 1
    sweep = report["runs"]["depth_sweep"]
    for init in ("gaussian", "orthogonal"):
        for depth in ("2", "4"):
            (run,) = sweep[init][depth]
            losses = run["loss"]
            assert len(losses) == 40 and all(math.isfinite(v) for v in losses)
            assert sum(losses[-10:]) < sum(losses[:10]), (init, depth)  # it learns
    # an orthogonal gain-1 start has RMS singular value 1 exactly; the Gaussian one does not
    assert abs(sweep["orthogonal"]["4"][0]["rms_singular_value"][0] - 1.0) <= 1e-6
    assert abs(sweep["gaussian"]["4"][0]["rms_singular_value"][0] - 1.0) > 1e-3
    pen = report["summary"]["penalties"]
    assert set(pen) == {"none", "soft (gain 1)", "gain-adjusted"}
    for e in pen.values():
        assert abs(e["rms_singular_value_start"] - cfg["gain"]) <= 1e-5
    # the soft penalty pulls the scale towards 1, the gain-adjusted one much less
    soft = abs(pen["soft (gain 1)"]["rms_singular_value_end"] - cfg["gain"])
    adjusted = abs(pen["gain-adjusted"]["rms_singular_value_end"] - cfg["gain"])
    assert soft > 2 * adjusted
