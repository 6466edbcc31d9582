"""``orthokern.polar(..., backend="triton")``: the accuracy contract and the reference's edge-case semantics.

Interpreter-friendly sizes (run with ``TRITON_INTERPRET=1``); the real sizes are in test_triton_gpu.py.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import orthokern
from orthokern._env import interpreting
from orthokern.testing import E_BOUND, accuracy, assert_contract, random_matrix, triton_device

INTERPRET = interpreting()
DEVICE = triton_device()
interp = pytest.mark.triton_interpret


def _polar(G, method, **kw):
    return orthokern.polar(G, method=method, backend="triton", **kw)


@interp
@pytest.mark.parametrize("kind", ["decaying", "decay2", "rank_deficient", "gaussian"])
@pytest.mark.parametrize("B,m,n", [(3, 40, 21), (1, 17, 17)])
def test_gram_eigh_accurate_contract_float32(kind, B, m, n):
    G = random_matrix(B, m, n, kind, device=DEVICE, seed=B + m + n)
    assert_contract(G, _polar(G, "gram_eigh"))


@interp
@pytest.mark.parametrize("kind", ["decaying", "rank_deficient"])
def test_gram_eigh_fast_matches_torch_fast(kind):
    G = random_matrix(2, 36, 20, kind, device=DEVICE, seed=3)
    O = _polar(G, "gram_eigh", mode="fast")
    R = orthokern.polar(G, method="gram_eigh", mode="fast", backend="torch")
    # Both float32 Gram + eigh: equal up to the float32 eigenvector rounding, and within the contract.
    assert accuracy(G, O).E <= E_BOUND[torch.float32]
    assert (O - R).abs().max() <= 5e-3


@interp
def test_gram_eigh_float64_and_float16():
    G = random_matrix(2, 30, 18, "decaying", dtype=torch.float64, device=DEVICE, seed=8)
    assert_contract(G, _polar(G, "gram_eigh"), 3e-3)  # float64 gram_eigh's floor (docs/design.md, "rcond floors")
    Gh = random_matrix(2, 30, 18, "decaying", dtype=torch.float16, device=DEVICE, seed=9)
    assert_contract(Gh, _polar(Gh, "gram_eigh"))


@interp
@pytest.mark.parametrize("kind", ["decaying", "rank_deficient"])
def test_newton_schulz_accurate_contract_float32(kind):
    G = random_matrix(2, 29, 16, kind, device=DEVICE, seed=4)
    assert_contract(G, _polar(G, "newton_schulz"))


@interp
def test_newton_schulz_fast_matches_torch_and_beats_muon():
    G = random_matrix(2, 40, 16, "decaying", device=DEVICE, seed=5)
    O = _polar(G, "newton_schulz", mode="fast")
    R = orthokern.polar(G, method="newton_schulz", mode="fast", backend="torch")
    assert (O - R).abs().max() <= 1e-4  # same schedule, same dtype on CPU: only summation order differs
    # Muon's NS5 (quintic 3.4445, -4.7750, 2.0315 on X / ||X||_F) on the same input, in float32.
    X = G / torch.linalg.matrix_norm(G)[:, None, None]
    for _ in range(5):
        A = X.mT @ X
        X = 3.4445 * X + X @ (-4.7750 * A + 2.0315 * A @ A)
    assert accuracy(G, O).E <= accuracy(G, X).E


@interp
@pytest.mark.parametrize("method", ["gram_eigh", "newton_schulz"])
@pytest.mark.parametrize("mode", ["accurate", "fast"])
def test_zero_nonfinite_and_extreme_scales(method, mode):
    G = random_matrix(4, 24, 16, "decaying", device=DEVICE, seed=6)
    G[0, 3, 5] = float("nan")
    G[1, 0, 0] = float("inf")
    G[2] = 0
    G[3] *= 1e30  # the float32 Gram of the raw matrix would overflow; the kernels must scale
    O = _polar(G, method, mode=mode)
    assert O[0].isnan().all() and O[1].isnan().all()
    assert torch.equal(O[2], torch.zeros_like(O[2]))
    assert accuracy(G[3:] / 1e30, O[3:]).E <= (E_BOUND[torch.float32] if mode == "accurate" else 0.3)
    tiny = random_matrix(1, 24, 16, "decaying", device=DEVICE, seed=7) * 1e-30
    assert accuracy(tiny * 1e30, _polar(tiny, method, mode=mode)).E <= (
        E_BOUND[torch.float32] if mode == "accurate" else 0.3
    )


@interp
def test_wide_and_batched_shapes_follow_polar():
    G = random_matrix((2, 2), 15, 26, "well", device=DEVICE, seed=10)  # wide, two batch dims
    for method in ("gram_eigh", "newton_schulz"):
        assert_contract(G, _polar(G, method), what=method)


def _run(code: str, env_extra: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # The child imports the same orthokern as this process (installed, or the checkout on PYTHONPATH).
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def test_cpu_tensor_without_interpreter_gives_a_clear_reason():
    code = (
        "import torch, orthokern\n"
        "G = torch.randn(2, 8, 4)\n"
        "try:\n"
        "    orthokern.polar(G, method='gram_eigh', backend='triton')\n"
        "except orthokern.BackendUnavailable as e:\n"
        "    print('ERR', e)\n"
        "print('AUTO', orthokern.polar(G, method='gram_eigh').shape)\n"
    )
    r = _run(code, {})
    assert r.returncode == 0, r.stderr
    assert "ERR" in r.stdout and "CUDA tensor" in r.stdout and "TRITON_INTERPRET" in r.stdout
    assert "AUTO torch.Size([2, 8, 4])" in r.stdout


def test_kernels_package_imports_without_triton():
    # A meta-path blocker makes `import triton` fail as it would where Triton is not installed.
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'triton' or name.startswith('triton.'):\n"
        "            raise ImportError('blocked for the test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch, orthokern\n"
        "from orthokern import dispatch\n"
        "mod = dispatch._load_triton_kernels()\n"
        "print('AVAILABLE', mod.AVAILABLE)\n"
        "print('WHY', orthokern.polar(torch.randn(1, 6, 3), method='newton_schulz').shape)\n"
        "try:\n"
        "    orthokern.polar(torch.randn(1, 6, 3), method='newton_schulz', backend='triton')\n"
        "except orthokern.BackendUnavailable as e:\n"
        "    print('ERR', e)\n"
    )
    r = _run(code, {"TRITON_INTERPRET": "1"})
    assert r.returncode == 0, r.stderr
    assert "AVAILABLE False" in r.stdout and "Triton is not installed" in r.stdout
    assert "WHY torch.Size([1, 6, 3])" in r.stdout


@interp
@pytest.mark.parametrize("kind", ["decaying", "rank_deficient"])
def test_newton_schulz_gram_side_accurate(kind):
    from orthokern.dispatch import triton_polar
    from orthokern.reference.newton_schulz import gram_side_factor, polar_newton_schulz_gram_side

    G = random_matrix(2, 9 * 16 + 5, 16, kind, device=DEVICE, seed=12)
    O = triton_polar().polar_newton_schulz(G, mode="accurate", rcond=1e-3, side="gram", factor=gram_side_factor)
    assert_contract(G, O)
    # The same algorithm as the reference's Gram side, and the same polynomial as the tall side.
    R = polar_newton_schulz_gram_side(G.cpu(), mode="accurate", rcond=1e-3)
    assert (O.cpu() - R).abs().max() <= 1e-6
    T = triton_polar().polar_newton_schulz(G, mode="accurate", rcond=1e-3, side="tall")
    assert (O - T).abs().max() <= 1e-4


@interp
def test_newton_schulz_gram_side_fast_and_edge_cases():
    from orthokern.dispatch import triton_polar
    from orthokern.reference.newton_schulz import gram_side_factor

    polar_newton_schulz = triton_polar().polar_newton_schulz
    G = random_matrix(3, 70, 16, "decaying", device=DEVICE, seed=13)
    G[0, 1, 1] = float("nan")
    G[1] = 0
    O = polar_newton_schulz(G, mode="fast", rcond=1e-3, side="gram", factor=gram_side_factor)
    T = polar_newton_schulz(G, mode="fast", rcond=1e-3, side="tall")
    assert O[0].isnan().all() and torch.equal(O[1], torch.zeros_like(O[1]))
    assert (O[2] - T[2]).abs().max() <= 1e-4
    with pytest.raises(ValueError, match="side must be"):
        polar_newton_schulz(G, mode="fast", rcond=1e-3, side="wide")
    with pytest.raises(ValueError, match="needs factor"):
        polar_newton_schulz(G, mode="fast", rcond=1e-3, side="gram")


@interp
@pytest.mark.parametrize("kind", ["decaying", "rank_deficient", "well"])
def test_newton_schulz_tall_then_gram_side(kind):
    """side="tall_gram": the accurate tall side hands its last steps to the n x n side (ns_schedule.switch_step) on
    the fp16x3 kernels. Same contract, the reference's algorithm, and within float32 rounding of the tall side."""
    from orthokern import ns_schedule
    from orthokern.dispatch import triton_polar
    from orthokern.reference.newton_schulz import polar_newton_schulz

    G = random_matrix(2, 9 * 24 + 5, 24, kind, device=DEVICE, seed=16)
    G[1, 0, 0] = float("nan")
    k = ns_schedule.switch_step("accurate", 1e-3, 24, torch.float32)
    assert k is not None and 1 <= k < len(ns_schedule.steps_for("accurate", 1e-3, 24, torch.float32)) - 1
    O = triton_polar().polar_newton_schulz(G, mode="accurate", rcond=1e-3, side="tall_gram")
    assert O[1].isnan().all()
    acc = assert_contract(G[:1], O[:1])
    assert acc.norm2 <= 1 + 1e-5 and acc.E <= 1e-5
    R = polar_newton_schulz(G[:1].cpu(), mode="accurate", rcond=1e-3, switch=k)
    T = triton_polar().polar_newton_schulz(G[:1], mode="accurate", rcond=1e-3, side="tall")
    # (float32 rounding in the directions below rcond, which the contract leaves free, differs most: 5e-5 on the
    # rank-deficient spectrum, 1e-5 elsewhere.)
    assert (O[:1].cpu() - R).abs().max() <= 1e-4 and (O[:1] - T).abs().max() <= 1e-4
    with pytest.raises(ValueError, match="no switch step"):
        triton_polar().polar_newton_schulz(G, mode="fast", rcond=1e-3, side="tall_gram")


