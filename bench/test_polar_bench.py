"""orthokern.polar per method x backend x mode, and its peers, on the design's suites (see conftest.py)."""
from __future__ import annotations

import math
import time

import pytest

import orthokern
from orthokern.bench import runner
from orthokern.bench.timing import synchronize

pytestmark = pytest.mark.bench


def _plan(seconds_per_call: float, cuda: bool) -> tuple[int, int]:
    """(rounds, iterations): rounds of >= ~1 ms on a GPU (launch noise), fewer rounds for slow calls."""
    iterations = 1 if not cuda else int(min(100, max(1, math.ceil(1e-3 / max(seconds_per_call, 1e-7)))))
    budget = 2.0 if cuda else 0.3
    rounds = int(min(10 if cuda else 3, max(3 if cuda else 1, budget / max(seconds_per_call * iterations, 1e-9))))
    return rounds, iterations


def test_polar(benchmark, suite, shape, dtype, spectrum, impl, device, entries_by_label, cases_by_key, case_data):
    case = cases_by_key[(suite, shape, dtype, spectrum)]
    entry = entries_by_label[impl]
    data = case_data(case, device)
    G = data.G
    if entry.method == runner.BASELINE_TALL and case.m >= case.n:
        pytest.skip("the SVD of the tall orientation is torch_svd itself on a tall input")

    def target():
        out = entry.fn(G)
        synchronize(device)  # the device's work belongs to the call
        return out

    try:
        t0 = time.perf_counter()
        O = target()
        first = time.perf_counter() - t0
    except orthokern.BackendUnavailable as e:
        pytest.skip(str(e))
    acc = data.ref.measure(O)
    del O
    rounds, iterations = _plan(first, device.type == "cuda")
    benchmark.group = f"{suite} {shape} {dtype} {spectrum}"
    benchmark.pedantic(target, rounds=rounds, warmup_rounds=1 if device.type == "cuda" else 0, iterations=iterations)

    # benchmark.stats is None under --benchmark-disable (a plain correctness run): no timing to record.
    median = benchmark.stats.stats.median if benchmark.stats is not None else None
    rec = {"label": entry.label, "kind": entry.kind, "method": entry.method, "backend": entry.backend,
           "mode": entry.mode, "dtype": dtype,
           "E": acc.E, "norm2": acc.norm2, "orth": acc.orth, "dist": acc.dist, "finite": acc.finite}
    if entry.method == runner.BASELINE and median is not None:
        data.svd_s = median
    if entry.method == runner.MUON:
        data.muon_E = acc.E
    benchmark.extra_info.update(rec)
    benchmark.extra_info["source"] = entry.source
    if data.svd_s is not None and median is not None:
        benchmark.extra_info["speedup_vs_svd"] = data.svd_s / median
    why = runner.check(rec, data.muon_E)
    assert why is None, f"{impl} on {case.key}: {why}"
