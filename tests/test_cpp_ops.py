"""The compiled ops of orthokern._C (torch.ops.orthokern.*): CPU always, CUDA on a GPU (marked ``cuda``).

Skipped (not failed) when the extension is not built; CI builds it (`pip install --no-build-isolation .`).
"""
from __future__ import annotations

import math
import zlib

import pytest
import torch

import orthokern
from orthokern import _env
from orthokern.reference.gram_eigh import polar_gram_eigh
from orthokern.testing import E_BOUND, NORM_SLACK, accuracy, random_matrix

pytestmark = pytest.mark.skipif(_env.CURRENT.extension is not None, reason="orthokern._C is not built")

if _env.CURRENT.extension is None:
    import orthokern.compiled  # noqa: F401  (fake kernels)

RCOND = 1e-3
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
POLAR_DTYPES = [torch.float64, torch.float32, torch.bfloat16]
KINDS = ["well", "decaying", "decay2", "rank_deficient"]


def gram_op(G, rcond=RCOND, accurate=True):
    return torch.ops.orthokern.gram_eigh_polar(G, rcond, accurate)


def cholqr2_op(G, rcond=RCOND):
    return torch.ops.orthokern.cholqr2_polar(G, rcond)


def random_symmetric(batch, n, dtype, seed, device="cpu"):
    """Q diag(lam) Q^T with eigenvalues of both signs spread over three decades, built in float64."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(batch, n, n, dtype=torch.float64, generator=g))
    lam = torch.logspace(0, -3, n, dtype=torch.float64) * torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    A = (Q * lam) @ Q.mT
    return (0.5 * (A + A.mT)).to(dtype=dtype, device=device)


# ---------------------------------------------------------------------------------------------- eigh_small
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n", [1, 2, 3, 17, 32, 64])
def test_eigh_small_matches_linalg_eigh(device, dtype, n):
    A = random_symmetric(3, n, dtype, seed=n, device=device)
    w, W = torch.ops.orthokern.eigh_small(A)
    assert w.shape == (3, n) and W.shape == (3, n, n) and w.dtype == dtype and W.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    Ad = A.double().cpu()
    w_ref = torch.linalg.eigvalsh(Ad)
    wd, Wd = w.double().cpu(), W.double().cpu()
    norm = torch.linalg.matrix_norm(Ad, 2).amax()
    assert (wd - w_ref).abs().max() <= tol * norm * n
    residual = torch.linalg.matrix_norm(Ad @ Wd - Wd * wd[:, None, :]).amax()
    assert residual <= tol * norm * n
    orth = torch.linalg.matrix_norm(Wd.mT @ Wd - torch.eye(n, dtype=torch.float64)).amax()
    assert orth <= tol * n
    assert bool((wd[:, 1:] >= wd[:, :-1]).all()), "eigenvalues must be ascending, like torch.linalg.eigh"


@pytest.mark.parametrize("device", DEVICES)
def test_eigh_small_reads_lower_triangle_and_any_layout(device):
    A = random_symmetric(2, 9, torch.float64, seed=1, device=device)
    junk = torch.triu(torch.randn(2, 9, 9, dtype=torch.float64, device=device), diagonal=1)
    w, _ = torch.ops.orthokern.eigh_small((A.tril() + junk).mT.contiguous().mT)  # non-contiguous view
    w_ref = torch.linalg.eigvalsh(A.tril() + junk)  # LAPACK reads the lower triangle as well
    torch.testing.assert_close(w, w_ref, rtol=0, atol=1e-12)


def test_eigh_small_batch_dims_and_empty():
    A = random_symmetric(6, 5, torch.float64, seed=2).reshape(2, 3, 5, 5)
    w, W = torch.ops.orthokern.eigh_small(A)
    assert w.shape == (2, 3, 5) and W.shape == (2, 3, 5, 5)
    torch.testing.assert_close(w, torch.linalg.eigvalsh(A), rtol=0, atol=1e-12)
    w0, W0 = torch.ops.orthokern.eigh_small(torch.empty(0, 4, 4))
    assert w0.shape == (0, 4) and W0.shape == (0, 4, 4)


# ------------------------------------------------------------------------------------- polar accuracy
POLAR_SHAPES = [(3, 37, 29), (2, 64, 64), (2, 130, 1), (1, 200, 64)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", POLAR_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", POLAR_DTYPES, ids=str)
@pytest.mark.parametrize("op", ["gram_eigh_polar", "cholqr2_polar"])
def test_polar_ops_meet_accuracy_contract(op, dtype, kind, shape, device):
    B, m, n = shape
    G = random_matrix(B, m, n, kind, dtype=dtype, seed=zlib.crc32(repr((op, kind, shape)).encode()), device=device)
    O = gram_op(G) if op == "gram_eigh_polar" else cholqr2_op(G)
    assert O.shape == G.shape and O.dtype == G.dtype and O.device == G.device
    acc = accuracy(G, O, RCOND)
    assert acc.finite
    assert acc.E <= E_BOUND[dtype], acc
    assert acc.norm2 <= 1 + NORM_SLACK[dtype], acc


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("accurate", [True, False])
@pytest.mark.parametrize("scale", [1e30, 1e-30])
def test_gram_eigh_polar_extreme_magnitudes(scale, accurate, device):
    # The float32 Gram matrix of such G overflows / underflows: the kernel must rescale, not return junk.
    G = random_matrix(2, 40, 24, "well", dtype=torch.float32, seed=3, device=device)
    O1 = gram_op(G, accurate=accurate)
    O2 = gram_op(G * scale, accurate=accurate)
    assert bool(torch.isfinite(O2).all())
    torch.testing.assert_close(O2, O1, rtol=0, atol=2e-4 if not accurate else 1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_cholqr2_polar_extreme_magnitudes(device):
    G = random_matrix(2, 40, 24, "decaying", dtype=torch.float64, seed=4, device=device)
    for scale in (1e200, 1e-200):
        torch.testing.assert_close(cholqr2_op(G * scale), cholqr2_op(G), rtol=0, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ["gram_eigh_polar", "cholqr2_polar"])
def test_polar_ops_any_strides(op, device):
    G = random_matrix(3, 33, 50, "decaying", dtype=torch.float64, seed=5, device=device).mT  # (3, 50, 33) view
    fn = gram_op if op == "gram_eigh_polar" else cholqr2_op
    torch.testing.assert_close(fn(G), fn(G.contiguous()), rtol=0, atol=0)


# ------------------------------------------------------------------------------- zeros, NaN, bad input
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", POLAR_DTYPES + [torch.float16], ids=str)
@pytest.mark.parametrize("op", ["gram_eigh_polar", "cholqr2_polar"])
def test_zero_matrix_gives_zeros(op, dtype, device):
    fn = gram_op if op == "gram_eigh_polar" else cholqr2_op
    G = random_matrix(3, 20, 7, "well", dtype=dtype, seed=6, device=device)
    G[1] = 0
    O = fn(G)
    assert bool((O[1] == 0).all())
    assert accuracy(G[[0, 2]], O[[0, 2]]).E <= E_BOUND[dtype]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("op", ["gram_eigh_polar", "cholqr2_polar"])
def test_non_finite_matrix_gives_nan(op, dtype, bad, device):
    fn = gram_op if op == "gram_eigh_polar" else cholqr2_op
    G = random_matrix(3, 20, 7, "well", dtype=dtype, seed=8, device=device)
    G[1, 4, 2] = bad
    O = fn(G)
    assert bool(torch.isnan(O[1]).all()), "a non-finite matrix must give an all-NaN result"
    assert bool(torch.isfinite(O[[0, 2]]).all()), "other matrices of the batch are unaffected"
    assert accuracy(G[[0, 2]], O[[0, 2]]).E <= E_BOUND[dtype]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("n", [2, 6, 33])
def test_eigh_small_non_finite_matrix_gives_nan(bad, n, device):
    """Jacobi's stopping rule never rotates a NaN pair: without an explicit check the result would look finite."""
    A = random_symmetric(3, n, torch.float64, seed=9, device=device)
    A[1, n - 1, 0] = bad
    w, W = torch.ops.orthokern.eigh_small(A)
    assert bool(torch.isnan(w[1]).all()) and bool(torch.isnan(W[1]).all())
    assert bool(torch.isfinite(w[[0, 2]]).all()) and bool(torch.isfinite(W[[0, 2]]).all())


