"""Wall-clock timing of one call, correct on a GPU: warm-up excluded, device work included.

On CUDA each round is bracketed by CUDA events on the current stream (the host may run ahead; the events
measure the device), and several calls are looped per round so that a round is long enough to time: the
pytest-benchmark docs warn that single iterations under ~100 us are noise. On the CPU rounds are timed with
``time.perf_counter``. The result is the median over rounds of the time per call.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
import time
from typing import Callable, Optional

import torch


@dataclasses.dataclass
class Timing:
    median: float  # seconds per call
    q20: float
    q80: float
    rounds: int
    iterations: int  # calls per round
    samples: list[float]  # seconds per call, one per round


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(samples: list[float], iterations: int) -> Timing:
    if not samples:
        raise ValueError("summarize: samples must not be empty")
    return Timing(
        median=statistics.median(samples),
        q20=_quantile(samples, 0.2),
        q80=_quantile(samples, 0.8),
        rounds=len(samples),
        iterations=iterations,
        samples=list(samples),
    )


def time_fn(
    fn: Callable[[], object],
    *,
    device: torch.device | str = "cpu",
    rounds: int = 5,
    warmup: int = 1,
    iterations: Optional[int] = None,
    min_round_s: float = 2e-3,
    max_total_s: float = 2.0,
    clock: Callable[[], float] = time.perf_counter,
) -> Timing:
    """Median seconds per call of ``fn()`` over ``rounds`` rounds of ``iterations`` calls.

    ``iterations=None`` calibrates it from the first warm-up call so that a round lasts ``min_round_s``
    (at most 100 calls). Rounds are cut (to at least 3, or ``rounds`` if smaller) when the estimated total
    would pass ``max_total_s``: the full-size svd of a big batch takes seconds per call, and an honest median
    of 3 beats a benchmark nobody runs. ``clock`` is injectable for tests (CPU path only).
    """
    if rounds < 1:
        raise ValueError(f"time_fn: rounds must be >= 1, got {rounds}")
    if warmup < 0:
        raise ValueError(f"time_fn: warmup must be >= 0, got {warmup}")
    device = torch.device(device)
    cuda = device.type == "cuda"
    one = None
    for i in range(max(warmup, 1 if iterations is None else 0)):
        synchronize(device)
        t0 = clock()
        fn()
        synchronize(device)
        one = clock() - t0
    if iterations is None:
        iterations = int(min(100, max(1, math.ceil(min_round_s / max(one or 0.0, 1e-9)))))
    if one is not None and one * iterations * rounds > max_total_s:
        rounds = max(min(3, rounds), int(max_total_s / max(one * iterations, 1e-12)))
    samples = []
    if cuda:
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(rounds)]
        synchronize(device)
        for start, end in events:
            start.record()
            for _ in range(iterations):
                fn()
            end.record()
        torch.cuda.synchronize(device)
        samples = [s.elapsed_time(e) * 1e-3 / iterations for s, e in events]
    else:
        for _ in range(rounds):
            t0 = clock()
            for _ in range(iterations):
                fn()
            samples.append((clock() - t0) / iterations)
    return summarize(samples, iterations)
