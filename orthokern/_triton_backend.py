"""Registers the Triton kernels of ``orthokern.triton_kernels`` as backend "triton" of gram_eigh and newton_schulz.

Both follow the pure-torch reference (``orthokern/reference``): only the matmul-shaped work moves to the kernels
(through the ops ``torch.ops.orthokern.triton_*``), with the reference's scaling, zero -> zero, NaN in -> NaN
out and output dtype. One deliberate difference: accurate-mode newton_schulz on tall matrices (m >= 8n)
iterates on the n x n Gram side in float64 (see ``_newton_schulz_gram_side``). Nothing here synchronises with
the device. Triton is imported only where it can run (a GPU, or TRITON_INTERPRET=1), once, when the backends load.
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
from .reference._common import compute_dtype, eigen_threshold, finish, prepare
from .reference.newton_schulz import low_precision_dtype


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


def _load_kernels_if_usable() -> tuple[Optional[object], Optional[str]]:
    """(module, None) or (None, why not), decided once at import.

    Loaded eagerly when Triton can run here at all (a GPU, or the interpreter), so that nothing is imported
    while torch.compile traces polar(); elsewhere nothing is imported and the backend reports why.
    """
    reason = _backends.triton_import_error()
    if reason is not None:
        return None, reason
    if not (torch.cuda.is_available() or _backends.triton_interpret()):
        return None, "no GPU for Triton (and TRITON_INTERPRET is not set)"
    mod = _load_kernels()
    if mod is None:
        return None, "orthokern.triton_kernels is missing from this installation"
    if not mod.AVAILABLE:
        return None, mod.IMPORT_ERROR
    return mod, None


_KERNELS, _KERNELS_REASON = _load_kernels_if_usable()


def kernels():
    """The kernels package; raises RuntimeError when it cannot be used."""
    if _KERNELS is None:
        raise RuntimeError(_KERNELS_REASON)
    return _KERNELS


# The kernels index within one matrix in int32 (the batch offset is int64).
MAX_ELEMENTS_PER_MATRIX = 2**31 - 1


def why_not(G: torch.Tensor) -> Optional[str]:
    reason = _backends.triton_why_not(G.device)
    if reason is not None:
        return reason
    if G.shape[-2] * G.shape[-1] > MAX_ELEMENTS_PER_MATRIX:
        return f"a {G.shape[-2]} x {G.shape[-1]} matrix exceeds the kernels' int32 indexing (2^31 elements)"
    return _KERNELS_REASON


def _ops():
    kernels()
    return torch.ops.orthokern


# orthokern._C's one-program-per-matrix Jacobi eigensolver (csrc/cuda/jacobi.cuh: kMaxSmallN = 64), written
# for exactly these small batched eigenproblems where torch's batched eigh is slow (design notes, section 2);
# above that size, or without the extension, torch.linalg.eigh.
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


def _scaled_gram64(G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A, finite, scale): the float64 Gram of (scale G), the finite mask, the power-of-two scale (B,).

    The kernel forms the float64 Gram of the raw G: products of float32 values are exact in float64 and the
    range of float64 holds the square of any float32/bfloat16/float16, so no pre-scaling pass over G is
    needed. The reference's power-of-two scale comes from the trace (= ||G||_F^2) instead, and an Inf or NaN
    in G always reaches the diagonal, so a non-finite Gram flags exactly the non-finite inputs (whose A is
    zeroed, as ``prepare`` zeroes them).
    """
    A = _ops().triton_sym_gram(G, None, True, torch.float64, 0, False)
    finite = torch.isfinite(A).all(dim=(-2, -1))
    A = torch.where(finite[:, None, None], A, torch.zeros((), dtype=A.dtype, device=A.device))
    e, scale = _pow2_scale(torch.diagonal(A, dim1=-2, dim2=-1).sum(-1).sqrt())
    return torch.ldexp(A, (-2 * e)[:, None, None].to(A.dtype)), finite, scale