@pytest.mark.parametrize("device", DEVICES)
def test_bad_input_raises_with_message(device):
    G = torch.randn(2, 8, 4, device=device)
    with pytest.raises(RuntimeError, match=r"G must be a batch of matrices \(B, m, n\)"):
        gram_op(G[0])
    with pytest.raises(RuntimeError, match="G must be float64, float32, bfloat16 or float16"):
        cholqr2_op(G.to(torch.int32))
    with pytest.raises(RuntimeError, match=r"rcond must be in \[0, 1\)"):
        gram_op(G, rcond=1.5)
    with pytest.raises(RuntimeError, match=r"G must be tall \(m >= n\)"):
        cholqr2_op(G.mT)
    with pytest.raises(RuntimeError, match=r"A must be a batch of square matrices"):
        torch.ops.orthokern.eigh_small(G)
    with pytest.raises(RuntimeError, match="A must be float32 or float64"):
        torch.ops.orthokern.eigh_small(torch.zeros(2, 3, 3, dtype=torch.float16, device=device))


@pytest.mark.cuda
def test_cuda_size_limits_raise():
    with pytest.raises(RuntimeError, match="n = 65 > 64"):
        gram_op(torch.randn(1, 80, 65, device="cuda"))
    with pytest.raises(RuntimeError, match="n = 65 > 64"):
        torch.ops.orthokern.eigh_small(torch.randn(1, 65, 65, device="cuda"))
    with pytest.raises(RuntimeError, match="n = 257 > 256"):
        cholqr2_op(torch.randn(1, 300, 257, device="cuda"))


