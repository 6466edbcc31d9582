"""One Newton–Schulz step on the tall orientation: X (B, m, n), m >= n, A = X^T X is the small n x n matrix.

    X <- a X + X (b A + c A^2)

as three kernels and no elementwise pass: the symmetric Gram (one triangle), the symmetric polynomial
b A + c A^2 (one triangle, b A added in its epilogue) and the apply with a X added in its epilogue. A cubic
step (c = 0) skips the middle kernel and folds b into the apply: X <- a X + b (X A). The kernels are called
through their torch ops (``torch_ops.py``), so a step is visible to torch.compile.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import torch_ops  # noqa: F401  (registers torch.ops.orthokern.triton_*)
from ._common import ACCURATE, check_precision


def ns_step(X: torch.Tensor, a: float, b: float, c: float, *, out_dtype: Optional[torch.dtype] = None,
            precision: str = ACCURATE) -> torch.Tensor:
    """The step in X's dtype (bf16/fp16: tensor cores, fp32 accumulation; fp32: dots at ``precision``, by
    default "tf32x3", float32 accuracy on the tensor cores; fp64: fp64).

    The products A and b A + c A^2 are stored in X's dtype, as a torch step in that dtype would; the result
    is stored in ``out_dtype`` (default X's), rounded once from the accumulator.
    """
    check_precision("ns_step", precision)
    ops = torch.ops.orthokern
    A = ops.triton_sym_gram(X, None, X.dtype == torch.float64, X.dtype, 0, precision)
    out_dtype = out_dtype or X.dtype
    if c != 0.0:
        return ops.triton_apply(X, ops.triton_sym_poly(A, b, c, precision), None, a, 1.0, out_dtype, precision)
    return ops.triton_apply(X, A, None, a, b, out_dtype, precision)
