"""GPU benchmark of the Triton kernels (medians of ``triton.testing.do_bench``).

    PYTHONPATH=. python bench/bench_triton_kernels.py [--quick] [--json out.json] [--no-accuracy]

Measures, in one run on one GPU:

1. the copy bandwidth of the card (device-to-device copy of 1 GiB: read + write bytes / time);
2. the Gram stage G^T G of 256 x 576 x 64 and 1024 x 256 x 32 float32: Triton fp32 at each precision of its
   float32 dots (ieee: CUDA-core FMA; tf32x3: tensor cores at about float32 accuracy) and the fp64-accumulating
   kernel against torch (fp32 with TF32 off, and fp64), each against the memory floor = bytes of G / copy
   bandwidth;
3. one Newton–Schulz step X <- a X + X (b A + c A^2) on 4096 x 4096: bfloat16, the fused Triton step against
   torch's three matmuls (the step Muon runs); float32 (the accurate mode's square steps), Triton with tf32x3
   and with ieee dots against torch with TF32 off;
4. the full fast-mode polar factor of a 4096 x 4096 bfloat16 matrix: orthokern (backend triton and torch)
   against torch.optim.Muon's 5-step Newton–Schulz, with E of each (float64 SVD reference on the CPU);
5. the accurate polar factor of 8 x 4608 x 512 float32: Newton–Schulz on the X side and on the Gram side
   (the GRAM_SIDE_RATIO choice) against gram_eigh, Triton and torch.

``run()`` returns the rows as dicts, so the project's bench command can call it; ``main()`` prints a table.
"""
from __future__ import annotations

import argparse
import json
import math

import torch