# ----------------------------------------------------------------------------------- CUDA vs CPU twin
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", POLAR_DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(5, 300, 64), (64, 256, 32), (3, 41, 7), (2, 600, 200)], ids=str)
def test_cuda_polar_ops_match_cpu_twin_and_svd(dtype, shape):
    B, m, n = shape
    G = random_matrix(B, m, n, "decaying", dtype=dtype, seed=11)
    ops = [("cholqr2_polar", cholqr2_op)]
    if n <= 64:
        ops.append(("gram_eigh_polar", gram_op))
    for name, fn in ops:
        O_cpu = fn(G)
        O_gpu = fn(G.cuda())
        assert accuracy(G, O_gpu).E <= E_BOUND[dtype], name
        tol = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 2e-2}[dtype]
        torch.testing.assert_close(O_gpu.cpu().double(), O_cpu.double(), rtol=0, atol=tol, msg=name)
        # Against the float64 polar factor of the same values (well-conditioned spectrum: unique).
        U, _, Vh = torch.linalg.svd(G.double(), full_matrices=False)
        dist = (O_gpu.cpu().double() - U @ Vh).abs().max().item()
        assert dist <= 10 * tol * math.sqrt(n), (name, dist)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_eigh_small_matches_cpu_twin(dtype):
    A = random_symmetric(50, 64, dtype, seed=12)
    w_cpu, _ = torch.ops.orthokern.eigh_small(A)
    w_gpu, W_gpu = torch.ops.orthokern.eigh_small(A.cuda())
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(w_gpu.cpu(), w_cpu, rtol=0, atol=tol * 64)
    Ad, Wd, wd = A.double(), W_gpu.cpu().double(), w_gpu.cpu().double()
    assert torch.linalg.matrix_norm(Ad @ Wd - Wd * wd[:, None, :]).amax() <= tol * 64


