"""The Newton–Schulz schedules (scalar behaviour) and the auto rule."""
import numpy as np
import pytest
import torch

import orthokern
from orthokern import dispatch
from orthokern import ns_schedule as ns
from orthokern.testing import accuracy, random_matrix


def run_scalar(steps, x):
    for s in steps:
        x = ns._apply(x, (s.a, s.b, s.c))
    return x


@pytest.mark.parametrize("rcond", [1e-3, 1e-5, 1e-7])
@pytest.mark.parametrize("n", [1, 8, 64, 1024, 4096])
@pytest.mark.parametrize("tol", [8 * 2.0**-23, 8 * 2.0**-52])
def test_accurate_schedule_converges_on_every_significant_value(n, tol, rcond):
    steps = ns.schedule("accurate", rcond, n, tol)
    x = np.geomspace(ns.lower_bound(n, rcond), 1 / ns.NORM_SAFETY, 5000)
    y = run_scalar(steps, x)
    assert np.max(np.abs(y - 1)) <= tol
    assert all(s.precision == "high" for s in steps)
    assert steps[-1][:3] == ns.CUBIC_POLISH
    assert len(steps) < 30
    # Weaker singular values (below the floor) are mapped into [0, 1 + tol], never amplified past the bound.
    z = run_scalar(steps, np.geomspace(1e-12, ns.lower_bound(n, rcond), 2000))
    assert z.min() >= 0 and z.max() <= 1 + tol


def test_optimal_quintic_equioscillates_and_beats_the_papers_first_step():
    lo, hi = 1e-3, 1.0
    a, b, c = ns.optimal_quintic(lo, hi)
    x = np.concatenate([np.geomspace(lo, hi, 20000), np.linspace(lo, hi, 20000)])
    err = 1 - ns._apply(x, (a, b, c))
    # Optimal: no worse on [lo, hi] than the paper's first step for the same interval (before its 1.01 safety).
    paper = 1 - ns._apply(x, ns._PE_PAPER[0])
    assert np.max(np.abs(err)) <= np.max(np.abs(paper)) + 1e-9
    # Equioscillation: the error reaches its maximum with both signs.
    E = np.max(np.abs(err))
    assert err.max() >= E * (1 - 1e-6) and -err.min() >= E * (1 - 1e-6)
    with pytest.raises(ValueError, match="lo < hi"):
        ns.optimal_quintic(1.0, 0.5)


def test_rcond_zero_is_refused_by_the_schedule_with_a_reason():
    # The dispatch never asks for it (rcond is raised to the method's floor first): a direct caller learns why.
    with pytest.raises(ValueError, match="rcond must be > 0"):
        ns.schedule("accurate", 0.0, 64, 1e-6)


def test_fast_schedule_beats_muon_on_the_scalar_map():
    fast = ns.schedule("fast", 1e-3, 256, 1e-6)
    assert len(fast) == ns.FAST_STEPS and all(s.precision == "low" for s in fast)
    # Muon starts from ||G||_F (s_max >= n^-1/2), we from ||A^2||^1/4 (>= n^-1/8): over the range both cover.
    x = np.geomspace(1e-2, 1, 1000)
    muon = x.copy()
    for _ in range(5):
        muon = ns._apply(muon, ns.MUON_QUINTIC)
    assert np.max(np.abs(run_scalar(fast, x) - 1)) < np.max(np.abs(muon - 1))


def test_schedule_is_cached_and_compile_constant():
    assert ns.schedule("accurate", 1e-3, 64, 1e-6) is ns.schedule("accurate", 1e-3, 64, 1e-6)


