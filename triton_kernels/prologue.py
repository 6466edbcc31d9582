"""The per-matrix scalar work before a polar method's first full-size product, one launch each.

In eager PyTorch this work is a dozen launches on tensors of B elements or of B n x n elements (``reference``'s
``scale_and_finite``, the scaling in ``polar.scaled_gram64``, the first step's normalisation): on a GPU each is a
launch costing more than its arithmetic, paid per shape bucket. Here each is one kernel:

* ``pow2_scale``: the power of two 2^-e that brings each matrix's largest magnitude into [0.5, 1), from that
  magnitude (``reference.scaling.scale_and_finite``'s rule: e from frexp, clamped to the compute dtype's normal
  range; zero, NaN and Inf keep e = 0);
* ``gram_scale``: from the float64 Gram matrix of the raw (unscaled) G, the scale 2^-e with sqrt(trace) in
  [2^(e-1), 2^e), the finite flag (an Inf or NaN in G always reaches the trace) and A s^2, zero where not finite
  (``polar.scaled_gram64``);
* ``first_factor``: the first Newton–Schulz factor P_0 / t = (a I + b A / t^2 + c A^2 / t^4) / t with
  t = NORM_SAFETY ||A^2||_F^(1/4) (``reference.newton_schulz.first_factor``), given ||A^2||_F.

Exponents are read from the float64 bits, so they are exact (no log2 rounding at a power of two), and powers of
two are built from bits, as a product of two normal halves where the result may be subnormal.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import triton
import triton.language as tl

from ..ns_schedule import NORM_SAFETY
from ..reference.scaling import _EXPONENTS
from . import _common
from ._common import KernelCall, check_dtype, element_size

BLOCK = 1024  # elements per program of the n x n kernels (memory-bound; not tuned)
BLOCK_B = 256  # matrices per program of pow2_scale


@triton.jit
def _frexp_exponent(x):
    """frexp(x)[1] of a positive, finite, normal float64 x: x = f 2^e with f in [0.5, 1)."""
    bits = x.to(tl.int64, bitcast=True)
    return ((bits >> 52) & 0x7FF).to(tl.int32) - 1022


@triton.jit
def _pow2(e):
    """2.0^e in float64 for an int32 e with |e| <= 1022 (a normal number), exactly."""
    return ((e + 1023).to(tl.int64) << 52).to(tl.float64, bitcast=True)


# B (the batch) only bounds a mask: not specialised, so a lone matrix (B = 1) shares the binary of a batch.
@triton.jit(do_not_specialize=["B"])
def _pow2_scale_kernel(AMAX, SCALE, FINITE, B, E_LO: tl.constexpr, E_HI: tl.constexpr, BLOCK_B: tl.constexpr):
    r = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    mask = r < B
    x = tl.load(AMAX + r, mask=mask, other=0.0).to(tl.float64)
    # frexp gives 0 for zero, NaN and Inf; a subnormal float64 gets an exponent below E_LO either way.
    ok = (x > 0) & (x < float("inf"))
    e = tl.where(ok, _frexp_exponent(tl.where(ok, x, 1.0)), 0)
    e = tl.minimum(tl.maximum(e, E_LO), E_HI)
    # 2^-e as the product of two normal powers of two: exact, also where 2^-e is subnormal (e = 1024 in float64).
    h = -e // 2
    s = _pow2(h) * _pow2(-e - h)
    tl.store(SCALE + r, s.to(SCALE.dtype.element_ty), mask=mask)
    tl.store(FINITE + r, (x == x) & (tl.abs(x) < float("inf")), mask=mask)


@triton.jit
def _trace(A, N, BLOCK: tl.constexpr):
    """Sum of the diagonal of the N x N float64 matrix at A, in a fixed order."""
    r = tl.arange(0, BLOCK)
    acc = tl.zeros((BLOCK,), dtype=tl.float64)
    for k in range(0, N, BLOCK):
        acc += tl.load(A + (k + r).to(tl.int64) * (N + 1), mask=(k + r) < N, other=0.0)
    return tl.sum(acc, axis=0)


@triton.jit
def _gram_scale_kernel(A, OUT, SCALE, FINITE, N, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1)
    nn = N * N
    base = b.to(tl.int64) * nn
    trace = _trace(A + base, N, BLOCK)
    finite = (trace == trace) & (tl.abs(trace) < float("inf"))
    root = tl.sqrt(tl.where(finite, trace, 0.0))
    # frexp(0) = 0: a zero matrix keeps scale 1. sqrt(trace) of a float32/16-bit Gram is a normal float64.
    e = tl.where(root > 0, _frexp_exponent(tl.where(root > 0, root, 1.0)), 0)
    s = _pow2(-e)
    idx = pid * BLOCK + tl.arange(0, BLOCK)
    mask = idx < nn
    a = tl.load(A + base + idx, mask=mask, other=0.0)
    tl.store(OUT + base + idx, tl.where(finite, a * (s * s), 0.0), mask=mask)
    if pid == 0:
        tl.store(SCALE + b, s)
        tl.store(FINITE + b, finite)


@triton.jit
def _first_factor_kernel(A, A2, NORM, OUT, N, a_coef: tl.float64, b_coef: tl.float64, c_coef: tl.float64,
                         safety: tl.float64, F64: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1)
    nn = N * N
    base = b.to(tl.int64) * nn
    idx = pid * BLOCK + tl.arange(0, BLOCK)
    mask = idx < nn
    # The coefficients in the working dtype (a float64 scalar would promote a float32 tile, see poly.py), through
    # tl.full: the interpreter hands them over as Python floats, which tl.cast and mixed arithmetic round to float32.
    if F64:
        dt = tl.float64
    else:
        dt = tl.float32
    ca = tl.full((), a_coef, dt)
    cb = tl.full((), b_coef, dt)
    cc = tl.full((), c_coef, dt)
    cs = tl.full((), safety, dt)
    # t = safety ||A^2||_F^(1/4), 1 where the norm is zero (a zero matrix stays zero) or NaN (a non-finite one).
    t = tl.sqrt(tl.sqrt(tl.load(NORM + b).to(dt))) * cs
    t = tl.where(t > 0, t, 1.0)
    x = tl.load(A + base + idx, mask=mask, other=0.0).to(dt)
    x2 = tl.load(A2 + base + idx, mask=mask, other=0.0).to(dt)
    t2 = t * t
    p = (cb / t2) * x + (cc / (t2 * t2)) * x2
    p = tl.where(idx // N == idx % N, p + ca, p)
    tl.store(OUT + base + idx, (p / t).to(OUT.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------- plans (what runs, and what it costs)
def pow2_scale_plan(amax: torch.Tensor, scale: torch.Tensor, finite: torch.Tensor, e_lo: int, e_hi: int
                    ) -> list[KernelCall]:
    B = amax.shape[0]
    if B == 0:
        return []
    return [KernelCall(_pow2_scale_kernel, "prologue._pow2_scale_kernel",
                       dict(AMAX=amax, SCALE=scale, FINITE=finite, B=B), dict(E_LO=e_lo, E_HI=e_hi, BLOCK_B=BLOCK_B),
                       grid=lambda META: (triton.cdiv(B, META["BLOCK_B"]),),
                       bytes=float(B * (amax.element_size() + scale.element_size() + 1)))]


def gram_scale_plan(A: torch.Tensor, out: torch.Tensor, scale: torch.Tensor, finite: torch.Tensor) -> list[KernelCall]:
    B, n, _ = A.shape
    if B == 0 or n == 0:
        return []
    return [KernelCall(_gram_scale_kernel, "prologue._gram_scale_kernel",
                       dict(A=A, OUT=out, SCALE=scale, FINITE=finite, N=n), dict(BLOCK=BLOCK),
                       grid=lambda META: (triton.cdiv(n * n, META["BLOCK"]), B), bytes=float(2 * B * n * n * 8))]


def first_factor_plan(A: torch.Tensor, A2: torch.Tensor, norm: torch.Tensor, out: torch.Tensor, a: float, b: float,
                      c: float) -> list[KernelCall]:
    B, n, _ = A.shape
    if B == 0 or n == 0:
        return []
    f64 = out.dtype == torch.float64 or A.dtype == torch.float64
    nbytes = B * n * n * (element_size(A.dtype) + element_size(A2.dtype) + element_size(out.dtype))
    return [KernelCall(_first_factor_kernel, "prologue._first_factor_kernel",
                       dict(A=A, A2=A2, NORM=norm, OUT=out, N=n, a_coef=float(a), b_coef=float(b), c_coef=float(c),
                            safety=float(NORM_SAFETY)), dict(F64=f64, BLOCK=BLOCK),
                       grid=lambda META: (triton.cdiv(n * n, META["BLOCK"]), B), bytes=float(nbytes))]


# ---------------------------------------------------------------- entry points
def pow2_scale(amax: torch.Tensor, out_dtype: torch.dtype, *, launch: Optional[Callable] = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, finite) per matrix from amax (B,), the largest magnitude of each: 2^-e with amax 2^-e in [0.5, 1),
    e clamped to ``out_dtype``'s normal range (float32 or float64), 1 for zero, NaN or Inf; finite = amax is
    finite. ``reference.scaling.scale_and_finite``'s rule."""
    if amax.dim() != 1:
        raise ValueError(f"pow2_scale: amax must be (B,), got shape {tuple(amax.shape)}")
    check_dtype("pow2_scale", "amax", amax)
    if out_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"pow2_scale: out_dtype must be float32 or float64, got {out_dtype}")
    amax = amax.contiguous()
    scale = torch.empty(amax.shape, dtype=out_dtype, device=amax.device)
    finite = torch.empty(amax.shape, dtype=torch.bool, device=amax.device)
    _common.run_all(pow2_scale_plan(amax, scale, finite, *_EXPONENTS[out_dtype]), amax, launch)
    return scale, finite


