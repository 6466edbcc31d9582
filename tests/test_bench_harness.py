"""Pieces of the benchmark harness: cached accuracy, peers, floor, suites, real gradients."""
from __future__ import annotations

import pytest
import torch

import orthokern
from orthokern import testing
from orthokern.bench import floor, peers, suites
from orthokern.testing import Reference


def _plain_measures(G, O, rcond=1e-3):
    """The contract's measures written out directly, one matrix at a time, to check Reference against."""
    out = {"E": 0.0, "norm2": 0.0, "orth": 0.0, "dist": 0.0}
    for g, o in zip(G.double(), O.double()):
        if g.shape[0] < g.shape[1]:
            g, o = g.mT, o.mT
        U, s, Vh = torch.linalg.svd(g, full_matrices=False)
        k = int((s >= rcond * s[0]).sum())
        Uk, Vk, Ik = U[:, :k], Vh[:k].mT, torch.eye(k, dtype=torch.float64)
        out["E"] = max(out["E"], float((Uk.mT @ o @ Vk - Ik).norm()) / k**0.5)
        out["norm2"] = max(out["norm2"], float(torch.linalg.matrix_norm(o, 2)))
        out["orth"] = max(out["orth"], float((Vk.mT @ o.mT @ o @ Vk - Ik).norm()) / k**0.5)
        out["dist"] = max(out["dist"], float((o @ Vk - Uk).norm()) / k**0.5)
    return out


@pytest.mark.parametrize("shape, kind", [((3, 20, 6), "decaying"), ((2, 7, 15), "rank_deficient"),
                                         ((5, 12, 12), "gaussian")])
def test_reference_measure_matches_plain_formulas(shape, kind):
    G = testing.random_matrix(shape[0], shape[1], shape[2], kind, dtype=torch.float32, seed=1)
    O = orthokern.polar(G, method="newton_schulz", mode="fast")  # inexact on purpose: nonzero measures
    a = _plain_measures(G, O)
    b = Reference(G, 1e-3).measure(O)
    for f in ("E", "norm2", "orth", "dist"):
        assert getattr(b, f) == pytest.approx(a[f], rel=1e-9, abs=1e-13), f
    assert a["E"] > 1e-4
    assert testing.accuracy(G, O) == b


def test_reference_subset_checks_spread_matrices():
    G = testing.random_matrix(10, 8, 4, "well", seed=2)
    O = orthokern.polar(G, method="svd")
    O[9] = 2 * O[9]  # the last matrix is wrong: the subset must include it
    ref = Reference(G, 1e-3, max_matrices=3)
    assert len(ref.index) == 3 and {0, 9} <= set(ref.index.tolist())
    assert ref.measure(O).E > 0.5


def test_muon_peer_is_torchs_function_and_matches_batched():
    assert peers._torch_muon_fn() is not None  # torch 2.13 ships torch.optim.Muon
    G = testing.random_matrix(3, 40, 16, "decaying", seed=3)
    a, b = peers.muon_ns5(G), peers.muon_ns5_batched(G)
    assert a.shape == G.shape and a.dtype == G.dtype
    assert (a - b).abs().max() < 3e-2  # same bfloat16 arithmetic, different matmul grouping
    # Muon's 5 steps leave singular values in about [0.5, 1.3]: measured, not exact.
    acc = testing.accuracy(G, a)
    assert 0.05 < acc.E < 0.6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(peers.PEERS))
def test_peers_keep_input_and_shape(name, dtype):
    G = testing.random_matrix(2, 24, 10, "decaying", dtype=dtype, seed=4)
    before = G.clone()
    O = peers.PEERS[name](G)
    assert torch.equal(G, before), f"{name} modified its input"
    assert O.shape == G.shape and O.dtype == dtype and bool(torch.isfinite(O).all())
    Gw = G.mT.contiguous()  # wide input
    assert peers.PEERS[name](Gw).shape == Gw.shape


def test_svd_of_the_tall_orientation_peer():
    G = testing.random_matrix(2, 12, 30, "decaying", seed=6)  # wide
    O = peers.torch_svd_tall(G)
    assert O.shape == G.shape and testing.accuracy(G, O).E < 1e-5
    Gt = G.mT.contiguous()  # tall: the same as torch_svd
    assert torch.equal(peers.torch_svd_tall(Gt), peers.torch_svd(Gt))


def test_polar_express_and_svd_peers_are_accurate_in_float32():
    G = testing.random_matrix(2, 48, 16, "decaying", seed=5)
    assert testing.accuracy(G, peers.torch_svd(G)).E < 1e-5
    assert testing.accuracy(G, peers.polar_express(G)).E < 1e-3


