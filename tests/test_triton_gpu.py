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


@pytest.mark.parametrize("side", ["tall", "gram"])
def test_newton_schulz_both_sides_real_size(side):
    from orthokern.dispatch import triton_polar

    polar_newton_schulz = triton_polar().polar_newton_schulz

    G = random_matrix(8, 4608, 512, "decaying", device="cuda", seed=7)
    O = polar_newton_schulz(G, mode="accurate", rcond=1e-3, side=side)
    acc = accuracy(G[:2], O[:2])
    assert acc.E <= E_BOUND[torch.float32] and acc.norm2 <= 1 + NORM_SLACK[torch.float32], acc
