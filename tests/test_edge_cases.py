"""The contract at its edges, for every method and CPU backend: subnormal and huge inputs, rcond = 0 and rcond at
each method's floor, the threshold convention, float64 cholqr2 at large m n, and fast mode against Muon's NS5.

Each class once failed (subnormal input made LAPACK give up; rcond=0 crashed the schedule builder or blew ||O||_2 up
to 2-4; a singular value exactly at the threshold was kept by some methods and dropped by others; cholqr2's second
shift biased E by 6e-16 m n in float64; five Polar Express steps lost to Muon's five on inputs whose singular
values are all equal). Small sizes: this file runs in seconds.
"""
from __future__ import annotations

import math

import pytest
import torch

import orthokern
from orthokern import _env, dispatch
from orthokern.testing import E_BOUND, NORM_SLACK, _haar, accuracy, random_matrix

# (method, backend) pairs that run CPU tensors here; backend None = the dispatch's choice.
CPU_IMPLS = [("auto", None)] + [
    (m, i.backend) for m in orthokern.METHODS if m != "auto"
    for i in dispatch.implementations(m) if i.backend in ("torch", "cpp") and i.why_not(torch.empty(1, 4, 2),
                                                                                          _env.CURRENT) is None
]
IDS = [f"{m}-{b or 'default'}" for m, b in CPU_IMPLS]