def test_floor_is_max_of_memory_and_compute():
    case = suites.Case("tall", 4, 1000, 100, torch.float32, "decaying")
    rates = floor.DeviceRates(1e12, {"float32": 1e13, "bfloat16": 1e14, "float64": 1e12})
    mem = 2 * 4 * 1000 * 100 * 4 / 1e12
    for method, mode in [("svd", "accurate"), ("gram_eigh", "accurate"), ("newton_schulz", "fast"),
                         ("newton_schulz", "accurate"), ("cholqr2", "accurate"), ("auto", "fast"),
                         ("muon_ns5", "-"), ("polar_express", "-")]:
        terms = floor.method_flops(method, mode, case)
        assert terms and all(f > 0 for f, _ in terms)
        compute = sum(f / rates.matmul_flops_per_s[dt] for f, dt in terms)
        assert floor.floor_seconds(rates, method, mode, case) == pytest.approx(max(mem, compute))
    # Accurate Newton–Schulz runs more float32 steps than the fast mode's bfloat16 ones.
    assert floor.floor_seconds(rates, "newton_schulz", "accurate", case) > \
        floor.floor_seconds(rates, "newton_schulz", "fast", case)
    # The Gram matrix of gram_eigh is float64 in either mode; accurate mode on a CPU picks the same method.
    assert floor.method_flops("gram_eigh", "fast", case) == floor.method_flops("gram_eigh", "accurate", case)
    assert floor.method_flops("auto", "accurate", case, "cpu") == floor.method_flops("gram_eigh", "accurate", case)
    assert floor.measure_rates("meta") is None
    with pytest.raises(ValueError, match="method"):
        floor.method_flops("qr", "accurate", case)


def test_floor_rates_are_measured_on_the_cpu():
    rates = floor.measure_rates("cpu", sizes=(8, {"float32": 128, "bfloat16": 32, "float64": 128}))
    assert rates.copy_bytes_per_s > 0
    assert set(rates.matmul_flops_per_s) == {"float32", "bfloat16", "float64"}
    assert all(r > 0 for r in rates.matmul_flops_per_s.values())


def test_make_cases_quick_and_full():
    quick = suites.make_cases(suites.expand_suites(["all"]), quick=True)
    full = suites.make_cases(suites.expand_suites(["all"]), quick=False)
    assert {c.suite for c in quick} == set(suites.POLAR_SUITES)
    assert all(c.batch * c.m * c.n <= 1 << 19 for c in quick)
    shapes = {(c.batch, c.m, c.n) for c in full}
    assert {(256, 576, 64), (1024, 256, 32), (64, 1152, 128), (8, 4608, 512), (1, 4096, 11008)} <= shapes
    assert {c.dtype for c in full if c.suite == "square"} == {torch.float32, torch.bfloat16}
    assert all(c.full is not None for c in quick if c.suite == "tall")
    assert suites.parse_shapes("2x64x16, 32x48") == [(2, 64, 16), (1, 32, 48)]


def test_real_spectrum_only_for_resnet_suites_at_layer_shapes():
    cases = suites.make_cases(["resnet18", "tall"], quick=True, spectra=["decaying", "real"])
    real = [c for c in cases if c.spectrum == "real"]
    assert real and all(c.suite == "resnet18" for c in real)
    assert {(c.m, c.n) for c in real} <= set(suites.RESNET18_SHAPES)
    assert {(c.batch, c.m, c.n) for c in real} == {(1, 1000, 512)}


def test_real_gradients_are_resnet_gradients():
    from orthokern.bench import gradients, runner

    case = suites.Case("resnet18", 1, 1000, 512, torch.float32, "real")
    G = runner.make_input(case, torch.device("cpu"))
    assert G.shape == (1, 1000, 512) and bool(torch.isfinite(G).all())
    # The fc gradient of a batch of 8 has rank <= 8: the rank-deficient case as training produces it.
    assert int(torch.linalg.matrix_rank(G[0].double(), rtol=1e-5)) <= 8  # float32 rounding aside
    grads = gradients.real_gradients("resnet18", "cpu", 8, 64)
    assert {s: g.shape[0] for s, g in grads.items()} == suites.RESNET18_SHAPES
    with pytest.raises(ValueError, match="layers of gradient shape"):
        gradients.real_batch("resnet18", 1000, 512, 2, torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("mode", ["accurate", "fast"])
def test_ran_on_names_the_implementation_of_the_entrys_mode(mode):
    # The "runs" column: the backend dispatch resolves in the entry's own mode (fast mode on a CPU may take another
    # backend than accurate mode: orthokern/dispatch.py, CPU_FAST_FLOAT32_MIN_N).
    from orthokern import dispatch
    from orthokern.bench import runner

    G = torch.zeros(2, 90, 3 * dispatch.CPU_FAST_FLOAT32_MIN_N)  # wide: ran_on orients it tall
    entry = runner.Entry("method", "gram_eigh", None, mode, lambda X: X, "orthokern")
    expected = dispatch.resolve("gram_eigh", None, G.mT, mode=mode).backend
    assert runner.ran_on(entry, G) == f"gram_eigh/{expected}"
