"""The accuracy contract: every method x CPU backend x dtype x orientation x spectrum, against float64 SVD."""
import pytest
import torch

import orthokern
from orthokern import _env, dispatch
from orthokern.testing import E_BOUND, NORM_SLACK, accuracy, assert_contract, random_matrix

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
# (batch, m, n): tall, wide, square, and a batched odd size.
SHAPES = [((), 37, 11), ((), 9, 40), ((), 24, 24), ((3,), 50, 17), ((2, 2), 13, 30)]
SPECTRA = ["well", "decaying", "decay2", "rank_deficient", "gaussian"]
METHODS = [m for m in orthokern.METHODS]


def cpu_backends(method):
    """Backends of ``method`` that can run CPU tensors (Triton-on-CPU is tested in test_triton_*)."""
    if method == "auto":
        return [None]
    probe = torch.empty(1, 4, 2)
    return [i.backend for i in dispatch.implementations(method)
            if i.backend != "triton" and i.why_not(probe, _env.CURRENT) is None]


def cases():
    for method in METHODS:
        for backend in cpu_backends(method):
            yield pytest.param(method, backend, id=f"{method}-{backend or 'default'}")


@pytest.mark.parametrize("method,backend", list(cases()))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("spectrum", SPECTRA)
def test_accurate_mode_meets_contract(method, backend, dtype, spectrum):
    for batch, m, n in SHAPES:
        G = random_matrix(batch, m, n, spectrum, dtype=dtype, scale=3.7)
        try:
            O = orthokern.polar(G, method=method, backend=backend)
        except orthokern.BackendUnavailable:  # e.g. a shape limit of a compiled kernel
            continue
        # The contract at the rcond the method ran with (the default, or its floor where that is higher).
        tall = G.mT if m < n else G
        rcond = dispatch.method_and_rcond(tall.reshape(-1, *tall.shape[-2:]), method, "accurate", 1e-3)[1]
        assert_contract(G, O, rcond, what=f"{method}/{backend} {batch}x{m}x{n}")


@pytest.mark.parametrize("method", ["gram_eigh", "newton_schulz", "cholqr2", "auto"])
def test_fast_mode_at_least_as_accurate_as_muon(method):
    """docs/design.md, "Fast mode": at least as accurate as Muon's 5-step quintic on the same input."""
    from orthokern.ns_schedule import MUON_QUINTIC

    G = random_matrix(4, 96, 48, "decaying", dtype=torch.float32, seed=5)
    X = G / G.norm(dim=(-2, -1), keepdim=True)
    a, b, c = MUON_QUINTIC
    for _ in range(5):  # Muon's zeropower_via_newtonschulz5, in float32 on the CPU, on the wide orientation
        Xw = X.mT
        A = Xw @ Xw.mT
        Xw = a * Xw + (b * A + c * A @ A) @ Xw
        X = Xw.mT
    muon = accuracy(G, X)
    ours = accuracy(G, orthokern.polar(G, method=method, mode="fast"))
    assert ours.E <= muon.E, (ours.E, muon.E)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("spectrum", SPECTRA)
def test_fast_gram_eigh_on_cpu_float32(dtype, spectrum):
    """Fast mode's float32 Gram and eigensolver on a CPU (reference/gram_eigh.py): E of a few 1e-3 and ||O||_2 within
    1 % of 1, except where a singular value sits within the float32 Gram matrix's error of rcond (bfloat16 rounding of
    a rank-deficient matrix: E up to 6e-2, ||O||_2 up to 1.08 over 20 seeds); always better than Muon's five steps."""
    from orthokern.bench.peers import PEERS

    bound_E, bound_norm = (0.1, 1.1) if (dtype, spectrum) == (torch.bfloat16, "rank_deficient") else (5e-3, 1.01)
    for seed in range(3):
        for batch, m, n in SHAPES:
            G = random_matrix(batch, m, n, spectrum, dtype=dtype, scale=3.7, seed=seed)
            acc = accuracy(G, orthokern.polar(G, method="gram_eigh", mode="fast"))
            assert acc.finite and acc.E <= bound_E and acc.norm2 <= bound_norm, (spectrum, seed, batch, m, n, acc)
            tall = (G.mT if m < n else G).reshape(-1, max(m, n), min(m, n))
            assert acc.E <= accuracy(tall, PEERS["muon_ns5_batched"](tall)).E, (spectrum, seed, batch, m, n)


def test_fast_gram_eigh_on_cpu_sends_unsafe_matrices_to_the_float64_path():
    # NaN, a float32 Gram matrix that would overflow or underflow, a zero matrix: the float64 path's answers
    G = random_matrix(5, 40, 24, "decaying", dtype=torch.float32, seed=3)
    G[1, 3, 4] = float("nan")
    G[2] *= 1e30
    G[3] *= 1e-25
    G[4] = 0
    O = orthokern.polar(G, method="gram_eigh", mode="fast")
    assert torch.isnan(O[1]).all() and torch.equal(O[4], torch.zeros_like(O[4]))
    for i in (2, 3):
        assert accuracy(G[i], O[i]).E <= E_BOUND[torch.float32], i
    assert accuracy(G[0], O[0]).E <= 1e-2


@pytest.mark.parametrize("method", METHODS)
def test_rank_deficient_dense_layer_shape(method):
    """The rank-deficient case that real dense-layer gradients have: rank = batch - 1 << min(m, n)."""
    U = torch.randn(4, 120, 7, dtype=torch.float64)
    V = torch.randn(4, 7, 64, dtype=torch.float64)
    G = (U @ V).float()  # rank 7
    O = orthokern.polar(G, method=method)
    acc = accuracy(G, O)
    assert acc.finite and acc.E <= E_BOUND[torch.float32] and acc.norm2 <= 1 + NORM_SLACK[torch.float32]
    # Directions outside the row space of G must be dropped, not filled with arbitrary orthonormal vectors.
    _, _, Vh = torch.linalg.svd(G.double())
    null = Vh[:, 7:].mT
    assert (O.double() @ null).abs().max() < 1e-3


@pytest.mark.parametrize("method", METHODS)
def test_scale_invariance_and_extreme_magnitudes(method):
    G = random_matrix(2, 30, 12, "decaying", dtype=torch.float32, seed=3)
    ref = orthokern.polar(G, method=method)
    for scale in (1e-30, 1e30):
        O = orthokern.polar(G * scale, method=method)
        assert torch.isfinite(O).all()
        assert (O - ref).abs().max() < 1e-4


def test_auto_matches_svd_on_real_gradient_shapes():
    """A conv gradient (out, in*k*k) and a dense one with rank = batch - 1, as Orthogonal-SGDM sees them."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 16, 3)
    fc = torch.nn.Linear(16 * 6 * 6, 10)
    x = torch.randn(5, 8, 8, 8)
    y = torch.randint(0, 10, (5,))
    loss = torch.nn.functional.cross_entropy(fc(conv(x).relu().flatten(1)), y)
    loss.backward()
    for p in (conv.weight, fc.weight):
        G = p.grad.reshape(p.shape[0], -1)
        acc = accuracy(G, orthokern.polar(G))
        assert acc.finite and acc.E <= 1e-3 and acc.norm2 <= 1 + 1e-4
