"""O = alpha G + beta (s_b G) @ Mat for tall-skinny G (B, m, n) and small square Mat (B, n, n).

The one kernel behind both the final multiply of gram_eigh (alpha = 0, s_b the power-of-two scale of each
matrix, so G is read raw and never copied scaled) and the last product of a Newton–Schulz step
(X <- a X + X (b A + c A^2): alpha = a, the residual read from the G tile in the epilogue). The operands are
taken in Mat's dtype (a bf16 G with an fp32 Mat is upcast in registers; fp32 uses full fp32 products unless
``allow_tf32``), accumulated in fp32 (fp64 for an fp64 Mat), and stored in ``out_dtype``.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from . import _configs
from . import _common
from ._common import DTYPE_KEY, bucket, dot_precision
from .gram import _to_f64


def _make(f64: bool):
    @triton.autotune(
        configs=_configs.apply_configs(f64),
        key=["N_BUCKET", "M_BUCKET", "DTYPE_KEY"],
        prune_configs_by={"early_config_prune": _configs.prune_by_n},
    )
    @triton.jit
    def _apply_kernel(G, MAT, SCALE, OUT, M, N, stride_b, stride_m, stride_n, alpha: tl.float64, beta: tl.float64, N_BUCKET, M_BUCKET,
                      DTYPE_KEY, HAS_SCALE: tl.constexpr, HAS_RES: tl.constexpr, ACC_F64: tl.constexpr,
                      PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr):
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
            acc = tl.dot(g, w, acc, input_precision=PRECISION, out_dtype=acc.dtype)
        acc = acc * beta
        omask = (rm[:, None] < M) & (rn[None, :] < N)
        if HAS_RES:
            res = tl.load(gbase + rm[:, None] * stride_m + rn[None, :] * stride_n, mask=omask, other=0.0)
            acc += alpha * res.to(acc.dtype)
        tl.store(OUT + bi.to(tl.int64) * M * N + rm[:, None] * N + rn[None, :], acc.to(OUT.dtype.element_ty),
                 mask=omask)

    return _apply_kernel


_apply_kernel = _make(False)
_apply_kernel_f64 = _make(True)


def apply(G: torch.Tensor, Mat: torch.Tensor, *, scale: Optional[torch.Tensor] = None, alpha: float = 0.0,
          beta: float = 1.0, out_dtype: Optional[torch.dtype] = None, allow_tf32: bool = False,
          launch=None) -> torch.Tensor:
    """alpha G + beta (scale[:, None, None] G) @ Mat, stored contiguous in ``out_dtype`` (default G's)."""
    if G.dim() != 3:
        raise ValueError(f"apply: G must be (B, m, n), got shape {tuple(G.shape)}")
    B, m, n = G.shape
    if Mat.shape != (B, n, n):
        raise ValueError(f"apply: Mat must have shape {(B, n, n)} to match G {tuple(G.shape)}, got {tuple(Mat.shape)}")
    for name, t in (("G", G), ("Mat", Mat)):
        if t.dtype not in DTYPE_KEY:
            raise TypeError(f"apply: {name} must be float64/float32/bfloat16/float16, got {t.dtype}")
    launch = launch or (lambda k: k)
    Mat = Mat.contiguous()
    out = torch.empty((B, m, n), dtype=out_dtype or G.dtype, device=G.device)
    if out.numel() == 0:
        return out
    if scale is not None:
        if scale.shape != (B,):
            raise ValueError(f"apply: scale must have shape ({B},), got {tuple(scale.shape)}")
        # A float64 product takes a float64 scale (2^-e of an all-subnormal float32 matrix is 2^132); else float32.
        scale = scale.to(torch.float64 if Mat.dtype == torch.float64 else torch.float32).contiguous()
    f64 = Mat.dtype == torch.float64
    kernel = _apply_kernel_f64 if f64 else _apply_kernel
    for b0, b1 in _common.batch_chunks(B):
        grid = lambda META, nbat=b1 - b0: (  # noqa: E731
            triton.cdiv(m, META["BLOCK_M"]) * triton.cdiv(n, META["BLOCK_N"]), nbat)
        sc = _common.rows(scale, b0, b1) if scale is not None else Mat  # unused without HAS_SCALE
        launch(kernel)[grid](
            _common.rows(G, b0, b1), _common.rows(Mat, b0, b1), sc, _common.rows(out, b0, b1), m, n,
            G.stride(0), G.stride(1), G.stride(2), float(alpha), float(beta), bucket(n), bucket(m),
            4 * DTYPE_KEY[G.dtype] + DTYPE_KEY[Mat.dtype],
            HAS_SCALE=scale is not None, HAS_RES=alpha != 0.0, ACC_F64=f64,
            PRECISION=dot_precision(Mat.dtype, allow_tf32),
        )
    return out
