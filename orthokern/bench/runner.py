"""Run benchmark cases: ``polar(G)`` as users call it, the other orthokern methods and the peers, timed in
interleaved rounds (``orthokern.bench.timing``) and checked against the accuracy contract.

Per case: every entry is called once on the case's input (warm-up, and the result whose accuracy is measured),
then all entries that ran are timed together, round by round, with ``torch.linalg.svd`` as the paired baseline.
"""
from __future__ import annotations

import dataclasses
import sys
import time
import zlib
from typing import Callable, Optional, Sequence

import torch

import orthokern

from .. import dispatch, testing
from .._polar import DEFAULT_RCOND
from ..testing import Reference
from . import floor as floor_mod
from .peers import PEERS, peer_source
from .suites import REAL, Case
from .timing import interleave

# The label of orthokern.polar(G) called with no options (method="auto", mode="accurate", backend=None).
POLAR_G = "polar(G)"
# Methods whose result depends on ``mode``; the others (svd, cholqr2) are run once, in accurate mode.
MODE_SENSITIVE = ("auto", "gram_eigh", "newton_schulz")
# The peer every speed-up is relative to (the Orthogonal-SGDM paper's method), and its tall-orientation twin.
BASELINE = "torch_svd"
BASELINE_TALL = "torch_svd_tall"
# The peer the fast mode must match or beat in accuracy (docs/design.md, "Fast mode").
MUON = "muon_ns5"


@dataclasses.dataclass
class Entry:
    """One thing to time on a case: ``polar(G)``, another orthokern (method, backend, mode), or a peer."""

    kind: str  # "polar" (polar(G)), "method" (another orthokern method), "peer"
    method: str  # orthokern method ("auto" for polar(G)) or peer name
    backend: Optional[str]  # orthokern backend, None for backend=None (the best available); None for peers
    mode: str  # "accurate" / "fast"; "-" for peers
    fn: Callable[[torch.Tensor], torch.Tensor]
    source: str

    @property
    def is_peer(self) -> bool:
        return self.kind == "peer"

    @property
    def label(self) -> str:
        if self.kind == "polar":
            return POLAR_G
        if self.is_peer:
            return self.method
        mode = "" if self.method not in MODE_SENSITIVE else f"/{self.mode}"
        return f"{self.method}{'/' + self.backend if self.backend else ''}{mode}"


def split_methods(methods: Optional[Sequence[str]]) -> tuple[list[str], list[str]]:
    """(orthokern methods, peers) from a user's list; None means all of both. "polar(G)" is an alias of auto."""
    if not methods:
        return list(orthokern.METHODS), list(PEERS)
    ours, peers = [], []
    for m in methods:
        m = "auto" if m == POLAR_G else m
        if m in orthokern.METHODS:
            ours.append(m)
        elif m in PEERS:
            peers.append(m)
        else:
            raise ValueError(f"--methods: unknown method {m!r} (orthokern: {orthokern.METHODS}; peers: {tuple(PEERS)})")
    return ours, peers


def make_entries(methods: Sequence[str], peers: Sequence[str], backends: Sequence[Optional[str]],
                 modes: Sequence[str]) -> list[Entry]:
    """``polar(G)`` once (when "auto" is among ``methods``), each other method per backend (None: backend=None)
    and per mode where it has modes, then the peers, the SVD baseline first."""
    entries = []
    if "auto" in methods:
        entries.append(Entry("polar", "auto", None, "accurate", lambda G: orthokern.polar(G), "orthokern.polar(G)"))
    for method in methods:
        if method == "auto":
            continue
        for backend in backends:
            for mode in modes if method in MODE_SENSITIVE else ("accurate",):
                def fn(G, method=method, backend=backend, mode=mode):
                    return orthokern.polar(G, method=method, backend=backend, mode=mode)

                src = f"orthokern.polar(G, method={method!r}, mode={mode!r}, backend={backend!r})"
                entries.append(Entry("method", method, backend, mode, fn, src))
    for name in sorted(peers, key=lambda p: (p != BASELINE, p != BASELINE_TALL)):
        entries.append(Entry("peer", name, None, "-", PEERS[name], peer_source(name)))
    return entries


