"""C = b A + c A^2 for a batch of symmetric A (B, n, n): the middle product of a Newton–Schulz step.

A^2 is symmetric, so only the upper-triangle tiles are computed (half the flops) and mirrored; b A is added
in the epilogue from the A tile the program already addresses, so the polynomial costs no elementwise pass.
Operands stay in A's dtype (bf16 on the tensor cores with fp32 accumulation in the fast steps, fp32 with
full fp32 products, fp64 with fp64 accumulation) and C is stored in A's dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _configs
from . import _common
from ._common import DTYPE_KEY, bucket, dot_precision
from ._symmetric import store_symmetric


def _make(f64: bool):
    @triton.autotune(
        configs=_configs.poly_configs(f64),
        key=["N_BUCKET", "DTYPE_KEY"],
        prune_configs_by={"early_config_prune": _configs.prune_by_n},
    )
    @triton.jit
    def _sym_poly_kernel(A, OUT, N, b_coef: tl.float64, c_coef: tl.float64, N_BUCKET, DTYPE_KEY, ACC_F64: tl.constexpr,
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
            if ACC_F64:
                acc = tl.zeros((BLOCK_N, BLOCK_N), dtype=tl.float64)
            else:
                acc = tl.zeros((BLOCK_N, BLOCK_N), dtype=tl.float32)
            for k in range(0, N, BLOCK_K):
                kk = k + rk
                # A is symmetric: the (k, i) block read row-major is A[i, k]^T, a coalesced load either way.
                x = tl.load(base + ri[:, None] * N + kk[None, :], mask=(ri[:, None] < N) & (kk[None, :] < N),
                            other=0.0)
                y = tl.load(base + kk[:, None] * N + rj[None, :], mask=(kk[:, None] < N) & (rj[None, :] < N),
                            other=0.0)
                acc = tl.dot(x, y, acc, input_precision=PRECISION, out_dtype=acc.dtype)
            a = tl.load(base + ri[:, None] * N + rj[None, :], mask=(ri[:, None] < N) & (rj[None, :] < N),
                        other=0.0).to(acc.dtype)
            store_symmetric(OUT + bi.to(tl.int64) * N * N, N, ri, rj, b_coef * a + c_coef * acc)

    return _sym_poly_kernel


_sym_poly_kernel = _make(False)
_sym_poly_kernel_f64 = _make(True)


def sym_poly(A: torch.Tensor, b: float, c: float, *, allow_tf32: bool = False, launch=None) -> torch.Tensor:
    """b A + c A @ A for symmetric A (B, n, n); the result has A's dtype. A's symmetry is assumed, not checked."""
    if A.dim() != 3 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"sym_poly: A must be (B, n, n), got shape {tuple(A.shape)}")
    if A.dtype not in DTYPE_KEY:
        raise TypeError(f"sym_poly: A must be float64/float32/bfloat16/float16, got {A.dtype}")
    launch = launch or (lambda k: k)
    A = A.contiguous()
    B, n, _ = A.shape
    out = torch.empty_like(A)
    if B == 0 or n == 0:
        return out
    f64 = A.dtype == torch.float64
    kernel = _sym_poly_kernel_f64 if f64 else _sym_poly_kernel
    for b0, b1 in _common.batch_chunks(B):
        grid = lambda META, nbat=b1 - b0: (triton.cdiv(n, META["BLOCK_N"]) ** 2, nbat)  # noqa: E731
        launch(kernel)[grid](_common.rows(A, b0, b1), _common.rows(out, b0, b1), n, float(b), float(c), bucket(n),
                             DTYPE_KEY[A.dtype], ACC_F64=f64, PRECISION=dot_precision(A.dtype, allow_tf32))
    return out