@interp
@pytest.mark.parametrize("side,mode", [("tall", "accurate"), ("tall", "fast"), ("tall_gram", "accurate")])
def test_newton_schulz_pads_an_n_off_the_multiple_of_16(monkeypatch, side, mode):
    """From PAD_MIN_N columns, an n that is not a multiple of 16 is iterated on [G, 0] (zero columns up to the next
    multiple): the same numbers in the first n columns as the unpadded iteration, zeros never leak into them, and the
    non-finite and zero matrices keep their results. PAD_MIN_N is lowered to interpreter sizes here."""
    from orthokern.dispatch import triton_polar

    tp = triton_polar()
    G = random_matrix(3, 45, 18, "decaying", device=DEVICE, seed=31)
    G[1, 2, 3] = float("nan")
    G[2] = 0
    monkeypatch.setattr(tp, "PAD_MIN_N", 16)
    assert tp.padded_columns(18) == 32 and tp.padded_columns(32) == 32 and tp.padded_columns(15) == 15
    calls = []
    tall = tp._newton_schulz_tall
    monkeypatch.setattr(tp, "_newton_schulz_tall", lambda X, *a: calls.append(tuple(X.shape)) or tall(X, *a))
    O = tp.polar_newton_schulz(G, mode=mode, rcond=1e-3, side=side)
    assert calls == [(3, 45, 32)] and O.shape == G.shape
    monkeypatch.setattr(tp, "PAD_MIN_N", 10**9)
    R = tp.polar_newton_schulz(G, mode=mode, rcond=1e-3, side=side)
    assert calls[-1] == tuple(G.shape)
    assert O[1].isnan().all() and torch.equal(O[2], torch.zeros_like(O[2]))
    assert (O[0] - R[0]).abs().max() <= 1e-6, (O[0] - R[0]).abs().max()
    if mode == "accurate":
        assert_contract(G[:1], O[:1])


