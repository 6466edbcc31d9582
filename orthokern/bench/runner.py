"""Run benchmark cases: every orthokern method x backend x mode and every peer, timed and checked."""
from __future__ import annotations

import dataclasses
import sys
import zlib
from typing import Callable, Optional, Sequence

import torch

import orthokern

from .. import testing
from .._polar import DEFAULT_RCOND
from . import floor as floor_mod
from ..testing import Reference
from .peers import PEERS, peer_source
from .suites import REAL, Case
from .timing import time_fn

# Methods whose result depends on ``mode``; the others (svd, cholqr2) are run once, in accurate mode.
MODE_SENSITIVE = ("auto", "gram_eigh", "newton_schulz")
# The peer every speed-up is relative to (the Orthogonal-SGDM paper's method).
BASELINE = "torch_svd"
# The peer the fast mode must match or beat in accuracy (design.md section 1).
MUON = "muon_ns5"


@dataclasses.dataclass
class Entry:
    """One thing to time on a case: an orthokern (method, backend, mode) or a peer."""

    method: str
    backend: str  # orthokern backend, or "peer"
    mode: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    source: str

    @property
    def is_peer(self) -> bool:
        return self.backend == "peer"

    @property
    def label(self) -> str:
        return self.method if self.is_peer else f"{self.method}/{self.backend}/{self.mode}"


def split_methods(methods: Optional[Sequence[str]]) -> tuple[list[str], list[str]]:
    """(orthokern methods, peers) from a user's list; None means all of both."""
    if not methods:
        return list(orthokern.METHODS), list(PEERS)
    ours, peers = [], []
    for m in methods:
        if m in orthokern.METHODS:
            ours.append(m)
        elif m in PEERS:
            peers.append(m)
        else:
            raise ValueError(f"--methods: unknown method {m!r} (orthokern: {orthokern.METHODS}; peers: {tuple(PEERS)})")
    return ours, peers


def make_entries(methods, peers, backends, modes) -> list[Entry]:
    entries = []
    for method in methods:
        for backend in backends:
            for mode in modes if method in MODE_SENSITIVE else ("accurate",):
                def fn(G, method=method, backend=backend, mode=mode):
                    return orthokern.polar(G, method=method, backend=backend, mode=mode)

                entries.append(Entry(method, backend, mode, fn, f"orthokern.polar(backend={backend!r})"))
    # Peers after orthokern's entries, the baseline first: the table reads top-down as "ours, then theirs".
    for name in sorted(peers, key=lambda p: p != BASELINE):
        entries.append(Entry(name, "peer", "-", PEERS[name], peer_source(name)))
    return entries


def case_seed(case: Case) -> int:
    return zlib.crc32(case.key.encode())


def check(rec: dict, muon_E: Optional[float]) -> Optional[str]:
    """Why an orthokern result breaks its contract, or None. Peers are measured, not judged."""
    if rec["backend"] == "peer":
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


class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.bar = None
        self.enabled = enabled
        self.total, self.done = total, 0
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, file=sys.stderr, unit="run", dynamic_ncols=True)
            except ImportError:
                pass

    def step(self, text: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_description_str(text[:60])
            self.bar.update(1)
        elif self.enabled:
            print(f"[{self.done}/{self.total}] {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cannot_run(e: Exception) -> bool:
    """True for orthokern's "this backend cannot run this here" errors (as opposed to a crash)."""
    text = str(e)
    return "cannot run" in text or "has no backend" in text or "no implementation" in text


def make_input(case: Case, device: torch.device) -> torch.Tensor:
    """The case's (batch, m, n) input: a fresh matrix with the case's spectrum, or real ResNet gradients."""
    if case.spectrum == REAL:
        from .gradients import real_batch

        return real_batch(case.suite, case.m, case.n, case.batch, device, case.dtype)
    return testing.random_matrix(case.batch, case.m, case.n, case.spectrum, dtype=case.dtype, device=device,
                                 seed=case_seed(case))


def run_cases(
    cases: Sequence[Case],
    entries: Sequence[Entry],
    *,
    device: torch.device,
    rates: Optional[floor_mod.DeviceRates] = None,
    rounds: int = 5,
    max_entry_s: float = 2.0,
    accuracy_matrices: int = 8,
    progress: bool = True,
) -> tuple[list[dict], list[dict]]:
    """(records, skipped, errors): one record per (case, entry) that ran, one skipped item per combination
    that cannot run here, one error per combination that raised anything else."""
    records, skipped, errors = [], [], []
    bar = _Progress(len(cases) * len(entries), progress)
    try:
        for case in cases:
            G = make_input(case, device)
            ref = Reference(G, DEFAULT_RCOND, max_matrices=accuracy_matrices)
            base_t, muon_E, case_recs = None, None, []
            for entry in entries:
                bar.step(f"{case.shape} {case.dtype_name} {entry.label}")
                try:
                    O = entry.fn(G)
                except Exception as e:  # noqa: BLE001 (any failure is reported, none ends the run)
                    if isinstance(e, RuntimeError) and cannot_run(e):
                        skipped.append({"case": case.key, "entry": entry.label, "reason": str(e)})
                    elif entry.is_peer:
                        # A peer that fails (e.g. out of memory) is reported but is not orthokern's failure.
                        skipped.append({"case": case.key, "entry": entry.label,
                                        "reason": f"peer raised {type(e).__name__}: {str(e).splitlines()[0][:200]}"})
                    else:
                        # A method that crashes is a failure, not a skip: it goes to the gate with the wrong answers.
                        errors.append({"case": case.key, "entry": entry.label,
                                       "why": f"raised {type(e).__name__}: {str(e).splitlines()[0][:200]}"})
                    continue
                acc = ref.measure(O)
                del O
                t = time_fn(lambda: entry.fn(G), device=device, rounds=rounds, warmup=1, max_total_s=max_entry_s)
                rec = {
                    "suite": case.suite, "shape": case.shape, "batch": case.batch, "m": case.m, "n": case.n,
                    "full_shape": "x".join(map(str, case.full)) if case.full else None,
                    "dtype": case.dtype_name, "spectrum": case.spectrum,
                    "method": entry.method, "backend": entry.backend, "mode": entry.mode, "source": entry.source,
                    "median_s": t.median, "q20_s": t.q20, "q80_s": t.q80, "rounds": t.rounds,
                    "iterations": t.iterations,
                    "E": acc.E, "norm2": acc.norm2, "orth": acc.orth, "dist": acc.dist, "finite": acc.finite,
                    "floor_s": None, "floor_ratio": None, "speedup_vs_svd": None, "violation": None,
                }
                if rates is not None:
                    fl = floor_mod.floor_seconds(rates, entry.method, entry.mode if not entry.is_peer else "fast", case)
                    rec["floor_s"], rec["floor_ratio"] = fl, t.median / fl
                if entry.method == BASELINE:
                    base_t = t.median
                if entry.method == MUON:
                    muon_E = acc.E
                case_recs.append(rec)
            for rec in case_recs:
                if base_t is not None:
                    rec["speedup_vs_svd"] = base_t / rec["median_s"]
                rec["violation"] = check(rec, muon_E)
            records.extend(case_recs)
            del G, ref
    finally:
        bar.close()
    return records, skipped, errors
