"""Triton kernels and backend at real sizes, on a GPU (bfloat16 included: the interpreter has none)."""
from __future__ import annotations

import pytest
import torch

import orthokern
from orthokern.testing import E_BOUND, NORM_SLACK, accuracy, random_matrix

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module")
def tk():
    from orthokern import dispatch

    return dispatch._load_triton_kernels()


def _exact_bound(G, eps):
    Gd = G.double().abs()
    return 2 * G.shape[1] * eps * (Gd.mT @ Gd) + 1e-300


@pytest.mark.parametrize("B,m,n", [(256, 576, 64), (1024, 256, 32), (8, 4608, 512), (1, 4608, 512)])
def test_gram_real_sizes(tk, B, m, n):
    G = random_matrix(B, m, n, "gaussian", device="cuda", seed=n)
    ref = G.double().mT @ G.double()
    A32 = tk.sym_gram(G)
    assert bool(((A32.double() - ref).abs() <= _exact_bound(G, 2.0**-24)).all())
    A64 = tk.sym_gram(G, acc_f64=True)
    assert bool(((A64 - ref).abs() <= _exact_bound(G, 2.0**-53)).all())
    assert torch.equal(A64, A64.mT) and torch.equal(A32, A32.mT)
    # Split-K (chosen automatically for the small batches) reproduces itself bit for bit.
    assert torch.equal(A32, tk.sym_gram(G)) and torch.equal(A64, tk.sym_gram(G, acc_f64=True))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gram_half_real_size(tk, dtype):
    G = random_matrix(64, 1152, 128, "gaussian", dtype=dtype, device="cuda", seed=1)
    A = tk.sym_gram(G)
    assert bool(((A.double() - G.double().mT @ G.double()).abs() <= _exact_bound(G, 2.0**-24)).all())


def test_ns_step_4096_bf16_vs_torch(tk):
    a, b, c = 3.4445, -4.7750, 2.0315
    X = (random_matrix(1, 4096, 4096, "decaying", device="cuda", seed=2)).bfloat16()
    Y = tk.ns_step(X, a, b, c)
    Xd = X.double()
    A = Xd.mT @ Xd
    ref = a * Xd + Xd @ (b * A + c * A @ A)
    At = X.mT @ X  # the three-matmul torch step in bf16, as Muon runs it
    torch_step = a * X + X @ (b * At + c * At @ At)
    err, err_torch = (Y.double() - ref).norm(), (torch_step.double() - ref).norm()
    assert err <= 1.5 * err_torch, (err, err_torch)


@pytest.mark.parametrize("B,m,n", [(256, 576, 64), (1024, 256, 32)])
@pytest.mark.parametrize("mode", ["accurate", "fast"])
def test_polar_gram_eigh_real_sizes(B, m, n, mode):
    G = random_matrix(B, m, n, "decaying", device="cuda", seed=3)
    O = orthokern.polar(G, method="gram_eigh", mode=mode, backend="triton")
    acc = accuracy(G[:32], O[:32])  # the float64 SVD reference runs on the CPU: check a slice of the batch
    assert acc.E <= E_BOUND[torch.float32] and acc.norm2 <= 1 + NORM_SLACK[torch.float32], acc


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_polar_newton_schulz_accurate(dtype):
    G = random_matrix(4, 1152, 128, "decaying", dtype=dtype, device="cuda", seed=4)
    O = orthokern.polar(G, method="newton_schulz", backend="triton")
    acc = accuracy(G, O)
    assert acc.E <= E_BOUND[dtype] and acc.norm2 <= 1 + NORM_SLACK[dtype], acc


def test_polar_newton_schulz_fast_beats_muon():
    G = random_matrix(1, 2048, 2048, "decaying", dtype=torch.bfloat16, device="cuda", seed=5)
    O = orthokern.polar(G, method="newton_schulz", mode="fast", backend="triton")
    from torch.optim._muon import _zeropower_via_newtonschulz

    M = _zeropower_via_newtonschulz(G[0], (3.4445, -4.7750, 2.0315), 5, 1e-7)[None]
    assert accuracy(G, O).E <= accuracy(G, M).E


def test_ops_compile_with_inductor():
    G = random_matrix(8, 300, 48, "gaussian", device="cuda", seed=6)

    def f(G):
        A = torch.ops.orthokern.triton_sym_gram(G, None, False, torch.float32, 0, "tf32x3")
        return torch.ops.orthokern.triton_apply(G, A, None, 0.5, 1.0, torch.float32, "tf32x3")

    torch.testing.assert_close(torch.compile(f, fullgraph=True)(G), f(G))