@pytest.mark.parametrize(
    "m,n,device,mode,rcond,dtype,expected",
    [
        (100, 10, "cpu", "accurate", 1e-3, torch.float32, "gram_eigh"),
        (4096, 4096, "cpu", "fast", 1e-3, torch.float32, "gram_eigh"),
        (100, 10, "cpu", "accurate", 0.0, torch.float32, "cholqr2"),  # below gram_eigh's float32 floor
        (100, 10, "cpu", "accurate", 1e-3, torch.float64, "cholqr2"),  # float64 gram_eigh's floor is 3e-3
        (100, 10, "cpu", "accurate", 1e-2, torch.float64, "gram_eigh"),
        (576, 64, "cuda", "accurate", 1e-3, torch.float32, "newton_schulz"),
        (4096, 4096, "cuda", "fast", 1e-3, torch.bfloat16, "newton_schulz"),
        (576, 64, "cuda", "accurate", 1e-6, torch.float32, "cholqr2"),
    ],
)
def test_auto_rule(m, n, device, mode, rcond, dtype, expected):
    assert dispatch.choose_method(m, n, device, mode, rcond, dtype) == expected


@pytest.mark.parametrize(
    "B,m,n,device,mode,side",
    [
        (1, 16384, 128, "cuda", "accurate", "gram"),  # tall-skinny: the n x n work is small next to G
        # the float64 n x n iteration costs more than fp16x3 steps on X (triton_kernels/_dot.py), whose last
        # steps are cheaper still on the n x n side once m is a few times n (ns_schedule.switch_step)
        (1, 4096, 128, "cuda", "accurate", "tall_gram"),
        (1, 4608, 512, "cuda", "accurate", "tall_gram"),
        (1, 1152, 1024, "cuda", "accurate", "tall"),  # square-ish and large: the tall side's tensor cores win
        (1, 4608, 512, "cuda", "fast", "tall"),  # bfloat16 products cannot carry the late Gram side
        (1, 4096, 4096, "cuda", "fast", "tall"),
        (256, 576, 64, "cuda", "accurate", "gram"),
        (1, 300, 100, "cpu", "accurate", "gram"),
        (1, 150, 100, "cpu", "accurate", "tall"),
    ],
)
def test_newton_schulz_side_by_cost_model(B, m, n, device, mode, side):
    assert dispatch.newton_schulz_side(B, m, n, mode, torch.float32, device) == side


def test_auto_falls_back_on_breakdown(monkeypatch):
    """A method that returns NaN or an amplified result for finite input is replaced by cholqr2 in eager mode."""
    import dataclasses

    real_resolve = dispatch.resolve
    calls = []

    def resolve(method, backend, X, env=None, mode="accurate"):
        impl = real_resolve(method, backend, X, env, mode)
        calls.append(method)
        if method != "gram_eigh":
            return impl

        def broken(X, *, mode, rcond):
            O = impl.fn(X, mode=mode, rcond=rcond)
            O[1] = float("nan")
            O[2, :, 0] *= 1.05  # one column amplified past the bound: ||O||_2 >= 1.05
            return O

        return dataclasses.replace(impl, fn=broken)

    monkeypatch.setattr(dispatch, "resolve", resolve)
    G = random_matrix(4, 30, 8, "decaying", seed=7)
    O = orthokern.polar(G)
    assert calls == ["gram_eigh", "cholqr2"]
    acc = accuracy(G, O)
    assert acc.finite and acc.E < 1e-3 and acc.norm2 < 1 + 1e-4


def test_fp16x3_operands_stay_bounded():
    """The tall side's float32 products run as "fp16x3" (triton_kernels/_dot.py), whose split needs operands well
    inside float16's range (65504). After the normalisation every singular value of X starts in [0, 1 / 1.01]; over
    every schedule the iterates stay below 2 and each step's factor P = a I + b A + c A^2 has entries below 55
    (|P_ij| <= ||P||_2 <= |a| + |b| s^2 + |c| s^4), as triton_kernels/polar.py relies on."""
    for mode in dispatch.MODES:
        for n in (16, 64, 512, 4096):
            for rcond in (1e-2, 1e-3, 1e-4):
                x = np.linspace(0.0, 1.0 / ns.NORM_SAFETY, 20001)
                for step in ns.steps_for(mode, rcond, n, torch.float32):
                    s = float(x.max())
                    assert s < 2.0, (mode, n, rcond, s)
                    assert abs(step.a) + abs(step.b) * s**2 + abs(step.c) * s**4 < 55, (mode, n, rcond, step)
                    x = step.a * x + step.b * x**3 + step.c * x**5
