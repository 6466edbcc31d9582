"""The compiled CPU ops of orthokern._C (torch.ops.orthokern.gram_eigh_polar and cholqr2_polar).

Skipped (not failed) when the extension is not built; CI builds it (`pip install --no-build-isolation .`).
Both ops must meet the accuracy contract against a float64 SVD of the input as given, agree with their torch
reference, handle every finite magnitude (subnormal to near overflow), zeros, NaN/Inf and any strides, and work
under opcheck and torch.compile(fullgraph=True) through their fake kernels.
"""
from __future__ import annotations

import math
import zlib

import pytest
import torch

import orthokern
from orthokern import _env, compiled, dispatch
from orthokern.reference import polar_cholqr2, polar_gram_eigh
from orthokern.testing import E_BOUND, NORM_SLACK, accuracy, random_matrix

pytestmark = pytest.mark.skipif(_env.CURRENT.extension is not None, reason="orthokern._C is not built")

RCOND = 1e-3
OPS = ["gram_eigh_polar", "cholqr2_polar"]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
KINDS = ["well", "decaying", "decay2", "rank_deficient", "gaussian"]
# n = 140 > 128 takes gram_eigh_polar's LAPACK eigensolver path, the others its own (csrc/cpu/symmetric_eigh.h);
# n = 1 and odd n exercise the edges of the Gram kernel's 4 x 12 tiles.
SHAPES = [(3, 37, 29), (2, 64, 64), (2, 130, 1), (4, 50, 13), (1, 300, 140)]
# Agreement with the torch reference, per dtype: both round the same float64 maths differently, and the result is
# stored in the input's dtype.
REF_ATOL = {torch.float64: 1e-9, torch.float32: 2e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}
REFERENCE = {"gram_eigh_polar": polar_gram_eigh, "cholqr2_polar": polar_cholqr2}


def op(name):
    return getattr(torch.ops.orthokern, name)


def seed_of(*key) -> int:
    return zlib.crc32(repr(key).encode())


# ------------------------------------------------------------------------------------- accuracy contract
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", OPS)
def test_contract_against_float64_svd(name, dtype, kind, shape):
    G = random_matrix(*shape, kind, dtype=dtype, seed=seed_of(name, kind, shape))
    O = op(name)(G, RCOND)
    assert O.shape == G.shape and O.dtype == G.dtype and O.is_contiguous()
    acc = accuracy(G, O, RCOND)
    assert acc.finite, acc
    assert acc.E <= E_BOUND[dtype], acc
    assert acc.norm2 <= 1 + NORM_SLACK[dtype], acc


