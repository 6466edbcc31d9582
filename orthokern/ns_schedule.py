"""Polynomial schedules for the Newton–Schulz family, shared by every backend.

One step maps X (tall, m x n) to  X p(X^T X)  with the odd polynomial p(s) = a s + b s^3 + c s^5 acting on the
singular values, i.e.  X <- a X + X (b A + c A^2),  A = X^T X.

The schedule is derived, not guessed: :func:`schedule` simulates the scalar map on a grid of every singular value
that counts (from the lower bound the normalisation guarantees for ``rcond``, up to 1) and picks each step greedily
as the odd quintic that is closest to 1 on the current range in the minimax sense, as Polar Express does (Amsel,
Persson, Musco, Gower, "The Polar Express", 2025), here computed for the range at hand by a Remez exchange
(:func:`optimal_quintic`) rather than read from the paper's table for l = 1e-3, so any rcond (down to the floors in
``orthokern/dispatch.py``) gets its own optimal steps. Once every value is within 1e-2 of 1, the classic cubic
(1.5, -0.5) polishes: quadratically convergent there, and one matmul cheaper than a quintic.

No step depends on the data, so the iteration never synchronises with the device and can be graph-captured.

* ``MUON_QUINTIC``: Muon's fixed quintic (Jordan et al., 2024), which brings singular values into about
  [0.7, 1.2]; the comparison fast mode is measured against.
* ``POLAR_EXPRESS``: the paper's published coefficients for l = 1e-3 (with its 1.01 safety factor): fast mode's
  steps, and the benchmark's ``polar_express`` peer.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import numpy as np
import torch

MUON_QUINTIC = (3.4445, -4.7750, 2.0315)

_PE_PAPER = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)
POLAR_EXPRESS = tuple((a / 1.01, b / 1.01**3, c / 1.01**5) for a, b, c in _PE_PAPER[:-1]) + (_PE_PAPER[-1],)
CUBIC_POLISH = (1.5, -0.5, 0.0)

# Normalisation: X0 = G / (1.01 * ||A^2||_F^{1/4}), A = G^T G. Since ||A^2||_F <= sqrt(n) s_max^4, this puts s_max in
# [n^{-1/8} / 1.01, 1 / 1.01]: a lower bound n^{3/8} times better than Muon's ||G||_F, for free (A and A^2 are the
# first step's products anyway).
NORM_SAFETY = 1.01
# Each quintic is optimised for its range widened by this factor at the top, so that a value rounded slightly above
# the simulated range (low-precision steps round to 2^-8) is still mapped into the next range.
ROUNDING_CUSHION = 1.01
# The greedy quintics stop, and the cubic polish starts, once every value is within this of 1.
POLISH_FROM = 1e-2

# The accurate tall side may hand its last steps to the n x n side (``switch_step``) once every significant singular
# value of X is at least this: the Gram matrix of X then has condition at most 1 / SWITCH_FROM^2 = 25, which float32
# products resolve about as well as the tall side's (measured on float32 decaying and rank-deficient spectra, n = 64,
# 256 and 512: E and ||O||_2 - 1 within about 2e-6 of the tall side's when switching at a lower bound of 0.24-0.3;
# switching one step earlier, at 0.07-0.08, left ||O||_2 - 1 up to 1.3e-5), while each late step costs n^3
# multiply-adds instead of m n^2.
SWITCH_FROM = 0.2

# Fast mode: the paper's first six steps, in bfloat16 on a GPU. Six, not Muon's five: with the symmetric products
# of the Triton kernels (one triangle of X^T X, one of A^2) six steps cost 18 m n^2 + 6 n^3 multiply-adds against
# Muon's 20 m n^2 + 10 n^3, and the sixth step is what makes fast mode more accurate than Muon on inputs where
# five Polar Express steps are not (all singular values equal, e.g. eye(64, 32): E 0.12 after five against Muon's
# 0.047; 3e-4 after six). tests/test_polar_accuracy.py compares them on those inputs.
FAST_STEPS = 6


class Step(NamedTuple):
    a: float
    b: float
    c: float
    # "low": may run in bfloat16 matmuls on a GPU; "high": runs in the compute dtype (float32 / float64).
    precision: str


def _apply(x: np.ndarray, coeffs) -> np.ndarray:
    a, b, c = coeffs[:3]
    x2 = x * x
    return x * (a + x2 * (b + c * x2))


def optimal_quintic(lo: float, hi: float, iters: int = 50) -> tuple[float, float, float]:
    """(a, b, c) of the odd quintic p minimising max_{x in [lo, hi]} |1 - p(x)|, by Remez exchange.

    The error 1 - p of the best approximation equioscillates at 4 points (3 coefficients + the level); each round
    solves for the polynomial that alternates with equal error on the current 4 points, then moves them to the
    extrema of the new error on a fine grid (logarithmic and linear, so that a range spanning many decades is
    resolved at both ends).
    """
    if not (0.0 < lo < hi):
        raise ValueError(f"optimal_quintic: need 0 < lo < hi, got lo={lo}, hi={hi}")
    grid = np.unique(np.concatenate([np.geomspace(lo, hi, 4000), np.linspace(lo, hi, 4000)]))
    x = np.geomspace(lo, hi, 4)
    signs = (-1.0) ** np.arange(4)
    for _ in range(iters):
        a, b, c, _level = np.linalg.solve(np.stack([x, x**3, x**5, signs], 1), np.ones(4))
        err = 1.0 - _apply(grid, (a, b, c))
        sign = np.where(err >= 0, 1.0, -1.0)
        runs = np.split(np.arange(len(grid)), np.flatnonzero(np.diff(sign)) + 1)
        extrema = np.array([r[np.argmax(np.abs(err[r]))] for r in runs])
        if len(extrema) < 4:
            break
        # The 4 consecutive alternating extrema that include the largest error, with the largest smallest error.
        top = int(np.argmax(np.abs(err[extrema])))
        starts = [s for s in range(len(extrema) - 3) if s <= top <= s + 3]
        best = max(starts, key=lambda s: np.min(np.abs(err[extrema[s:s + 4]])))
        new = grid[extrema[best:best + 4]]
        if np.array_equal(new, x):
            break
        x = new
    a, b, c, _level = np.linalg.solve(np.stack([x, x**3, x**5, signs], 1), np.ones(4))
    return float(a), float(b), float(c)


def lower_bound(n: int, rcond: float) -> float:
    """Smallest significant singular value after the normalisation above, for n singular values."""
    if not rcond > 0.0:
        raise ValueError(f"ns_schedule: rcond must be > 0 (the dispatch raises 0 to the method's floor), got {rcond}")
    return rcond * n ** (-1.0 / 8.0) / NORM_SAFETY


def _assume_constant_result(fn):
    """``torch.compiler.assume_constant_result`` without its cost: that function imports torch._dynamo (2 s of
    ``import orthokern``) only to set this attribute, which dynamo reads when it meets ``fn`` (torch 2.11 - 2.13).
    tests/test_polar_compile_autograd.py compiles polar with fullgraph=True, which fails if dynamo stops honouring
    it."""
    fn._dynamo_marked_constant = True
    return fn


# torch.compile calls it at trace time and bakes the steps into the graph: the result depends only on these Python
# constants, and its numpy simulation is nothing dynamo should trace.
@_assume_constant_result
def schedule(mode: str, rcond: float, n: int, tol: float, max_steps: int = 60) -> tuple[Step, ...]:
    key = (mode, rcond, n, tol, max_steps)
    if key not in _SCHEDULES:
        _SCHEDULES[key] = _build_schedule(*key)
    return _SCHEDULES[key]


# A plain dict, not functools.lru_cache: dynamo traces through lru_cache wrappers instead of honouring
# assume_constant_result.
_SCHEDULES: dict[tuple, tuple[Step, ...]] = {}


def _build_schedule(mode: str, rcond: float, n: int, tol: float, max_steps: int) -> tuple[Step, ...]:
    """Steps that take every singular value in [lower_bound(n, rcond), 1 / NORM_SAFETY] to within ``tol`` of 1.

    ``fast``: the paper's first FAST_STEPS steps, all low precision: a greedy minimax schedule spreads its error
    evenly over the range, while the paper's (designed with its safety factor for l = 1e-3) leaves most singular
    values closer to 1, which is what E, an average over directions, rewards after a fixed number of steps.
    ``accurate``: greedy minimax quintics for this range until every value is within POLISH_FROM of 1, then cubic
    polishing until within ``tol``; all high precision.
    """
    if mode not in ("fast", "accurate"):
        raise ValueError(f"ns_schedule: mode must be 'fast' or 'accurate', got {mode!r}")
    if mode == "fast":
        return tuple(Step(*POLAR_EXPRESS[i], "low") for i in range(FAST_STEPS))
    lo = lower_bound(n, rcond)
    x = np.concatenate([np.geomspace(lo, 1.0 / NORM_SAFETY, 2000), [1.0 / NORM_SAFETY]])
    steps: list[Step] = []
    while np.max(np.abs(x - 1.0)) > POLISH_FROM:
        coeffs = optimal_quintic(float(x.min()), float(x.max()) * ROUNDING_CUSHION)
        x = _apply(x, coeffs)
        steps.append(Step(*coeffs, "high"))
        if len(steps) > max_steps:
            raise RuntimeError(f"newton_schulz: no convergence for rcond={rcond}, n={n}")
    while np.max(np.abs(x - 1.0)) > tol:
        x = _apply(x, CUBIC_POLISH)
        steps.append(Step(*CUBIC_POLISH, "high"))
        if len(steps) > max_steps:
            raise RuntimeError(f"newton_schulz: no convergence for rcond={rcond}, n={n}")
    return tuple(steps)


def steps_for(mode: str, rcond: float, n: int, compute_dtype: torch.dtype) -> tuple[Step, ...]:
    """The schedule every backend runs for n singular values iterated in ``compute_dtype`` (float32/float64):
    polished to 8 eps of that dtype, cached per power-of-two bucket of n."""
    return schedule(mode, float(rcond), n_bucket(n), 8 * torch.finfo(compute_dtype).eps)


# Also a trace-time constant: its numpy simulation would be traced as tensors by dynamo, and its comparisons would be
# data-dependent branches (torch.compile(fullgraph=True) of a GPU polar() failed there).
@_assume_constant_result
def switch_step(mode: str, rcond: float, n: int, compute_dtype: torch.dtype) -> Optional[int]:
    """The first step of ``steps_for(...)`` that may run on the n x n side after the earlier ones ran on X: a
    quintic step k >= 1 (step 0 carries the normalisation) before which the simulated significant singular values
    are all at least SWITCH_FROM, with at least two steps left; None in fast mode (its bfloat16 products cannot
    carry a Gram matrix's squared condition) or when no step qualifies."""
    if mode != "accurate":
        return None
    steps = steps_for(mode, rcond, n, compute_dtype)
    x = np.geomspace(lower_bound(n_bucket(n), float(rcond)), 1.0 / NORM_SAFETY, 2000)
    for k, step in enumerate(steps):
        if k >= 1 and step.c != 0.0 and len(steps) - k >= 2 and x.min() >= SWITCH_FROM:
            return k
        x = _apply(x, step)
    return None


def n_bucket(n: int) -> int:
    """Round n up to a power of two so that schedules are cached per bucket, not per shape."""
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))
