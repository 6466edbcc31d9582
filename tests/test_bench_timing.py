"""The timing helpers: interleaved rounds in rotating order, paired ratios, adaptive rounds, wall and CPU time,
the CUDA-event path, thread control and the busy-machine rule."""
from __future__ import annotations

import time

import pytest
import torch

from orthokern.bench import timing
from orthokern.bench.timing import Spread, busy, cpu_threads, interleave, quantile, time_fn


class FakeClock:
    """A wall clock and a CPU clock advanced by the functions under test (CPU advances ``cpu_share`` as much)."""

    def __init__(self, cpu_share: float = 1.0):
        self.now = 0.0
        self.cpu = 0.0
        self.cpu_share = cpu_share

    def advance(self, dt: float) -> None:
        self.now += dt
        self.cpu += dt * self.cpu_share

    def wall(self) -> float:
        return self.now

    def proc(self) -> float:
        return self.cpu


def test_quantile_and_spread():
    xs = [5.0, 1.0, 3.0, 100.0, 2.0]
    assert quantile(xs, 0.5) == 3.0 and quantile(xs, 0.0) == 1.0 and quantile(xs, 1.0) == 100.0
    assert quantile([0.0, 10.0], 0.2) == pytest.approx(2.0)
    s = Spread.of(xs)
    assert s.median == 3.0 and 1.0 <= s.q20 <= s.median <= s.q80 <= 100.0
    inv = Spread(0.5, 0.25, 2.0).inverse()  # a time ratio -> a speed-up: the quantiles swap ends
    assert (inv.median, inv.q20, inv.q80) == (2.0, 0.5, 4.0)
    with pytest.raises(ValueError):
        Spread.of([])


def test_interleave_rotates_the_order_and_pairs_rounds():
    clock = FakeClock(cpu_share=0.5)
    calls = []
    # Round r's durations: a takes 1, b takes 2, except in round 2 where everything takes 10x (a burst of load).
    rnd = [0]

    def make(name, dt):
        def fn():
            calls.append(name)
            clock.advance(dt * (10 if rnd[0] == 2 else 1))
        return fn

    fns = {"a": make("a", 1.0), "b": make("b", 2.0), "c": make("c", 4.0)}

    def on_round(r):
        rnd[0] = r

    res = interleave(fns, min_rounds=4, max_rounds=4, budget_s=1e9, warmup=1, iterations={"a": 1, "b": 1, "c": 1},
                     clock=clock.wall, cpu_clock=clock.proc, on_round=on_round)
    assert res.rounds == 4
    timed = calls[3:]  # after one warm-up call each
    assert timed == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    a, b = res.entries["a"], res.entries["b"]
    assert a.wall == [1.0, 1.0, 10.0, 1.0] and b.wall == [2.0, 2.0, 20.0, 2.0]
    assert a.cpu == [0.5, 0.5, 5.0, 0.5]
    # The slow round slows both: the paired ratio does not move, while the times' q80 does.
    assert b.ratio_to(a).median == 2.0 and b.ratio_to(a).q80 == 2.0
    assert b.ratio_to(a, cpu=True).median == 2.0
    assert a.time.median == 1.0 and a.time.q80 > 1.0


def test_interleave_adds_rounds_while_the_budget_lasts():
    clock = FakeClock()
    cheap = interleave({"f": lambda: clock.advance(0.01)}, min_rounds=3, max_rounds=50, budget_s=0.2,
                       iterations={"f": 1}, clock=clock.wall, cpu_clock=clock.proc)
    assert 15 <= cheap.rounds <= 21  # about budget / round time
    dear = interleave({"f": lambda: clock.advance(1.0)}, min_rounds=3, max_rounds=50, budget_s=0.2,
                      iterations={"f": 1}, clock=clock.wall, cpu_clock=clock.proc)
    assert dear.rounds == 3  # the minimum, whatever the budget
    capped = interleave({"f": lambda: clock.advance(1e-4)}, min_rounds=3, max_rounds=7, budget_s=100,
                        iterations={"f": 1}, clock=clock.wall, cpu_clock=clock.proc)
    assert capped.rounds == 7