@pytest.mark.cuda
def test_cuda_ops_run_on_current_stream_and_other_device_index():
    G = random_matrix(4, 64, 16, "well", dtype=torch.float32, seed=13, device="cuda")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        O = gram_op(G)
    s.synchronize()
    assert accuracy(G, O).E <= E_BOUND[torch.float32]


# -------------------------------------------------------------------------------- opcheck and compile
def _samples(device="cpu"):
    out = []
    for dtype in (torch.float32, torch.float64):
        G = random_matrix(2, 12, 5, "decaying", dtype=dtype, seed=14, device=device)
        A = random_symmetric(2, 5, dtype, seed=15, device=device)
        out.append((dtype, G, A))
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_all_ops(device):
    for _, G, A in _samples(device):
        torch.library.opcheck(torch.ops.orthokern.eigh_small.default, (A,))
        torch.library.opcheck(torch.ops.orthokern.gram_eigh_polar.default, (G, RCOND, True))
        torch.library.opcheck(torch.ops.orthokern.gram_eigh_polar.default, (G, RCOND, False))
        torch.library.opcheck(torch.ops.orthokern.cholqr2_polar.default, (G, RCOND))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    def f(G, A):
        w, W = torch.ops.orthokern.eigh_small(A)
        return gram_op(G) * 2, cholqr2_op(G) + 1, w.sum() + W.sum()

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, dynamic=False)
    _, G, A = _samples(device)[0]
    for got, want in zip(compiled(G, A), f(G, A)):
        torch.testing.assert_close(got, want)


# ------------------------------------------------------------------------------------ backend wiring
@pytest.mark.parametrize("method", ["gram_eigh", "cholqr2"])
def test_polar_backend_cpp_agrees_with_torch_reference(method):
    G = random_matrix(3, 45, 20, "decaying", dtype=torch.float32, seed=16)
    O_cpp = orthokern.polar(G.mT, method=method, backend="cpp")  # wide: polar transposes
    O_ref = orthokern.polar(G.mT, method=method, backend="torch")
    assert accuracy(G.mT, O_cpp).E <= E_BOUND[torch.float32]
    torch.testing.assert_close(O_cpp, O_ref, rtol=0, atol=1e-4)


def test_backend_selection_and_reasons():
    from orthokern import dispatch

    small = torch.randn(2, 80, 64)
    big = torch.randn(2, 80, 65)
    assert dispatch.resolve("gram_eigh", None, small).backend == "cpp"
    assert dispatch.resolve("gram_eigh", None, big).backend == "torch"
    # Above 64 the reference is preferred (measured faster), but the compiled op still serves an explicit request.
    torch.testing.assert_close(orthokern.polar(big, method="gram_eigh", backend="cpp"),
                               orthokern.polar(big, method="gram_eigh", backend="torch"), rtol=0, atol=1e-4)
    if not torch.cuda.is_available():
        with pytest.raises(orthokern.BackendUnavailable, match="backend='cuda'"):
            orthokern.polar(small, method="cholqr2", backend="cuda")


@pytest.mark.parametrize("device", DEVICES)
def test_cholqr2_polar_float64_contract_at_large_m_n(device):
    # E ~ shift / 2 on the significant directions: the second pass's shift must be sized by ||Q1^T Q1||_2 ~ 1,
    # not by its trace ~ n (that gave E = 1.3e-8 here, over the float64 bound).
    G = random_matrix(2, 1152, 128, "decaying", dtype=torch.float64, seed=17, device=device)
    assert accuracy(G, cholqr2_op(G)).E <= E_BOUND[torch.float64]