@interp
@pytest.mark.parametrize("method", ["gram_eigh", "newton_schulz"])
def test_a_small_column_major_matrix_is_iterated_row_major(monkeypatch, method):
    """A column-major G (a wide matrix's transposed view) up to ROW_MAJOR_COPY_MAX_ELEMENTS is copied row-major before
    the kernels read it (so that it shares their row-major binaries); a larger one is read in place. Same results
    either way."""
    from orthokern.dispatch import triton_polar

    tp = triton_polar()
    G = random_matrix(2, 18, 40, "decaying", device=DEVICE, seed=32).mT  # (2, 40, 18), column-major
    assert G.stride(-2) == 1
    seen = []
    ops = tp._ops()

    class Ops:  # records the strides every Gram launch reads
        def __getattr__(self, name):
            return getattr(ops, name)

        def triton_sym_gram(self, X, *a):
            seen.append(X.stride())
            return ops.triton_sym_gram(X, *a)

    monkeypatch.setattr(tp, "_ops", Ops)
    run = getattr(tp, f"polar_{method}")
    kw = {"side": "tall"} if method == "newton_schulz" else {}
    O = run(G, mode="accurate", rcond=1e-3, **kw)
    assert seen[0] == (40 * 18, 18, 1)  # the copy
    X = G.contiguous()
    assert tp.row_major(X) is X
    monkeypatch.setattr(tp, "ROW_MAJOR_COPY_MAX_ELEMENTS", G.numel() - 1)
    seen.clear()
    R = run(G, mode="accurate", rcond=1e-3, **kw)
    assert seen[0] == G.stride()  # read in place
    assert torch.equal(O, R)
    assert_contract(G, O)


