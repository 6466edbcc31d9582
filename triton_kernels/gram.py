"""Batched symmetric Gram matrix A = G^T G of tall-skinny G (B, m, n), one triangle computed.

Each program owns one (BLOCK_N x BLOCK_N) tile of the upper triangle (block row <= block column; the
programs below the diagonal exit at once) and one of ``splits`` contiguous row ranges of G. With one split
it writes the tile and its mirror directly. With several (small batches of long matrices, where B times the
number of tiles would leave most SMs idle) every split writes its partial tile to a (B, splits, n, n)
buffer and a second kernel sums the splits in a fixed order: no atomics, so the result is bitwise
reproducible run to run (for a given autotuned config: a different BLOCK_K changes the summation order).

Precision: bf16/fp16 operands go to the tensor cores with fp32 accumulation; fp32 operands use full fp32
products (``input_precision="ieee"``) unless ``allow_tf32``; ``acc_f64`` upcasts every operand to fp64 in
registers and accumulates in fp64 (products of fp32 values are exact in fp64), as the accurate mode of
gram_eigh needs: an fp32 Gram carries an error eps32 * ||G||^2, larger than the smallest significant
eigenvalue's gaps at condition ~1e3.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from . import _configs
from . import _common
from ._common import DTYPE_KEY, bucket, dot_precision, sm_count
from ._symmetric import store_symmetric


def _make(f64: bool):
    # The fp64-accumulating variant has its own (smaller) tiles, hence its own autotuner over the same body
    # (as poly.py and tall_apply.py do).
    @triton.autotune(
        configs=_configs.gram_configs(f64=f64),
        key=["N_BUCKET", "M_BUCKET", "SPLITS", "IN_DTYPE_KEY"],
        prune_configs_by={"early_config_prune": _configs.prune_by_n},
    )
    @triton.jit
    def _gram_kernel(G, SCALE, OUT, M, N, stride_b, stride_m, stride_n, SPLITS, N_BUCKET, M_BUCKET, IN_DTYPE_KEY,
                     HAS_SCALE: tl.constexpr, ACC_F64: tl.constexpr, PRECISION: tl.constexpr,
                     PARTIAL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        _gram_body(G, SCALE, OUT, M, N, stride_b, stride_m, stride_n, SPLITS, HAS_SCALE, ACC_F64, PRECISION,
                   PARTIAL, BLOCK_N, BLOCK_K)

    return _gram_kernel


@triton.jit
def _to_f64(x):
    """x in float64 for an fp64 tl.dot. For 16-bit x, Triton < 3.9 sizes the MMA operand from the 16-bit load
    (kWidth 2) and then fails to lower the fp64 MMA; a reduction over a unit axis hides the load's width."""
    y = x.to(tl.float64)
    if x.dtype.primitive_bitwidth < 32:
        y = tl.sum(tl.reshape(y, (x.shape[0], x.shape[1], 1)), axis=2)
    return y


@triton.jit
def _gram_body(G, SCALE, OUT, M, N, stride_b, stride_m, stride_n, SPLITS,
               HAS_SCALE: tl.constexpr, ACC_F64: tl.constexpr, PRECISION: tl.constexpr,
               PARTIAL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_t = tl.program_id(0)
    pid_s = tl.program_id(1)
    b = tl.program_id(2)
    nb = tl.cdiv(N, BLOCK_N)
    ti = pid_t // nb
    tj = pid_t % nb
    if ti <= tj:
        ri = ti * BLOCK_N + tl.arange(0, BLOCK_N)
        rj = tj * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        # Block-shaped (the interpreter rejects a scalar condition in masks and where).
        diag = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.int32) + (ti == tj).to(tl.int32)
        # Split s owns rows [k0, k1); chunks are whole BLOCK_Ks so only the last block of G is ragged.
        chunk = tl.cdiv(tl.cdiv(M, SPLITS), BLOCK_K) * BLOCK_K
        k0 = pid_s * chunk
        k1 = tl.minimum(k0 + chunk, M)
        base = G + b.to(tl.int64) * stride_b
        if HAS_SCALE:
            s = tl.load(SCALE + b)
        if ACC_F64:
            acc = tl.zeros((BLOCK_N, BLOCK_N), dtype=tl.float64)
        else:
            acc = tl.zeros((BLOCK_N, BLOCK_N), dtype=tl.float32)
        for k in range(k0, k1, BLOCK_K):
            rows = k + rk
            kmask = rows[:, None] < k1
            gi = tl.load(base + rows[:, None] * stride_m + ri[None, :] * stride_n,
                         mask=kmask & (ri[None, :] < N), other=0.0)
            # A diagonal tile needs one block of G, not two: the masked-off load issues no memory traffic.
            gj = tl.load(base + rows[:, None] * stride_m + rj[None, :] * stride_n,
                         mask=kmask & (rj[None, :] < N) & (diag == 0), other=0.0)
            gj = tl.where(diag != 0, gi, gj)
            if HAS_SCALE:
                # A power of two: exact, and cast back so half inputs stay on the tensor cores.
                gi = (gi * s).to(G.dtype.element_ty)
                gj = (gj * s).to(G.dtype.element_ty)
            if ACC_F64:
                gi = _to_f64(gi)
                gj = _to_f64(gj)
            acc = tl.dot(tl.trans(gi), gj, acc, input_precision=PRECISION, out_dtype=acc.dtype)
        if PARTIAL:
            nn = N * N
            P = OUT + (b.to(tl.int64) * SPLITS + pid_s) * nn
            tl.store(P + ri[:, None] * N + rj[None, :], acc, mask=(ri[:, None] < N) & (rj[None, :] < N))
        else:
            store_symmetric(OUT + b.to(tl.int64) * N * N, N, ri, rj, acc)


