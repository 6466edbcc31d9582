"""The Triton kernels against float64 torch references, on small odd shapes.

Run on CPU with ``TRITON_INTERPRET=1 pytest tests/test_triton_kernels.py`` (the variable must be set before
Triton is imported, hence on the command line); on a GPU they run natively.
"""
from __future__ import annotations

import os

import pytest
import torch

from orthokern.testing import random_matrix

pytestmark = pytest.mark.triton_interpret

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
DEVICE = "cpu" if INTERPRET or not torch.cuda.is_available() else "cuda"
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