def test_reference_switch_is_checked_and_late_factor_needs_a_quintic():
    from orthokern import ns_schedule
    from orthokern.reference.newton_schulz import polar_newton_schulz

    G = random_matrix(1, 30, 6, "decaying", seed=17)
    with pytest.raises(ValueError, match="switch must be"):
        polar_newton_schulz(G, rcond=1e-3, switch=0)
    assert ns_schedule.switch_step("fast", 1e-3, 64, torch.float32) is None
    steps = ns_schedule.steps_for("accurate", 1e-3, 64, torch.float32)
    k = ns_schedule.switch_step("accurate", 1e-3, 64, torch.float32)
    assert steps[k].c != 0.0 and steps[k - 1].c != 0.0


@interp
@pytest.mark.parametrize("dtype,scale", [(torch.float64, 1e-160), (torch.float64, 1e160), (torch.float64, 1e-300),
                                         (torch.float32, 1e-40), (torch.float16, 1.0)])
def test_gram_side_at_extreme_scales(dtype, scale):
    """The float64 Gram of float64 input is formed from G scaled on load (a raw Gram over- or underflows there)."""
    from orthokern.dispatch import triton_polar
    from orthokern.reference.newton_schulz import gram_side_factor

    G = (random_matrix(2, 40, 8, "decaying", dtype=torch.float64, seed=15) * scale).to(dtype).to(DEVICE)
    for method in ("gram_eigh", "newton_schulz"):
        kw = {"side": "gram", "factor": gram_side_factor} if method == "newton_schulz" else {}
        O = getattr(triton_polar(), f"polar_{method}")(G, mode="accurate", rcond=1e-3 if dtype != torch.float64
                                                         else 3e-3, **kw)
        assert_contract(G, O, 1e-3 if dtype != torch.float64 else 3e-3, what=method)


@interp
@pytest.mark.parametrize("shape", [(2, 5, 1), (1, 1, 7), (1, 3, 3)])
def test_degenerate_shapes(shape):
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(14)).to(DEVICE)
    for method in ("gram_eigh", "newton_schulz"):
        assert_contract(G, _polar(G, method), what=method)


def test_triton_op_path_traces_into_the_kernels():
    """Without the interpreter the ops are triton_ops: AOT tracing must see the kernels (as on a GPU).

    No kernel runs: the graph is only traced, so this checks on a CPU machine the plumbing that the GPU
    path depends on (op bodies, wrap_triton, grids from the autotune configs, fake shapes).
    """
    pytest.importorskip("triton")
    code = (
        "import torch\n"
        "from orthokern.dispatch import triton_polar\n"
        "triton_polar()  # the dispatch itself loads them only where they can run\n"
        "from torch._functorch.aot_autograd import aot_export_module\n"
        "ops = torch.ops.orthokern\n"
        "class M(torch.nn.Module):\n"
        "    def forward(self, G, s):\n"
        "        A = ops.triton_sym_gram(G, s, True, torch.float64, 2, 'tf32x3')\n"
        "        C = ops.triton_sym_poly(A, 1.0, 2.0, 'tf32x3')\n"
        "        return (ops.triton_apply(G, C, s, 1.0, 2.0, torch.float32, 'tf32x3'),)\n"
        "gm, _ = aot_export_module(M(), [torch.randn(4, 300, 48), torch.ones(4)], trace_joint=False)\n"
        "print('HOPS', gm.code.count('triton_kernel_wrapper_functional('))\n"
        "print('OUT', [n.meta['val'].shape for n in gm.graph.output_node().args[0]][-1])\n"
    )
    r = _run(code, {})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "HOPS 4" in r.stdout, r.stdout  # gram partials, fixed-order reduction, polynomial, apply
    assert "OUT torch.Size([4, 300, 48])" in r.stdout, r.stdout


@interp
def test_newton_schulz_fast_low_precision_steps(monkeypatch):
    """The GPU fast path (steps stored and multiplied in half precision) with float16 standing in for
    bfloat16, which the interpreter cannot compute: same plumbing, a dtype the interpreter has."""
    from orthokern.dispatch import triton_polar

    tb = triton_polar()
    import orthokern.reference.newton_schulz as ref

    monkeypatch.setattr(tb, "low_precision_dtype", lambda G: torch.float16)
    monkeypatch.setattr(ref, "low_precision_dtype", lambda G: torch.float16)
    G = random_matrix(2, 64, 32, "decaying", device=DEVICE, seed=2)
    O = _polar(G, "newton_schulz", mode="fast")
    R = orthokern.polar(G, method="newton_schulz", mode="fast", backend="torch")
    e, e_ref = accuracy(G, O).E, accuracy(G, R).E
    assert O.dtype == torch.float32 and e <= 1.2 * e_ref, (e, e_ref)
    assert (O - R).abs().max() <= 2e-2  # half-precision steps: agreement to their rounding