def ran_on(entry: Entry, G: torch.Tensor) -> str:
    """The implementation ``entry`` dispatches to on G, as "method/backend" (peers: their source)."""
    if entry.is_peer:
        return entry.source
    X = G.mT if G.shape[-2] < G.shape[-1] else G
    method = entry.method
    if method == "auto":
        method = dispatch.choose_method(X.shape[-2], X.shape[-1], X.device.type, entry.mode)
    try:
        impl = dispatch.resolve(method, entry.backend, X, mode=entry.mode)
    except orthokern.BackendUnavailable:
        return "-"
    return f"{impl.method}/{impl.backend}"


def case_seed(case: Case) -> int:
    return zlib.crc32(case.key.encode())


def check(rec: dict, muon_E: Optional[float]) -> Optional[str]:
    """Why an orthokern result breaks its contract, or None. Peers are measured, not judged."""
    if rec["kind"] == "peer":
        return None
    dtype = getattr(torch, rec["dtype"])
    if not rec["finite"]:
        return "non-finite output from finite input"
    if rec["mode"] == "accurate":
        if rec["E"] > testing.E_BOUND[dtype]:
            return f"E = {rec['E']:.2e} > {testing.E_BOUND[dtype]:.0e}"
        if rec["norm2"] > 1 + testing.NORM_SLACK[dtype]:
            return f"||O||_2 - 1 = {rec['norm2'] - 1:.2e} > {testing.NORM_SLACK[dtype]:.0e}"
    elif muon_E is not None and rec["E"] > max(muon_E, testing.E_BOUND[dtype]):
        # fast mode: at least as accurate as Muon's 5-step iteration on the same input
        return f"fast mode E = {rec['E']:.2e} worse than Muon NS5's {muon_E:.2e}"
    return None