def _bench(fn, warmup=25, rep=100) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def copy_bandwidth(nbytes: int = 1 << 30, device: str = "cuda") -> float:
    """Bytes per second of a device-to-device copy (counts the read and the write)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    ms = _bench(lambda: dst.copy_(src))
    return 2 * nbytes / (ms * 1e-3)


def _row(stage, shape, impl, ms, **extra):
    r = {"stage": stage, "shape": shape, "impl": impl, "ms": ms}
    r.update(extra)
    return r


def bench_gram(bw: float, shapes=((256, 576, 64), (1024, 256, 32)), device: str = "cuda") -> list[dict]:
    from orthokern.dispatch import _load_triton_kernels as kernels

    tk = kernels()
    rows = []
    for B, m, n in shapes:
        G = torch.randn(B, m, n, device=device)
        floor_ms = G.numel() * G.element_size() / bw * 1e3
        shape = f"{B}x{m}x{n} fp32"
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            cands = {
                "triton fp32 (ieee)": lambda G=G: tk.sym_gram(G, precision="ieee"),
                "triton fp32 (tf32x3)": lambda G=G: tk.sym_gram(G, precision="tf32x3"),
                "triton fp64-acc": lambda G=G: tk.sym_gram(G, acc_f64=True),
                "torch fp32 (no TF32)": lambda G=G: G.mT @ G,
                "torch fp64": lambda G=G: G.double().mT @ G.double(),
            }
            for name, fn in cands.items():
                ms = _bench(fn)
                rows.append(_row("gram", shape, name, ms, floor_ms=floor_ms, x_floor=ms / floor_ms,
                                 tflops=2 * B * m * n * n / (ms * 1e-3) / 1e12))
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev
    return rows


def bench_ns_step(n: int = 4096, device: str = "cuda") -> list[dict]:
    from orthokern.dispatch import _load_triton_kernels as kernels

    tk = kernels()
    a, b, c = 3.4445, -4.7750, 2.0315
    X = (torch.randn(1, n, n, device=device) / math.sqrt(n)).bfloat16()

    def torch_step():
        A = X.mT @ X
        return torch.baddbmm(X, X, torch.baddbmm(A, A, A, beta=b, alpha=c), beta=a)

    flops = 3 * 2 * n**3  # nominal: three n x n x n products (the fused step skips half of two of them)
    rows = []
    for name, fn in {"triton fused step": lambda: tk.ns_step(X, a, b, c), "torch 3 matmuls": torch_step}.items():
        ms = _bench(fn)
        rows.append(_row("ns_step", f"{n}x{n} bf16", name, ms, tflops=flops / (ms * 1e-3) / 1e12))
    X = X.float()
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        Xd = X.double()
        Ad = Xd.mT @ Xd
        ref = a * Xd + Xd @ (b * Ad + c * Ad @ Ad)
        cands = {f"triton fused step ({p})": (lambda p=p: tk.ns_step(X, a, b, c, precision=p))
                 for p in ("tf32x3", "ieee")}
        cands["torch 3 matmuls (TF32 off)"] = torch_step
        for name, fn in cands.items():
            ms = _bench(fn, warmup=5, rep=30)
            err = ((fn().double() - ref).norm() / ref.norm()).item()
            rows.append(_row("ns_step", f"{n}x{n} fp32", name, ms, tflops=flops / (ms * 1e-3) / 1e12, rel_err=err))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    return rows


def bench_polar_fast(n: int = 4096, accuracy: bool = True, device: str = "cuda") -> list[dict]:
    from torch.optim._muon import _zeropower_via_newtonschulz

    import orthokern
    from orthokern.testing import accuracy as acc_of
    from orthokern.testing import random_matrix

    G = random_matrix(1, n, n, "decaying", dtype=torch.bfloat16, device=device, seed=0)
    cands = {
        "orthokern NS fast (triton)": lambda: orthokern.polar(G, method="newton_schulz", mode="fast", backend="triton"),
        "orthokern NS fast (torch)": lambda: orthokern.polar(G, method="newton_schulz", mode="fast", backend="torch"),
        "torch.optim.Muon NS5": lambda: _zeropower_via_newtonschulz(G[0], (3.4445, -4.7750, 2.0315), 5, 1e-7),
    }
    rows = []
    for name, fn in cands.items():
        ms = _bench(fn, warmup=5, rep=50)
        extra = {}
        if accuracy:
            O = fn().reshape(G.shape)
            extra["E"] = acc_of(G, O).E
        rows.append(_row("polar_fast", f"1x{n}x{n} bf16", name, ms, **extra))
    return rows


def bench_polar_accurate_tall(shape=(8, 4608, 512), accuracy: bool = True, device: str = "cuda") -> list[dict]:
    """Accurate polar of a tall batch: Newton–Schulz on the X side vs the Gram side vs gram_eigh (float32)."""
    import orthokern
    from orthokern.dispatch import triton_polar

    polar_newton_schulz = triton_polar().polar_newton_schulz
    from orthokern.testing import accuracy as acc_of
    from orthokern.testing import random_matrix

    B, m, n = shape
    G = random_matrix(B, m, n, "decaying", device=device, seed=1)
    cands = {
        "triton NS tall side": lambda: polar_newton_schulz(G, mode="accurate", rcond=1e-3, side="tall"),
        "triton NS gram side": lambda: polar_newton_schulz(G, mode="accurate", rcond=1e-3, side="gram"),
        "triton gram_eigh": lambda: orthokern.polar(G, method="gram_eigh", backend="triton"),
        "torch NS": lambda: orthokern.polar(G, method="newton_schulz", backend="torch"),
        "torch gram_eigh": lambda: orthokern.polar(G, method="gram_eigh", backend="torch"),
    }
    rows = []
    for name, fn in cands.items():
        ms = _bench(fn, warmup=3, rep=30)
        extra = {"E": acc_of(G[:2], fn()[:2]).E} if accuracy else {}
        rows.append(_row("polar_accurate", f"{B}x{m}x{n} fp32", name, ms, **extra))
    return rows


def run(quick: bool = False, accuracy: bool = True) -> list[dict]:
    if not torch.cuda.is_available():
        raise RuntimeError("bench_triton_kernels: needs a CUDA GPU")
    bw = copy_bandwidth(1 << 28 if quick else 1 << 30)
    rows = [_row("copy", "1 GiB" if not quick else "256 MiB", "device copy", float("nan"), GBps=bw / 1e9)]
    rows += bench_gram(bw)
    rows += bench_ns_step(1024 if quick else 4096)
    rows += bench_polar_fast(1024 if quick else 4096, accuracy=accuracy)
    rows += bench_polar_accurate_tall((2, 1152, 128) if quick else (8, 4608, 512), accuracy=accuracy)
    return rows


def format_table(rows: list[dict]) -> str:
    cols = ["stage", "shape", "impl", "ms", "floor_ms", "x_floor", "tflops", "GBps", "E", "rel_err"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"Device: {dev}, torch {torch.__version__}\n\n" + "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    p.add_argument("--no-accuracy", action="store_true", help="skip the float64 SVD reference (slow at 4096)")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args(argv)
    rows = run(quick=args.quick, accuracy=not args.no_accuracy)
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
