"""``--suite train``: a ResNet-50 training step with torch.optim.SGD against orthokern.FastOrthogonalSGD, and
the cost of orthogonalising all of a step's gradients against torch.linalg.svd.

1. **Steps.** One copy of the model per optimiser (same initial weights, same batch). Every optimiser first
   takes ``warmup`` untimed steps, then the same number of timed steps, interleaved: round r makes one step
   with each optimiser, in an order rotated by r. Each step is timed in two laps, forward + backward and
   ``optimizer.step()`` (wall and process CPU time), so the orthogonalisation's cost is measured inside the very
   steps it belongs to: the ``optimizer.step()`` lap minus SGD's in the same round.
2. **All gradients.** The gradients of the last SGD backward, grouped by shape (one batched call per shape, as
   FastOrthogonalSGD makes them), orthogonalised by ``polar(G)``, by ``torch.linalg.svd`` (as given, and on the
   tall orientation for the wide shapes) and by the peers, in interleaved rounds; with E (worst gradient) of
   each. This gives the line "all N gradients: polar(G) X s vs torch.linalg.svd Y s: Z x faster".

On a CPU the model runs at a tiny batch and image size (the orthogonalisation's cost does not depend on them;
forward and backward do), so the orthogonalisation's share of a step is only meaningful on a GPU at a real batch.
"""
from __future__ import annotations

import copy
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from typing import Callable, Optional, Sequence

import torch
from torch import nn

import orthokern

from .. import testing
from .._polar import DEFAULT_RCOND
from ..testing import Reference
from . import report, runner
from .peers import PEERS, torch_svd, torch_svd_tall
from .resnet import resnet50
from .timing import Spread, Stopwatch, interleave, synchronize

SGD_LABEL = "torch.optim.SGD(momentum=0.9)"
SVD_ROW = "torch.linalg.svd"
SVD_T_ROW = "torch.linalg.svd of Gᵀ (wide shapes)"


def find_fast_orthogonal_sgd():
    """orthokern.FastOrthogonalSGD, or None where this installation lacks it."""
    return getattr(orthokern, "FastOrthogonalSGD", None)


def grouped_gradients(model: nn.Module) -> list[torch.Tensor]:
    """The gradients of every >= 2-dim parameter as (count, out, in*k*k) batches, one per distinct shape."""
    groups: dict[tuple[int, int], list[torch.Tensor]] = defaultdict(list)
    for p in model.parameters():
        if p.dim() >= 2 and p.grad is not None:
            g = p.grad.reshape(p.shape[0], -1)
            groups[tuple(g.shape)].append(g)
    return [torch.stack(gs) for gs in groups.values()]


def _optimizer_label(method: str, mode: str) -> str:
    args = ([f'method="{method}"'] if method != "auto" else []) + ([f'mode="{mode}"'] if mode != "accurate" else [])
    return f"FastOrthogonalSGD({', '.join(args)})"


def _variants(methods: Sequence[str], modes: Sequence[str], lr: float, skipped: list) -> list[tuple]:
    """[(label, method, mode, make_optimizer(params)), ...]: SGD first, then FastOrthogonalSGD per method/mode."""
    out = [(SGD_LABEL, "-", "-", lambda ps: torch.optim.SGD(ps, lr=lr, momentum=0.9))]
    cls = find_fast_orthogonal_sgd()
    if cls is None:
        skipped.append("orthokern.FastOrthogonalSGD: not in this installation; only SGD and the polar calls ran")
        return out
    for method in methods:
        for mode in modes if method in runner.MODE_SENSITIVE else ("accurate",):
            def make(ps, method=method, mode=mode):
                return cls(ps, lr=lr, momentum=0.9, method=method, mode=mode)

            out.append((_optimizer_label(method, mode), method, mode, make))
    return out


def _step(model, opt, x, y, loss_fn, device) -> tuple[tuple[float, float], tuple[float, float]]:
    """One training step: ((wall, cpu) of forward + backward, (wall, cpu) of optimizer.step())."""
    sw = Stopwatch(device)
    opt.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    fb = sw.lap()
    opt.step()
    return fb, sw.lap()


class Log:
    """Progress lines on stderr, stamped with the seconds since the suite started (or nothing, when disabled)."""

    def __init__(self, enabled: bool):
        self.enabled, self.t0 = enabled, time.perf_counter()

    def __call__(self, text: str) -> None:
        if self.enabled:
            print(f"[{time.perf_counter() - self.t0:6.1f} s] {text}", file=sys.stderr, flush=True)