class Progress:
    """One line per step on stderr (a tqdm bar where tqdm is installed): the benchmark never goes quiet."""

    # Without tqdm, notes are printed at most this often (a line per timing round would flood the terminal).
    PLAIN_EVERY_S = 5.0

    def __init__(self, total: int, enabled: bool, unit: str = "case"):
        self.bar = None
        self.enabled = enabled
        self.total, self.done = total, 0
        self._last_plain = -float("inf")
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, file=sys.stderr, unit=unit, dynamic_ncols=True)
            except ImportError:
                pass

    def note(self, text: str) -> None:
        """What is running now, within the current step."""
        if self.bar is not None:
            self.bar.set_postfix_str(text[:70])
        elif self.enabled and time.monotonic() - self._last_plain >= self.PLAIN_EVERY_S:
            self._last_plain = time.monotonic()
            print(f"  [{self.done + 1}/{self.total}] {text}", file=sys.stderr, flush=True)

    def step(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def make_input(case: Case, device: torch.device) -> torch.Tensor:
    """The case's (batch, m, n) input: a fresh matrix with the case's spectrum, or real ResNet gradients."""
    if case.spectrum == REAL:
        from .gradients import real_batch

        return real_batch(case.suite, case.m, case.n, case.batch, device, case.dtype)
    return testing.random_matrix(case.batch, case.m, case.n, case.spectrum, dtype=case.dtype, device=device,
                                 seed=case_seed(case))


@dataclasses.dataclass
class RoundPolicy:
    """How many interleaved rounds a case gets: at least ``min_rounds``, more while ``budget_s`` lasts."""

    min_rounds: int = 5
    max_rounds: int = 30
    budget_s: float = 3.0


def _error_text(e: Exception) -> str:
    first = str(e).splitlines()[0][:200] if str(e) else ""
    return f"{type(e).__name__}: {first}"


def run_cases(
    cases: Sequence[Case],
    entries: Sequence[Entry],
    *,
    device: torch.device,
    rates: Optional[floor_mod.DeviceRates] = None,
    policy: Optional[RoundPolicy] = None,
    accuracy_matrices: int = 8,
    progress: bool = True,
    after_case: Optional[Callable[[], None]] = None,
) -> tuple[list[dict], list[dict], list[dict]]:
    """(records, skipped, errors): one record per (case, entry) that ran, one skipped item per combination that
    cannot run here (:class:`orthokern.BackendUnavailable`, or a peer that failed), one error per orthokern
    combination that raised anything else (those fail the run)."""
    records, skipped, errors = [], [], []
    bar = Progress(len(cases), progress)
    try:
        for case in cases:
            records += _run_case(case, entries, device, rates, policy or RoundPolicy(), accuracy_matrices, bar,
                                 skipped, errors)
            bar.step()
            if after_case is not None:
                after_case()
    finally:
        bar.close()
    return records, skipped, errors


def _run_case(case: Case, entries: Sequence[Entry], device: torch.device, rates, policy: RoundPolicy,
              accuracy_matrices: int, bar: Progress, skipped: list, errors: list) -> list[dict]:
    G = make_input(case, device)
    wide = case.m < case.n
    bar.note(f"{case.key}: reference SVD")
    ref = Reference(G, DEFAULT_RCOND, max_matrices=accuracy_matrices)
    ran, accs = [], {}
    for entry in entries:
        if entry.method == BASELINE_TALL and not wide:
            continue  # the same computation as torch_svd on a tall input
        bar.note(f"{case.key}: {entry.label} (first call, accuracy)")
        try:
            O = entry.fn(G)
        except orthokern.BackendUnavailable as e:
            skipped.append({"case": case.key, "entry": entry.label, "reason": str(e)})
            continue
        except Exception as e:  # noqa: BLE001 (any failure is reported, none ends the run)
            if entry.is_peer:
                # A peer that fails (e.g. out of memory) is reported but is not orthokern's failure.
                skipped.append({"case": case.key, "entry": entry.label, "reason": f"peer raised {_error_text(e)}"})
            else:
                # A method that crashes is a failure, not a skip: it goes to the gate with the wrong answers.
                errors.append({"case": case.key, "entry": entry.label, "why": f"raised {_error_text(e)}"})
            continue
        accs[entry.label] = ref.measure(O)
        ran.append(entry)
    if not ran:
        return []

    def on_round(r):
        bar.note(f"{case.key}: timing, round {r}")

    timing = interleave({e.label: (lambda fn=e.fn: fn(G)) for e in ran}, device=device, warmup=0,
                        min_rounds=policy.min_rounds, max_rounds=policy.max_rounds, budget_s=policy.budget_s,
                        min_slot_s=2e-3, on_round=on_round)
    base = timing.entries.get(BASELINE)
    base_tall = timing.entries.get(BASELINE_TALL, base)
    muon_E = accs[MUON].E if MUON in accs else None
    recs = []
    for entry in ran:
        t = timing.entries[entry.label]
        acc = accs[entry.label]
        spread = t.time
        rec = {
            "suite": case.suite, "shape": case.shape, "batch": case.batch, "m": case.m, "n": case.n,
            "full_shape": "x".join(map(str, case.full)) if case.full else None,
            "dtype": case.dtype_name, "spectrum": case.spectrum,
            "label": entry.label, "kind": entry.kind, "method": entry.method,
            "backend": entry.backend, "mode": entry.mode, "ran_on": ran_on(entry, G), "source": entry.source,
            "median_s": spread.median, "q20_s": spread.q20, "q80_s": spread.q80, "cpu_s": t.cpu_median,
            "rounds": t.rounds, "iterations": t.iterations, "wall_rounds": t.wall, "cpu_rounds": t.cpu,
            "E": acc.E, "norm2": acc.norm2, "orth": acc.orth, "dist": acc.dist, "finite": acc.finite,
            "speedup_vs_svd": None, "speedup_q20": None, "speedup_q80": None, "speedup_cpu": None,
            "speedup_vs_svd_tall": None,
            "floor_s": None, "floor_ratio": None, "violation": None,
        }
        if base is not None:
            s = t.ratio_to(base).inverse()
            rec["speedup_vs_svd"], rec["speedup_q20"], rec["speedup_q80"] = s.median, s.q20, s.q80
            if t.cpu:
                rec["speedup_cpu"] = t.ratio_to(base, cpu=True).inverse().median
        if base_tall is not None:
            rec["speedup_vs_svd_tall"] = t.ratio_to(base_tall).inverse().median
        if rates is not None:
            fl = floor_mod.floor_seconds(rates, entry.method, entry.mode if not entry.is_peer else "fast", case,
                                         torch.device(device).type)
            rec["floor_s"], rec["floor_ratio"] = fl, spread.median / fl
        rec["violation"] = check(rec, muon_E)
        recs.append(rec)
    return recs
