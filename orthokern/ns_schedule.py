"""Polynomial schedules for the Newton–Schulz family, shared by every backend.

One step maps X (tall, m x n) to  X p(X^T X)  with the odd polynomial p(s) = a s + b s^3 + c s^5 acting on
the singular values, i.e.  X <- a X + X (b A + c A^2),  A = X^T X.

* ``MUON_QUINTIC``: Muon's fixed quintic (Jordan et al., 2024). It only brings singular values into about
  [0.7, 1.2]; kept for comparison.
* ``POLAR_EXPRESS``: the per-step optimal quintics of Polar Express (Amsel, Persson, Musco, Gower, 2025) for a
  lower bound l = 1e-3, with their 1.01 safety factor applied to all but the last; the last one is repeated.
* ``CUBIC_POLISH``: the classic Newton–Schulz cubic (1.5, -0.5), quadratically convergent near 1 and one
  matmul cheaper per step than a quintic: the high-precision finish.

:func:`schedule` builds the step list for a mode by running the scalar map on a grid of singular values
covering every significant one, so the number of steps is derived, not guessed, and no step depends on the
data (no host synchronisation, graph-capturable).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

MUON_QUINTIC = (3.4445, -4.7750, 2.0315)

_PE_RAW = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)
POLAR_EXPRESS = tuple((a / 1.01, b / 1.01**3, c / 1.01**5) for a, b, c in _PE_RAW[:-1]) + (_PE_RAW[-1],)
CUBIC_POLISH = (1.5, -0.5, 0.0)

# Normalisation: X0 = G / (1.01 * ||A^2||_F^{1/4}), A = G^T G. Since ||A^2||_F <= sqrt(n) s_max^4, this puts
# s_max in [n^{-1/8} / 1.01, 1 / 1.01]: a lower bound n^{3/8} times better than Muon's ||G||_F, for free
# (A and A^2 are the first step's products anyway).
NORM_SAFETY = 1.01

FAST_STEPS = 5


class Step(NamedTuple):
    a: float
    b: float
    c: float
    # "low": may run in bfloat16 matmuls on a GPU; "high": runs in the compute dtype (float32 / float64).
    precision: str


def _apply(x: np.ndarray, coeffs) -> np.ndarray:
    a, b, c = coeffs
    x2 = x * x
    return x * (a + x2 * (b + c * x2))


def lower_bound(n: int, rcond: float) -> float:
    """Smallest significant singular value after the normalisation above, for n singular values."""
    return rcond * n ** (-1.0 / 8.0) / NORM_SAFETY


# torch.compile calls it at trace time and bakes the steps into the graph: the result depends only on these
# Python constants, and its numpy simulation is nothing dynamo should trace.
@torch.compiler.assume_constant_result
def schedule(mode: str, rcond: float, n: int, tol: float, max_steps: int = 60) -> tuple[Step, ...]:
    key = (mode, rcond, n, tol, max_steps)
    if key not in _SCHEDULES:
        _SCHEDULES[key] = _build_schedule(*key)
    return _SCHEDULES[key]


# A plain dict, not functools.lru_cache: dynamo traces through lru_cache wrappers instead of honouring
# assume_constant_result.
_SCHEDULES: dict[tuple, tuple[Step, ...]] = {}


def _build_schedule(mode: str, rcond: float, n: int, tol: float, max_steps: int) -> tuple[Step, ...]:
    """Steps that take every singular value in [lower_bound(n, rcond), 1] to within ``tol`` of 1.

    ``fast``: FAST_STEPS Polar Express steps, all low precision (Muon's cost, far more accurate than its
    quintic). ``accurate``: Polar Express steps (the last repeated) until all values are within 1e-2 of 1,
    then cubic polishing until within ``tol``; all high precision.
    """
    if mode == "fast":
        return tuple(Step(*POLAR_EXPRESS[min(i, len(POLAR_EXPRESS) - 1)], "low") for i in range(FAST_STEPS))
    lo = lower_bound(n, rcond)
    x = np.concatenate([np.geomspace(lo, 1.0 / NORM_SAFETY, 2000), [1.0 / NORM_SAFETY]])
    steps: list[Step] = []
    while np.max(np.abs(x - 1.0)) > 1e-2:
        coeffs = POLAR_EXPRESS[min(len(steps), len(POLAR_EXPRESS) - 1)]
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


def n_bucket(n: int) -> int:
    """Round n up to a power of two so that schedules are cached per bucket, not per shape."""
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))
