"""pytest-benchmark suites of orthokern.polar and its peers (not part of the default test run: testpaths is
tests/).

    pytest bench/                                     # CPU: reduced sizes (< 2 min); GPU: full sizes
    pytest bench/ --benchmark-group-by=param:shape    # methods side by side per shape
    pytest bench/ --bench-size full --bench-spectra all --benchmark-json out.json

Cases and peers come from orthokern.bench (the same ones `python -m orthokern.bench` runs).
"""
from __future__ import annotations

import collections

import pytest
import torch

import orthokern
from orthokern.bench import runner, suites
from orthokern.bench.cli import default_backends


def pytest_addoption(parser):
    g = parser.getgroup("orthokern bench")
    g.addoption("--bench-size", choices=("auto", "quick", "full"), default="auto",
                help="auto: full sizes on a GPU, reduced sizes on a CPU")
    g.addoption("--bench-device", default=None, help="cpu or cuda (default: cuda when available)")
    g.addoption("--bench-suite", default="all", help="comma-separated suites (resnet50, resnet18, tall, square, all)")
    g.addoption("--bench-spectra", default=None, help="comma-separated spectra, or 'all'")
    g.addoption("--bench-methods", default=None, help="comma-separated orthokern methods ('auto' = polar(G)) and peers")
    g.addoption("--bench-backends", default=None,
                help="comma-separated backends for the non-auto methods (default: backend=None, the best available)")
    g.addoption("--bench-threads", type=int, default=None,
                help="torch CPU threads (default 1 on a CPU: a shared CPU's extra threads stall small calls)")


def pytest_configure(config):
    config.addinivalue_line("markers", "bench: a benchmark (bench/ only)")
    if not config.pluginmanager.hasplugin("benchmark"):
        raise pytest.UsageError("bench/ needs pytest-benchmark: pip install pytest-benchmark "
                                "(or run `python -m orthokern.bench`, which does not)")
    threads = config.getoption("--bench-threads")
    if threads is None and bench_device(config).type == "cpu":
        threads = 1
    if threads:
        torch.set_num_threads(threads)


def bench_device(config) -> torch.device:
    name = config.getoption("--bench-device")
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def _quick(config) -> bool:
    size = config.getoption("--bench-size")
    return size == "quick" or (size == "auto" and bench_device(config).type != "cuda")


def bench_cases(config) -> list[suites.Case]:
    spectra = config.getoption("--bench-spectra")
    spectra = list(suites.ALL_SPECTRA) if spectra == "all" else (spectra.split(",") if spectra else None)
    names = suites.expand_suites(config.getoption("--bench-suite").split(","))
    return suites.make_cases(names, quick=_quick(config), spectra=spectra)


def bench_entries(config) -> list[runner.Entry]:
    methods = config.getoption("--bench-methods")
    ours, peers = runner.split_methods(methods.split(",") if methods else None)
    backends = config.getoption("--bench-backends")
    backends = ([None] if not backends else default_backends(bench_device(config)) if backends == "all"
                else backends.split(","))
    entries = runner.make_entries(ours, peers, backends, list(orthokern.MODES))
    # torch_svd and Muon first: the speed-up and the fast-mode accuracy check refer to them.
    return sorted(entries, key=lambda e: (e.label != runner.BASELINE, e.label != runner.MUON, not e.is_peer))


def pytest_generate_tests(metafunc):
    if "impl" in metafunc.fixturenames and "shape" in metafunc.fixturenames:
        cases = bench_cases(metafunc.config)
        metafunc.parametrize(("suite", "shape", "dtype", "spectrum"),
                             [(c.suite, c.shape, c.dtype_name, c.spectrum) for c in cases],
                             ids=[f"{c.suite}-{c.shape}-{c.dtype_name}-{c.spectrum}" for c in cases])
        metafunc.parametrize("impl", [e.label for e in bench_entries(metafunc.config)])


@pytest.fixture(scope="session")
def device(pytestconfig):
    return bench_device(pytestconfig)


@pytest.fixture(scope="session")
def entries_by_label(pytestconfig):
    return {e.label: e for e in bench_entries(pytestconfig)}


@pytest.fixture(scope="session")
def cases_by_key(pytestconfig):
    return {(c.suite, c.shape, c.dtype_name, c.spectrum): c for c in bench_cases(pytestconfig)}


class CaseData:
    """The input and its float64 reference for one case, plus what earlier benchmarks of it found."""

    def __init__(self, G, ref):
        self.G, self.ref = G, ref
        self.svd_s = None  # median of torch_svd on this case
        self.muon_E = None  # E of Muon's iteration on this case


@pytest.fixture(scope="session")
def case_data():
    cache: collections.OrderedDict = collections.OrderedDict()

    def get(case: suites.Case, device) -> CaseData:
        if case.key not in cache:
            from orthokern._polar import DEFAULT_RCOND
            from orthokern.testing import Reference

            G = runner.make_input(case, device)
            cache[case.key] = CaseData(G, Reference(G, DEFAULT_RCOND, max_matrices=8))
            while len(cache) > 4:  # full-size GPU inputs are large; parametrization visits cases in order
                cache.popitem(last=False)
        cache.move_to_end(case.key)
        return cache[case.key]

    return get
