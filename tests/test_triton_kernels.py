"""The Triton kernels against float64 torch references, on small odd shapes.

Run on CPU with ``TRITON_INTERPRET=1 pytest tests/test_triton_kernels.py`` (the variable must be set before
Triton is imported, hence on the command line); on a GPU they run natively.
"""
from __future__ import annotations

import pytest
import torch

from orthokern._env import interpreting
from orthokern.testing import random_matrix, triton_device

pytestmark = pytest.mark.triton_interpret

INTERPRET = interpreting()
DEVICE = triton_device()
EPS = {torch.float32: 2.0**-24, torch.float64: 2.0**-53, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
# The interpreter has no bfloat16 arithmetic: bfloat16 kernels are covered by the GPU tests.
HALF = [torch.float16] if DEVICE == "cpu" else [torch.float16, torch.bfloat16]


@pytest.fixture(scope="module")
def tk():
    from orthokern import dispatch

    return dispatch._load_triton_kernels()


def _mat(B, m, n, dtype=torch.float32, seed=0, kind="decaying"):
    return random_matrix(B, m, n, kind, dtype=dtype, device=DEVICE, seed=seed)


def _gram_bound(G, eps):
    """Elementwise rounding bound of a length-m dot product: m * eps * (|G|^T |G|)."""
    Gd = G.double().abs()
    return 2 * G.shape[1] * eps * (Gd.mT @ Gd) + 1e-300


# ---------------------------------------------------------------- symmetric Gram
@pytest.mark.parametrize("B,m,n", [(1, 37, 21), (3, 50, 16), (2, 13, 35)])
@pytest.mark.parametrize("acc_f64", [False, True])
@pytest.mark.parametrize("splits", [1, 3])
def test_sym_gram_matches_float64(tk, B, m, n, acc_f64, splits):
    G = _mat(B, m, n, seed=B * m + n)
    A = tk.sym_gram(G, acc_f64=acc_f64, splits=splits)
    assert A.shape == (B, n, n) and A.dtype == (torch.float64 if acc_f64 else torch.float32)
    ref = G.double().mT @ G.double()
    # The fp64 variant must be fp64-accurate (products of fp32 values are exact there), not merely fp32.
    bound = _gram_bound(G, EPS[torch.float64] if acc_f64 else EPS[torch.float32])
    assert bool(((A.double() - ref).abs() <= bound).all()), (A.double() - ref).abs().max()
    assert torch.equal(A, A.mT), "the mirrored triangle must be exactly symmetric"


@pytest.mark.parametrize("dtype", HALF)
def test_sym_gram_half_inputs_accumulate_in_fp32(tk, dtype):
    G = _mat(2, 45, 20, dtype=dtype, seed=5)
    A = tk.sym_gram(G, splits=2)
    assert A.dtype == torch.float32
    ref = G.double().mT @ G.double()  # exact products of the half values: only the fp32 accumulation errs
    assert bool(((A.double() - ref).abs() <= _gram_bound(G, EPS[torch.float32])).all())


def test_sym_gram_strided_input_and_scale(tk):
    base = _mat(3, 80, 48, seed=7)
    G = base[:, ::2, 5:35]  # non-contiguous rows and columns
    scale = torch.tensor([0.5, 4.0, 2.0**-20], device=DEVICE)
    for acc_f64 in (False, True):
        A = tk.sym_gram(G, scale=scale, acc_f64=acc_f64)
        Gs = G.double() * scale.double()[:, None, None]
        ref = Gs.mT @ Gs
        assert bool(((A.double() - ref).abs() <= _gram_bound(Gs, EPS[torch.float32])).all())


def test_sym_gram_split_k_is_deterministic(tk):
    G = _mat(2, 150, 24, seed=11)
    for acc_f64 in (False, True):
        A1 = tk.sym_gram(G, splits=5, acc_f64=acc_f64)
        A2 = tk.sym_gram(G, splits=5, acc_f64=acc_f64)
        assert torch.equal(A1, A2)
        ref = G.double().mT @ G.double()
        assert bool(((A1.double() - ref).abs() <= _gram_bound(G, EPS[A1.dtype])).all())


def test_sym_gram_more_splits_than_rows_and_empty(tk):
    G = _mat(1, 20, 17, seed=12)
    A = tk.sym_gram(G, splits=8)  # most splits own no rows: their partials must be zeros, not garbage
    assert torch.allclose(A.double(), G.double().mT @ G.double(), rtol=1e-5, atol=1e-6)
    assert tk.sym_gram(G[:, :0]).abs().sum() == 0
    assert tk.sym_gram(G[:0]).shape == (0, 17, 17)


def test_sym_gram_float64_input(tk):
    G = _mat(2, 33, 18, dtype=torch.float64, seed=13)
    A = tk.sym_gram(G)
    assert A.dtype == torch.float64
    assert bool(((A - G.mT @ G).abs() <= _gram_bound(G, EPS[torch.float64])).all())


def test_choose_splits_fills_the_device_only_when_needed(tk):
    sms = 132  # an H100 SXM
    assert tk.choose_splits(1024, 256, 32, sms) == 1  # the batch alone fills the GPU
    assert tk.choose_splits(1, 4096, 64, sms) == 16  # 264 programs wanted, 4096 // 256 rows allow 16 splits
    assert tk.choose_splits(1, 100, 64, sms) == 1  # too few rows to be worth a second pass
    # 108 tiles take one wave split or not (three splits: three waves of a third): no split, no reduction launch
    assert tk.choose_splits(3, 2048, 512, sms, "tc16", 3) == 1
    assert tk.choose_splits(1, 4608, 512, sms, "tc16", 3) == 3  # 36 tiles: three splits fill one wave


def test_sym_gram_errors_name_the_argument(tk):
    with pytest.raises(ValueError, match="G must be"):
        tk.sym_gram(torch.zeros(4, 4, device=DEVICE))
    with pytest.raises(ValueError, match="scale"):
        tk.sym_gram(torch.zeros(2, 4, 4, device=DEVICE), scale=torch.ones(3, device=DEVICE))
    with pytest.raises(TypeError, match="G must be"):
        tk.sym_gram(torch.zeros(2, 4, 4, dtype=torch.int32, device=DEVICE))


# ---------------------------------------------------------------- b A + c A^2
@pytest.mark.parametrize("n", [16, 29])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sym_poly_matches_float64(tk, n, dtype):
    G = _mat(2, n + 7, n, dtype=dtype, seed=n)
    A = (G.mT @ G).contiguous()
    b, c = -4.775, 2.0315
    C = tk.sym_poly(A, b, c)
    assert C.dtype == dtype and torch.equal(C, C.mT)
    Ad = A.double()
    ref = b * Ad + c * Ad @ Ad
    scale = (b * Ad).abs() + c * (Ad.abs() @ Ad.abs())
    assert bool(((C.double() - ref).abs() <= 4 * n * EPS[dtype] * scale + 1e-300).all())


@pytest.mark.parametrize("n", [16, 29, 70])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sym_mul_of_commuting_matrices_matches_float64(tk, n, dtype):
    # X and Y polynomials of one symmetric A commute, so X Y is symmetric; the kernel computes one triangle of tiles
    # (n = 70: several tiles, a ragged last one) and mirrors it.
    G = _mat(2, n + 7, n, dtype=torch.float64, seed=n)
    A = G.mT @ G
    A = A / torch.linalg.matrix_norm(A, 2)[:, None, None]
    X = (2.0 * A - 0.5 * A @ A).to(dtype)
    Y = (torch.eye(n, dtype=torch.float64) + A @ A @ A).to(dtype)
    alpha, beta = 1.875, -1.25
    C = tk.sym_mul(X, Y, alpha, beta)
    assert C.dtype == dtype and torch.equal(C, C.mT)
    Xd, Yd = X.double(), Y.double()
    ref = alpha * Xd + beta * Xd @ Yd
    scale = (alpha * Xd).abs() + abs(beta) * (Xd.abs() @ Yd.abs())
    # X and Y as stored commute only to their rounding: the mirrored upper triangle differs from the lower one of
    # X @ Y by about that much
    assert bool(((C.double() - ref).abs() <= 8 * n * EPS[dtype] * scale + 1e-300).all())
    with pytest.raises(ValueError, match="Y must match X"):
        tk.sym_mul(X, Y[:, :-1, :-1], alpha, beta)


# ---------------------------------------------------------------- tall apply
@pytest.mark.parametrize("B,m,n", [(1, 41, 19), (3, 16, 16), (2, 70, 33)])
def test_apply_matches_float64(tk, B, m, n):
    G = _mat(B, m, n, seed=m)
    Mat = torch.randn(B, n, n, generator=torch.Generator().manual_seed(m)).to(DEVICE)
    O = tk.apply(G, Mat, alpha=1.875, beta=-0.5)
    ref = 1.875 * G.double() - 0.5 * (G.double() @ Mat.double())
    bound = 2 * n * EPS[torch.float32] * (1.875 * G.double().abs() + 0.5 * G.double().abs() @ Mat.double().abs())
    assert O.shape == G.shape and O.dtype == G.dtype
    assert bool(((O.double() - ref).abs() <= bound).all())


def test_apply_scale_strides_and_dtypes(tk):
    base = _mat(2, 60, 40, seed=3)
    G = base.mT[:, :25, :]  # (2, 25, 60)^T-view: column-major rows, a stride pattern of its own
    G = G.mT[:, :, :20]  # (2, 60, 20), non-contiguous
    Mat = torch.randn(2, 20, 20, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    scale = torch.tensor([2.0**-3, 2.0**7], device=DEVICE)
    O = tk.apply(G, Mat, scale=scale)
    ref = (G.double() * scale.double()[:, None, None]) @ Mat.double()
    assert torch.allclose(O.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    Gh = G.half()
    Oh = tk.apply(Gh, Mat, out_dtype=torch.float32)  # half G, fp32 Mat: upcast in registers
    assert Oh.dtype == torch.float32
    assert torch.allclose(Oh.double(), Gh.double() @ Mat.double(), rtol=1e-5, atol=1e-5)
    O16 = tk.apply(Gh, Mat)
    assert O16.dtype == torch.float16
    with pytest.raises(ValueError, match="Mat must have shape"):
        tk.apply(G, Mat[:, :5])


# ---------------------------------------------------------------- fused Newton–Schulz step
@pytest.mark.parametrize("coeffs", [(3.4445, -4.7750, 2.0315), (1.5, -0.5, 0.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ns_step_matches_torch_step(tk, coeffs, dtype):
    a, b, c = coeffs
    X = _mat(2, 37, 18, dtype=dtype, seed=4)
    Y = tk.ns_step(X, a, b, c)
    Xd = X.double()
    A = Xd.mT @ Xd
    ref = a * Xd + Xd @ (b * A + c * A @ A)
    assert Y.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert (Y.double() - ref).abs().max() <= tol * ref.abs().max()


# ---------------------------------------------------------------- the registered ops
def test_ops_registered_and_opcheck(tk):
    G = _mat(2, 24, 16, seed=21)
    A = torch.ops.orthokern.triton_sym_gram(G, None, False, torch.float32, 2, "tf32x3")
    torch.testing.assert_close(A, tk.sym_gram(G, splits=2), rtol=0, atol=0)
    torch.library.opcheck(torch.ops.orthokern.triton_sym_gram, (G, None, True, torch.float64, 0, "tf32x3"))
    torch.library.opcheck(torch.ops.orthokern.triton_sym_poly, (A, 0.5, -0.25, "tf32x3"))
    torch.library.opcheck(torch.ops.orthokern.triton_sym_mul, (A, A, 0.5, -0.25, "tf32x3"))
    torch.library.opcheck(torch.ops.orthokern.triton_apply, (G, A, torch.ones(2, device=DEVICE), 0.5, 1.0,
                                                             torch.float32, "tf32x3"))


def test_ops_under_torch_compile(tk):
    G = _mat(2, 24, 16, seed=22)

    def f(G):
        A = torch.ops.orthokern.triton_sym_gram(G, None, False, torch.float32, 0, "tf32x3")
        return torch.ops.orthokern.triton_apply(G, A, None, 0.5, 1.0, torch.float32, "tf32x3")

    # aot_eager: traces through the op registrations (fake impls, functionalisation) without invoking a C++
    # compiler; the GPU test compiles with Inductor.
    out = torch.compile(f, fullgraph=True, backend="aot_eager")(G)
    torch.testing.assert_close(out, f(G), rtol=0, atol=0)


def test_long_batches_launch_in_slices(tk, monkeypatch):
    # CUDA's 65535 limit on grid axes 1-2 shrunk to 2, so a batch of 5 takes three launches per kernel.
    from orthokern.triton_kernels import _common

    monkeypatch.setattr(_common, "MAX_GRID_YZ", 2)
    G = _mat(5, 40, 20, seed=23)
    scale = torch.tensor([0.5, 1.0, 2.0, 4.0, 0.25], device=DEVICE)
    Gs = G.double() * scale.double()[:, None, None]
    for splits in (1, 3):
        A = tk.sym_gram(G, splits=splits, scale=scale)
        assert bool(((A.double() - Gs.mT @ Gs).abs() <= _gram_bound(Gs, EPS[torch.float32])).all())
    C = tk.sym_poly(A, 0.5, 1.5)
    torch.testing.assert_close(C.double(), 0.5 * A.double() + 1.5 * A.double() @ A.double(), rtol=1e-5, atol=1e-5)
    O = tk.apply(G, A, scale=scale, alpha=0.5)
    ref = 0.5 * G.double() + Gs @ A.double()
    torch.testing.assert_close(O.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


# ---------------------------------------------------------------- precision as data
def test_precision_is_checked_by_every_op(tk):
    G = _mat(1, 20, 16)
    A = G.mT @ G
    for call in (lambda p: tk.sym_gram(G, precision=p), lambda p: tk.sym_poly(A, 1.0, 1.0, precision=p),
                 lambda p: tk.apply(G, A, precision=p), lambda p: tk.ns_step(G, 1.5, -0.5, 0.0, precision=p)):
        with pytest.raises(ValueError, match="precision must be one of"):
            call("fp32")
        with pytest.raises(ValueError, match="precision must be one of"):
            call(True)


@pytest.mark.skipif(not INTERPRET, reason="the interpreter's handling of bf16x3")
def test_bf16x3_runs_as_ieee_under_the_interpreter(tk):
    """The interpreter's frontend rejects "bf16x3" and computes every float32 dot in float32 whatever the
    precision: an interpreted launch passes "ieee" for it, so all precisions agree bit for bit there."""
    G = _mat(2, 40, 20, seed=31)
    A = tk.sym_gram(G, precision="ieee")
    for p in ("tf32", "tf32x3", "bf16x3"):
        assert torch.equal(tk.sym_gram(G, precision=p), A)
        assert torch.equal(tk.apply(G, A, precision=p), tk.apply(G, A, precision="ieee"))


@pytest.fixture
def emulated(monkeypatch):
    """Triton's interpreter with two of its gaps filled, so that tests can see what a GPU computes:

    * bfloat16: the interpreter keeps bfloat16 values as their uint16 bit patterns, and its ``create_dot`` and
      its casts other than float32 <-> bfloat16 treat those bits as integers (see the strict xfails below), and
      its float32 -> bfloat16 cast truncates; here bfloat16 operands are widened to float32 first, and casts to
      bfloat16 round to nearest even from any float type, as the GPU does;
    * input_precision: the interpreter computes every float32 dot in float32; here "tf32" drops the 13 low
      mantissa bits of each operand (as the tensor cores read TF32) and "tf32x3" sums the three products of
      the split a = hi + lo, hi and lo rounded to TF32 (Triton's decomposition of tf32x3).
    """
    if not INTERPRET:
        pytest.skip("emulates the GPU under the interpreter")
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter as I

    builder = I.InterpreterBuilder
    if not all(hasattr(builder, a) for a in ("create_dot", "cast_impl")) or not hasattr(I, "TensorHandle"):
        pytest.skip("this Triton's interpreter has another structure")

    def widen(h):
        if h.dtype.scalar == tl.bfloat16:
            return (h.data.astype(np.uint32) << 16).view(np.float32)
        return h.data

    def tf32(x, rna):
        bits = x.astype(np.float32).view(np.uint32)
        if rna:
            bits = bits + np.uint32(0x1000)
        return (bits & np.uint32(0xFFFFE000)).view(np.float32)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        x, y = widen(a), widen(b)
        name = getattr(input_precision, "name", str(input_precision)).upper()
        acc = d.data.dtype
        if x.dtype == np.float32 and name == "TF32":
            out = np.matmul(tf32(x, False), tf32(y, False), dtype=acc)
        elif x.dtype == np.float32 and name == "TF32X3":
            xh, yh = tf32(x, True), tf32(y, True)
            xl, yl = tf32(x - xh, True), tf32(y - yh, True)
            out = (np.matmul(xl, yh, dtype=acc) + np.matmul(xh, yl, dtype=acc)) + np.matmul(xh, yh, dtype=acc)
        else:
            out = np.matmul(x, y, dtype=acc)
        return I.TensorHandle(out + d.data, d.dtype.scalar)

    stock_cast = builder.cast_impl

    def cast_impl(self, src, dst_type):
        s, t = src.dtype.scalar, dst_type.scalar
        if t == tl.bfloat16 and s.is_floating():
            # round to nearest even, as the GPU's cvt.rn.bf16 (via float32: a second rounding of < 2^-24)
            bits = widen(src).astype(np.float32).view(np.uint32)
            out = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
            out = np.where(np.isnan(widen(src)), np.uint16(0x7FC0), out)
            return I.TensorHandle(out, t)
        if s == tl.bfloat16 and t.is_floating():
            return I.TensorHandle(widen(src).astype(I._get_np_dtype(t)), t)
        return stock_cast(self, src, dst_type)

    monkeypatch.setattr(builder, "create_dot", create_dot)
    monkeypatch.setattr(builder, "cast_impl", cast_impl)


def test_precision_reaches_every_dot(tk, emulated):
    """With the precisions emulated: "ieee", "tf32x3" and "fp16x3" meet the float32 rounding bounds, "tf32" (10-bit
    mantissa) does not, in each of the three kernels (so each passes its precision to its dot)."""
    G = _mat(2, 70, 24, seed=32, kind="gaussian")
    Gd = G.double()
    A = (G.mT @ G).contiguous()
    Ad = A.double()
    cases = {
        "gram": (lambda p: tk.sym_gram(G, precision=p), Gd.mT @ Gd, _gram_bound(G, EPS[torch.float32])),
        "poly": (lambda p: tk.sym_poly(A, 0.0, 1.0, precision=p), Ad @ Ad,
                 4 * 24 * EPS[torch.float32] * (Ad.abs() @ Ad.abs())),
        "apply": (lambda p: tk.apply(G, A, precision=p), Gd @ Ad, 4 * 24 * EPS[torch.float32] * (Gd.abs() @ Ad.abs())),
    }
    for name, (f, ref, bound) in cases.items():
        for p, ok in (("ieee", True), ("tf32x3", True), ("fp16x3", True), ("tf32", False)):
            err = (f(p).double() - ref).abs()
            assert bool((err <= bound).all()) == ok, (name, p, (err / bound).max().item())
        # and TF32 is what "tf32" got: within its own 2^-10 relative rounding
        err = (f("tf32").double() - ref).abs()
        assert bool((err <= bound * 2.0**14).all()), (name, (err / bound).max().item())


# ---------------------------------------------------------------- bfloat16 under the interpreter (issue 13, item 9)
# Each failure reported for bfloat16 under the interpreter, and where it comes from. Under the stock interpreter they
# are strict xfails: the interpreter stores bfloat16 as uint16 bit patterns, so (1) its tl.dot multiplies the bit
# patterns as integers (sym_gram off by ~6e10, fast gram_eigh ~1e-6: the Gram matrix is garbage), and (2) its
# casts between bfloat16 and anything but float32 convert the bit patterns numerically (an fp64 accumulator stored
# as bfloat16 becomes NaN/garbage: apply with a float64 Mat, and accurate newton_schulz, whose Gram-side iteration
# ends in that apply, returning zeros). With those two gaps filled (``emulated``) the same kernels are right, and
# float16, which the interpreter represents natively, passes through the same code paths: the kernels are not at
# fault. On a GPU these tests run unmarked.
_BF16_XFAIL = pytest.mark.xfail(
    INTERPRET, strict=True,
    reason="Triton's interpreter keeps bfloat16 as uint16 bits: tl.dot and casts other than fp32<->bf16 "
           "treat them as integers (triton/runtime/interpreter.py create_dot, cast_impl)")



def _bf16_case(tk, case, dtype):
    """One reported symptom as a check that holds on a GPU: (error, bound)."""
    import orthokern
    from orthokern.testing import E_BOUND, accuracy

    g = torch.randn(40, 4, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    G = g.to(dtype)
    if case == "newton_schulz accurate":
        return accuracy(G, orthokern.polar(G, method="newton_schulz", backend="triton")).E, E_BOUND[dtype]
    if case == "gram_eigh fast":
        return accuracy(G, orthokern.polar(G, method="gram_eigh", mode="fast", backend="triton")).E, E_BOUND[dtype]
    Gb = G[None]
    if case == "sym_gram":
        A = torch.ops.orthokern.triton_sym_gram(Gb, None, False, torch.float32, 0, "tf32x3")
        ref = Gb.double().mT @ Gb.double()  # exact products: only the fp32 accumulation errs
        return ((A.double() - ref).abs() / _gram_bound(Gb, EPS[torch.float32])).max().item(), 1.0
    if case == "apply float64 Mat":
        M = torch.randn(1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(DEVICE)
        O = torch.ops.orthokern.triton_apply(Gb, M, None, 0.0, 1.0, dtype, "tf32x3")
        ref = Gb.double() @ M
        # one rounding of the fp64 accumulator to the output (the emulation's via float32: + 2^-24 relative)
        return ((O.double() - ref).abs() / (EPS[dtype] * ref.abs() + 1e-30)).max().item(), 1.0 + 2.0**-15
    raise AssertionError(case)


BF16_CASES = ["newton_schulz accurate", "gram_eigh fast", "sym_gram", "apply float64 Mat"]
# gram_eigh forms its Gram matrix in float64 in every mode now (docs/design.md, "Fast mode"): its bfloat16 input is
# widened before the dot, which the interpreter gets right, so that reported symptom no longer arises.
_BF16_INTERPRETER_BOUND = [pytest.param(c, marks=_BF16_XFAIL) if c != "gram_eigh fast" else c for c in BF16_CASES]


@pytest.mark.parametrize("case", _BF16_INTERPRETER_BOUND)
def test_bfloat16_reported_cases(tk, case):
    err, bound = _bf16_case(tk, case, torch.bfloat16)
    assert err <= bound, (case, err, bound)


@pytest.mark.parametrize("case", BF16_CASES)
def test_bfloat16_reported_cases_with_bf16_emulated(tk, case, emulated):
    err, bound = _bf16_case(tk, case, torch.bfloat16)
    assert err <= bound, (case, err, bound)


@pytest.mark.parametrize("case", BF16_CASES)
def test_float16_twins_of_the_reported_cases(tk, case):
    """The same kernels and code paths (16-bit loads, 16-bit dots, fp64 -> 16-bit stores) in float16."""
    err, bound = _bf16_case(tk, case, torch.float16)
    assert err <= bound, (case, err, bound)


_KERNELS = {}


def _interpreter_probe_kernels():
    """Two minimal kernels that isolate the interpreter's bfloat16 gaps from orthokern's code."""
    if not _KERNELS:
        import triton
        import triton.language as tl

        @triton.jit
        def dot16(A, B, C):
            r = tl.arange(0, 16)
            a = tl.load(A + r[:, None] * 16 + r[None, :])
            b = tl.load(B + r[:, None] * 16 + r[None, :])
            tl.store(C + r[:, None] * 16 + r[None, :], tl.dot(a, b))

        @triton.jit
        def cast16(X, Y):
            r = tl.arange(0, 16)
            tl.store(Y + r, tl.load(X + r).to(Y.dtype.element_ty))

        _KERNELS.update(dot16=dot16, cast16=cast16)
    return _KERNELS


def _probe_bf16_dot():
    k = _interpreter_probe_kernels()["dot16"]
    a = torch.randn(16, 16, generator=torch.Generator().manual_seed(2)).to(DEVICE).bfloat16()
    c = torch.empty(16, 16, device=DEVICE)
    k[(1,)](a, a, c)
    torch.testing.assert_close(c, a.float() @ a.float(), rtol=1e-5, atol=1e-5)


def _probe_bf16_cast(src_dtype):
    k = _interpreter_probe_kernels()["cast16"]
    # values half-way and just off half-way between bfloat16 neighbours: truncation and rounding differ
    x = (1 + torch.arange(16, dtype=torch.float64) * 2.0**-8 + 2.0**-9 + 2.0**-12).to(src_dtype).to(DEVICE)
    y = torch.empty(16, dtype=torch.bfloat16, device=DEVICE)
    k[(1,)](x, y)
    torch.testing.assert_close(y, x.bfloat16(), rtol=0, atol=0)


@_BF16_XFAIL
def test_interpreter_bfloat16_dot():
    _probe_bf16_dot()


@_BF16_XFAIL
def test_interpreter_float64_to_bfloat16_cast():
    _probe_bf16_cast(torch.float64)


@pytest.mark.xfail(INTERPRET, strict=True, reason="Triton's interpreter casts float32 to bfloat16 by truncation "
                   "(interpreter.py cast_impl passes no rounding mode to _convert_float); the GPU rounds to nearest")
def test_interpreter_float32_to_bfloat16_cast_rounds():
    _probe_bf16_cast(torch.float32)


def test_the_emulation_fills_exactly_these_gaps(emulated):
    _probe_bf16_dot()
    _probe_bf16_cast(torch.float64)
    _probe_bf16_cast(torch.float32)


# ---------------------------------------------------------------- device guard
def test_every_launch_runs_under_the_device_guard(tk, monkeypatch):
    from orthokern.triton_kernels import _common

    guarded, launched = [], []
    real_guard, real_run = _common.device_guard, _common.KernelCall.run

    def guard(t):
        guarded.append(t)
        return real_guard(t)

    def run(self, launch=None):
        launched.append((self.name, len(guarded)))
        return real_run(self, launch)

    monkeypatch.setattr(_common, "device_guard", guard)
    monkeypatch.setattr(_common.KernelCall, "run", run)
    G = _mat(2, 40, 20, seed=41)
    A = tk.sym_gram(G, splits=2)
    tk.sym_poly(A, 1.0, -0.5)
    tk.apply(G, A, alpha=0.5)
    tk.ns_step(G, 1.5, -0.5, 0.25)
    assert [name for name, _ in launched] == [
        "gram._gram_kernel", "gram._reduce_splits_kernel", "poly._sym_poly_kernel", "tall_apply._apply_kernel",
        "gram._gram_kernel", "poly._sym_poly_kernel", "tall_apply._apply_kernel"]
    assert all(n >= 1 for _, n in launched) and len(guarded) == 6  # one guard per op call, before its launches
    assert all(t.device == G.device for t in guarded)


def test_device_guard_leaves_cpu_and_fake_tensors_alone():
    import contextlib

    from orthokern.triton_kernels import _common
    from torch._subclasses.fake_tensor import FakeTensorMode

    assert isinstance(_common.device_guard(torch.zeros(1)), contextlib.nullcontext)
    with FakeTensorMode():
        fake = torch.empty(2, device="cuda:1")
        assert isinstance(_common.device_guard(fake), contextlib.nullcontext)


# ---------------------------------------------------------------- autotuning
def _autotuned():
    from orthokern.triton_kernels import gram, poly, tall_apply

    return {"gram": gram._gram_kernel, "poly": poly._sym_poly_kernel, "apply": tall_apply._apply_kernel}


def test_autotune_keys_name_every_specialisation():
    """Every constexpr that is not a tuned block size is in the key (Triton appends the tensor dtypes itself)."""
    import inspect

    for family, kernel in _autotuned().items():
        raw = kernel.fn.fn  # the Python function under the JITFunction (or the interpreter's wrapper)
        params = inspect.signature(raw).parameters.values()
        constexprs = {p.name for p in params if "constexpr" in str(p.annotation) and not p.name.startswith("BLOCK_")}
        assert {"PRECISION", "ACC_F64"} <= constexprs
        assert constexprs <= set(kernel.keys), (family, constexprs - set(kernel.keys))
        assert "N_CLASS" in kernel.keys


def test_candidates_are_few_and_fit_the_matrix():
    import triton
    from orthokern.triton_kernels import _configs

    for family, table in _configs.TABLES.items():
        assert set(table) == set(_configs.CLASSES), family
        for cls in table:
            for n in (1, 15, 16, 17, 33, 64, 65, 100, 128, 200, 256, 257, 512, 1000, 5000):
                cands = _configs.table_candidates(family, cls, n)
                assert 1 <= len(cands) <= 2, (family, cls, n)
                assert len(cands) == 1 or n > 256, (family, cls, n)  # two only for the largest class
                for c in cands:
                    assert c.kwargs["BLOCK_N"] <= max(16, triton.next_power_of_2(n)), (family, cls, n, c)
                    assert c.kwargs["BLOCK_K"] <= max(16, triton.next_power_of_2(n)) or family == "gram"
                    if family == "gram":  # choose_splits counts 64-wide tiles
                        assert c.kwargs["BLOCK_N"] <= 64


def test_a_float32_result_of_16_bit_operands_keeps_tiles_that_do_not_spill():
    # bench/check_triton_configs.py found the 128 x 256 apply spilling when it stores float32 from 16-bit operands
    from orthokern.triton_kernels import _configs

    def tile(c):
        return c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"]

    limit = _configs.F16_APPLY_FLOAT32_OUT_MAX_TILE
    for n in (16, 64, 128, 512, 1000):
        table = _configs.table_candidates("apply", "f16", n)
        for dt in (torch.bfloat16, torch.float16):
            named = {"MAT": torch.empty(0, dtype=dt), "N": n}
            same = _configs.candidates("apply", {**named, "OUT": torch.empty(0, dtype=dt)}, {}, gpu=True)
            wide = _configs.candidates("apply", {**named, "OUT": torch.empty(0, dtype=torch.float32)}, {}, gpu=True)
            assert same == table, (n, dt)
            assert wide and all(tile(c) <= limit for c in wide), (n, dt, wide)
            assert wide == [c for c in table if tile(c) <= limit], (n, dt)
    assert any(tile(c) > limit for c in _configs.table_candidates("apply", "f16", 512))  # the filter does filter


def test_tune_key_is_the_key_triton_computes(tk, monkeypatch):
    """tune_key(call) against the key Triton's Autotuner.run builds for the same launch (given two configs, so that
    it computes one; the prune hook keeps the interpreter's one, so nothing is benchmarked)."""
    from orthokern.triton_kernels import _common, _configs, gram, poly, tall_apply

    G = _mat(2, 40, 20, seed=43)
    scale = torch.tensor([0.5, 2.0], device=DEVICE)
    A = tk.sym_gram(G)
    plans = {
        "gram": gram.plan(G, scale, torch.empty(2, 20, 20, device=DEVICE), False, 2, "tf32x3"),
        "poly": poly.plan(A, torch.empty_like(A), 0.5, 1.5, "ieee"),
        "apply": tall_apply.plan(G, A.double(), scale, torch.empty(2, 40, 20, device=DEVICE), 0.5, 1.0, "tf32"),
    }
    for family, kernel in _autotuned().items():
        cfg = _configs.INTERPRETER[family] if INTERPRET else _configs.all_configs(family)[0]
        monkeypatch.setattr(kernel, "configs", [cfg, cfg])
        monkeypatch.setattr(kernel, "cache", {})
        # do_bench is a cached_property that asks the driver (there is none under the interpreter)
        monkeypatch.setitem(kernel.__dict__, "do_bench", lambda fn, quantiles=None: [1.0, 1.0, 1.0])
        call = plans[family][0]
        _common.run_all([call], G)
        key, n = _configs.tune_key(call, gpu=not INTERPRET)
        assert list(kernel.cache) == [key], (family, list(kernel.cache), key)
        assert n == (1 if INTERPRET else len(_configs.candidates(family, call.args, call.meta)))
        assert all(str(call.meta[k]) in map(str, key) for k in call.meta)


def test_a_resnet50_step_compiles_about_twenty_configs():
    """The issue's budget: a first ResNet-50 optimiser step compiles at most ~20 configs (counted over the keys that
    the auto dispatch's Triton path hits, as on an H100)."""
    import importlib.util
    import pathlib

    from orthokern.bench.suites import RESNET50_SHAPES

    path = pathlib.Path(__file__).resolve().parent.parent / "bench" / "check_triton_configs.py"
    spec = importlib.util.spec_from_file_location("check_triton_configs", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for mode, budget in (("accurate", 22), ("fast", 20)):
        r = mod.first_step_compiles(RESNET50_SHAPES, mode)
        assert r["configs"] <= budget, (mode, r["configs"], r["keys"])
        assert all(1 <= v <= 2 for v in r["keys"].values())


# ---------------------------------------------------------------- cost models
def _cost(name, *args):
    from orthokern.triton_kernels import assume_sm_count

    from orthokern import _cost

    with assume_sm_count(132):
        return _cost.COSTS[f"orthokern.{name}.default"](args, {}, None)


def test_compiled_binaries_follow_the_jit_specialisation(tk):
    # Triton's JIT compiles a binary per specialisation of its int arguments (1, divisible by 16, neither): a matrix
    # read through a transposed view (stride 1 on the other axis) or with n = 1000 is another binary; the rows M are
    # declared unspecialised, so row counts that differ in divisibility share one.
    meta = lambda *s: torch.empty(s, dtype=torch.float32, device="meta")  # noqa: E731

    def binaries(G):
        return set(_cost("triton_sym_gram", G, None, True, torch.float64, 1, "tf32x3")[0].compiled)

    assert binaries(meta(2, 576, 64)) == binaries(meta(2, 147, 64))
    assert binaries(meta(2, 576, 64)) != binaries(meta(2, 64, 576).mT)
    assert binaries(meta(2, 2048, 1024)) != binaries(meta(2, 2048, 1000))


def test_cost_models_by_hand(tk):
    meta = lambda *s, dtype=torch.float32: torch.empty(s, dtype=dtype, device="meta")  # noqa: E731
    G = meta(2, 100, 20)
    # fp64-accumulating Gram, one split: the f64 table's tile at n class 32 is 32 wide, one tile per matrix.
    (L,) = _cost("triton_sym_gram", G, None, True, torch.float64, 1, "tf32x3")
    assert L.kernel == "triton_kernels.gram._gram_kernel" and L.flops == {"fp64_tc": 2 * 2 * 100 * 32 * 32}
    assert L.bytes == 2 * 100 * 20 * 4 + 2 * 20 * 20 * 8 and L.tune[1] == 1
    # three splits: partial triangles (210 values of 8 bytes per split) and the reduction, its own launch
    g, r = _cost("triton_sym_gram", G, None, True, torch.float64, 3, "tf32x3")
    assert g.bytes == 2 * 100 * 20 * 4 + 2 * 3 * 210 * 8 and "PARTIAL" not in g.tune[0]
    assert r.kernel.endswith("_reduce_splits_kernel") and r.flops == {} and r.tune is None
    assert r.bytes == 2 * (3 * 210 * 8 + 400 * 4 * 2)
    # the unit follows the precision of float32 dots; bf16x3 is three bfloat16 passes
    units = {p: _cost("triton_sym_gram", G, None, False, torch.float32, 1, p)[0].flops for p in
             ("ieee", "tf32", "tf32x3", "bf16x3")}
    n_flops = 2 * 2 * 100 * 32 * 32
    assert units == {"ieee": {"fma32": n_flops}, "tf32": {"tf32": n_flops}, "tf32x3": {"tf32x3": n_flops},
                     "bf16x3": {"tc16": 3 * n_flops}}
    assert _cost("triton_sym_gram", meta(2, 100, 20, dtype=torch.bfloat16), None, False, torch.float32, 1,
                 "tf32x3")[0].flops == {"tc16": n_flops * 2 * 2 / 2 / 2}  # 16-bit operands: tc16, same tiles
    # sym_poly (3, 40, 40) float32 tf32x3: n class 64 -> one 64 x 64 tile; read A, write C
    (L,) = _cost("triton_sym_poly", meta(3, 40, 40), -4.7, 2.0, "tf32x3")
    assert L.flops == {"tf32x3": 2 * 3 * 40 * 64 * 64} and L.bytes == 2 * 3 * 40 * 40 * 4 and L.tune[1] == 1
    # sym_mul: the same tiles, and both operands read
    (L,) = _cost("triton_sym_mul", meta(3, 40, 40), meta(3, 40, 40), 1.5, 1.0, "tf32x3")
    assert L.flops == {"tf32x3": 2 * 3 * 40 * 64 * 64} and L.bytes == 3 * 3 * 40 * 40 * 4
    # apply: bf16 G, fp64 Mat, scale, bf16 out -> float64 tensor cores; G and out once, Mat once, the scale
    (L,) = _cost("triton_apply", meta(2, 50, 24, dtype=torch.bfloat16), meta(2, 24, 24, dtype=torch.float64),
                 meta(2), 0.0, 1.0, torch.bfloat16, "tf32x3")
    assert L.flops == {"fp64_tc": 2 * 2 * 50 * 24 * 24}
    assert L.bytes == 2 * (50 * 24 * (2 + 2) + 24 * 24 * 8 + 4)
    assert "True, True" in L.tune[0]  # HAS_SCALE, ACC_F64 (the residual is a runtime branch: not in the key)


def test_cost_model_needs_a_device_model_for_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from orthokern import _cost

    with FakeTensorMode():
        G = torch.empty(2, 4096, 64, device="cuda")
        with pytest.raises(RuntimeError, match="assume_sm_count"):
            _cost.COSTS["orthokern.triton_sym_gram.default"]((G, None, True, torch.float64, 0, "tf32x3"), {}, None)
        (g, r) = _cost_under(G)
    assert g.tune is not None and r.kernel.endswith("_reduce_splits_kernel")  # 2 x 1 tile on 132 SMs: split


def _cost_under(G):
    from orthokern.triton_kernels import assume_sm_count

    from orthokern import _cost

    with assume_sm_count(132):
        return _cost.COSTS["orthokern.triton_sym_gram.default"]((G, None, True, torch.float64, 0, "tf32x3"), {}, None)


# ---------------------------------------------------------------- fp16x3 (triton_kernels/_dot.py)
def _split_kernel():
    """A kernel that stores _dot.split_f16 of its input (built on first use: Triton resolves a jitted function's
    globals in its module, so it lives at module level)."""
    global _SPLIT_KERNEL
    if _SPLIT_KERNEL is None:
        import triton
        import triton.language as tl
        from orthokern.triton_kernels._dot import split_f16

        def split_kernel(X, HI, LO, N: tl.constexpr):
            r = tl.arange(0, N)
            hi, lo = split_f16(tl.load(X + r))
            tl.store(HI + r, hi)
            tl.store(LO + r, lo)

        split_kernel.__globals__["split_f16"] = split_f16
        split_kernel.__globals__["tl"] = tl
        _SPLIT_KERNEL = triton.jit(split_kernel)
    return _SPLIT_KERNEL


_SPLIT_KERNEL = None


def test_fp16x3_split_keeps_22_bits(tk):
    """x = hi + lo / 2048 to 2^-22 relative across float16's normal range, and to 2^-36 absolute below it."""
    split_kernel = _split_kernel()
    g = torch.Generator().manual_seed(5)
    x = torch.cat([torch.exp(torch.empty(1000).uniform_(-35, 10.9, generator=g)), torch.tensor([0.0, 1.0, 65000.0])])
    x = torch.cat([x, -x[:24]])[:1024].to(DEVICE)
    hi, lo = (torch.empty(1024, dtype=torch.float16, device=DEVICE) for _ in range(2))
    split_kernel[(1,)](x, hi, lo, N=1024)
    err = (hi.double() + lo.double() / 2048 - x.double()).abs()
    normal = x.abs() >= 2.0**-14
    assert bool((err[normal] <= 2.0**-22 * x.double().abs()[normal]).all())
    assert bool((err[~normal] <= 2.0**-36).all())
    assert bool((hi.double() != x.double())[normal].any())  # the low half carries something


def test_newton_schulz_tall_side_runs_fp16x3_on_bounded_operands(tk):
    """Every float32 product of the tall side runs at "fp16x3"; step 0's A @ A, whose entries reach m (float16's
    range ends at 65504), does so only up to FP16X3_MAX_ROWS rows and stays at "tf32x3" above
    (triton_kernels/polar.py)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from orthokern import dispatch

    calls = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(func)
            if name.startswith("orthokern.triton_") and name.split(".")[1] in ("triton_sym_gram", "triton_sym_poly",
                                                                              "triton_apply"):
                calls.append((name.split(".")[1], args[-1]))
            return func(*args, **(kwargs or {}))

    G = _mat(2, 48, 24, seed=51)
    with Record():
        dispatch.triton_polar().polar_newton_schulz(G, mode="accurate", rcond=1e-3, side="tall")
    assert calls[1][0] == "triton_sym_poly"
    assert len(calls) > 6 and all(p == "fp16x3" for _, p in calls), calls
    polar = dispatch.triton_polar()
    assert polar.step0_poly_precision(polar.FP16X3_MAX_ROWS) == "fp16x3"
    assert polar.step0_poly_precision(polar.FP16X3_MAX_ROWS + 1) == "tf32x3"
    assert polar.FP16X3_MAX_ROWS * 2 < 65504  # room for the entries of A and the split's low half
