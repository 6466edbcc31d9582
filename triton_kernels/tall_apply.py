"""O = alpha G + beta (s_b G) @ Mat for tall-skinny G (B, m, n) and small square Mat (B, n, n).

The one kernel behind both the final multiply of gram_eigh (alpha = 0, s_b the power-of-two scale of each
matrix, so G is read raw and never copied scaled) and the last product of a Newton–Schulz step
(X <- a X + X (b A + c A^2): alpha = a, the residual read from the G tile in the epilogue). The operands are
taken in Mat's dtype (a bf16 G with an fp32 Mat is upcast in registers; fp32 dots at ``precision``; an fp64 Mat
runs on the float64 tensor cores), accumulated in fp32 (fp64 for an fp64 Mat), and stored in ``out_dtype``.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import triton
import triton.language as tl

from . import _common, _configs, _dot
from ._common import KernelCall, check_dtype, check_precision, dot_precision, dot_unit, element_size
from .gram import _to_f64


@_configs.autotune("apply", key=["N_CLASS", "HAS_SCALE", "ACC_F64", "PRECISION"])
# M (the rows) only bounds masks and the row loop: not specialised, so that matrices whose row counts differ in
# divisibility by 16 share a binary. The residual is a runtime branch on alpha, not a constexpr: it is only in the
# epilogue (one tile load), so the launches with and without it share a binary (the main loop is the same code).
@triton.jit(do_not_specialize=["M"])
def _apply_kernel(G, MAT, SCALE, OUT, M, N, stride_b, stride_m, stride_n, alpha: tl.float64, beta: tl.float64,
                  N_CLASS, HAS_SCALE: tl.constexpr, ACC_F64: tl.constexpr,
                  PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    bi = tl.program_id(1)
    nbn = tl.cdiv(N, BLOCK_N)
    pm = pid // nbn
    pn = pid % nbn
    rm = pm * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    gbase = G + bi.to(tl.int64) * stride_b
    mbase = MAT + bi.to(tl.int64) * N * N
    if ACC_F64:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_lo = _dot.lo_accumulator(BLOCK_M, BLOCK_N, PRECISION)
    if HAS_SCALE:
        s = tl.load(SCALE + bi)
    for k in range(0, N, BLOCK_K):
        kk = k + rk
        g = tl.load(gbase + rm[:, None] * stride_m + kk[None, :] * stride_n,
                    mask=(rm[:, None] < M) & (kk[None, :] < N), other=0.0)
        if ACC_F64:
            g = _to_f64(g)
        else:
            g = g.to(MAT.dtype.element_ty)
        if HAS_SCALE:
            # Scaled on load, not in the epilogue: raw G @ Mat could overflow where (s G) @ Mat does not.
            g = (g * s).to(MAT.dtype.element_ty)
        w = tl.load(mbase + kk[:, None] * N + rn[None, :], mask=(kk[:, None] < N) & (rn[None, :] < N),
                    other=0.0)
        acc, acc_lo = _dot.dot(g, w, acc, acc_lo, PRECISION)
    acc = _dot.finish(acc, acc_lo, PRECISION)
    # alpha, beta in the accumulator's dtype (see poly.py: a float64 scalar would promote an fp32 tile).
    if ACC_F64:
        acc = acc * beta
    else:
        acc = acc * tl.cast(beta, tl.float32)
    omask = (rm[:, None] < M) & (rn[None, :] < N)
    if alpha != 0.0:
        res = tl.load(gbase + rm[:, None] * stride_m + rn[None, :] * stride_n, mask=omask, other=0.0)
        if ACC_F64:
            acc += alpha * res.to(acc.dtype)
        else:
            acc += tl.cast(alpha, tl.float32) * res.to(acc.dtype)
    tl.store(OUT + bi.to(tl.int64) * M * N + rm[:, None] * N + rn[None, :], acc.to(OUT.dtype.element_ty),
             mask=omask)


def plan(G: torch.Tensor, Mat: torch.Tensor, scale: Optional[torch.Tensor], out: torch.Tensor, alpha: float,
         beta: float, precision: str) -> list[KernelCall]:
    """The launches that compute ``out`` (arguments as checked by :func:`apply`; Mat contiguous, scale float64 for a
    float64 Mat, else float32)."""
    B, m, n = G.shape
    if out.numel() == 0:
        return []
    f64 = Mat.dtype == torch.float64
    prec = dot_precision(Mat.dtype, precision)
    unit, passes = dot_unit(Mat.dtype, prec)
    calls = []
    for b0, b1 in _common.batch_chunks(B):
        nbat = b1 - b0
        args = dict(G=_common.rows(G, b0, b1), MAT=_common.rows(Mat, b0, b1),
                    SCALE=_common.rows(scale, b0, b1) if scale is not None else Mat, OUT=_common.rows(out, b0, b1),
                    M=m, N=n, stride_b=G.stride(0), stride_m=G.stride(1), stride_n=G.stride(2), alpha=float(alpha),
                    beta=float(beta), N_CLASS=_common.n_class(n))
        meta = dict(HAS_SCALE=scale is not None, ACC_F64=f64, PRECISION=prec)
        io = nbat * (m * n * (element_size(G.dtype) + element_size(out.dtype)) + n * n * element_size(Mat.dtype)
                     + (4 if scale is not None else 0))
        first = _configs.candidates("apply", args, meta, gpu=True)[0].kwargs
        calls.append(KernelCall(
            _apply_kernel, "tall_apply._apply_kernel", args, meta,
            grid=lambda META, nbat=nbat: (triton.cdiv(m, META["BLOCK_M"]) * triton.cdiv(n, META["BLOCK_N"]), nbat),
            # the residual is the G tile already read: no extra traffic
            flops={unit: passes * 2.0 * nbat * m * n * n}, bytes=float(io),
            programs=nbat * triton.cdiv(m, first["BLOCK_M"]) * triton.cdiv(n, first["BLOCK_N"])))
    return calls


def apply(G: torch.Tensor, Mat: torch.Tensor, *, scale: Optional[torch.Tensor] = None, alpha: float = 0.0,
          beta: float = 1.0, out_dtype: Optional[torch.dtype] = None, precision: str = _common.ACCURATE,
          launch: Optional[Callable] = None) -> torch.Tensor:
    """alpha G + beta (scale[:, None, None] G) @ Mat, stored contiguous in ``out_dtype`` (default G's);
    ``precision``: of float32 dots (``_common.PRECISIONS``)."""
    if G.dim() != 3:
        raise ValueError(f"apply: G must be (B, m, n), got shape {tuple(G.shape)}")
    B, m, n = G.shape
    if tuple(Mat.shape) != (B, n, n):
        raise ValueError(f"apply: Mat must have shape {(B, n, n)} to match G {tuple(G.shape)}, got {tuple(Mat.shape)}")
    check_dtype("apply", "G", G)
    check_dtype("apply", "Mat", Mat)
    check_precision("apply", precision)
    if scale is not None and tuple(scale.shape) != (B,):
        raise ValueError(f"apply: scale must have shape ({B},), got {tuple(scale.shape)}")
    Mat = Mat.contiguous()
    out = G.new_empty((B, m, n), dtype=out_dtype or G.dtype)
    if scale is not None:
        # A float64 product takes a float64 scale (2^-e of an all-subnormal float32 matrix is 2^132); else float32.
        scale = scale.to(torch.float64 if Mat.dtype == torch.float64 else torch.float32).contiguous()
    _common.run_all(plan(G, Mat, scale, out, alpha, beta, precision), G, launch)
    return out
