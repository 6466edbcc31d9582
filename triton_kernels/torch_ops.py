"""The kernels as torch ops ``torch.ops.orthokern.triton_*`` (torch.library.triton_op), visible to torch.compile.

On a GPU they are ``triton_op``s whose bodies launch through ``wrap_triton``: torch.compile traces into the
kernels, and the body itself (make_fx-traceable) serves as the fake implementation. Under
``TRITON_INTERPRET=1`` the kernels are interpreter objects: ``wrap_triton`` may reject them (pytorch issue
152868) and tracing the body would hand fake tensors to the interpreter, so there the ops are plain opaque
``custom_op``s that launch the kernels directly, with the fake implementations below (output allocation
only). Eager results are the same either way.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch.library import custom_op, triton_op, wrap_triton

from . import tall_apply as _apply
from . import gram as _gram
from . import poly as _poly
from .._env import interpreting


_INTERPRET = interpreting()


def _launcher():
    return (lambda k: k) if _INTERPRET else wrap_triton


def _op(name: str):
    if _INTERPRET:
        return custom_op(name, mutates_args=())
    return triton_op(name, mutates_args=())


def _fake(op):
    """``op.register_fake`` where the op is an opaque custom_op; a triton_op already traces its own body."""
    if _INTERPRET:
        return op.register_fake
    return lambda fn: fn


@_op("orthokern::triton_sym_gram")
def sym_gram(G: torch.Tensor, scale: Optional[torch.Tensor], acc_f64: bool, out_dtype: torch.dtype,
             splits: int, allow_tf32: bool) -> torch.Tensor:
    return _gram.sym_gram(G, scale=scale, acc_f64=acc_f64, out_dtype=out_dtype, splits=splits,
                          allow_tf32=allow_tf32, launch=_launcher())


@_fake(sym_gram)
def _(G, scale, acc_f64, out_dtype, splits, allow_tf32):
    torch._check(G.dim() == 3, lambda: f"triton_sym_gram: G must be (B, m, n), got {G.dim()} dims")
    return G.new_empty((G.shape[0], G.shape[2], G.shape[2]), dtype=out_dtype)


@_op("orthokern::triton_sym_poly")
def sym_poly(A: torch.Tensor, b: float, c: float, allow_tf32: bool) -> torch.Tensor:
    return _poly.sym_poly(A, b, c, allow_tf32=allow_tf32, launch=_launcher())


@_fake(sym_poly)
def _(A, b, c, allow_tf32):
    torch._check(A.dim() == 3 and A.shape[1] == A.shape[2], lambda: "triton_sym_poly: A must be (B, n, n)")
    return torch.empty_like(A, memory_format=torch.contiguous_format)


@_op("orthokern::triton_apply")
def apply(G: torch.Tensor, Mat: torch.Tensor, scale: Optional[torch.Tensor], alpha: float, beta: float,
          out_dtype: torch.dtype, allow_tf32: bool) -> torch.Tensor:
    return _apply.apply(G, Mat, scale=scale, alpha=alpha, beta=beta, out_dtype=out_dtype, allow_tf32=allow_tf32,
                        launch=_launcher())


@_fake(apply)
def _(G, Mat, scale, alpha, beta, out_dtype, allow_tf32):
    torch._check(G.dim() == 3, lambda: "triton_apply: G must be (B, m, n)")
    torch._check(Mat.shape == (G.shape[0], G.shape[2], G.shape[2]), lambda: "triton_apply: Mat must be (B, n, n)")
    return G.new_empty(G.shape, dtype=out_dtype)