def _apply_or_nan(G: torch.Tensor, Mat: torch.Tensor, finite: torch.Tensor, scale: torch.Tensor,
                  work: torch.dtype) -> torch.Tensor:
    """(scale G) @ Mat in G's dtype, NaN for the non-finite inputs.

    A NaN small matrix turns the whole product NaN (0 * NaN = NaN): the reference's "non-finite input ->
    NaN result" without a pass over the output.
    """
    Mat = torch.where(finite[:, None, None], Mat.to(work), torch.full((), float("nan"), dtype=work, device=Mat.device))
    return _ops().triton_apply(G, Mat, scale, 0.0, 1.0, G.dtype, False)


def polar_gram_eigh(G: torch.Tensor, *, mode: str = "accurate", rcond: float) -> torch.Tensor:
    """Triton Gram -> eigh of the n x n Gram -> Triton apply.

    The eigensolver runs in float64 in accurate mode (float32 in fast mode, as the reference), through
    orthokern._C's ``eigh_small`` on CUDA when it is built and n is small enough, else torch.linalg.eigh.
    """
    if mode == "accurate" or G.dtype == torch.float64:
        A, finite, scale = _scaled_gram64(G)
    else:
        # Fast mode: a float32 Gram (as the reference's fast mode), which needs G scaled first or it could
        # overflow / underflow; one norm pass (accumulated in float64, so it cannot overflow) gives the scale,
        # which the kernel applies on load.
        norm = torch.linalg.vector_norm(G, dim=(-2, -1), dtype=torch.float64)
        finite = torch.isfinite(norm)
        _, scale = _pow2_scale(torch.where(finite, norm, torch.zeros_like(norm)))
        A = _ops().triton_sym_gram(G, scale, False, torch.float32, 0, False)
        A = torch.where(finite[:, None, None], A, torch.zeros((), dtype=A.dtype, device=A.device))
    lam, W = _eigh(A)
    keep = eigen_threshold(lam, rcond)
    inv_sqrt = torch.where(keep, lam.clamp_min(torch.finfo(lam.dtype).tiny).rsqrt(), torch.zeros_like(lam))
    return _apply_or_nan(G, (W * inv_sqrt[..., None, :]) @ W.mT, finite, scale, compute_dtype(G.dtype))


# Accurate mode iterates on the n x n Gram side once m >= GRAM_SIDE_RATIO * n. Per step the tall iteration
# costs ~3 m n^2 + n^3 multiply-adds in float32, the Gram-side one ~3.5 n^3 in float64 (plus one final
# m n^2 apply); on H100/H200 spec sheets float64 (tensor core) and float32 (CUDA core, which full-precision
# float32 products use) peak at about the same rate, so the crossover is near m = 4n. 8 leaves a margin:
# not measured yet (bench/bench_triton_kernels.py times both sides on 8 x 4608 x 512).
GRAM_SIDE_RATIO = 8


def polar_newton_schulz(G: torch.Tensor, *, mode: str = "accurate", rcond: float,
                        side: Optional[str] = None) -> torch.Tensor:
    """The reference's schedule and normalisation; ``side`` "tall" (X-side) or "gram" (default: by shape)."""
    if side is None:
        m, n = G.shape[-2], G.shape[-1]
        side = "gram" if (mode == "accurate" and m >= GRAM_SIDE_RATIO * n) else "tall"
    if side == "gram":
        return _newton_schulz_gram_side(G, mode, rcond)
    if side != "tall":
        raise ValueError(f"newton_schulz: side must be None, 'tall' or 'gram', got {side!r}")
    return _newton_schulz_tall(G, mode, rcond)


