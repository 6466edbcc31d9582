"""bench/check_triton_configs.py: compiles kernel configs for a real sm_90 target (no GPU needed) and reads
registers, spills, shared memory and the dot lowering. The test runs its --quick subset (one config per dot
lowering: tf32x3, float64 from 16-bit loads, fp32 ieee, bfloat16); the full table is in the report of the change
that introduced it and is re-run by hand with each Triton version."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "bench" / "check_triton_configs.py"


def test_quick_subset_compiles_for_sm90_without_spills(tmp_path):
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile, not interpret
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    out = tmp_path / "rows.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out)], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    by_op = {}
    for row in rows:
        assert row["status"] == "ok" and row["spill_bytes"] == 0 and 0 < row["regs"] <= 255, row
        assert row["shared"] <= 232448, row
        for op in row["ops"]:
            by_op.setdefault(op, set()).add((row["kernel"], row["lowering"]))
    assert ("gram._gram_kernel", "wgmma.tf32") in by_op["sym_gram G=fp32 acc_f64=False out=fp32 tf32x3"]
    assert ("gram._reduce_splits_kernel", "fma") in by_op["sym_gram G=fp32 acc_f64=False out=fp32 tf32x3"]
    assert ("gram._gram_kernel", "dmma") in by_op["sym_gram G=bf16 acc_f64=True out=fp64 ieee"]
    assert by_op["sym_poly A=fp32 ieee"] == {("poly._sym_poly_kernel", "fma")}
    assert by_op["apply G=bf16 Mat=bf16 ieee"] == {("tall_apply._apply_kernel", "wgmma.bf16")}


def test_refuses_to_run_interpreted():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    r = subprocess.run([sys.executable, str(SCRIPT), "--quick"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "TRITON_INTERPRET is set" in r.stderr
