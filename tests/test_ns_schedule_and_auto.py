"""The Newton–Schulz schedules (scalar behaviour) and the auto rule."""
import numpy as np
import pytest

import orthokern
from orthokern import dispatch
from orthokern import ns_schedule as ns
from orthokern.testing import accuracy, random_matrix


def run_scalar(steps, x):
    for s in steps:
        x = ns._apply(x, (s.a, s.b, s.c))
    return x


@pytest.mark.parametrize("n", [1, 8, 64, 1024, 4096])
@pytest.mark.parametrize("tol", [8 * 2.0**-23, 8 * 2.0**-52])
def test_accurate_schedule_converges_on_every_significant_value(n, tol):
    steps = ns.schedule("accurate", 1e-3, n, tol)
    x = np.geomspace(ns.lower_bound(n, 1e-3), 1 / ns.NORM_SAFETY, 5000)
    assert np.max(np.abs(run_scalar(steps, x) - 1)) <= tol
    assert all(s.precision == "high" for s in steps)
    assert steps[-1][:3] == ns.CUBIC_POLISH
    assert len(steps) < 30


def test_fast_schedule_beats_muon_on_the_scalar_map():
    fast = ns.schedule("fast", 1e-3, 256, 1e-6)
    assert len(fast) == ns.FAST_STEPS and all(s.precision == "low" for s in fast)
    # Same number of steps as Muon; Muon starts from ||G||_F (s_max >= n^-1/2), we from ||A^2||^1/4 (>= n^-1/8).
    x = np.geomspace(1e-2, 1, 1000)
    muon = x.copy()
    for _ in range(5):
        muon = ns._apply(muon, ns.MUON_QUINTIC)
    assert np.max(np.abs(run_scalar(fast, x) - 1)) < np.max(np.abs(muon - 1))


def test_schedule_is_cached_and_compile_constant():
    assert ns.schedule("accurate", 1e-3, 64, 1e-6) is ns.schedule("accurate", 1e-3, 64, 1e-6)


@pytest.mark.parametrize(
    "m,n,device,mode,expected",
    [
        (100, 10, "cpu", "accurate", "gram_eigh"),
        (4096, 4096, "cpu", "fast", "gram_eigh"),
        (576, 64, "cuda", "accurate", "gram_eigh"),  # fused small-n kernel
        (64, 64, "cuda", "fast", "gram_eigh"),
        (4608, 512, "cuda", "accurate", "gram_eigh"),  # tall-skinny: Gram is small next to G
        (4608, 512, "cuda", "fast", "newton_schulz"),
        (1152, 1024, "cuda", "accurate", "newton_schulz"),  # square-ish and large
        (4096, 4096, "cuda", "fast", "newton_schulz"),
    ],
)
def test_auto_rule(m, n, device, mode, expected):
    assert dispatch.choose_method(m, n, device, mode) == expected


def test_auto_falls_back_on_breakdown(monkeypatch):
    """A method that returns NaN or an amplified result for finite input is replaced by cholqr2 in eager mode."""
    import dataclasses

    real_resolve = dispatch.resolve
    calls = []

    def resolve(method, backend, X, env=None):
        impl = real_resolve(method, backend, X, env)
        calls.append(method)
        if method != "gram_eigh":
            return impl

        def broken(X, *, mode, rcond):
            O = impl.fn(X, mode=mode, rcond=rcond)
            O[1] = float("nan")
            O[2] *= 3.0
            return O

        return dataclasses.replace(impl, fn=broken)

    monkeypatch.setattr(dispatch, "resolve", resolve)
    G = random_matrix(4, 30, 8, "decaying", seed=7)
    O = orthokern.polar(G)
    assert calls == ["gram_eigh", "cholqr2"]
    acc = accuracy(G, O)
    assert acc.finite and acc.E < 1e-3 and acc.norm2 < 1 + 1e-4
