"""Registers the Triton kernels of ``orthokern.triton_kernels`` as backend "triton" of gram_eigh and newton_schulz.

Both follow the pure-torch reference (``orthokern/reference``) step for step; only the matmul-shaped work moves
to the kernels (through the ops ``torch.ops.orthokern.triton_*``), so the numerics, the scaling, zero -> zero
and NaN in -> NaN out are the reference's. Nothing here synchronises with the device. Triton is imported only
when a Triton implementation is actually asked for on a device it can run on.
"""
from __future__ import annotations

import importlib
import importlib.util
import pathlib
import sys
from typing import Optional

import torch

from . import _backends
from . import ns_schedule as ns
from ._registry import register
from .reference._common import eigen_threshold, finish, prepare

# Grid axes 1 and 2 of a CUDA launch are limited to 65535; the kernels put the batch there.
_MAX_BATCH = 65535


def _load_kernels():
    """``orthokern.triton_kernels``; from the source tree when orthokern runs uninstalled (PYTHONPATH=repo).

    setup.py maps the top-level ``triton_kernels/`` directory to ``orthokern.triton_kernels`` only in an
    installed package, so a checkout needs the same mapping done here (never a top-level ``triton_kernels``:
    another project owns that name).
    """
    name = "orthokern.triton_kernels"
    try:
        mod = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:
            raise
        src = pathlib.Path(__file__).resolve().parent.parent / "triton_kernels"
        if not (src / "__init__.py").is_file():
            return None
        spec = importlib.util.spec_from_file_location(name, src / "__init__.py", submodule_search_locations=[str(src)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            del sys.modules[name]
            raise
        setattr(sys.modules["orthokern"], "triton_kernels", mod)
    if mod.AVAILABLE:
        importlib.import_module(name + ".ops")  # registers torch.ops.orthokern.triton_*
    return mod


_kernels_cache: list = []


def kernels():
    """The kernels package (loaded once); raises RuntimeError when it cannot be used."""
    if not _kernels_cache:
        _kernels_cache.append(_load_kernels())
    mod = _kernels_cache[0]
    if mod is None:
        raise RuntimeError("orthokern.triton_kernels is missing from this installation")
    if not mod.AVAILABLE:
        raise RuntimeError(mod.IMPORT_ERROR)
    return mod


def why_not(G: torch.Tensor) -> Optional[str]:
    reason = _backends.triton_why_not(G.device)
    if reason is not None:
        return reason
    if G.dim() == 3 and G.shape[0] > _MAX_BATCH:
        return f"batch {G.shape[0]} exceeds the Triton grid limit {_MAX_BATCH}"
    try:
        kernels()
    except RuntimeError as e:
        return str(e)
    return None


def _ops():
    kernels()
    return torch.ops.orthokern


# orthokern._C's one-program-per-matrix Jacobi eigensolver (csrc/cuda/jacobi.cuh: kMaxSmallN) beats torch's
# batched eigh by a wide margin for small n; above this size, or without the extension, torch's eigh is used.
_EIGH_SMALL_MAX_N = 64


def _has_eigh_small() -> bool:
    if _backends.cuda_ops_built() is not None:
        return False
    return hasattr(torch.ops.orthokern, "eigh_small")


def _eigh(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if A.is_cuda and A.shape[-1] <= _EIGH_SMALL_MAX_N and _has_eigh_small():
        return torch.ops.orthokern.eigh_small(A)
    return torch.linalg.eigh(A)


def _pow2_scale(norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(exponent e, 2^-e as float32) with norm = mantissa * 2^e, mantissa in [0.5, 1) as in ``prepare``.

    e is clamped to [-126, 149]: 2^-e must stay a (possibly subnormal) float32. Only matrices whose norm is
    below 2^-126 are then scaled less than the reference scales them.
    """
    _, e = torch.frexp(norm)
    e = e.clamp(-126, 149)
    return e, torch.ldexp(torch.ones_like(norm, dtype=torch.float32), -e.to(torch.float32))


def polar_gram_eigh(G: torch.Tensor, *, mode: str = "accurate", rcond: float) -> torch.Tensor:
    """Triton Gram -> eigh of the n x n Gram (float64 in accurate mode; orthokern._C's eigh_small when built) -> Triton apply."""
    ops = _ops()
    work = torch.float64 if G.dtype == torch.float64 else torch.float32
    if mode == "accurate" or G.dtype == torch.float64:
        # The float64 Gram of the raw G: products of float32 values are exact in float64 and the range of
        # float64 holds the square of any float32/bfloat16/float16, so no pre-scaling pass over G is needed.
        # The power-of-two scale of the reference comes from the trace (= ||G||_F^2) instead, and an Inf or
        # NaN in G always reaches the diagonal, so a non-finite Gram flags exactly the non-finite inputs.
        A = ops.triton_sym_gram(G, None, True, torch.float64, 0, False)
        finite = torch.isfinite(A).all(dim=(-2, -1))
        A = torch.where(finite[:, None, None], A, torch.zeros((), dtype=A.dtype, device=A.device))
        e, scale = _pow2_scale(torch.diagonal(A, dim1=-2, dim2=-1).sum(-1).sqrt())
        A = torch.ldexp(A, (-2 * e)[:, None, None].to(A.dtype))
    else:
        # Fast mode: a float32 Gram (as the reference's fast mode), which needs G scaled first or it could
        # overflow / underflow; one norm pass (accumulated in float64, so it cannot overflow) gives the scale,
        # which the kernel applies on load.
        norm = torch.linalg.vector_norm(G, dim=(-2, -1), dtype=torch.float64)
        finite = torch.isfinite(norm)
        _, scale = _pow2_scale(torch.where(finite, norm, torch.zeros_like(norm)))
        A = ops.triton_sym_gram(G, scale, False, torch.float32, 0, False)
        A = torch.where(finite[:, None, None], A, torch.zeros((), dtype=A.dtype, device=A.device))
    lam, W = _eigh(A)
    keep = eigen_threshold(lam, rcond)
    inv_sqrt = torch.where(keep, lam.clamp_min(torch.finfo(lam.dtype).tiny).rsqrt(), torch.zeros_like(lam))
    Mat = ((W * inv_sqrt[..., None, :]) @ W.mT).to(work)
    # NaN in the small matrix turns the whole product NaN (0 * NaN = NaN): the reference's "non-finite input
    # -> NaN result" without a pass over the output.
    Mat = torch.where(finite[:, None, None], Mat, torch.full((), float("nan"), dtype=work, device=Mat.device))
    return ops.triton_apply(G, Mat, scale, 0.0, 1.0, G.dtype, False)


def _low_dtype(G: torch.Tensor, high: torch.dtype) -> torch.dtype:
    # As the reference: bfloat16 matmuls only on a GPU (tensor cores); the interpreter has no bf16 arithmetic.
    return torch.bfloat16 if G.device.type == "cuda" else high


def polar_newton_schulz(G: torch.Tensor, *, mode: str = "accurate", rcond: float) -> torch.Tensor:
    """The reference's schedule and normalisation, each step three fused kernels (``ns_step``)."""
    ops = _ops()
    X, finite = prepare(G)
    n = X.shape[-1]
    high = X.dtype
    low = _low_dtype(G, high) if mode == "fast" else high
    steps = ns.schedule(mode, float(rcond), ns.n_bucket(n), 8 * torch.finfo(high).eps)
    dts = [low if s.precision == "low" else high for s in steps] + [high]

    # Normalisation by ||A^2||_F^{1/4} (see ns_schedule.NORM_SAFETY) from the first Gram and its square, in
    # the compute dtype; step 0's polynomial is then formed from them with the 1/t^2, 1/t^4 folded into its
    # coefficients (an n x n elementwise op), and X is scaled once while being cast to step 0's dtype.
    f64 = high == torch.float64
    A = ops.triton_sym_gram(X, None, f64, high, 0, False)
    A2 = ops.triton_sym_poly(A, 0.0, 1.0, False)
    t = torch.linalg.matrix_norm(A2).sqrt().sqrt() * ns.NORM_SAFETY
    t = torch.where(t > 0, t, torch.ones_like(t))[:, None, None]
    s0 = steps[0]
    B0 = ((s0.b / (t * t)) * A + (s0.c / (t * t) ** 2) * A2).to(dts[0])
    X = ops.triton_apply((X / t).to(dts[0]), B0, None, s0.a, 1.0, dts[1], False)
    k = kernels()
    for i in range(1, len(steps)):
        step = steps[i]
        X = k.ops.ns_step(X.to(dts[i]), step.a, step.b, step.c, out_dtype=dts[i + 1])
    return finish(X, finite, G.dtype)


register("gram_eigh", "triton", why_not=why_not)(polar_gram_eigh)
register("newton_schulz", "triton", why_not=why_not)(polar_newton_schulz)
