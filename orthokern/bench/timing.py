"""How the benchmark times things: interleaved rounds, paired ratios, wall and CPU time, threads and load.

* **Interleaved rounds** (:func:`interleave`): round r calls every entry once (or a calibrated number of times,
  see below), in an order rotated by r, so that a burst of load from another process hits every entry about
  equally instead of ruining one entry's whole measurement.
* **Paired ratios**: within a round, each entry's time divided by the baseline's (``torch.linalg.svd``) time in
  the same round. The median over rounds of that ratio is the speed-up the report prints, with its q20 - q80
  spread: far steadier than a ratio of two medians measured minutes apart.
* **Adaptive rounds**: at least ``min_rounds``, then more while the case's time budget lasts, up to
  ``max_rounds``; cheap cases get many rounds, a full-size SVD of seconds gets the minimum.
* **Wall and CPU time**: on a CPU each slot records ``time.perf_counter`` and the process CPU time
  (``time.process_time``, every thread of the process). With one thread the two agree unless the process waited
  for a core; CPU time well above wall time means several threads were busy (or spinning).
* **Threads** (:func:`cpu_threads`): one torch thread on a CPU unless asked otherwise. On a shared machine, an
  OpenMP region waits for its slowest thread, and a thread descheduled by another process stalls every small
  call by a scheduler slice: with the default thread count timings went pathological for every method (issue 10).
* **Load** (:func:`machine_load`, :func:`busy`): the 1-minute load average and the usable cores, reported in the
  header; the machine counts as busy when the load leaves fewer free cores than the threads the benchmark uses.

On a GPU each slot is bracketed by CUDA events on the current stream (the host may run ahead; the events time the
device), with a synchronisation at the end of each round; CPU time is not recorded there. Each slot loops
enough calls to last ``min_slot_s``: the pytest-benchmark docs warn that single iterations under ~100 us are
noise.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import statistics
import time
from typing import Callable, Iterator, Mapping, Optional, Sequence

import torch


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def quantile(xs: Sequence[float], q: float) -> float:
    """The q-quantile of ``xs`` by linear interpolation between order statistics (numpy's default)."""
    if not xs:
        raise ValueError("quantile: empty sequence")
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclasses.dataclass(frozen=True)
class Spread:
    """Median and the q20 - q80 range of a sample."""

    median: float
    q20: float
    q80: float

    @classmethod
    def of(cls, xs: Sequence[float]) -> "Spread":
        if not xs:
            raise ValueError("Spread.of: empty sequence")
        return cls(statistics.median(xs), quantile(xs, 0.2), quantile(xs, 0.8))

    def inverse(self) -> "Spread":
        """The spread of 1/x (a speed-up from a time ratio): the quantiles swap ends."""
        return Spread(1 / self.median, 1 / self.q80, 1 / self.q20)


@dataclasses.dataclass
class EntryTiming:
    """One entry's rounds: seconds per call, one value per round."""

    wall: list[float]
    cpu: list[float]  # process CPU seconds per call; empty on a GPU
    iterations: int  # calls per round

    @property
    def rounds(self) -> int:
        return len(self.wall)

    @property
    def time(self) -> Spread:
        return Spread.of(self.wall)

    @property
    def cpu_median(self) -> Optional[float]:
        return statistics.median(self.cpu) if self.cpu else None

    def ratio_to(self, base: "EntryTiming", cpu: bool = False) -> Spread:
        """Per-round ratios of this entry's time to ``base``'s in the same round (``cpu``: of the CPU times)."""
        if base.rounds != self.rounds:
            raise ValueError(f"ratio_to: {self.rounds} rounds against {base.rounds}: not from the same run")
        if cpu:
            if not (self.cpu and base.cpu):
                raise ValueError("ratio_to: no CPU times (a GPU run)")
            return Spread.of([a / b for a, b in zip(self.cpu, base.cpu)])
        return Spread.of([a / b for a, b in zip(self.wall, base.wall)])


@dataclasses.dataclass
class Interleaved:
    entries: dict[str, EntryTiming]
    rounds: int
    seconds: float  # wall time of the timed rounds


def _calibrate(one: float, min_slot_s: float) -> int:
    """Calls per slot for a slot of at least ``min_slot_s`` (at most 100); the 1e-9 keeps 20.000000000000004
    calls from rounding up to 21."""
    return int(min(100, max(1, math.ceil(min_slot_s / max(one, 1e-9) - 1e-9))))


def interleave(
    fns: Mapping[str, Callable[[], object]],
    *,
    device: torch.device | str = "cpu",
    min_rounds: int = 5,
    max_rounds: int = 30,
    budget_s: float = 3.0,
    min_slot_s: float = 2e-3,
    warmup: int = 1,
    iterations: Optional[Mapping[str, int]] = None,
    clock: Callable[[], float] = time.perf_counter,
    cpu_clock: Callable[[], float] = time.process_time,
    on_round: Optional[Callable[[int], None]] = None,
) -> Interleaved:
    """Time every function of ``fns`` in interleaved rounds (see the module docstring).

    ``warmup`` untimed calls per entry come first, then one timed calibration call per entry (unless
    ``iterations`` gives the calls per slot), then rounds: at least ``min_rounds``, and more while the elapsed
    time plus one more round stays within ``budget_s``, up to ``max_rounds``. ``clock`` and ``cpu_clock`` are
    injectable for tests (CPU path); ``on_round(r)`` is called after each round (progress).
    """
    if not fns:
        raise ValueError("interleave: fns must not be empty")
    if min_rounds < 1:
        raise ValueError(f"interleave: min_rounds must be >= 1, got {min_rounds}")
    if max_rounds < min_rounds:
        raise ValueError(f"interleave: max_rounds ({max_rounds}) must be >= min_rounds ({min_rounds})")
    if warmup < 0:
        raise ValueError(f"interleave: warmup must be >= 0, got {warmup}")
    device = torch.device(device)
    cuda = device.type == "cuda"
    labels = list(fns)
    for label in labels:
        for _ in range(warmup):
            fns[label]()
    iters: dict[str, int] = {}
    for label in labels:
        if iterations is not None and label in iterations:
            iters[label] = max(1, int(iterations[label]))
            continue
        synchronize(device)
        t0 = clock()
        fns[label]()
        synchronize(device)
        iters[label] = _calibrate(clock() - t0, min_slot_s)
    out = {label: EntryTiming([], [], iters[label]) for label in labels}
    start = clock()
    r = 0
    while True:
        order = labels[r % len(labels):] + labels[: r % len(labels)]
        round_start = clock()
        if cuda:
            events = []
            for label in order:
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                fn, n = fns[label], iters[label]
                begin.record()
                for _ in range(n):
                    fn()
                end.record()
                events.append((label, begin, end))
            torch.cuda.synchronize(device)
            for label, begin, end in events:
                out[label].wall.append(begin.elapsed_time(end) * 1e-3 / iters[label])
        else:
            for label in order:
                fn, n = fns[label], iters[label]
                c0, t0 = cpu_clock(), clock()
                for _ in range(n):
                    fn()
                t1, c1 = clock(), cpu_clock()
                out[label].wall.append((t1 - t0) / n)
                out[label].cpu.append((c1 - c0) / n)
        r += 1
        if on_round is not None:
            on_round(r)
        now = clock()
        if r >= max_rounds or (r >= min_rounds and (now - start) + (now - round_start) > budget_s):
            break
    return Interleaved(out, r, clock() - start)


@dataclasses.dataclass
class Timing:
    median: float  # seconds per call
    q20: float
    q80: float
    rounds: int
    iterations: int  # calls per round
    samples: list[float]  # seconds per call, one per round


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
    """One function alone: median seconds per call over up to ``rounds`` rounds (at least min(3, rounds) when
    ``max_total_s`` runs out). For comparisons use :func:`interleave`, which pairs entries round by round."""
    if rounds < 1:
        raise ValueError(f"time_fn: rounds must be >= 1, got {rounds}")
    res = interleave({"fn": fn}, device=device, min_rounds=min(3, rounds), max_rounds=rounds,
                     budget_s=max_total_s, min_slot_s=min_round_s, warmup=warmup,
                     iterations=None if iterations is None else {"fn": iterations}, clock=clock)
    e = res.entries["fn"]
    t = e.time
    return Timing(t.median, t.q20, t.q80, e.rounds, e.iterations, list(e.wall))


class Stopwatch:
    """Wall and process CPU time of consecutive phases (device work included: it synchronises at each lap)."""

    def __init__(self, device: torch.device | str = "cpu", clock=time.perf_counter, cpu_clock=time.process_time):
        self.device, self.clock, self.cpu_clock = device, clock, cpu_clock
        synchronize(device)
        self.t, self.c = clock(), cpu_clock()

    def lap(self) -> tuple[float, float]:
        """(wall, cpu) seconds since the previous lap (or the start)."""
        synchronize(self.device)
        t, c = self.clock(), self.cpu_clock()
        out = (t - self.t, c - self.c)
        self.t, self.c = t, c
        return out


@contextlib.contextmanager
def cpu_threads(n: Optional[int]) -> Iterator[int]:
    """Run the block with ``n`` torch CPU threads (None: leave them), restoring the previous count after.

    Yields the thread count in effect."""
    old = torch.get_num_threads()
    if n is not None:
        if n < 1:
            raise ValueError(f"threads must be >= 1, got {n}")
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        if n is not None:
            torch.set_num_threads(old)


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine_load() -> Optional[float]:
    """The 1-minute load average, or None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def busy(load: Optional[float], cores: int, threads: int) -> bool:
    """Whether other processes leave fewer free cores than the benchmark's threads need.

    ``load`` is what the others use (sampled before this process starts working); with one thread this is
    "the 1-minute load exceeds the cores minus one"."""
    return load is not None and load > cores - threads