def test_polar_compiles_fullgraph_on_the_gpu():
    # The side choice (with ns_schedule.switch_step's numpy simulation) is a trace-time constant: an accurate
    # tall-gram shape compiles with fullgraph=True and gives the eager result.
    G = random_matrix(4, 1152, 128, "decaying", device="cuda", seed=9)

    def f(G):
        return orthokern.polar(G, method="newton_schulz")

    torch.testing.assert_close(torch.compile(f, fullgraph=True)(G), f(G), rtol=0, atol=1e-5)


@pytest.mark.parametrize("side", ["tall", "gram", "tall_gram"])
def test_newton_schulz_every_side_real_size(side):
    from orthokern.dispatch import triton_polar

    tp = triton_polar()
    G = random_matrix(8, 4608, 512, "decaying", device="cuda", seed=7)
    O = tp.polar_newton_schulz(G, mode="accurate", rcond=1e-3, side=side, factor=tp.gram_side_factor)
    acc = accuracy(G[:2], O[:2])
    assert acc.E <= E_BOUND[torch.float32] and acc.norm2 <= 1 + NORM_SLACK[torch.float32], acc


@pytest.mark.parametrize("mode", ["accurate", "fast"])
def test_newton_schulz_padded_n_real_size(mode):
    # The fc layer's shape: n = 1000 is iterated padded to 1008 zero columns (triton_kernels/polar.py, PAD_MIN_N);
    # a wide input comes back contiguous, a tall one as the strided view of the padded result.
    W = random_matrix(1, 1000, 2048, "decaying", device="cuda", seed=8)
    O = orthokern.polar(W, method="newton_schulz", mode=mode, backend="triton")
    assert O.shape == W.shape and O.is_contiguous()
    acc = accuracy(W, O)
    if mode == "accurate":
        assert acc.E <= E_BOUND[torch.float32] and acc.norm2 <= 1 + NORM_SLACK[torch.float32], acc
    T = orthokern.polar(W.mT.contiguous(), method="newton_schulz", mode=mode, backend="triton")
    assert (T - O.mT).abs().max() <= 1e-6


@pytest.mark.parametrize("mode", ["accurate", "fast"])
def test_merged_buckets_real_size(mode):
    # The ResNet-50 step's n = 128 buckets and its fc layer beside the 2048 x 1024 layer run as padded calls
    # (dispatch.merge_buckets): each result is its matrix's own polar factor, dense, in its orientation.
    from orthokern.optim import polar_by_shape

    mats = ([random_matrix(1, 512, 128, "decaying", device="cuda", seed=s)[0] for s in range(3)]
            + [random_matrix(1, 128, 1152, "decaying", device="cuda", seed=10 + s)[0] for s in range(2)]
            + [random_matrix(1, 256, 128, "decaying", device="cuda", seed=20)[0],
               random_matrix(1, 2048, 1024, "decaying", device="cuda", seed=21)[0],
               random_matrix(1, 1000, 2048, "decaying", device="cuda", seed=22)[0]])
    out = polar_by_shape(mats, mode=mode)
    for G, O in zip(mats, out):
        assert O.shape == G.shape and O.is_contiguous()
        acc = accuracy(G[None], O[None])
        if mode == "accurate":
            assert acc.E <= E_BOUND[torch.float32] and acc.norm2 <= 1 + NORM_SLACK[torch.float32], acc
        else:  # bfloat16 steps: as accurate as the matrix's own call, not bit for bit
            assert acc.E <= 2 * accuracy(G[None], orthokern.polar(G, mode=mode)[None]).E + 1e-3, acc

