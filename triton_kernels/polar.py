"""gram_eigh and newton_schulz on the Triton kernels: the reference's numerics (``orthokern/reference``) with the
full-size work moved to the kernels, through the ops ``torch.ops.orthokern.triton_*`` (``torch_ops.py``).

* newton_schulz, Gram side (tall matrices; ``side="gram"``): the float64 Gram matrix (one pass over G), the n x n
  factor Q of the polynomial steps (``factor``: the fused CUDA kernel for small n, batched float64 matmuls
  otherwise; the dispatch chooses), and O = (s G) Q with float64 accumulation (one pass over G, one write of O).
* newton_schulz, tall side (square-ish matrices): per step the symmetric Gram, its polynomial and the apply with
  the residual in its epilogue (``newton_schulz.ns_step``).
* gram_eigh: the float64 Gram, an eigensolver on the n x n matrix (``eigh``: the dispatch's choice), the apply.

Scaling without a pass over G: for float32 / bfloat16 / float16 input the kernel forms the float64 Gram of the raw
G (products of float32 numbers are exact in float64, and float64's range holds their squares), and the power of
two comes from its trace; an Inf or NaN in G always reaches the diagonal, so the trace also flags the non-finite
matrices. float64 input can overflow or underflow a raw Gram, so there one reduction finds the scale first
(``reference.scaling.scale_and_finite``) and the Gram kernel applies it on load. The result of a non-finite matrix is
made NaN through its small factor (0 * NaN = NaN in the apply), never by a pass over O. Nothing here synchronises
with the device.
"""
from __future__ import annotations

from typing import Callable

import torch

from .. import ns_schedule as ns
from ..reference.gram_eigh import inverse_sqrt_of
from ..reference.newton_schulz import gram_side_factor as _gram_side_factor
from ..reference.newton_schulz import low_precision_dtype
from ..reference.scaling import compute_dtype, per_matrix
from ._common import ACCURATE, BOUNDED  # the precisions of float32 dots (_common.PRECISIONS)
from .newton_schulz import ns_step

# The kernels index within one matrix in int32 (the batch offset is int64).
MAX_ELEMENTS_PER_MATRIX = 2**31 - 1

Factor = Callable[[torch.Tensor, tuple], torch.Tensor]


def why_not_shape(G: torch.Tensor) -> str | None:
    """None when the kernels can index G, else why not."""
    if G.shape[-2] * G.shape[-1] > MAX_ELEMENTS_PER_MATRIX:
        return f"a {G.shape[-2]} x {G.shape[-1]} matrix exceeds the kernels' int32 indexing (2^31 elements)"
    return None


def _ops():
    return torch.ops.orthokern