def time_steps(variants, base: nn.Module, x, y, device, *, warmup: int, min_rounds: int, max_rounds: int,
               budget_s: float, log: Log, skipped: list) -> tuple[list[dict], nn.Module]:
    """Phase 1: interleaved timed steps of every optimiser. Returns (one record per optimiser, SGD's model)."""
    loss_fn = nn.CrossEntropyLoss()
    live = []
    for label, method, mode, make in variants:
        model = copy.deepcopy(base)
        try:
            opt = make(model.parameters())
            for i in range(warmup):
                log(f"  warm-up step {i + 1}/{warmup}: {label}")
                _step(model, opt, x, y, loss_fn, device)
        except (orthokern.BackendUnavailable, ValueError) as e:
            skipped.append(f"{label}: {e}")
            continue
        live.append({"label": label, "method": method, "mode": mode, "model": model, "opt": opt,
                     "fb": [], "fb_cpu": [], "opt_s": [], "opt_cpu": []})
    sw_total = Stopwatch("cpu")
    r = 0
    while True:
        order = live[r % len(live):] + live[: r % len(live)]
        round_start = sw_total.clock()
        for v in order:
            log(f"  round {r + 1}: step with {v['label']}")
            (fb, fbc), (st, stc) = _step(v["model"], v["opt"], x, y, loss_fn, device)
            v["fb"].append(fb)
            v["fb_cpu"].append(fbc)
            v["opt_s"].append(st)
            v["opt_cpu"].append(stc)
        r += 1
        now = sw_total.clock()
        if r >= max_rounds or (r >= min_rounds and (now - sw_total.t) + (now - round_start) > budget_s):
            break
    sgd = live[0]
    out = []
    for v in live:
        steps = [a + b for a, b in zip(v["fb"], v["opt_s"])]
        sgd_steps = [a + b for a, b in zip(sgd["fb"], sgd["opt_s"])]
        rec = {"optimizer": v["label"], "method": v["method"], "mode": v["mode"], "steps": len(steps),
               "warmup": warmup, "step_s": statistics.median(steps),
               "step_cpu_s": statistics.median(a + b for a, b in zip(v["fb_cpu"], v["opt_cpu"])),
               "forward_backward_s": statistics.median(v["fb"]), "optimizer_step_s": statistics.median(v["opt_s"])}
        if v is not sgd:
            # Paired per round: this optimiser's step and its optimizer.step() lap against SGD's in the same round.
            rec["overhead_s"] = statistics.median(a - b for a, b in zip(steps, sgd_steps))
            rec["orthogonalisation_s"] = statistics.median(a - b for a, b in zip(v["opt_s"], sgd["opt_s"]))
            rec["step_ratio"] = Spread.of([a / b for a, b in zip(steps, sgd_steps)]).median
        out.append(rec)
    return out, sgd["model"]


def _tall_view(G: torch.Tensor) -> torch.Tensor:
    return G.mT if G.shape[-2] < G.shape[-1] else G