def _spectrum_matrix(B, m, n, s, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    U, V = _haar((B,), m, len(s), g, None), _haar((B,), n, len(s), g, None)
    return ((U * s) @ V.mT).to(dtype)


def _check(G, O, rcond, what):
    acc = accuracy(G, O, rcond)
    assert acc.finite, f"{what}: non-finite output"
    assert acc.E <= E_BOUND[G.dtype], f"{what}: E = {acc.E:.2e} at rcond {rcond:.0e}"
    assert acc.norm2 <= 1 + NORM_SLACK[G.dtype], f"{what}: ||O||_2 - 1 = {acc.norm2 - 1:.2e}"
    return acc


@pytest.mark.parametrize("method,backend", CPU_IMPLS, ids=IDS)
@pytest.mark.parametrize("dtype,scale", [(torch.float32, 1e-40), (torch.float32, 2e-39), (torch.bfloat16, 2e-39),
                                         (torch.float64, 1e-310), (torch.float32, 3e37), (torch.float64, 1e300)],
                         ids=["f32-1e-40", "f32-2e-39", "bf16-2e-39", "f64-1e-310", "f32-3e37", "f64-1e300"])
def test_subnormal_and_huge_inputs(method, backend, dtype, scale):
    # The matrix is built at scale 1 and multiplied in float64, then rounded once: the entries are subnormal (or
    # near overflow) but the matrix is a fine, well-conditioned one.
    G = (random_matrix(2, 24, 8, "well", dtype=torch.float64, seed=3) * scale).to(dtype)
    assert G.abs().max() > 0 and torch.isfinite(G).all()
    O = orthokern.polar(G, method=method, backend=backend)
    assert O.dtype == dtype and torch.isfinite(O).all()
    # A subnormal matrix is itself coarsely rounded: measure against the matrix as given, at the method's rcond.
    chosen, rcond = dispatch.method_and_rcond(G.double(), method, "accurate", orthokern.DEFAULT_RCOND)
    acc = accuracy(G.double(), O.double(), dispatch.effective_rcond(chosen, orthokern.DEFAULT_RCOND, dtype))
    assert acc.E <= E_BOUND[dtype] and acc.norm2 <= 1 + NORM_SLACK[dtype], acc


def test_subnormal_matrix_beside_ordinary_ones_in_a_batch():
    G = random_matrix(3, 20, 6, "decaying", seed=4)
    G[1] *= 1e-40
    O = orthokern.polar(G)
    for i in range(3):
        _check(G[i:i + 1], O[i:i + 1], 1e-3, f"matrix {i}")


def _floor_cases(dtype, floor):
    """Spectra whose smallest significant value sits just above the floor, a rank-deficient one, and a cluster."""
    for seed, (m, n) in enumerate(((60, 16), (40, 24))):
        k = n
        s = torch.logspace(0, math.log10(1.05 * floor), k, dtype=torch.float64)
        yield _spectrum_matrix(2, m, n, s, dtype, seed)
        s = torch.zeros(k, dtype=torch.float64)
        s[: k // 2] = torch.logspace(0, math.log10(1.05 * floor), k // 2, dtype=torch.float64)
        yield _spectrum_matrix(2, m, n, s, dtype, seed + 10)
        s = torch.ones(k, dtype=torch.float64)
        s[k // 2:] = 1.2 * floor
        yield _spectrum_matrix(2, m, n, s, dtype, seed + 20)


@pytest.mark.parametrize("method,backend", [mb for mb in CPU_IMPLS if mb[0] != "auto"], ids=IDS[1:])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_contract_holds_at_each_methods_rcond_floor(method, backend, dtype):
    floor = dispatch.rcond_floor(method, dtype)
    for i, G in enumerate(_floor_cases(dtype, floor)):
        _check(G, orthokern.polar(G, method=method, backend=backend, rcond=floor), floor, f"{method} case {i}")


@pytest.mark.parametrize("method,backend", CPU_IMPLS, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_rcond_zero_means_what_the_precision_resolves(method, backend, dtype):
    # A classifier-like gradient: rank 3 of 10, and a spectrum far below every floor.
    G = _spectrum_matrix(2, 30, 10, torch.tensor([1, 0.3, 0.1] + [0] * 7, dtype=torch.float64), dtype, 5)
    # down to 5e-10, with no ratio falling exactly on a floor (a tie there is decided by rounding; the tie itself is
    # tested exactly below, on a diagonal matrix)
    H = _spectrum_matrix(2, 30, 10, torch.logspace(0, -9.3, 10, dtype=torch.float64), dtype, 6)
    for X in (G, H):
        for rcond in (0.0, 1e-12, 1e-8):
            O = orthokern.polar(X, method=method, backend=backend, rcond=rcond)
            chosen, eff = dispatch.method_and_rcond(X.mT if X.shape[-2] < X.shape[-1] else X, method, "accurate",
                                                    rcond)
            assert eff == max(rcond, dispatch.rcond_floor(chosen, dtype))
            _check(X, O, eff, f"{method} rcond={rcond}")


@pytest.mark.parametrize("method,backend", [mb for mb in CPU_IMPLS if mb[0] != "auto"], ids=IDS[1:])
def test_a_singular_value_exactly_at_the_threshold_counts(method, backend):
    # s = (1, 1e-3) exactly, rcond = 1e-3: the contract counts s >= rcond s_max, so the second direction is mapped
    # to unit length by every method whose floor admits rcond = 1e-3.
    if dispatch.rcond_floor(method, torch.float64) > 1e-3:
        pytest.skip(f"{method}'s float64 floor is above 1e-3")
    G = torch.zeros(1, 4, 2, dtype=torch.float64)
    G[0, 0, 0], G[0, 1, 1] = 1.0, 1e-3
    O = orthokern.polar(G, method=method, backend=backend, rcond=1e-3)
    assert abs(O[0, 1, 1].item() - 1.0) <= 1e-6, O[0]
    # ... and a value just below it does not (it goes to [0, 1]; svd, gram_eigh and cholqr2 drop it to 0).
    G[0, 1, 1] = 0.999e-3
    O = orthokern.polar(G, method=method, backend=backend, rcond=1e-3)
    assert 0.0 <= O[0, 1, 1].item() <= 1.0 + 1e-12
    if method != "newton_schulz":
        assert O[0, 1, 1].item() == 0.0


@pytest.mark.parametrize("backend", [b for m, b in CPU_IMPLS if m == "cholqr2"])
def test_cholqr2_float64_error_does_not_grow_with_m_n(backend):
    # The second pass's shift biased E by s2 / 2 ~ 6e-16 m n; with the sqrt(1 + s2) correction E stays at rounding.
    Es = []
    for m, n in ((2000, 64), (16000, 128)):
        G = random_matrix(1, m, n, "well", dtype=torch.float64, seed=m)
        Es.append(accuracy(G, orthokern.polar(G, method="cholqr2", backend=backend)).E)
    assert max(Es) <= 1e-11, Es


def _muon_E(G):
    from orthokern.bench.peers import PEERS

    return accuracy(G, PEERS["muon_ns5_batched"](G)).E


def _issue_inputs():
    """The inputs on which five Polar Express steps or a float32 Gram lost to Muon."""
    g = torch.Generator().manual_seed(0)
    yield "fp16 cond 999.9", _spectrum_matrix(3, 40, 9, torch.logspace(0, math.log10(1 / 999.9), 9,
                                                                     dtype=torch.float64), torch.float16, 1)
    yield "11x37 cond 980", _spectrum_matrix(1, 37, 11, torch.logspace(0, math.log10(1 / 980), 11,
                                                                     dtype=torch.float64), torch.float32, 2)
    s = torch.ones(24, dtype=torch.float64)
    s[12:] = 0.3
    yield "bf16 repeated", _spectrum_matrix(1, 24, 24, s, torch.bfloat16, 3)
    yield "diag(1, .46, .44)", torch.diag(torch.tensor([1.0, 0.46, 0.44]))[None]
    yield "eye(64, 32)", torch.eye(64, 32)[None]
    yield "3x3 (1, .5, 1.01e-3)", _spectrum_matrix(1, 3, 3, torch.tensor([1, 0.5, 1.01e-3], dtype=torch.float64),
                                                   torch.float32, 4)
    yield "random 3x3", torch.randn(64, 3, 3, generator=g)


@pytest.mark.parametrize("method", ["auto", "gram_eigh", "newton_schulz"])
def test_fast_mode_beats_muon_where_it_once_lost(method):
    for name, G in _issue_inputs():
        O = orthokern.polar(G, method=method, mode="fast")
        for i in range(G.shape[0]):
            e, e_muon = accuracy(G[i:i + 1], O[i:i + 1]).E, _muon_E(G[i:i + 1])
            assert e <= e_muon, f"{method} fast on {name}[{i}]: E {e:.4f} > Muon's {e_muon:.4f}"


def test_numeric_options_share_one_check():
    """orthokern._checks.finite_number: every numeric option of the optimisers and regularisers (StiefelSGD's lr,
    momentum, dampening, weight_decay and gain, Layca's lr, OrthogonalityRegulariser's coefficient and schedule)."""
    import math

    from orthokern._checks import finite_number

    assert finite_number(torch.tensor(0.25), "lr", "X") == 0.25 and finite_number(0, "lr", "X") == 0.0
    with pytest.raises(TypeError, match=r"X: lr must be a number >= 0, got 'a'"):
        finite_number("a", "lr", "X")
    for bad in (-1e-9, math.inf, math.nan):
        with pytest.raises(ValueError, match=r"X: lr \(the rate\) must be finite and >= 0"):
            finite_number(bad, "lr", "X", about=" (the rate)")
    with pytest.raises(ValueError, match="gain must be finite and > 0"):
        finite_number(0.0, "gain", "X", strict=True)
    from orthokern.nn import OrthogonalityRegulariser
    from orthokern.optim import Layca, StiefelSGD

    w = [torch.nn.Parameter(torch.randn(3, 4))]
    for make, word in ((lambda: StiefelSGD(w, lr=-1.0), "StiefelSGD: lr"),
                       (lambda: StiefelSGD(w, lr=0.1, gain=0.0), "StiefelSGD: gain"),
                       (lambda: Layca(w, lr=math.nan), "Layca: lr"),
                       (lambda: OrthogonalityRegulariser(w, coefficient=-1.0),
                        "OrthogonalityRegulariser: coefficient")):
        with pytest.raises(ValueError, match=word):
            make()