def gram_scale(A: torch.Tensor, *, launch: Optional[Callable] = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A s^2 with zeros where not finite, s, finite) from the float64 Gram matrix A (B, n, n) of a raw
    float32/bfloat16/float16 G; s (B,) float64 is the power of two 2^-e with sqrt(trace A) in [2^(e-1), 2^e)."""
    if A.dim() != 3 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"gram_scale: A must be (B, n, n), got shape {tuple(A.shape)}")
    if A.dtype != torch.float64:
        raise TypeError(f"gram_scale: A must be float64 (the Gram matrix of the raw input), got {A.dtype}")
    A = A.contiguous()
    out = torch.empty_like(A)
    scale = torch.ones(A.shape[0], dtype=torch.float64, device=A.device)
    finite = torch.ones(A.shape[0], dtype=torch.bool, device=A.device)
    _common.run_all(gram_scale_plan(A, out, scale, finite), A, launch)
    return out, scale, finite


def first_factor(A: torch.Tensor, A2: torch.Tensor, norm: torch.Tensor, a: float, b: float, c: float,
                 out_dtype: torch.dtype, *, launch: Optional[Callable] = None) -> torch.Tensor:
    """(a I + b A / t^2 + c A2 / t^4) / t in ``out_dtype``, t = NORM_SAFETY norm^(1/4) (1 where that is not
    positive), for A, A2 = A @ A (B, n, n) and norm = ||A2||_F (B,); computed in float64 if A or the result is
    float64, else in float32."""
    if A.dim() != 3 or A.shape[-1] != A.shape[-2] or A2.shape != A.shape:
        raise ValueError(f"first_factor: A and A2 must be (B, n, n) alike, got {tuple(A.shape)} and "
                         f"{tuple(A2.shape)}")
    if norm.shape != A.shape[:1]:
        raise ValueError(f"first_factor: norm must be (B,) = ({A.shape[0]},), got {tuple(norm.shape)}")
    for name, t in (("A", A), ("A2", A2), ("norm", norm)):
        check_dtype("first_factor", name, t)
    A, A2, norm = A.contiguous(), A2.contiguous(), norm.contiguous()
    out = torch.empty(A.shape, dtype=out_dtype, device=A.device)
    _common.run_all(first_factor_plan(A, A2, norm, out, a, b, c), A, launch)
    return out