@pytest.mark.parametrize("kind", ["well", "decaying", "rank_deficient"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", OPS)
def test_agrees_with_torch_reference(name, dtype, kind):
    # Spectra with a margin around rcond: which directions count is decided the same way by both.
    G = random_matrix(3, 80, 24, kind, dtype=dtype, seed=seed_of("ref", name, kind))
    O = op(name)(G, RCOND)
    R = REFERENCE[name](G, rcond=RCOND)
    torch.testing.assert_close(O.double(), R.double(), rtol=0, atol=REF_ATOL[dtype])


def test_gram_eigh_float32_reaches_float64_gram_accuracy():
    # The float64 Gram matrix and eigensolver: E far below the float32 contract on a spectrum down to rcond
    # (a float32 Gram matrix gives ~1e-3 here, see orthokern/reference/gram_eigh.py).
    G = random_matrix(4, 576, 64, "decaying", dtype=torch.float32, seed=1)
    assert accuracy(G, op("gram_eigh_polar")(G, RCOND)).E <= 1e-5


def test_mode_does_not_change_gram_eigh():
    G = random_matrix(2, 40, 12, "decaying", dtype=torch.float32, seed=2)
    fast = compiled.gram_eigh(G, mode="fast", rcond=RCOND)
    torch.testing.assert_close(fast, compiled.gram_eigh(G, mode="accurate", rcond=RCOND), rtol=0, atol=0)


def test_threshold_is_inclusive():
    # s = (1, 1/2) with rcond = 1/2: s_2 = rcond * s_max counts (exactly: the scaling is by powers of two).
    G = torch.tensor([[[1.0, 0.0], [0.0, 0.5], [0.0, 0.0]]], dtype=torch.float64)
    O = op("gram_eigh_polar")(G, 0.5)
    torch.testing.assert_close(O, torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]], dtype=torch.float64))
    # Just above it, the second direction is dropped.
    O = op("gram_eigh_polar")(G, 0.5 + 1e-9)
    torch.testing.assert_close(O, torch.tensor([[[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]], dtype=torch.float64))


@pytest.mark.parametrize("name", OPS)
def test_rcond_zero_keeps_every_nonzero_direction(name):
    G = random_matrix(2, 30, 10, "decaying", dtype=torch.float64, seed=3)
    acc = accuracy(G, op(name)(G, 0.0), rcond=1e-12)
    assert acc.E <= E_BOUND[torch.float64] and acc.norm2 <= 1 + NORM_SLACK[torch.float64]


# --------------------------------------------------------------------------------- magnitudes and specials
# Power-of-two factors keep the input's values exact (down to subnormals, which lose low bits but stay the input
# "as given" that the contract measures against).
MAGNITUDES = {
    torch.float64: [2.0**-1040, 2.0**-600, 2.0**600, 2.0**1000],  # subnormal (~1e-313) ... ~1e301
    torch.float32: [2.0**-140, 2.0**-70, 2.0**70, 2.0**126],  # subnormal (~1e-42) ... ~1e38
    torch.float16: [2.0**-18, 2.0**10],  # subnormal (~4e-6) ... ~1e3 (fp16 max 65504)
    torch.bfloat16: [2.0**-130, 2.0**126],
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", OPS)
def test_any_finite_magnitude(name, dtype):
    G = random_matrix(2, 40, 9, "decaying", dtype=torch.float64, seed=4)
    for f in MAGNITUDES[dtype]:
        Gs = (G * f).to(dtype)
        assert bool(Gs.ne(0).any()), "the test matrix must not flush to zero"
        O = op(name)(Gs, RCOND)
        acc = accuracy(Gs, O, RCOND)
        assert acc.finite and acc.E <= E_BOUND[dtype] and acc.norm2 <= 1 + NORM_SLACK[dtype], (f, acc)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", OPS)
def test_zero_nan_inf_and_extremes_in_one_batch(name, dtype):
    G = random_matrix(7, 24, 6, "well", dtype=torch.float64, seed=5)
    tiny, huge = MAGNITUDES[dtype][0], MAGNITUDES[dtype][-1]
    G[2] *= tiny
    G[4] *= huge
    G = G.to(dtype)
    G[1] = 0
    G[3, 5, 2] = math.nan
    G[5, 0, 0] = math.inf
    G[6, 7, 1] = -math.inf
    O = op(name)(G, RCOND)
    assert bool((O[1] == 0).all()), "a zero matrix gives zeros"
    for i in (3, 5, 6):
        assert bool(torch.isnan(O[i]).all()), f"matrix {i} holds a NaN or Inf: its result must be all NaN"
    good = [0, 2, 4]
    assert bool(torch.isfinite(O[good]).all()), "other matrices of the batch are unaffected"
    acc = accuracy(G[good], O[good], RCOND)
    assert acc.E <= E_BOUND[dtype] and acc.norm2 <= 1 + NORM_SLACK[dtype], acc


@pytest.mark.parametrize("name", OPS)
def test_float64_overflowing_gram_is_rescaled(name):
    # Entries near 1e300: their squares overflow float64, so the kernel must rescale before the Gram matrix (and
    # undo it exactly): the result equals that of the same matrix at scale 1.
    G = random_matrix(2, 33, 8, "decaying", dtype=torch.float64, seed=6)
    torch.testing.assert_close(op(name)(G * 2.0**1000, RCOND), op(name)(G, RCOND), rtol=0, atol=1e-12)
    torch.testing.assert_close(op(name)(G * 2.0**-1000, RCOND), op(name)(G, RCOND), rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------------ layouts
def _layouts(G):
    """G (B, m, n) in several memory layouts, all with the same values."""
    B, m, n = G.shape
    col = G.mT.contiguous().mT  # column-major matrices (a wide gradient seen transposed)
    wide = torch.zeros(B, m, 2 * n, dtype=G.dtype)
    wide[..., ::2] = G  # row stride 2n, column stride 2
    rows = torch.zeros(B, 2 * m, n, dtype=G.dtype)
    rows[:, ::2] = G  # row stride 2n
    perm = G.permute(1, 0, 2).contiguous().permute(1, 0, 2)  # batch stride n
    return {"col_major": col, "strided_cols": wide[..., ::2], "strided_rows": rows[:, ::2], "batch_inner": perm,
            "expanded": G[:1].expand(B, m, n)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", OPS)
def test_any_strides(name, dtype):
    G = random_matrix(3, 45, 14, "decaying", dtype=dtype, seed=7)
    want = op(name)(G, RCOND)
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    for layout, X in _layouts(G).items():
        assert torch.equal(X, G[:1].expand_as(G)) if layout == "expanded" else torch.equal(X, G)
        ref = op(name)(X.contiguous(), RCOND) if layout == "expanded" else want
        got = op(name)(X, RCOND)
        assert got.is_contiguous(), layout
        torch.testing.assert_close(got.double(), ref.double(), rtol=0, atol=tol, msg=layout)


@pytest.mark.parametrize("name", OPS)
def test_many_small_matrices_and_one_large(name):
    # Many matrices share a chunk (one eigensolver and BLAS call per chunk); one large matrix is cut into row
    # blocks. Both must give each matrix its own polar factor.
    small = random_matrix(40, 20, 4, "decaying", dtype=torch.float32, seed=8)
    O = op(name)(small, RCOND)
    torch.testing.assert_close(O[17:18], op(name)(small[17:18], RCOND), rtol=0, atol=1e-6)
    large = random_matrix(1, 5000, 40, "decaying", dtype=torch.float32, seed=9)
    assert accuracy(large, op(name)(large, RCOND)).E <= 1e-5


@pytest.mark.parametrize("shape", [(6, 60, 16), (1, 300, 16), (3, 400, 140)], ids=str)
@pytest.mark.parametrize("name", OPS)
def test_thread_count_does_not_change_the_result(name, shape):
    # Two threads: one matrix per task for a batch of at least two, else the Gram passes split by rows (summed in
    # another order: equal to rounding).
    G = random_matrix(*shape, "decaying", dtype=torch.float64, seed=10)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = op(name)(G, RCOND)
        torch.set_num_threads(2)
        two = op(name)(G, RCOND)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(two, one, rtol=0, atol=1e-12)


def test_empty_batches():
    for shape in [(0, 5, 3), (2, 0, 0), (2, 4, 0)]:
        for name in OPS:
            O = op(name)(torch.empty(shape), RCOND)
            assert O.shape == shape


# ------------------------------------------------------------------------------------- cholqr2 numerics
def test_cholqr2_float64_second_shift_bias_is_removed():
    # Without the sqrt(1 + s2) factor E grows like 6e-16 m n: ~8e-10 at 20000 x 64, 1.5e-8 at 200000 x 128.
    G = random_matrix(1, 20000, 64, "well", dtype=torch.float64, seed=11)
    assert accuracy(G, op("cholqr2_polar")(G, RCOND)).E <= 1e-11


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(200000, 128), (100000, 256)], ids=str)
def test_cholqr2_float64_contract_at_large_m_n(shape):
    G = random_matrix(1, *shape, "well", dtype=torch.float64, seed=12)
    assert accuracy(G, op("cholqr2_polar")(G, RCOND)).E <= E_BOUND[torch.float64]


def test_cholqr2_rank_deficient_and_zero_columns():
    G = random_matrix(2, 50, 12, "rank_deficient", dtype=torch.float64, seed=13)
    G[1, :, 5] = 0  # an exactly zero column on top
    O = op("cholqr2_polar")(G, RCOND)
    acc = accuracy(G, O, RCOND)
    assert acc.finite and acc.E <= E_BOUND[torch.float64] and acc.norm2 <= 1 + NORM_SLACK[torch.float64]


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_bad_input_names_the_argument(device):
    G = torch.randn(2, 8, 4, device=device)
    for name in OPS:
        with pytest.raises(RuntimeError, match=rf"{name}: G must be a batch of matrices \(B, m, n\)"):
            op(name)(G[0], RCOND)
        with pytest.raises(RuntimeError, match=f"{name}: G must be float64, float32, bfloat16 or float16"):
            op(name)(G.to(torch.int32), RCOND)
        for rcond in (-0.1, 1.0, math.nan):
            with pytest.raises(RuntimeError, match=rf"{name}: rcond must be in \[0, 1\)"):
                op(name)(G, rcond)
    with pytest.raises(RuntimeError, match=r"cholqr2_polar: G must be tall \(m >= n\)"):
        op("cholqr2_polar")(G.mT, RCOND)


# -------------------------------------------------------------------------------- opcheck and compile
def _samples():
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        G = random_matrix(2, 12, 5, "decaying", dtype=dtype, seed=14)
        yield G
        yield G.mT.contiguous().mT  # column-major
    yield random_matrix(2, 12, 5, "decaying", dtype=torch.float32, seed=15).requires_grad_()


@pytest.mark.filterwarnings("ignore:.*autograd kernel was not registered")
@pytest.mark.parametrize("name", OPS)
def test_opcheck(name):
    for G in _samples():
        torch.library.opcheck(op(name).default, (G, RCOND))


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(dynamic):
    def f(G):
        return compiled.gram_eigh(G, rcond=RCOND) * 2, compiled.cholqr2(G, rcond=RCOND) + 1

    torch._dynamo.reset()
    fc = torch.compile(f, fullgraph=True, dynamic=dynamic)
    G = random_matrix(2, 12, 5, "decaying", dtype=torch.float32, seed=16)
    for got, want in zip(fc(G), f(G)):
        torch.testing.assert_close(got, want)


# ------------------------------------------------------------------------------------ backend wiring
@pytest.mark.parametrize("method", ["gram_eigh", "cholqr2"])
def test_polar_backend_cpp_agrees_with_torch_reference(method):
    G = random_matrix(3, 45, 20, "decaying", dtype=torch.float32, seed=17)
    O_cpp = orthokern.polar(G.mT, method=method, backend="cpp")  # wide: polar transposes
    O_ref = orthokern.polar(G.mT, method=method, backend="torch")
    assert accuracy(G.mT, O_cpp).E <= E_BOUND[torch.float32]
    torch.testing.assert_close(O_cpp, O_ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("n", [1, 64, 65, 300])
def test_cpu_prefers_the_compiled_ops_at_every_n(n):
    # Measured faster than the torch references at every n (csrc/cpu, bench/RESULTS.md; the measurement is
    # summarised above _IMPLS in orthokern/dispatch.py).
    G = torch.empty(2, n + 8, n)
    assert dispatch.resolve("gram_eigh", None, G).backend == "cpp"
    assert dispatch.resolve("cholqr2", None, G).backend == "cpp"
    assert dispatch.resolve("gram_eigh", None, G.double(), mode="fast").backend == "cpp"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_cpu_fast_mode_takes_the_float32_path_from_its_crossover_n(dtype):
    # fast mode: the compiled float64 op below dispatch.CPU_FAST_FLOAT32_MIN_N, the torch backend's float32 Gram
    # matrix and eigensolver from it on (measured crossover: the comment above it in orthokern/dispatch.py)
    n0 = dispatch.CPU_FAST_FLOAT32_MIN_N
    for n, backend in ((1, "cpp"), (n0 - 1, "cpp"), (n0, "torch"), (4 * n0, "torch")):
        G = torch.empty(3, 2 * n, n, dtype=dtype)
        assert dispatch.resolve("gram_eigh", None, G, mode="fast").backend == backend, n
        assert dispatch.resolve("gram_eigh", None, G, mode="accurate").backend == "cpp", n
    # and polar(mode="fast") below the crossover returns the compiled op's result
    G = random_matrix(3, 90, n0 - 1, "decaying", dtype=dtype, seed=23)
    rcond = dispatch.effective_rcond("gram_eigh", RCOND, dtype)
    expected = compiled.gram_eigh(G, mode="fast", rcond=rcond)
    torch.testing.assert_close(orthokern.polar(G, method="gram_eigh", mode="fast", rcond=RCOND), expected,
                               rtol=0, atol=0)


# ------------------------------------------------------------------------- column_norm_max (auto's guard)
def _column_norm_max_reference(O: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(O.to(torch.float64), dim=-2).amax(-1)


@pytest.mark.parametrize("layout", ["contiguous", "column-major", "sliced"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_column_norm_max_matches_its_formula(dtype, layout):
    O = orthokern.polar(random_matrix(5, 70, 23, "decaying", dtype=torch.float64, seed=seed_of("cnm", layout)))
    O = (O * torch.linspace(0.5, 1.5, 23, dtype=torch.float64)).to(dtype)  # columns of different norms
    if layout == "column-major":
        O = O.mT.contiguous().mT
    elif layout == "sliced":
        O = torch.cat([O, O], dim=-1)[..., ::2]
    got = compiled.column_norm_max(O)
    assert got.shape == (5,) and got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(got.to(torch.float64), _column_norm_max_reference(O), rtol=tol, atol=0)


def test_column_norm_max_flags_nan_inf_and_overflow():
    O = torch.rand(4, 30, 6)
    O[1, 7, 2] = float("nan")
    O[2, 0, 5] = float("inf")
    O[3, :, 1] = 3e19  # its square overflows float32: Inf, which the guard flags as it should
    got = compiled.column_norm_max(O)
    assert math.isfinite(got[0].item()) and got[0] > 0
    assert math.isnan(got[1].item())
    assert got[2].item() == math.inf and got[3].item() == math.inf


def test_column_norm_max_empty_and_errors():
    assert compiled.column_norm_max(torch.empty(0, 3, 2)).shape == (0,)
    assert compiled.column_norm_max(torch.empty(2, 0, 3)).tolist() == [0.0, 0.0]
    with pytest.raises(RuntimeError, match=r"column_norm_max: O must be a batch of matrices \(B, m, n\)"):
        compiled.column_norm_max(torch.ones(3, 4))
    with pytest.raises(RuntimeError, match="column_norm_max: O must be float64, float32, bfloat16 or float16"):
        compiled.column_norm_max(torch.ones(1, 3, 4, dtype=torch.int32))


@pytest.mark.filterwarnings("ignore:.*autograd kernel was not registered")
def test_column_norm_max_opcheck():
    for O in _samples():
        torch.library.opcheck(torch.ops.orthokern.column_norm_max.default, (O.detach(),))


def test_auto_guard_uses_the_compiled_reduction(monkeypatch):
    calls = []
    real = compiled.column_norm_max
    monkeypatch.setattr(compiled, "column_norm_max", lambda O: calls.append(O.shape) or real(O))
    G = random_matrix(3, 40, 12, "decaying", dtype=torch.float32, seed=18)
    orthokern.polar(G)
    assert calls == [(3, 40, 12)]