def test_interleave_calibrates_calls_per_slot():
    clock = FakeClock()
    res = interleave({"fast": lambda: clock.advance(1e-4), "slow": lambda: clock.advance(1e-2)}, min_rounds=2,
                     max_rounds=2, min_slot_s=2e-3, clock=clock.wall, cpu_clock=clock.proc)
    assert res.entries["fast"].iterations == 20 and res.entries["slow"].iterations == 1
    assert res.entries["fast"].wall == pytest.approx([1e-4, 1e-4])  # per call, not per slot


@pytest.mark.parametrize("kw, word", [({"min_rounds": 0}, "min_rounds"), ({"max_rounds": 2, "min_rounds": 3},
                                                                          "max_rounds"), ({"warmup": -1}, "warmup")])
def test_interleave_rejects_bad_arguments(kw, word):
    with pytest.raises(ValueError, match=word):
        interleave({"f": lambda: None}, **kw)
    with pytest.raises(ValueError, match="empty"):
        interleave({})


def test_ratio_needs_the_same_run():
    a = timing.EntryTiming([1.0, 2.0], [], 1)
    b = timing.EntryTiming([1.0], [], 1)
    with pytest.raises(ValueError, match="same run"):
        a.ratio_to(b)
    with pytest.raises(ValueError, match="CPU"):
        a.ratio_to(a, cpu=True)


def test_real_clocks_measure_real_time():
    res = interleave({"sleep": lambda: time.sleep(0.002)}, min_rounds=3, max_rounds=3, iterations={"sleep": 1})
    e = res.entries["sleep"]
    assert 0.0015 < e.time.median < 0.2
    assert e.cpu_median is not None and e.cpu_median < e.time.median  # sleeping costs no CPU time


def test_time_fn_cuts_rounds_for_slow_calls_but_keeps_three():
    clock = FakeClock()
    t = time_fn(lambda: clock.advance(0.01), rounds=50, warmup=1, max_total_s=0.001, clock=clock.wall)
    assert t.rounds == 3 and t.median == pytest.approx(0.01)
    with pytest.raises(ValueError, match="rounds"):
        time_fn(lambda: None, rounds=0)


def test_cuda_path_times_each_slot_with_events(monkeypatch):
    """The CUDA branch on a fake device clock: one event pair per slot, synchronised before reading."""
    now = [0.0]  # device time in ms
    synced = []

    class FakeEvent:
        def __init__(self, enable_timing=False):
            assert enable_timing
            self.t = None

        def record(self):
            self.t = now[0]

        def elapsed_time(self, end):
            assert synced, "elapsed_time read before synchronising"
            return end.t - self.t

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))

    def fn(ms):
        def f():
            now[0] += ms
        return f

    res = interleave({"a": fn(1.0), "b": fn(3.0)}, device="cuda", min_rounds=3, max_rounds=3, warmup=1,
                     iterations={"a": 2, "b": 1})
    assert res.entries["a"].wall == pytest.approx([1e-3] * 3)
    assert res.entries["b"].wall == pytest.approx([3e-3] * 3)
    assert res.entries["a"].cpu == [] and res.entries["b"].ratio_to(res.entries["a"]).median == pytest.approx(3.0)


def test_cpu_threads_sets_and_restores():
    before = torch.get_num_threads()
    with cpu_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with cpu_threads(None) as n:
        assert n == before
    with pytest.raises(ValueError, match="threads"):
        with cpu_threads(0):
            pass
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("load, cores, threads, expected", [
    (0.5, 2, 1, False), (1.0, 2, 1, False), (1.2, 2, 1, True),  # the rule: load > cores - 1 with one thread
    (0.5, 2, 2, True), (6.5, 8, 1, False), (7.5, 8, 1, True), (None, 2, 1, False),
])
def test_busy(load, cores, threads, expected):
    assert busy(load, cores, threads) is expected


def test_stopwatch_laps():
    clock = FakeClock(cpu_share=0.25)
    sw = timing.Stopwatch("cpu", clock=clock.wall, cpu_clock=clock.proc)
    clock.advance(2.0)
    assert sw.lap() == (2.0, 0.5)
    clock.advance(1.0)
    assert sw.lap() == (1.0, 0.25)


def test_machine_facts():
    assert timing.usable_cores() >= 1
    load = timing.machine_load()
    assert load is None or load >= 0