# ---------------------------------------------------------------- device guard (issue 14, item 6)
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_ops_on_a_non_current_device(tk):
    """A gradient on cuda:1 while cuda:0 is current: every launch must go to cuda:1 (Triton launches on the
    current device), with the same result as on cuda:0."""
    assert torch.cuda.current_device() == 0
    G0 = random_matrix(4, 1152, 128, "decaying", device="cuda:0", seed=8)
    G1 = G0.to("cuda:1")
    scale = torch.full((4,), 0.5, device="cuda:1")
    A1 = tk.sym_gram(G1, scale=scale, acc_f64=True)
    assert A1.device == G1.device and torch.cuda.current_device() == 0
    torch.testing.assert_close(A1.cpu(), tk.sym_gram(G0, scale=scale.to("cuda:0"), acc_f64=True).cpu(), rtol=0, atol=0)
    C1 = tk.sym_poly(A1.float(), 1.5, -0.5)
    O1 = tk.apply(G1, C1, alpha=0.25)
    ref = 0.25 * G1.double() + G1.double() @ C1.double()
    assert (O1.double() - ref).abs().max() <= 1e-4 * ref.abs().max()
    for method in ("gram_eigh", "newton_schulz"):
        O = orthokern.polar(G1, method=method, backend="triton")
        acc = accuracy(G1, O)
        assert O.device == G1.device and acc.E <= E_BOUND[torch.float32], (method, acc)
    assert torch.cuda.current_device() == 0


# ---------------------------------------------------------------- precision on the tensor cores (issue 14, item 2)
def test_tf32x3_keeps_float32_accuracy_tf32_does_not(tk):
    G = random_matrix(64, 1152, 128, "gaussian", device="cuda", seed=9)
    ref = G.double().mT @ G.double()
    # relative Frobenius errors: float32 rounding gives ~1e-7, TF32's 10-bit mantissa ~1e-3 (reading an operand as
    # TF32 drops 13 bits: a bias of ~2^-11 per operand on the dominant diagonal)
    rel = {p: ((tk.sym_gram(G, precision=p).double() - ref).norm() / ref.norm()).item()
           for p in ("ieee", "tf32x3", "tf32")}
    assert rel["ieee"] <= 1e-6 and rel["tf32x3"] <= 1e-6 and rel["tf32"] >= 1e-5, rel
    assert bool(((tk.sym_gram(G, precision="tf32x3").double() - ref).abs() <= _exact_bound(G, 2.0**-24)).all())
    A = (ref / ref.diagonal(dim1=-2, dim2=-1).amax(-1)[:, None, None]).float().contiguous()
    Ad = A.double()
    for p in ("ieee", "tf32x3"):
        C = tk.sym_poly(A, 0.0, 1.0, precision=p)
        assert bool(((C.double() - Ad @ Ad).abs() <= 4 * 128 * 2.0**-24 * (Ad.abs() @ Ad.abs())).all()), p
        O = tk.apply(G, A, precision=p)
        Gd = G.double()
        assert bool(((O.double() - Gd @ Ad).abs() <= 4 * 128 * 2.0**-24 * (Gd.abs() @ Ad.abs())).all()), p


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_paths_at_real_size(tk, dtype):
    """The paths the interpreter cannot check in bfloat16: 16-bit dots, fp64 accumulation of 16-bit loads, an fp64
    accumulator stored as 16 bits."""
    G = random_matrix(8, 4608, 512, "decaying", dtype=dtype, device="cuda", seed=10)
    Gd = G.double()
    ref = Gd.mT @ Gd
    assert bool(((tk.sym_gram(G).double() - ref).abs() <= _exact_bound(G, 2.0**-24)).all())
    assert bool(((tk.sym_gram(G, acc_f64=True) - ref).abs() <= _exact_bound(G, 2.0**-53)).all())
    M = torch.randn(8, 512, 512, dtype=torch.float64, device="cuda") / 512**0.5
    O = tk.apply(G, M)
    assert O.dtype == dtype
    assert ((O.double() - Gd @ M).abs() <= 2.0**-8 * (Gd @ M).abs() + 1e-6 * (Gd.abs() @ M.abs())).all()


# ---------------------------------------------------------------- autotuning cached on disk (issue 14, item 5)
def test_autotune_decisions_are_cached_across_processes(tmp_path):
    import os
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from orthokern.dispatch import _load_triton_kernels\n"
        "tk = _load_triton_kernels()\n"
        "G = torch.randn(2, 2048, 512, device='cuda')\n"
        "tk.apply(G, torch.randn(2, 512, 512, device='cuda'), alpha=0.5)  # n > 256: two candidates\n"
        "torch.cuda.synchronize()\n"
    )
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path), TRITON_PRINT_AUTOTUNING="1",
               PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
            for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr[-3000:]
    assert "Triton autotuning for function _apply_kernel" in runs[0].stdout
    assert "Triton autotuning for function _apply_kernel" not in runs[1].stdout  # the second process read it
    assert list(tmp_path.rglob("_apply_kernel.autotune.json"))