_gram_kernel = _make(False)
_gram_kernel_f64 = _make(True)


@triton.autotune(configs=_configs.reduce_configs(), key=["N_BUCKET", "SPLITS"])
@triton.jit
def _reduce_splits_kernel(P, OUT, N, SPLITS, N_BUCKET, BLOCK_N: tl.constexpr):
    pid_t = tl.program_id(0)
    b = tl.program_id(1)
    nb = tl.cdiv(N, BLOCK_N)
    ti = pid_t // nb
    tj = pid_t % nb
    if ti <= tj:
        ri = ti * BLOCK_N + tl.arange(0, BLOCK_N)
        rj = tj * BLOCK_N + tl.arange(0, BLOCK_N)
        # Upper triangle only: the Gram kernel's tiles may be smaller than this one, so below the diagonal of a
        # diagonal tile lie partials nobody wrote (store_symmetric reads only the upper half anyway).
        mask = (ri[:, None] < N) & (rj[None, :] < N) & (ri[:, None] <= rj[None, :])
        nn = N * N
        base = P + b.to(tl.int64) * SPLITS * nn + ri[:, None] * N + rj[None, :]
        acc = tl.load(base, mask=mask, other=0.0)
        # Fixed order 0, 1, ..., SPLITS-1: the deterministic replacement for atomics.
        # The pointer advances by N*N per split (64-bit pointer arithmetic; s * N*N in int32 could overflow).
        for _ in range(1, SPLITS):
            base += nn
            acc += tl.load(base, mask=mask, other=0.0)
        store_symmetric(OUT + b.to(tl.int64) * nn, N, ri, rj, acc)




def choose_splits(B: int, m: int, n: int, device: torch.device) -> int:
    """Row splits when the tiles alone leave SMs idle (about two programs per SM then); else 1.

    Splitting costs a (B, splits, n, n) round trip through memory, so a batch that already gives every SM a
    tile (256 x 576 x 64: 256 tiles on 132 SMs) is not split.
    """
    sms = sm_count(device)
    tiles = B * (-(-n // 64)) * (-(-n // 64) + 1) // 2
    if tiles >= sms:
        return 1
    want = -(-2 * sms // max(tiles, 1))
    # Each split should still stream >= 256 rows, or the partial tiles cost more than they save.
    return int(max(1, min(want, m // 256, 64)))


def sym_gram(G: torch.Tensor, *, scale: Optional[torch.Tensor] = None, acc_f64: bool = False,
             out_dtype: Optional[torch.dtype] = None, splits: int = 0, allow_tf32: bool = False,
             launch=None) -> torch.Tensor:
    """A = (s G)^T (s G) for G (B, m, n) (any strides), s = ``scale`` (B,) powers of two or None.

    ``out_dtype`` defaults to fp64 with ``acc_f64`` else fp32. ``splits=0`` chooses the split-K factor.
    ``launch`` maps a kernel to its launcher (``wrap_triton`` inside a triton_op; identity by default).
    """
    if G.dim() != 3:
        raise ValueError(f"sym_gram: G must be (B, m, n), got shape {tuple(G.shape)}")
    if G.dtype not in DTYPE_KEY:
        raise TypeError(f"sym_gram: G must be float64/float32/bfloat16/float16, got {G.dtype}")
    if G.dtype == torch.float64 and not acc_f64:
        acc_f64 = True  # float64 input accumulates in float64 whatever is asked: nothing to gain below it
    launch = launch or (lambda k: k)
    B, m, n = G.shape
    acc_dtype = torch.float64 if acc_f64 else torch.float32
    out_dtype = out_dtype or acc_dtype
    out = torch.empty((B, n, n), dtype=out_dtype, device=G.device)
    if B == 0 or n == 0:
        return out
    if m == 0:
        return out.zero_()
    if scale is not None:
        if scale.shape != (B,):
            raise ValueError(f"sym_gram: scale must have shape ({B},), got {tuple(scale.shape)}")
        # float64 input takes a float64 scale (2^-e may be far outside float32's range); the others float32.
        scale = scale.to(torch.float64 if G.dtype == torch.float64 else torch.float32).contiguous()
    splits = int(splits) if splits else choose_splits(B, m, n, G.device)
    if splits < 1:
        raise ValueError(f"sym_gram: splits must be >= 0, got {splits}")
    kernel = _gram_kernel_f64 if acc_f64 else _gram_kernel
    precision = dot_precision(G.dtype, allow_tf32) if not acc_f64 else "ieee"
    partial = splits > 1
    for b0, b1 in _common.batch_chunks(B):
        nbat = b1 - b0
        outc = _common.rows(out, b0, b1)
        sc = _common.rows(scale, b0, b1) if scale is not None else G  # unused without HAS_SCALE
        target = torch.empty((nbat, splits, n, n), dtype=acc_dtype, device=G.device) if partial else outc
        grid = lambda META, nbat=nbat: (triton.cdiv(n, META["BLOCK_N"]) ** 2, splits, nbat)  # noqa: E731
        launch(kernel)[grid](
            _common.rows(G, b0, b1), sc, target, m, n, G.stride(0), G.stride(1), G.stride(2), splits,
            bucket(n), bucket(m), DTYPE_KEY[G.dtype],
            HAS_SCALE=scale is not None, ACC_F64=acc_f64, PRECISION=precision, PARTIAL=partial,
        )
        if partial:
            rgrid = lambda META, nbat=nbat: (triton.cdiv(n, META["BLOCK_N"]) ** 2, nbat)  # noqa: E731
            launch(_reduce_splits_kernel)[rgrid](target, outc, n, splits, bucket(n))
    return out
