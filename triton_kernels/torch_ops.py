"""The kernels as torch ops ``torch.ops.orthokern.triton_*`` (torch.library.triton_op), visible to torch.compile,
each with its cost model for the dry-run plan (``orthokern/_cost.py``).

On a GPU they are ``triton_op``s whose bodies launch through ``wrap_triton``: torch.compile traces into the
kernels, and the body itself (make_fx-traceable) serves as the fake implementation. Under
``TRITON_INTERPRET=1`` the kernels are interpreter objects: ``wrap_triton`` may reject them (pytorch issue
152868) and tracing the body would hand fake tensors to the interpreter, so there the ops are plain opaque
``custom_op``s that launch the kernels directly, with the fake implementations below (output allocation
only). Eager results are the same either way.

``precision`` (every op): the precision of float32-operand dots, one of ``_common.PRECISIONS``.

Cost models: ``model(args, kwargs, out)`` gives the launches the op makes for these (possibly fake) arguments,
from the same :class:`~._common.KernelCall` plan the op runs (``plan`` in gram.py, poly.py, tall_apply.py). The
split-K choice needs the device's SM count: under fake tensors set it with ``assume_sm_count``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch.library import custom_op, triton_op, wrap_triton

from .._cost import Launch, register_cost
from .._env import interpreting
from . import _configs
from . import gram as _gram
from . import poly as _poly
from . import prologue as _prologue
from . import tall_apply as _apply
from ._common import KernelCall

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


def _meta(shape, dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


def launches(calls: list[KernelCall]) -> list[Launch]:
    """The cost-model records of a plan: kernel name, FLOPs by unit, compulsory bytes, autotune (key, configs)
    as on a GPU (the interpreter's single config is not what a GPU compiles)."""
    out = []
    for c in calls:
        tk = _configs.tune_key(c, gpu=True)
        tune = (f"{c.name}{tk[0]}", tk[1]) if tk is not None else None
        out.append(Launch(f"triton_kernels.{c.name}", dict(c.flops), c.bytes, tune, _compiled(c), c.programs))
    return out


def _int_specialisation(v: int) -> str:
    """How Triton's JIT keys a runtime int argument (Triton 3.6-3.9: triton/runtime/jit.py, specialize_impl): the
    value 1 becomes a constant, a multiple of 16 is marked divisible, and the type is i32 or i64. Tensor arguments
    are assumed 16-byte aligned, as fresh allocations are."""
    if v == 1:
        return "1"
    return ("i32" if -2**31 <= v < 2**31 else "i64") + ("D" if v % 16 == 0 else "")


def _unspecialised(jit) -> set[str]:
    """The arguments a kernel is declared not to specialise on (``triton.jit(do_not_specialize=...)``), from a
    JITFunction or, under TRITON_INTERPRET=1, the InterpretedFunction that stands for it."""
    if hasattr(jit, "params"):
        return {p.name for p in jit.params if p.do_not_specialize}
    return set(getattr(jit, "kwargs", {}).get("do_not_specialize") or ())


def _compiled(c: KernelCall) -> tuple[str, ...]:
    """Identities of the binaries the launch compiles: its specialisation (constexprs, argument dtypes, and the JIT's
    specialisation of its int arguments: a gradient read through a transposed view, or n = 1000, is another binary)
    with each candidate config it may run (the autotuner compiles every candidate the prune hook keeps)."""
    unspecialised = _unspecialised(getattr(c.kernel, "fn", None) if hasattr(c.kernel, "configs") else c.kernel)
    ints = tuple((k, _int_specialisation(v)) for k, v in c.args.items()
                 if type(v) is int and k not in unspecialised)
    spec = (c.name, tuple(sorted(c.meta.items())), tuple(str(v.dtype) for v in c.args.values() if hasattr(v, "dtype")),
            ints)
    family = _configs.family_of(c.kernel)
    if family is None:
        return (repr(spec),)
    return tuple(repr((spec, sorted(cfg.kwargs.items()), cfg.num_warps, cfg.num_stages))
                 for cfg in _configs.candidates(family, c.args, c.meta, gpu=True))


# ---------------------------------------------------------------- triton_sym_gram
@_op("orthokern::triton_sym_gram")
def sym_gram(G: torch.Tensor, scale: Optional[torch.Tensor], acc_f64: bool, out_dtype: torch.dtype,
             splits: int, precision: str) -> torch.Tensor:
    return _gram.sym_gram(G, scale=scale, acc_f64=acc_f64, out_dtype=out_dtype, splits=splits,
                          precision=precision, launch=_launcher())


@_fake(sym_gram)
def _(G, scale, acc_f64, out_dtype, splits, precision):
    torch._check(G.dim() == 3, lambda: f"triton_sym_gram: G must be (B, m, n), got {G.dim()} dims")
    return G.new_empty((G.shape[0], G.shape[2], G.shape[2]), dtype=out_dtype)


@register_cost("orthokern.triton_sym_gram.default")
def sym_gram_cost(args, kwargs, out) -> list[Launch]:
    G, scale, acc_f64, out_dtype, splits, precision = args
    B, m, n = G.shape
    sc = _meta((B,), torch.float32) if scale is not None else None
    return launches(_gram.plan(G, sc, _meta((B, n, n), out_dtype), acc_f64, splits, precision, allocate=False))


# ---------------------------------------------------------------- triton_sym_poly
@_op("orthokern::triton_sym_poly")
def sym_poly(A: torch.Tensor, b: float, c: float, precision: str) -> torch.Tensor:
    return _poly.sym_poly(A, b, c, precision=precision, launch=_launcher())


@_fake(sym_poly)
def _(A, b, c, precision):
    torch._check(A.dim() == 3 and A.shape[1] == A.shape[2], lambda: "triton_sym_poly: A must be (B, n, n)")
    return torch.empty_like(A, memory_format=torch.contiguous_format)


@register_cost("orthokern.triton_sym_poly.default")
def sym_poly_cost(args, kwargs, out) -> list[Launch]:
    A, b, c, precision = args
    return launches(_poly.plan(_meta(A.shape, A.dtype), _meta(A.shape, A.dtype), b, c, precision))


# ---------------------------------------------------------------- triton_sym_mul
@_op("orthokern::triton_sym_mul")
def sym_mul(X: torch.Tensor, Y: torch.Tensor, alpha: float, beta: float, precision: str) -> torch.Tensor:
    return _poly.sym_mul(X, Y, alpha, beta, precision=precision, launch=_launcher())


@_fake(sym_mul)
def _(X, Y, alpha, beta, precision):
    torch._check(X.dim() == 3 and X.shape[1] == X.shape[2], lambda: "triton_sym_mul: X must be (B, n, n)")
    torch._check(Y.shape == X.shape, lambda: "triton_sym_mul: Y must have X's shape")
    return torch.empty_like(X, memory_format=torch.contiguous_format)


@register_cost("orthokern.triton_sym_mul.default")
def sym_mul_cost(args, kwargs, out) -> list[Launch]:
    X, Y, alpha, beta, precision = args
    return launches(_poly.plan(_meta(X.shape, X.dtype), _meta(X.shape, X.dtype), alpha, beta, precision,
                               _meta(Y.shape, Y.dtype)))


# ---------------------------------------------------------------- triton_apply
@_op("orthokern::triton_apply")
def apply(G: torch.Tensor, Mat: torch.Tensor, scale: Optional[torch.Tensor], alpha: float, beta: float,
          out_dtype: torch.dtype, precision: str) -> torch.Tensor:
    return _apply.apply(G, Mat, scale=scale, alpha=alpha, beta=beta, out_dtype=out_dtype, precision=precision,
                        launch=_launcher())


@_fake(apply)
def _(G, Mat, scale, alpha, beta, out_dtype, precision):
    torch._check(G.dim() == 3, lambda: "triton_apply: G must be (B, m, n)")
    torch._check(Mat.shape == (G.shape[0], G.shape[2], G.shape[2]), lambda: "triton_apply: Mat must be (B, n, n)")
    return G.new_empty(G.shape, dtype=out_dtype)


@register_cost("orthokern.triton_apply.default")
def apply_cost(args, kwargs, out) -> list[Launch]:
    G, Mat, scale, alpha, beta, out_dtype, precision = args
    B, m, n = G.shape
    sc = _meta((B,), torch.float32) if scale is not None else None
    return launches(_apply.plan(G, _meta(Mat.shape, Mat.dtype), sc, _meta(G.shape, out_dtype), alpha, beta,
                                precision))


# ---------------------------------------------------------------- the prologue: per-matrix scalars, one launch each
@_op("orthokern::triton_pow2_scale")
def pow2_scale(amax: torch.Tensor, out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    return _prologue.pow2_scale(amax, out_dtype, launch=_launcher())


@_fake(pow2_scale)
def _(amax, out_dtype):
    torch._check(amax.dim() == 1, lambda: "triton_pow2_scale: amax must be (B,)")
    return amax.new_empty(amax.shape, dtype=out_dtype), amax.new_empty(amax.shape, dtype=torch.bool)


@register_cost("orthokern.triton_pow2_scale.default")
def pow2_scale_cost(args, kwargs, out) -> list[Launch]:
    amax, out_dtype = args
    return launches(_prologue.pow2_scale_plan(amax, _meta(amax.shape, out_dtype), _meta(amax.shape, torch.bool),
                                                0, 0))


@_op("orthokern::triton_gram_scale")
def gram_scale(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _prologue.gram_scale(A, launch=_launcher())


@_fake(gram_scale)
def _(A):
    torch._check(A.dim() == 3 and A.shape[1] == A.shape[2], lambda: "triton_gram_scale: A must be (B, n, n)")
    B = A.shape[0]
    return (torch.empty_like(A, memory_format=torch.contiguous_format), A.new_empty((B,), dtype=torch.float64),
            A.new_empty((B,), dtype=torch.bool))


@register_cost("orthokern.triton_gram_scale.default")
def gram_scale_cost(args, kwargs, out) -> list[Launch]:
    (A,) = args
    B = A.shape[0]
    return launches(_prologue.gram_scale_plan(A, _meta(A.shape, A.dtype), _meta((B,), torch.float64),
                                              _meta((B,), torch.bool)))


@_op("orthokern::triton_first_factor")
def first_factor(A: torch.Tensor, A2: torch.Tensor, norm: torch.Tensor, a: float, b: float, c: float,
                 out_dtype: torch.dtype) -> torch.Tensor:
    return _prologue.first_factor(A, A2, norm, a, b, c, out_dtype, launch=_launcher())


@_fake(first_factor)
def _(A, A2, norm, a, b, c, out_dtype):
    torch._check(A.dim() == 3 and A.shape[1] == A.shape[2], lambda: "triton_first_factor: A must be (B, n, n)")
    return A.new_empty(A.shape, dtype=out_dtype)


@register_cost("orthokern.triton_first_factor.default")
def first_factor_cost(args, kwargs, out) -> list[Launch]:
    A, A2, norm, a, b, c, out_dtype = args
    return launches(_prologue.first_factor_plan(A, A2, norm, _meta(A.shape, out_dtype), a, b, c))