def time_all_gradients(groups: list[torch.Tensor], device, *, methods, modes, peers, min_rounds: int,
                       max_rounds: int, budget_s: float, log: Log) -> dict:
    """Phase 2: polar(G) and the SVD (and peers) over every gradient group, interleaved; E of each."""
    wide = [G for G in groups if G.shape[-2] < G.shape[-1]]
    tall = [G for G in groups if G.shape[-2] >= G.shape[-1]]
    fns: dict[str, Callable[[], object]] = {}
    for method in methods:
        for mode in modes if method in runner.MODE_SENSITIVE else ("accurate",):
            args = ([f'method="{method}"'] if method != "auto" else []) + (
                [f'mode="{mode}"'] if mode != "accurate" else [])
            label = f"polar(G{''.join(', ' + a for a in args)})"
            fns[label] = (lambda method=method, mode=mode: [orthokern.polar(G, method=method, mode=mode)
                                                            for G in groups])
    # The SVD in three parts, so that the tall shapes (the same computation in both orientations) run once per
    # round: svd = wide + tall, svd of G^T for the wide ones = wide transposed + tall.
    fns["svd: wide shapes"] = lambda: [torch_svd(G) for G in wide]
    fns["svd: tall shapes"] = lambda: [torch_svd(G) for G in tall]
    if wide:
        fns["svd of Gᵀ: wide shapes"] = lambda: [torch_svd_tall(G) for G in wide]
    for p in peers:
        if p not in (runner.BASELINE, runner.BASELINE_TALL):
            fns[p] = (lambda fn=PEERS[p]: [fn(G) for G in groups])

    # Accuracy first (also the warm-up call of each): E worst over the gradients, against float64 SVDs.
    log("  reference SVDs of the gradients (float64) for E")
    refs = [Reference(G, DEFAULT_RCOND, max_matrices=2) for G in groups]
    E = {}
    for label, fn in fns.items():
        if label.startswith("svd"):
            continue
        log(f"  first call (accuracy): {label}")
        outs = fn()
        accs = [ref.measure(O) for ref, O in zip(refs, outs)]
        E[label] = (max(a.E for a in accs), all(a.finite for a in accs))
    log("  first call (accuracy): torch.linalg.svd")
    accs = [ref.measure(torch_svd(G)) for ref, G in zip(refs, groups)]
    E[SVD_ROW] = (max(a.E for a in accs), all(a.finite for a in accs))
    if "svd of Gᵀ: wide shapes" in fns:
        # The accuracy call above warmed the SVD of the groups as given; the transposed ones get their own.
        log("  warm-up: torch.linalg.svd of Gᵀ")
        fns["svd of Gᵀ: wide shapes"]()

    def on_round(r):
        log(f"  all gradients: round {r}")

    res = interleave(fns, device=device, warmup=0, iterations={k: 1 for k in fns}, min_rounds=min_rounds,
                     max_rounds=max_rounds, budget_s=budget_s, on_round=on_round)
    e = res.entries

    def add(x, y):  # per-round sums of two entries (the SVD's parts)
        return [a + b for a, b in zip(x, y)]

    # (wall per round, cpu per round) of every row; cpu lists are empty on a GPU.
    series = {label: (t.wall, t.cpu) for label, t in e.items() if not label.startswith("svd")}
    w, t = e["svd: wide shapes"], e["svd: tall shapes"]
    svd = (add(w.wall, t.wall), add(w.cpu, t.cpu))
    wt = e.get("svd of Gᵀ: wide shapes")
    svd_t = (add(wt.wall, t.wall), add(wt.cpu, t.cpu)) if wt is not None else svd
    series[SVD_ROW], series[SVD_T_ROW] = svd, svd_t
    rows = []
    for label, (wall, cpu) in series.items():
        rows.append({
            "label": label, "median_s": statistics.median(wall), "cpu_s": statistics.median(cpu) if cpu else None,
            "speedup_vs_svd": statistics.median(b / a for a, b in zip(wall, svd[0])),
            "speedup_cpu": statistics.median(b / a for a, b in zip(cpu, svd[1])) if cpu else None,
            "speedup_vs_svd_tall": statistics.median(b / a for a, b in zip(wall, svd_t[0])),
            "E": E[label][0] if label in E else None, "finite": E[label][1] if label in E else True})
    ran = {mode: sorted({runner.ran_on(runner.Entry("polar", "auto", None, mode, None, ""), G) for G in groups})
           for mode in modes}
    return {"rows": rows, "rounds": res.rounds, "gradients": sum(G.shape[0] for G in groups),
            "shapes": len(groups), "polar_ran_on": ran}


