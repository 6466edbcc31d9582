"""The dry-run plan (``python -m orthokern.bench plan``): the real GPU dispatch on fake CUDA tensors. These tests pin
the structural facts of the default GPU path that its speed is argued from (docs/design.md, section 6)."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("triton")

from orthokern import _cost  # noqa: E402
from orthokern.bench import plan  # noqa: E402

H100 = _cost.DEVICES["h100"]


@pytest.fixture(scope="module")
def rows():
    out = {}
    for suite in ("resnet50", "tall", "square"):
        for case in plan.cases(suite, torch.float32):
            for mode in ("accurate", "fast"):
                out[(case.name, str(case.dtype), mode)] = plan.plan_case(case, mode, H100)
    return out


def test_every_op_has_a_cost_model(rows):
    for key, r in rows.items():
        assert not r["ops_without_cost_model"], (key, r["ops_without_cost_model"])


def test_no_host_sync_and_no_per_matrix_eigensolver(rows):
    for key, r in rows.items():
        assert r["host_syncs"] == 0, key
        assert r["per_matrix_eigensolver_loops"] == 0 and r["eigensolver_calls"] == 0, key


def test_accurate_mode_runs_no_fma_float32_matmul(rows):
    for (name, dtype, mode), r in rows.items():
        if mode == "accurate":
            assert r["flops_by_unit"].get("fma32", 0.0) == 0.0, (name, dtype, r["flops_by_unit"])


# Binaries a first ResNet-50 step compiles: each specialisation (constexprs, dtypes, and the JIT's specialisation of
# int arguments: 1, divisible by 16 or neither) x each autotune candidate, shared binaries counted once. Accurate
# mode: 18. Fast mode: 21, since beside its bfloat16 steps it keeps a float32 first step (the normalisation reads G
# raw) and a last step that stores G's float32 (one candidate tile at n > 256: triton_kernels/_configs.py). What
# keeps it there: the fc layer's n = 1000 is iterated padded to 1008 columns (triton_kernels/polar.py, PAD_MIN_N;
# it alone added 11 binaries in accurate mode and 13 in fast mode); the lone wide gradients (conv1's 64 x 147, a
# 128 x 256) are copied row-major (polar.py, ROW_MAJOR_COPY_MAX_ELEMENTS; their transposed views added 4); the
# apply's residual is a runtime branch (tall_apply.py; a constexpr added 2 in accurate mode). Triton caches the
# binaries on disk, so a machine compiles them once. A few of each are the prologue kernels
# (triton_kernels/prologue.py: elementwise, not tuned, one config each).
COMPILED_BUDGET = {"accurate": 17, "fast": 20}


def test_resnet50_step_compiles_a_bounded_number_of_kernels(rows):
    for mode, budget in COMPILED_BUDGET.items():
        r = rows[(plan.cases("resnet50", torch.float32)[0].name, "torch.float32", mode)]
        assert r["kernels_compiled"] <= budget, (mode, r["kernels_compiled"])


@pytest.mark.parametrize("mode", ["accurate", "fast"])
def test_an_n_off_the_multiple_of_16_compiles_no_binaries_of_its_own(mode):
    # The fc layer's tall orientation, 2048 x 1000, is iterated padded to 1008 columns (triton_kernels/polar.py,
    # PAD_MIN_N): the binaries of a 2048 x 1008 matrix, not a set specialised on n = 1000, for one copy more.
    def compiled_and_launches(n):
        rec, _ = plan.record(plan.Case("x", [(1, 2048, n)], torch.float32), mode, _cost.DEVICES["h100"])
        launches = [x for r in rec.records for x in r.launches]
        return {b for x in launches for b in x.compiled}, len(launches)

    (odd, odd_launches), (aligned, aligned_launches) = compiled_and_launches(1000), compiled_and_launches(1008)
    assert odd == aligned
    assert odd_launches == aligned_launches + 2  # the zero columns and the copy of G next to them


def test_fast_mode_runs_on_bfloat16_tensor_cores(rows):
    for (_, _, mode), r in rows.items():
        if mode == "fast" and "tc16" in r["flops_by_unit"]:
            return
    raise AssertionError("no fast-mode plan used the bfloat16 tensor cores")


def test_recorder_counts_what_it_sees():
    """On a hand-made sequence: one matmul (FLOPs on the unit of its dtype), one elementwise op, one view (free),
    one host read (a sync)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    rec = plan.Recorder()
    with FakeTensorMode(allow_non_fake_inputs=True):
        A = torch.empty(4, 8, 8, dtype=torch.float64, device="cuda")
        with rec:
            B = A @ A
            C = B.mT
            D = C * 2.0
            bool((D > 0).any())
    launches = [x for r in rec.records for x in r.launches]
    assert [x.kernel for x in launches] == ["cuBLAS bmm", "aten mul", "aten gt", "aten any"]
    assert launches[0].flops == {"fp64_tc": 2.0 * 4 * 8 * 8 * 8}
    assert launches[1].bytes == 2 * 4 * 8 * 8 * 8  # read A, write D
    assert rec.syncs == ["aten._local_scalar_dense.default"]


