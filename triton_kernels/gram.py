"""Batched symmetric Gram matrix A = G^T G of tall-skinny G (B, m, n), one triangle computed.

Each program owns one (BLOCK_N x BLOCK_N) tile of the upper triangle (block row <= block column; the
programs below the diagonal exit at once) and one of ``splits`` contiguous row ranges of G. With one split
it writes the tile and its mirror directly. With several (small batches of long matrices, where B times the
number of tiles would leave most SMs idle) every split writes its partial tile to a (B, splits, n, n)
buffer and a second kernel sums the splits in a fixed order: no atomics, so the result is bitwise
reproducible run to run (for a given autotuned config: a different BLOCK_K changes the summation order).

Precision: bf16/fp16 operands go to the tensor cores with fp32 accumulation; fp32 operands take ``precision``
(``_common.PRECISIONS``: "tf32x3" keeps about float32 accuracy on the tensor cores, "ieee" is CUDA-core FMA);
``acc_f64`` upcasts every operand to fp64 in registers and accumulates in fp64 on the float64 tensor cores
(products of fp32 values are exact in fp64), as the accurate mode of gram_eigh needs: an fp32 Gram carries an
error eps32 * ||G||^2, larger than the smallest significant eigenvalue's gaps at condition ~1e3.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import triton
import triton.language as tl

from .._cost import DEVICES
from . import _common, _configs, _dot
from ._common import KernelCall, check_dtype, check_precision, dot_precision, dot_unit, element_size, sm_count
from ._symmetric import store_symmetric


@_configs.autotune("gram", key=["N_CLASS", "HAS_SCALE", "ACC_F64", "PRECISION", "PARTIAL"])
# M (the rows) only bounds masks and the row loop: not specialised, so that matrices whose row counts differ in
# divisibility by 16 share a binary.
@triton.jit(do_not_specialize=["M"])
def _gram_kernel(G, SCALE, OUT, M, N, stride_b, stride_m, stride_n, SPLITS, N_CLASS,
                 HAS_SCALE: tl.constexpr, ACC_F64: tl.constexpr, PRECISION: tl.constexpr,
                 PARTIAL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    _gram_body(G, SCALE, OUT, M, N, stride_b, stride_m, stride_n, SPLITS, HAS_SCALE, ACC_F64, PRECISION,
               PARTIAL, BLOCK_N, BLOCK_K)


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
        acc_lo = _dot.lo_accumulator(BLOCK_N, BLOCK_N, PRECISION)
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
            acc, acc_lo = _dot.dot(tl.trans(gi), gj, acc, acc_lo, PRECISION)
        acc = _dot.finish(acc, acc_lo, PRECISION)
        if PARTIAL:
            nn = N * N
            P = OUT + (b.to(tl.int64) * SPLITS + pid_s) * nn
            tl.store(P + ri[:, None] * N + rj[None, :], acc, mask=(ri[:, None] < N) & (rj[None, :] < N))
        else:
            store_symmetric(OUT + b.to(tl.int64) * N * N, N, ri, rj, acc)


@triton.jit
def _reduce_splits_kernel(P, OUT, N, SPLITS, BLOCK_N: tl.constexpr):
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


def choose_splits(B: int, m: int, n: int, sms: int, unit: str = "tc16", passes: int = 1, acc_bytes: int = 4) -> int:
    """Row splits of a Gram launch: the count whose modelled time is least, 1 unless splitting pays.

    Each of the B n^2 / 2 tiles (64 wide) is one program streaming its rows; with s splits there are s times as
    many programs, each streaming m / s rows, in ceil(tiles s / sms) waves. A split launch pays a second launch
    (the fixed-order reduction) and a round trip of the (B, s, n, n) partial tiles through memory. Times are the
    device model's (``orthokern/_cost.py``: H100 spec-sheet rates on the dot's ``unit``, ``passes`` times) with
    this device's SM count, as the dispatch's other choices are. Splitting pays only when the tiles leave most SMs
    idle and the matrices are long: 108 tiles on 132 SMs take one wave whether split or not (splitting them three
    ways gives three waves of a third), while 1 x 4096 x 64 (one tile) gains nearly the whole device.
    """
    tiles = B * (-(-n // 64)) * (-(-n // 64) + 1) // 2
    if tiles >= sms:
        return 1
    device = DEVICES["h100"]
    per_sm = device.peak[unit] * device.efficiency / device.sms  # FLOP/s of one SM

    def seconds(s: int) -> float:
        rows = -(-m // s)
        waves = -(-tiles * s // sms)
        t = waves * passes * 2.0 * rows * 64 * 64 / per_sm
        if s > 1:
            t += device.graph_launch_s + 2.0 * B * s * n * n * acc_bytes / (device.bandwidth * device.efficiency)
        return t

    # Each split should still stream >= 256 rows, or the partial tiles cost more than they save.
    most = int(max(1, min(-(-2 * sms // max(tiles, 1)), m // 256, 64)))
    return min(range(1, most + 1), key=lambda s: (seconds(s), s))


def _check(G: torch.Tensor, scale: Optional[torch.Tensor], splits: int, precision: str) -> None:
    if G.dim() != 3:
        raise ValueError(f"sym_gram: G must be (B, m, n), got shape {tuple(G.shape)}")
    check_dtype("sym_gram", "G", G)
    check_precision("sym_gram", precision)
    if scale is not None and tuple(scale.shape) != (G.shape[0],):
        raise ValueError(f"sym_gram: scale must have shape ({G.shape[0]},), got {tuple(scale.shape)}")
    if int(splits) < 0:
        raise ValueError(f"sym_gram: splits must be >= 0 (0: chosen from the shape), got {splits}")


def plan(G: torch.Tensor, scale: Optional[torch.Tensor], out: torch.Tensor, acc_f64: bool, splits: int,
         precision: str, *, allocate: bool = True) -> list[KernelCall]:
    """The launches that compute ``out`` = (s G)^T (s G) (arguments as checked by :func:`sym_gram`): a Gram launch
    per batch slice, each followed by its split reduction when split. ``scale`` is (B,) or None: float64 for float64
    input, else float32.
    ``allocate=False`` (a cost model) describes the split buffer by a meta tensor instead of allocating it."""
    B, m, n = G.shape
    if B == 0 or n == 0 or m == 0:
        return []
    acc_f64 = acc_f64 or G.dtype == torch.float64
    acc_dtype = torch.float64 if acc_f64 else torch.float32
    dot_dtype = torch.float64 if acc_f64 else G.dtype
    prec = dot_precision(dot_dtype, precision)
    unit, passes = dot_unit(dot_dtype, prec)
    splits = int(splits) if splits else choose_splits(B, m, n, sm_count(G), unit, passes, 8 if acc_f64 else 4)
    partial = splits > 1
    calls = []
    for b0, b1 in _common.batch_chunks(B):
        nbat = b1 - b0
        outc = _common.rows(out, b0, b1)
        if partial:
            shape = (nbat, splits, n, n)
            target = G.new_empty(shape, dtype=acc_dtype) if allocate else torch.empty(shape, dtype=acc_dtype,
                                                                                       device="meta")
        else:
            target = outc
        args = dict(G=_common.rows(G, b0, b1), SCALE=_common.rows(scale, b0, b1) if scale is not None else G,
                    OUT=target, M=m, N=n, stride_b=G.stride(0), stride_m=G.stride(1), stride_n=G.stride(2),
                    SPLITS=splits, N_CLASS=_common.n_class(n))
        meta = dict(HAS_SCALE=scale is not None, ACC_F64=acc_f64, PRECISION=prec, PARTIAL=partial)
        # FLOPs of the upper-triangle tiles at the first candidate's BLOCK_N (ragged last row block not counted).
        bn = _configs.candidates("gram", args, meta, gpu=True)[0].kwargs["BLOCK_N"]
        nb = triton.cdiv(n, bn)
        tri = n * (n + 1) // 2
        io = nbat * (m * n * element_size(G.dtype) + (4 if scale is not None else 0))
        io += nbat * (splits * tri * element_size(acc_dtype) if partial else n * n * element_size(out.dtype))
        calls.append(KernelCall(
            _gram_kernel, "gram._gram_kernel", args, meta,
            grid=lambda META, nbat=nbat: (triton.cdiv(n, META["BLOCK_N"]) ** 2, splits, nbat),
            flops={unit: passes * 2.0 * nbat * m * bn * bn * nb * (nb + 1) // 2}, bytes=float(io),
            programs=nbat * splits * nb * (nb + 1) // 2))
        if partial:
            calls.append(KernelCall(
                _reduce_splits_kernel, "gram._reduce_splits_kernel",
                dict(P=target, OUT=outc, N=n, SPLITS=splits),
                dict(BLOCK_N=_configs.REDUCE_BLOCK_N, num_warps=_configs.REDUCE_WARPS),
                grid=lambda META, nbat=nbat: (triton.cdiv(n, META["BLOCK_N"]) ** 2, nbat),
                bytes=float(nbat * (splits * tri * element_size(acc_dtype) + n * n * element_size(out.dtype)))))
    return calls


def sym_gram(G: torch.Tensor, *, scale: Optional[torch.Tensor] = None, acc_f64: bool = False,
             out_dtype: Optional[torch.dtype] = None, splits: int = 0, precision: str = _common.ACCURATE,
             launch: Optional[Callable] = None) -> torch.Tensor:
    """A = (s G)^T (s G) for G (B, m, n) (any strides), s = ``scale`` (B,) powers of two or None.

    ``out_dtype`` defaults to fp64 with ``acc_f64`` (always taken for float64 G) else fp32. ``splits=0`` chooses
    the split-K factor. ``precision``: of float32 dots (``_common.PRECISIONS``). ``launch`` maps a kernel to its
    launcher (``wrap_triton`` inside a triton_op; identity by default).
    """
    _check(G, scale, splits, precision)
    acc_f64 = acc_f64 or G.dtype == torch.float64  # nothing to gain from accumulating float64 input below it
    out = G.new_empty((G.shape[0], G.shape[2], G.shape[2]), dtype=out_dtype or (torch.float64 if acc_f64 else
                                                                                 torch.float32))
    if G.shape[1] == 0:
        return out.zero_()
    if scale is not None:
        # float64 input takes a float64 scale (2^-e may be far outside float32's range); the others float32.
        scale = scale.to(torch.float64 if G.dtype == torch.float64 else torch.float32).contiguous()
    _common.run_all(plan(G, scale, out, acc_f64, splits, precision), G, launch)
    return out
