"""C = b X + c X @ Y for batches of commuting symmetric X and Y (B, n, n), whose product is symmetric: the middle
product of a Newton–Schulz step (Y = X = A: b A + c A^2) and every product of the n x n late steps
(``polar.late_factor``: the iterates there are polynomials of one matrix, so they commute).

The result being symmetric, only the upper-triangle tiles are computed (half the flops) and mirrored; b X is added
in the epilogue from the X tile the program already addresses, so the polynomial costs no elementwise pass.
Operands stay in X's dtype (bf16/fp16 on the tensor cores with fp32 accumulation, fp32 at ``precision``, fp64
with fp64 accumulation on the float64 tensor cores) and C is stored in X's dtype. Symmetry and commutation are
assumed, not checked: for a non-commuting pair the result would be the mirrored upper triangle of X @ Y.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import triton
import triton.language as tl

from . import _common, _configs, _dot
from ._common import KernelCall, check_dtype, check_precision, dot_precision, dot_unit, element_size
from ._symmetric import store_symmetric


@_configs.autotune("poly", key=["N_CLASS", "ACC_F64", "PRECISION"])
@triton.jit
def _sym_poly_kernel(A, Y, OUT, N, b_coef: tl.float64, c_coef: tl.float64, N_CLASS, ACC_F64: tl.constexpr,
                     PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_t = tl.program_id(0)
    bi = tl.program_id(1)
    nb = tl.cdiv(N, BLOCK_N)
    ti = pid_t // nb
    tj = pid_t % nb
    if ti <= tj:
        ri = ti * BLOCK_N + tl.arange(0, BLOCK_N)
        rj = tj * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        base = A + bi.to(tl.int64) * N * N
        ybase = Y + bi.to(tl.int64) * N * N
        if ACC_F64:
            acc = tl.zeros((BLOCK_N, BLOCK_N), dtype=tl.float64)
        else:
            acc = tl.zeros((BLOCK_N, BLOCK_N), dtype=tl.float32)
        acc_lo = _dot.lo_accumulator(BLOCK_N, BLOCK_N, PRECISION)
        for k in range(0, N, BLOCK_K):
            kk = k + rk
            x = tl.load(base + ri[:, None] * N + kk[None, :], mask=(ri[:, None] < N) & (kk[None, :] < N),
                        other=0.0)
            y = tl.load(ybase + kk[:, None] * N + rj[None, :], mask=(kk[:, None] < N) & (rj[None, :] < N),
                        other=0.0)
            acc, acc_lo = _dot.dot(x, y, acc, acc_lo, PRECISION)
        acc = _dot.finish(acc, acc_lo, PRECISION)
        a = tl.load(base + ri[:, None] * N + rj[None, :], mask=(ri[:, None] < N) & (rj[None, :] < N),
                    other=0.0).to(acc.dtype)
        # The coefficients in the accumulator's dtype: a float64 scalar would promote the whole fp32 tile to
        # float64 (twice the registers, CUDA-core fp64 arithmetic) for a rounding of 1e-7 relative.
        if ACC_F64:
            c = b_coef * a + c_coef * acc
        else:
            c = tl.cast(b_coef, tl.float32) * a + tl.cast(c_coef, tl.float32) * acc
        store_symmetric(OUT + bi.to(tl.int64) * N * N, N, ri, rj, c)


def plan(A: torch.Tensor, out: torch.Tensor, b: float, c: float, precision: str,
         Y: Optional[torch.Tensor] = None) -> list[KernelCall]:
    """The launches that compute ``out`` = b A + c A @ Y (Y = A by default; A, Y contiguous (B, n, n), checked by
    :func:`sym_poly` / :func:`sym_mul`)."""
    B, n, _ = A.shape
    if B == 0 or n == 0:
        return []
    Y = A if Y is None else Y
    f64 = A.dtype == torch.float64
    prec = dot_precision(A.dtype, precision)
    unit, passes = dot_unit(A.dtype, prec)
    calls = []
    for b0, b1 in _common.batch_chunks(B):
        nbat = b1 - b0
        args = dict(A=_common.rows(A, b0, b1), Y=_common.rows(Y, b0, b1), OUT=_common.rows(out, b0, b1), N=n,
                    b_coef=float(b), c_coef=float(c), N_CLASS=_common.n_class(n))
        meta = dict(ACC_F64=f64, PRECISION=prec)
        bn = _configs.candidates("poly", args, meta, gpu=True)[0].kwargs["BLOCK_N"]
        nb = triton.cdiv(n, bn)
        calls.append(KernelCall(
            _sym_poly_kernel, "poly._sym_poly_kernel", args, meta,
            grid=lambda META, nbat=nbat: (triton.cdiv(n, META["BLOCK_N"]) ** 2, nbat),
            # upper-triangle tiles of A @ Y at the first candidate's BLOCK_N; read A (and Y) once, write C once
            flops={unit: passes * 2.0 * nbat * n * bn * bn * nb * (nb + 1) // 2}, programs=nbat * nb * (nb + 1) // 2,
            bytes=float((2 if Y is A else 3) * nbat * n * n * element_size(A.dtype))))
    return calls


def _check_square(op: str, name: str, A: torch.Tensor) -> None:
    if A.dim() != 3 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"{op}: {name} must be (B, n, n), got shape {tuple(A.shape)}")
    check_dtype(op, name, A)


def sym_poly(A: torch.Tensor, b: float, c: float, *, precision: str = _common.ACCURATE,
             launch: Optional[Callable] = None) -> torch.Tensor:
    """b A + c A @ A for symmetric A (B, n, n); the result has A's dtype. A's symmetry is assumed, not checked."""
    _check_square("sym_poly", "A", A)
    check_precision("sym_poly", precision)
    A = A.contiguous()
    out = torch.empty_like(A)
    _common.run_all(plan(A, out, b, c, precision), A, launch)
    return out


def sym_mul(X: torch.Tensor, Y: torch.Tensor, alpha: float, beta: float, *, precision: str = _common.ACCURATE,
            launch: Optional[Callable] = None) -> torch.Tensor:
    """alpha X + beta X @ Y for commuting symmetric X and Y (B, n, n) of one dtype (so X @ Y is symmetric); the
    result has X's dtype. Symmetry and commutation are assumed, not checked."""
    _check_square("sym_mul", "X", X)
    _check_square("sym_mul", "Y", Y)
    if Y.shape != X.shape or Y.dtype != X.dtype:
        raise ValueError(f"sym_mul: Y must match X (shape {tuple(X.shape)}, {X.dtype}), got shape "
                         f"{tuple(Y.shape)}, {Y.dtype}")
    check_precision("sym_mul", precision)
    X, Y = X.contiguous(), Y.contiguous()
    out = torch.empty_like(X)
    _common.run_all(plan(X, out, alpha, beta, precision, Y), X, launch)
    return out