def test_cli_writes_json_and_says_it_is_an_estimate(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert plan.main(["--suite", "tall", "--mode", "accurate", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "nothing here was measured" in text and "an estimate" in text
    data = json.loads(out.read_text())
    assert data["device"]["name"].startswith("NVIDIA H100") and len(data["rows"]) == 4
    assert plan.main(["--mode", "sideways"]) == 2


def test_launch_time_counts_waves_of_programs():
    """A launch that says how many programs share its arithmetic takes whole waves of one program per SM: 132
    programs on 132 SMs one wave, 133 two (the 133rd alone), 66 one wave at half the device."""
    from orthokern import _cost

    dev = _cost.DEVICES["h100"]
    flops = {"tc16": 1e12}
    full = _cost.launch_seconds(_cost.Launch("k", flops, 0.0), dev)
    assert _cost.launch_seconds(_cost.Launch("k", flops, 0.0, programs=132), dev) == pytest.approx(full)
    assert _cost.launch_seconds(_cost.Launch("k", flops, 0.0, programs=133), dev) == pytest.approx(full * 264 / 133)
    assert _cost.launch_seconds(_cost.Launch("k", flops, 0.0, programs=66), dev) == pytest.approx(2 * full)
    # memory-bound launches are not affected
    assert _cost.launch_seconds(_cost.Launch("k", {}, 1e9, programs=1), dev) == pytest.approx(1e9 / (dev.bandwidth
                                                                                                   * dev.efficiency))


def test_square_cases_are_compared_with_torch_muon(rows):
    """The square suite plans torch's Muon step (peers.muon_ns5_batched: five bfloat16 quintic steps) on the same
    matrices: 15 cuBLAS products (three per step) costed by the aten model, and the ratio is printed."""
    rec = plan.record_peer(plan.cases("square", torch.bfloat16)[1], H100)  # 1 x 4096 x 4096
    mm = [x for r in rec.records for x in r.launches if x.kernel.startswith("cuBLAS")]
    assert len(mm) == 15 and all(set(x.flops) == {"tc16"} for x in mm)
    assert sum(x.flops["tc16"] for x in mm) == pytest.approx(5 * 3 * 2.0 * 4096**3)
    square = {k: r for k, r in rows.items() if k[0].startswith("1x4096x4096")}
    assert square and all(r["muon_ns5_graph_s"] > 0 for r in square.values())
    text = plan.format_plan(list(square.values()), H100)
    assert "torch's Muon step on the same matrices" in text
    assert all("muon_ns5_graph_s" not in r for k, r in rows.items() if not k[0].startswith("1x"))


def test_optimiser_step_is_split_into_the_sgd_step_and_the_orthogonalisation(rows, capsys):
    case = plan.cases("resnet50", torch.float32)[0]
    base = plan.record_base_optimiser(case, H100)
    # torch's own SGD step: foreach updates over every parameter, no orthokern op, no stacking
    assert base.records and not any(r.op.startswith("orthokern.") or r.op == "aten.cat.default"
                                    for r in base.records)
    for mode in ("accurate", "fast"):
        r = rows[(case.name, "torch.float32", mode)]
        assert 0.0 < r["base_optimiser_graph_s"] < 0.5 * r["modelled_graph_s"], (mode, r["base_optimiser_graph_s"])
    text = plan.format_plan([rows[(case.name, "torch.float32", "accurate")]], H100)
    assert "torch's SGD step alone" in text and "the orthogonalisation" in text


@pytest.mark.parametrize("mode", ["accurate", "fast"])
@pytest.mark.parametrize("m, n", [(64, 147), (128, 256)])
def test_a_small_wide_matrix_compiles_the_binaries_of_its_tall_copy(mode, m, n):
    # The lone wide gradients of a ResNet-50 step reach the Triton path as column-major transposed views; copied
    # row-major (triton_kernels/polar.py, ROW_MAJOR_COPY_MAX_ELEMENTS) they compile what a tall row-major matrix
    # of the same shape does, for one copy more.
    def compiled_and_launches(shape):
        rec, _ = plan.record(plan.Case("x", [shape], torch.float32), mode, _cost.DEVICES["h100"])
        launches = [x for r in rec.records for x in r.launches]
        return {b for x in launches for b in x.compiled}, len(launches)

    (wide, wide_launches), (tall, tall_launches) = compiled_and_launches((1, m, n)), compiled_and_launches((1, n, m))
    assert wide == tall
    assert wide_launches == tall_launches + 1  # the copy (polar returns a wide result as the transposed view)