def scale_and_finite(G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``reference.scaling.scale_and_finite`` in two launches: the amax reduction and the prologue kernel."""
    amax = torch.linalg.vector_norm(G, float("inf"), dim=(-2, -1))
    return _ops().triton_pow2_scale(amax, compute_dtype(G.dtype))


def scaled_gram64(G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A, finite, scale): A = (s G)^T (s G) in float64 with max |s G| about 1 (zero where G is not finite), the
    finite flags, and s (B,) in float64, a power of two."""
    if G.dtype == torch.float64:
        scale, finite = scale_and_finite(G)
        A = _ops().triton_sym_gram(G, scale, True, torch.float64, 0, ACCURATE)
        return torch.where(per_matrix(finite), A, 0.0), finite, scale
    A, scale, finite = _ops().triton_gram_scale(_ops().triton_sym_gram(G, None, True, torch.float64, 0, ACCURATE))
    return A, finite, scale


def first_factor(A: torch.Tensor, A2: torch.Tensor, step: ns.Step, *, out_dtype: torch.dtype | None = None
                 ) -> torch.Tensor:
    """``reference.newton_schulz.first_factor`` in two launches: the norm of A2 and the prologue kernel."""
    return _ops().triton_first_factor(A, A2, torch.linalg.matrix_norm(A2), step.a, step.b, step.c,
                                      out_dtype or A.dtype)


def gram_side_factor(A: torch.Tensor, steps: tuple) -> torch.Tensor:
    """The Gram side's n x n factor as batched float64 matmuls, its first step through the prologue kernel."""
    return _gram_side_factor(A, steps, first=first_factor)


def _nan_where_not(finite: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    return torch.where(per_matrix(finite), M, float("nan"))


# Triton specialises a stride equal to 1, so a column-major G (the transposed view of a wide matrix that
# ``orthokern.polar`` or ``optim.batched.by_shape`` passes without a copy) compiles its own binary of each kernel
# that reads it. Up to this many elements such a G is copied row-major instead: the copy is a few microseconds of
# memory traffic, a binary is seconds of compilation on a first step (the lone wide gradients of a ResNet-50 step,
# 64 x 147 and 128 x 256, compiled four binaries of their own: bench/RESULTS.md, plan section). Larger ones are read
# in place, where a copy would be a full pass over G more.
ROW_MAJOR_COPY_MAX_ELEMENTS = 2**20


def row_major(G: torch.Tensor) -> torch.Tensor:
    """G, copied row-major where it is not and small enough (``ROW_MAJOR_COPY_MAX_ELEMENTS``)."""
    if G.stride(-1) == 1 or G.shape[-1] == 1 or G.numel() > ROW_MAJOR_COPY_MAX_ELEMENTS:
        return G
    return G.clone(memory_format=torch.contiguous_format)  # (not .contiguous(): fails on the plan's fake CUDA tensors)


def polar_gram_eigh(G: torch.Tensor, *, mode: str = "accurate", rcond: float,
                    eigh: Callable = torch.linalg.eigh) -> torch.Tensor:
    """Triton Gram (float64) -> ``eigh`` of the n x n Gram -> Triton apply in the compute dtype. ``mode`` does not
    change it (reference/gram_eigh.py says why)."""
    G = row_major(G)
    A, finite, scale = scaled_gram64(G)
    M = inverse_sqrt_of(*eigh(A), rcond * rcond)
    work = compute_dtype(G.dtype)
    # The apply scales G on load by s1, a power of two representable in the compute dtype; what s1 leaves of the
    # scale (an all-subnormal float32 matrix needs 2^132) rides in M, which is computed in float64.
    lo, hi = torch.finfo(work).tiny, torch.finfo(work).max / 2
    s1 = scale.clamp(lo, hi)
    M = _nan_where_not(finite, M * per_matrix(scale / s1)).to(work)
    return _ops().triton_apply(G, M, s1.to(work), 0.0, 1.0, G.dtype, ACCURATE)


SIDES = ("tall", "gram", "tall_gram")

# Triton specialises every int argument on its divisibility by 16 (torch_ops._int_specialisation): an n that is not a
# multiple of 16 (and so a row stride that is not) compiles its own binary of every kernel of the iteration, whose
# loads it cannot prove aligned. From PAD_MIN_N columns on, the tall side pads such an n with zero columns instead:
# the iteration maps [X, 0] to [X p(X^T X), 0] exactly (A = X^T X is block diagonal with a zero block, so every
# product keeps the zero columns zero, and the scale and the normalisation see the same numbers), for at most
# 15 / PAD_MIN_N more work and one copy of G; the result is the first n columns of the padded one.
PAD_MULTIPLE = 16
PAD_MIN_N = 256


def padded_columns(n: int) -> int:
    """The column count the tall side iterates on for n columns."""
    return n if n < PAD_MIN_N else -(-n // PAD_MULTIPLE) * PAD_MULTIPLE


def polar_newton_schulz(G: torch.Tensor, *, mode: str = "accurate", rcond: float, side: str = "tall",
                        factor: Factor | None = None) -> torch.Tensor:
    """The reference's schedule and normalisation, iterated on X (``side="tall"``), on its n x n Gram matrix
    (``side="gram"``, with ``factor(A, steps) -> Q`` computing the n x n factor), or on X and then, from
    ``ns_schedule.switch_step`` on, on the n x n side (``side="tall_gram"``, accurate mode)."""
    G = row_major(G)
    if side == "gram":
        if factor is None:
            raise ValueError("newton_schulz: side='gram' needs factor=")
        return _newton_schulz_gram_side(G, mode, rcond, factor)
    if side not in SIDES:
        raise ValueError(f"newton_schulz: side must be one of {SIDES}, got {side!r}")
    switch = None
    if side == "tall_gram":
        switch = ns.switch_step(mode, rcond, G.shape[-1], compute_dtype(G.dtype))
        if switch is None:
            raise ValueError(f"newton_schulz: side='tall_gram' has no switch step in {mode} mode at rcond={rcond}")
    n, n_pad = G.shape[-1], padded_columns(G.shape[-1])
    if n_pad == n:
        return _newton_schulz_tall(G, mode, rcond, switch)
    # (a power of two is a multiple of 16, so the padding never changes ns_schedule's bucket of n nor its steps)
    # cat, not copies into slices: the dry-run plan runs this on fake CUDA tensors
    Gp = torch.cat([G, G.new_zeros((*G.shape[:-1], n_pad - n))], dim=-1)
    # A strided view, as torch.linalg returns column-major factors; a wide input's transpose back copies it anyway.
    return _newton_schulz_tall(Gp, mode, rcond, switch).narrow(-1, 0, n)


def _newton_schulz_gram_side(G: torch.Tensor, mode: str, rcond: float, factor: Factor) -> torch.Tensor:
    """Gram (float64) -> Q = factor(A, steps) (float64) -> O = (s G) Q with float64 accumulation.

    The apply is float64 because Q amplifies the directions below rcond by up to the product of the steps' a
    coefficients (~1e4): a float32 apply would add that much float32 rounding to every direction (measured:
    ||O||_2 = 1 + 1.3e-4 on a rank-deficient 136 x 16, outside the contract).
    """
    A, finite, scale = scaled_gram64(G)
    steps = ns.steps_for(mode, rcond, G.shape[-1], compute_dtype(G.dtype))
    Q = _nan_where_not(finite, factor(A, steps))
    return _ops().triton_apply(G, Q, scale, 0.0, 1.0, G.dtype, ACCURATE)


# Rows up to which step 0's A @ A may run at BOUNDED: A = (s G)^T (s G) has entries below m (|s G| < 1), and the
# split of triton_kernels/_dot.py needs operands well inside float16's largest value, 65504.
FP16X3_MAX_ROWS = 16384


def step0_poly_precision(m: int) -> str:
    """The precision of step 0's A @ A for a tall matrix of m rows: BOUNDED while A's entries stay far inside
    float16's range, else ACCURATE (float32's range)."""
    return BOUNDED if m <= FP16X3_MAX_ROWS else ACCURATE


def late_factor(Y: torch.Tensor, steps: tuple, precision: str = BOUNDED) -> torch.Tensor:
    """``reference.newton_schulz.late_factor`` on the kernels: the n x n factor Q of ``steps`` from Y = X^T X, in
    Y's dtype. Everything is a polynomial in Y, so every product is of commuting symmetric matrices and symmetric
    itself: each runs on ``triton_sym_mul`` (one triangle of tiles, half the flops of a full product). With
    R = b Y + c Y^2 (``triton_sym_poly``) a step is

        Q <- a Q + Q R,     P Y = a Y + Y R,     Y <- a (P Y) + (P Y) R;

    a cubic step uses Y itself with b as beta. The first step's Q is a I + R, made by adding a to R's diagonal after
    R's last use; the last step skips Y. Operands stay bounded for fp16x3: |Y| < 2 as the tall side's A, |R| < 55,
    and Q is a product of factors a I + R below the product of the a's of the late steps (about 15)."""
    if not steps or steps[0].c == 0.0:
        raise ValueError("newton_schulz: late_factor needs steps that start with a quintic")
    ops = _ops()
    Q = None
    for i, step in enumerate(steps):
        last = i + 1 == len(steps)
        R = ops.triton_sym_poly(Y, step.b, step.c, precision) if step.c != 0.0 else Y
        beta = 1.0 if step.c != 0.0 else step.b
        if Q is not None:
            Q = ops.triton_sym_mul(Q, R, step.a, beta, precision)
        if not last:  # (R is Y itself only on cubic steps, whose Q was updated above)
            PY = ops.triton_sym_mul(Y, R, step.a, beta, precision)
            Y = ops.triton_sym_mul(PY, R, step.a, beta, precision)
        if Q is None:
            Q = R
            Q.diagonal(dim1=-2, dim2=-1).add_(step.a)  # after R's last use
    return Q


def _newton_schulz_tall(G: torch.Tensor, mode: str, rcond: float, switch: int | None = None) -> torch.Tensor:
    """The steps on X (m x n) itself, each a fused ``ns_step`` (Gram, polynomial, apply with the residual); with
    ``switch`` = k, steps k onwards on the n x n side (``late_factor``) and one apply of their factor to X_k.

    Step 0 reads G raw: one reduction gives the power-of-two scale, the Gram kernel applies it on load, and the first
    apply reads G again with the scale and writes X_1 = (s G / t) P_0 in the next step's dtype, P_0 = a I + b A + c A^2
    with A normalised (the 1/t of ||A^2||_F^{1/4} rides in P_0). No scaled or converted copy of G is made: G is read
    three times, every later step reads X twice and writes it once, and the last writes O in G's dtype.
    """
    ops = _ops()
    scale, _ = scale_and_finite(G)
    high = compute_dtype(G.dtype)
    low = low_precision_dtype(G) if mode == "fast" else high
    steps = ns.steps_for(mode, rcond, G.shape[-1], high)
    # The last step stores G's dtype straight from its float32 (float64) accumulator: for half-precision G that is
    # the same single rounding a float32 result converted afterwards gets, without the extra pass over O.
    dts = [low if s.precision == "low" else high for s in steps] + [G.dtype]

    # Step 0's Gram in the compute dtype (its normalisation needs the weak directions' scale, not bfloat16's), then
    # P_0 / t on the n x n side.
    # Float32 products run at BOUNDED ("fp16x3", triton_kernels/_dot.py), which needs operands well inside float16's
    # range: s G has entries below 1, P_0 / t below about 110 (t >= ||A||_2^(1/2) >= max|s G| >= 1/2), and every
    # later X, its Gram matrix and its factor are bounded by the normalisation: ||X||_2 < 2, so |A_ij| < 4 and
    # |P_ij| < 55 (tests/test_ns_schedule_and_auto.py: test_fp16x3_operands_stay_bounded checks every schedule).
    # Only A @ A of step 0 is not bounded by the normalisation: A's entries reach m (step0_poly_precision).
    A = ops.triton_sym_gram(G, scale, high == torch.float64, high, 0, BOUNDED)
    P0 = first_factor(A, ops.triton_sym_poly(A, 0.0, 1.0, step0_poly_precision(G.shape[-2])), steps[0],
                      out_dtype=dts[0])
    X = ops.triton_apply(G, P0, scale, 0.0, 1.0, dts[1], BOUNDED)
    for i in range(1, len(steps)):
        step = steps[i]
        if i == switch:
            Y = ops.triton_sym_gram(X, None, X.dtype == torch.float64, X.dtype, 0, BOUNDED)
            return ops.triton_apply(X, late_factor(Y, steps[i:]), None, 0.0, 1.0, G.dtype, BOUNDED)
        X = ns_step(X, step.a, step.b, step.c, out_dtype=dts[i + 1], precision=BOUNDED)
    return X