def run_train(device: torch.device, *, batch: int, image: int, methods: Sequence[str], modes: Sequence[str],
              peers: Sequence[str], warmup: int = 1, min_rounds: int = 3, max_rounds: int = 10,
              budget_s: float = 30.0, lr: float = 1e-3, model_fn=None, progress: bool | Log = True) -> dict:
    """Both phases; the record :func:`format_train` prints."""
    log = progress if isinstance(progress, Log) else Log(progress)
    torch.manual_seed(0)
    base, source = (model_fn or resnet50)()
    base = base.to(device)
    x = torch.randn(batch, 3, image, image, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    skipped: list[str] = []
    variants = _variants(methods, modes, lr, skipped)
    log(f"train suite, phase 1/2: {len(variants)} optimisers, {warmup} warm-up step{'s' if warmup != 1 else ''} "
        f"each, then at least {min_rounds} interleaved timed steps each")
    steps, sgd_model = time_steps(variants, base, x, y, device, warmup=warmup, min_rounds=min_rounds,
                                  max_rounds=max_rounds, budget_s=budget_s, log=log, skipped=skipped)
    groups = grouped_gradients(sgd_model)
    log(f"train suite, phase 2/2: orthogonalising the step's {sum(g.shape[0] for g in groups)} gradients "
         f"({len(groups)} shapes) with polar(G), torch.linalg.svd and peers")
    grads = time_all_gradients(groups, device, methods=methods, modes=modes, peers=peers, min_rounds=min_rounds,
                               max_rounds=max_rounds, budget_s=budget_s, log=log)
    synchronize(device)
    return {"model": source, "batch": batch, "image": image, "device_type": device.type, "steps": steps,
            "all_gradients": grads, "gradient_groups": [list(g.shape) for g in groups], "skipped": skipped}


def _ms(s: Optional[float]) -> str:
    return report.fmt_time(s)


def train_violations(res: dict) -> list[str]:
    """The accuracy gate on real gradients: polar(G) (accurate) within the float32 bound; fast mode no worse
    than Muon's iteration where that ran."""
    rows = {r["label"]: r for r in res["all_gradients"]["rows"]}
    muon = rows.get("muon_ns5_batched") or rows.get("muon_ns5")
    out = []
    for label, r in rows.items():
        if not label.startswith("polar("):
            continue
        if not r["finite"]:
            out.append(f"{label}: non-finite output from finite gradients")
        elif "fast" not in label and r["E"] > testing.E_BOUND[torch.float32]:
            out.append(f"{label}: E = {r['E']:.2e} > {testing.E_BOUND[torch.float32]:.0e}")
        elif "fast" in label and muon is not None and r["E"] > max(muon["E"], testing.E_BOUND[torch.float32]):
            out.append(f"{label}: E = {r['E']:.2e} worse than Muon NS5's {muon['E']:.2e}")
    return out


def format_train(res: dict) -> str:
    steps = res["steps"]
    n_steps = steps[0]["steps"] if steps else 0
    warm = steps[0]["warmup"] if steps else 0
    cpu = res["device_type"] != "cuda"
    lines = [f"ResNet-50 ({res['model']}), batch {res['batch']}, {res['image']}x{res['image']} images, float32",
             f"every optimiser: {warm} warm-up step{'s' if warm != 1 else ''}, then {n_steps} timed steps, "
             "interleaved; medians, the differences paired within a round"
             + ("; process CPU time in brackets" if cpu else ""), ""]
    w = max([len(s["optimizer"]) for s in steps] + [len("optimiser")])
    lines.append(f"{'optimiser':<{w}}  {'step':>19}  {'fwd+bwd':>9}  {'opt.step()':>10}  {'vs SGD step':>20}")
    for s in steps:
        ov = (f"{'+' if s['overhead_s'] >= 0 else '-'}{_ms(abs(s['overhead_s']))} ({s['step_ratio']:.2f}x)"
              if "overhead_s" in s else "-")
        step = _ms(s["step_s"]) + (f" ({_ms(s['step_cpu_s'])})" if cpu else "")
        lines.append(f"{s['optimizer']:<{w}}  {step:>19}  {_ms(s['forward_backward_s']):>9}  "
                     f"{_ms(s['optimizer_step_s']):>10}  {ov:>20}")
    g = res["all_gradients"]
    lines += ["", f"orthogonalising the step's {g['gradients']} gradients ({g['shapes']} shapes, one call per shape), "
              f"{g['rounds']} interleaved rounds:"]
    w = max(len(r["label"]) for r in g["rows"])
    lines.append(f"{'':<{w}}  {'time':>19}  {'vs svd':>15}  {'E (worst)':>9}")
    for r in g["rows"]:
        e = "-" if r["E"] is None else (f"{r['E']:.1e}" if r["finite"] else "NaN")
        t = _ms(r["median_s"]) + (f" ({_ms(r['cpu_s'])})" if r["cpu_s"] is not None else "")
        x = report.fmt_x(r["speedup_vs_svd"]) + (f" ({report.fmt_x(r['speedup_cpu'])})"
                                                  if r["speedup_cpu"] is not None else "")
        lines.append(f"{r['label']:<{w}}  {t:>19}  {x:>15}  {e:>9}")
    rows = {r["label"]: r for r in g["rows"]}
    p, s, st = rows.get("polar(G)"), rows[SVD_ROW], rows[SVD_T_ROW]
    lines.append("")
    if p is not None:
        in_cpu = "" if p["speedup_cpu"] is None else f" (in CPU time: {report.faster(p['speedup_cpu'])})"
        lines.append(f"all {g['gradients']} gradients: polar(G) {_ms(p['median_s'])} vs torch.linalg.svd "
                     f"{_ms(s['median_s'])}: {report.faster(p['speedup_vs_svd'])}{in_cpu} (svd of Gᵀ for the wide "
                     f"ones: {_ms(st['median_s'])}, {report.faster(p['speedup_vs_svd_tall'])}); E = {p['E']:.1e} "
                     f"(svd {s['E']:.1e})")
    lines += [f"note: {n}" for n in _notes(res)]
    for sk in res["skipped"]:
        lines.append(f"skipped: {sk}")
    return "\n".join(lines)


def _notes(res: dict) -> list[str]:
    """Sentences for the figures that surprise."""
    notes = []
    steps = {s["optimizer"]: s for s in res["steps"]}
    g = res["all_gradients"]
    rows = {r["label"]: r for r in g["rows"]}
    acc, fast = steps.get(_optimizer_label("auto", "accurate")), steps.get(_optimizer_label("auto", "fast"))
    if acc is not None and "orthogonalisation_s" in acc and rows.get("polar(G)"):
        inside, alone = acc["orthogonalisation_s"], rows["polar(G)"]["median_s"]
        notes.append(f"inside the step, FastOrthogonalSGD's optimizer.step() took {_ms(inside)} more than SGD's; "
                     f"polar(G) over the same gradients alone took {_ms(alone)} (the step also stacks the gradients "
                     "by shape and applies the update)")
    if acc is not None and fast is not None and fast["step_s"] >= 0.95 * acc["step_s"]:
        ran = g["polar_ran_on"]
        notes.append(f"mode=\"fast\" saved little here: polar(G) ran {', '.join(ran.get('fast', []))} in fast mode "
                     f"and {', '.join(ran.get('accurate', []))} in accurate mode on these shapes")
    if res["device_type"] != "cuda" or res["batch"] < 256:
        notes.append(f"forward and backward here run at batch {res['batch']} on {res['image']}x{res['image']} "
                     "images, far cheaper than a real training step, while the orthogonalisation costs the same at "
                     "any batch: its share of this step says little about a batch-256 step on a GPU; compare the "
                     "absolute times")
    return notes


def main_train(args, device: torch.device, command: str, threads: int, load_start, cores: int) -> int:
    cuda = device.type == "cuda"
    batch = args.train_batch or (256 if cuda and not args.quick else 32 if cuda else 2)
    image = args.train_image or (224 if cuda else 64)
    if args.methods:
        methods, peers = runner.split_methods([m.strip() for m in args.methods.split(",")])
    elif cuda:
        methods, peers = list(orthokern.METHODS), list(PEERS)
    else:
        # On a CPU each pass over the ResNet-50 gradients takes seconds: the optimiser's default (polar(G)) and its
        # fast mode against the SVD. Muon's iteration runs in bfloat16, which CPUs without bfloat16 matmul units
        # (AVX2 only) compute tens of times slower than float32: name it in --methods to include it.
        methods, peers = ["auto"], []
    modes = [m.strip() for m in args.modes.split(",")] if args.modes else ["accurate"]
    # A CPU pass over the ResNet-50 gradients takes seconds: fewer rounds there.
    min_rounds = args.rounds or (10 if cuda else 3)
    max_rounds = max(args.max_rounds or (30 if cuda else 5), min_rounds)
    budget = args.case_seconds if args.case_seconds is not None else (60.0 if cuda else 20.0)
    progress = not args.no_progress
    meta = report.environment(device, threads, load_start, cores)
    meta["command"] = command
    log = Log(progress)
    for wline in report.busy_warnings(meta):
        log(wline)
    log(f"train suite: ResNet-50, batch {batch}, image {image}, on {device}")
    res = run_train(device, batch=batch, image=image, methods=methods, modes=modes, peers=peers,
                    min_rounds=min_rounds, max_rounds=max_rounds, budget_s=budget, progress=log)
    res["meta"] = meta
    text = "\n".join(report.machine_lines(meta) + ["", format_train(res)])
    print(text)
    path = os.path.join(args.out, "train.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    print(f"wrote {path}")
    if args.results_md:
        kind = "train-gpu" if cuda else "train-cpu"
        body = (f"## Training step ({'GPU' if cuda else 'CPU'}): {meta['device']}\n\n- date: {meta['date']}\n"
                f"- torch {meta['torch']}, orthokern {meta['orthokern']}\n- command: `{command}`\n\n```\n{text}\n```")
        report.update_results_md(args.results_md, f"<!-- BEGIN {kind} -->\n{body}\n<!-- END {kind} -->")
        print(f"updated {args.results_md}")
    bad = train_violations(res)
    if bad:
        print(f"\nACCURACY VIOLATIONS ({len(bad)}):", file=sys.stderr)
        for b in bad:
            print(f"  {b} (real ResNet-50 gradients)", file=sys.stderr)
        return 1
    return 0