def _newton_schulz_tall(G: torch.Tensor, mode: str, rcond: float) -> torch.Tensor:
    """Each step three fused kernels on X (m x n) (``ns_step``)."""
    ops = _ops()
    X, finite = prepare(G)
    n = X.shape[-1]
    high = X.dtype
    low = low_precision_dtype(G) if mode == "fast" else high
    steps = ns.steps_for(mode, rcond, n, high)
    dts = [low if s.precision == "low" else high for s in steps] + [high]

    # Normalisation by ||A^2||_F^{1/4} (see ns_schedule.NORM_SAFETY) from the first Gram and its square, in
    # step 0's dtype (bfloat16 tensor-core products in fast mode on a GPU: a float32 A and A^2 would cost
    # about as much as all five bfloat16 steps at n = 4096, and a 0.4% error in ||A^2||_F moves t by 0.1%,
    # well inside the 1% safety factor). Step 0's polynomial is then formed from them with the 1/t^2, 1/t^4
    # folded into its coefficients (an n x n elementwise op), and X is scaled once for step 0.
    X0 = X.to(dts[0])
    A = ops.triton_sym_gram(X0, None, dts[0] == torch.float64, dts[0], 0, False)
    A2 = ops.triton_sym_poly(A, 0.0, 1.0, False)
    A, A2 = A.to(high), A2.to(high)
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


def _newton_schulz_gram_side(G: torch.Tensor, mode: str, rcond: float) -> torch.Tensor:
    """The same polynomial steps carried out on the n x n Gram matrix, in float64, and one apply at the end.

    With X_k = X_0 Q_k, every Q_k is a polynomial in A_0 = X_0^T X_0, so everything commutes:
    with P_k = a I + b A_k + c A_k^2,  Q_{k+1} = Q_k P_k  and  A_{k+1} = X_{k+1}^T X_{k+1} = A_k P_k^2.
    Only n x n products remain, then O = X_0 Q_K (one pass over G). Iterating on A squares the condition
    number, so it runs in float64 (in float32 it measured ||O||_2 = 1.0009 at condition 316, 512 x 128,
    outside the contract); the Gram comes from the float64-accumulating kernel.
    """
    ops = _ops()
    A, finite, scale = _scaled_gram64(G)
    n = A.shape[-1]
    # The tolerance of the output dtype: more float64 steps would polish digits the apply rounds away.
    steps = ns.steps_for(mode, rcond, n, compute_dtype(G.dtype))
    A2 = ops.triton_sym_poly(A, 0.0, 1.0, False)
    t = torch.linalg.matrix_norm(A2).sqrt().sqrt() * ns.NORM_SAFETY
    t = torch.where(t > 0, t, torch.ones_like(t))[:, None, None]
    s0 = steps[0]
    # X_0 = X / t: A_0 = A / t^2, and step 0's b A_0 + c A_0^2 from A and the A^2 already at hand.
    C = (s0.b / (t * t)) * A + (s0.c / (t * t) ** 2) * A2
    A = A / (t * t)
    Q = torch.eye(n, dtype=A.dtype, device=A.device) / t  # Q_0 = I / t, then Q_1 = Q_0 P_0 below
    for i, step in enumerate(steps):
        if i > 0:
            C = ops.triton_sym_poly(A, step.b, step.c, False)
        Q = ops.triton_apply(Q, C, None, step.a, 1.0, A.dtype, False)  # Q P = a Q + Q C
        if i + 1 < len(steps):
            T = ops.triton_apply(A, C, None, step.a, 1.0, A.dtype, False)  # A P
            A = ops.triton_apply(T, C, None, step.a, 1.0, A.dtype, False)  # A P P
    # Q is applied in float64: the schedule multiplies directions below rcond by up to prod(a_k) ~ 1e4 (as
    # the tall iteration does to them), so Q has entries ~1e4 there and a float32 apply would add rounding
    # ~eps32 * 1e4 to every direction (measured: ||O||_2 = 1 + 1.3e-4 on a rank-deficient 136 x 16). The
    # float64 apply runs at about the float32 (non-tensor-core) rate on H100/H200.
    return _apply_or_nan(G, Q, finite, scale, torch.float64)


register("gram_eigh", "triton", why_not=why_not)(polar_gram_eigh)
register("newton_schulz", "triton", why_not=why_not)(polar_newton_schulz)
