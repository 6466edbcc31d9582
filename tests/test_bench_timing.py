"""The timing helper: medians over rounds, per-call times, calibration and arguments."""
from __future__ import annotations

import time

import pytest

from orthokern.bench.timing import summarize, time_fn


def test_summarize_gives_median_and_quantiles():
    t = summarize([5.0, 1.0, 3.0, 100.0, 2.0], iterations=1)
    assert t.median == 3.0 and t.rounds == 5
    assert 1.0 <= t.q20 <= t.median <= t.q80 <= 100.0


def test_time_fn_returns_median_per_call_of_rounds():
    # A fake clock: each call of fn advances it by the next duration; the per-round times are those
    # durations summed over the round's iterations, divided by the iterations.
    durations = iter([9.0] + [1.0, 1.0, 7.0, 7.0, 3.0, 3.0, 2.0, 2.0, 50.0, 50.0])
    now = [0.0]

    def fn():
        now[0] += next(durations)

    t = time_fn(fn, rounds=5, warmup=1, iterations=2, max_total_s=1e9, clock=lambda: now[0])
    assert t.samples == [1.0, 7.0, 3.0, 2.0, 50.0]
    assert t.median == 3.0 and t.iterations == 2


def test_time_fn_measures_real_time():
    t = time_fn(lambda: time.sleep(0.002), rounds=3, warmup=1, iterations=1)
    assert 0.0015 < t.median < 0.2
    assert len(t.samples) == 3


def test_time_fn_cuts_rounds_for_slow_calls_but_keeps_three():
    t = time_fn(lambda: time.sleep(0.01), rounds=50, warmup=1, max_total_s=0.001)
    assert t.rounds == 3


def test_time_fn_calibrates_iterations_for_fast_calls():
    t = time_fn(lambda: None, rounds=2, min_round_s=1e-3)
    assert t.iterations > 1


@pytest.mark.parametrize("kw", [{"rounds": 0}, {"warmup": -1}])
def test_time_fn_rejects_bad_arguments(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        time_fn(lambda: None, **kw)


def test_time_fn_cuda_path_times_rounds_with_events(monkeypatch):
    """The CUDA branch, on a fake device clock: one event pair per round, elapsed time / iterations."""
    import torch

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
    durations_ms = iter([1.0, 1.0, 2.0, 4.0, 4.0, 6.0, 6.0])  # warm-up, then 3 rounds x 2 iterations

    def fn():
        now[0] += next(durations_ms)

    t = time_fn(fn, device="cuda", rounds=3, warmup=1, iterations=2, max_total_s=1e9)
    assert t.samples == pytest.approx([1.5e-3, 4e-3, 6e-3])
    assert t.median == pytest.approx(4e-3)
