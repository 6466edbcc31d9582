"""The dot of every kernel: ``tl.dot`` at a precision, or the float16 split "fp16x3".

"fp16x3" computes a float32 product on the float16 tensor cores, which run twice as fast as TF32 ones (an H100's
data sheet: 989 against 495 dense TFLOPS), at about the accuracy of "tf32x3". Each float32 operand is split as
x = hi + lo / 2048 with hi = fp16(x) and lo = fp16((x - hi) * 2048): hi holds the top 11 significant bits and lo,
scaled up by 2^11 so that it stays a normal float16, the next 11 (Ootomo & Yokota 2022, "Recovering single
precision accuracy from Tensor Cores while surpassing the FP32 theoretical peak performance"). A product is then

    x y = hi_x hi_y + (hi_x lo_y + lo_x hi_y) / 2048 + lo_x lo_y / 2048^2,

the last term (2^-22 relative) dropped. Products of 11-bit significands are exact in the float32 accumulator;
the correction terms go to their own accumulator, so the 2^-11 factor is applied once at the end instead of
pushing them towards float16's subnormals. The split needs |x| well below float16's largest value (65504): the
operands it is used on are bounded (``polar._newton_schulz_tall`` says which; the first step's A @ A, with entries
up to m, runs at "tf32x3" above ``polar.FP16X3_MAX_ROWS`` rows). Entries far below 2^-14 lose relative precision in hi
and lo, but their absolute error stays below 2^-36, far under the float32 rounding of the sums they enter.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def split_f16(x):
    """(hi, lo) float16 with x = hi + lo / 2048 to about 22 significant bits."""
    hi = x.to(tl.float16)
    lo = ((x - hi.to(tl.float32)) * 2048.0).to(tl.float16)
    return hi, lo


@triton.jit
def lo_accumulator(BM: tl.constexpr, BN: tl.constexpr, PRECISION: tl.constexpr):
    """The correction accumulator of an "fp16x3" dot ((BM, BN) float32 zeros); a placeholder otherwise."""
    if PRECISION == "fp16x3":
        lo = tl.zeros((BM, BN), dtype=tl.float32)
    else:
        lo = tl.zeros((1, 1), dtype=tl.float32)
    return lo


@triton.jit
def dot(x, y, acc, acc_lo, PRECISION: tl.constexpr):
    """(acc, acc_lo) after adding x @ y: by the split for "fp16x3" (float32 x, y), else one ``tl.dot`` at
    ``PRECISION`` into acc in acc's dtype."""
    if PRECISION == "fp16x3":
        xh, xl = split_f16(x)
        yh, yl = split_f16(y)
        acc = tl.dot(xh, yh, acc, out_dtype=tl.float32)
        acc_lo = tl.dot(xh, yl, acc_lo, out_dtype=tl.float32)
        acc_lo = tl.dot(xl, yh, acc_lo, out_dtype=tl.float32)
    else:
        acc = tl.dot(x, y, acc, input_precision=PRECISION, out_dtype=acc.dtype)
    return acc, acc_lo


@triton.jit
def finish(acc, acc_lo, PRECISION: tl.constexpr):
    """The product held by (acc, acc_lo)."""
    if PRECISION == "fp16x3":
        acc = acc + acc_lo * (1.0 / 2048.0)
    return acc

