"""The ops of the compiled extension ``orthokern._C`` (``torch.ops.orthokern.*``): their fake (meta) kernels,
the Python entry points the dispatch calls, and the kernels' size limits (read from ``orthokern._C.LIMITS``,
which ``csrc/kernel_limits.h`` defines; nothing here restates them).

Schemas are declared once in ``csrc/orthokern.cpp``; CPU kernels in ``csrc/cpu/``, CUDA kernels in ``csrc/cuda/``.
The fake kernels let ``torch.compile(fullgraph=True)`` and other tracers run the ops on shapes alone. Nothing is
registered when the extension is not built: the ops then do not exist.
"""
from __future__ import annotations

import torch

from . import _env

_FLOAT_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)

LIMITS: dict = dict(getattr(_env.EXTENSION, "LIMITS", {})) if _env.EXTENSION is not None else {}


def _check_polar_input(op: str, G: torch.Tensor, rcond: float) -> None:
    torch._check(G.dim() == 3, lambda: f"{op}: G must be a batch of matrices (B, m, n), got shape {tuple(G.shape)}")
    torch._check(
        G.dtype in _FLOAT_DTYPES, lambda: f"{op}: G must be float64, float32, bfloat16 or float16, got {G.dtype}"
    )
    torch._check(0.0 <= rcond < 1.0, lambda: f"{op}: rcond must be in [0, 1), got {rcond}")


def _register_fakes() -> bool:
    if _env.EXTENSION is None:
        return False

    @torch.library.register_fake("orthokern::gram_eigh_polar")
    def _gram_eigh_polar_fake(G, rcond):
        _check_polar_input("gram_eigh_polar", G, rcond)
        return G.new_empty(G.shape)

    @torch.library.register_fake("orthokern::cholqr2_polar")
    def _cholqr2_polar_fake(G, rcond):
        _check_polar_input("cholqr2_polar", G, rcond)
        torch._check(G.shape[1] >= G.shape[2], lambda: f"cholqr2_polar: G must be tall (m >= n), got {tuple(G.shape)}")
        return G.new_empty(G.shape)

    @torch.library.register_fake("orthokern::gram_ns_factor")
    def _gram_ns_factor_fake(A, coeffs):
        torch._check(A.dim() == 3 and A.shape[1] == A.shape[2],
                     lambda: f"gram_ns_factor: A must be (B, n, n), got shape {tuple(A.shape)}")
        torch._check(A.dtype == torch.float64, lambda: f"gram_ns_factor: A must be float64, got {A.dtype}")
        torch._check(A.shape[1] <= LIMITS["cuda_small_max_n"],
                     lambda: f"gram_ns_factor: n = {A.shape[1]} > {LIMITS['cuda_small_max_n']} is not supported")
        torch._check(len(coeffs) % 3 == 0, lambda: "gram_ns_factor: coeffs must hold (a, b, c) per step")
        return torch.empty_like(A, memory_format=torch.contiguous_format)

    @torch.library.register_fake("orthokern::column_norm_max")
    def _column_norm_max_fake(O):
        torch._check(O.dim() == 3, lambda: f"column_norm_max: O must be a batch of matrices (B, m, n), got shape "
                                           f"{tuple(O.shape)}")
        torch._check(O.dtype in _FLOAT_DTYPES,
                     lambda: f"column_norm_max: O must be float64, float32, bfloat16 or float16, got {O.dtype}")
        return O.new_empty(O.shape[0], dtype=torch.float64 if O.dtype == torch.float64 else torch.float32)

    return True


REGISTERED = _register_fakes()


def gram_eigh(G: torch.Tensor, *, mode: str = "accurate", rcond: float) -> torch.Tensor:
    """Gram + eigh polar factor of a tall batch (one op call for the whole batch): float64 Gram matrix and
    eigensolver whatever ``mode`` (a float32 Gram matrix cannot resolve singular values near rcond)."""
    return torch.ops.orthokern.gram_eigh_polar(G, float(rcond))


def cholqr2(G: torch.Tensor, *, mode: str = "accurate", rcond: float) -> torch.Tensor:
    """Shifted CholeskyQR2 in float64 + the SVD of the small R; ``mode`` does not change it (always accurate)."""
    return torch.ops.orthokern.cholqr2_polar(G, float(rcond))


def gram_ns_factor(A: torch.Tensor, steps) -> torch.Tensor:
    """The Gram-side Newton–Schulz factor Q (B, n, n) of float64 Gram matrices A for the schedule ``steps``
    (``orthokern.ns_schedule.Step`` tuples): the fused kernel of ``csrc/gram_ns_factor.h``, n <= 64."""
    return torch.ops.orthokern.gram_ns_factor(A, [float(v) for s in steps for v in s[:3]])


def column_norm_max(O: torch.Tensor) -> torch.Tensor:
    """(B,) the largest column norm of each matrix of O (B, m, n) on the CPU, in one pass over O (float64 for
    float64 O, else float32; NaN where the matrix holds a NaN): ``csrc/cpu/column_norm_max.cpp``."""
    return torch.ops.orthokern.column_norm_max(O)


def gram_ns_factor_flops(B: int, n: int, c_coefficients) -> float:
    """Float64 tensor-core FLOPs of ``gram_ns_factor`` on B matrices of n for steps with these c coefficients, as
    ``csrc/gram_ns_factor.h`` computes them: the norm's A^2, then per step Y^2 (not at step 0, which reuses A^2, nor
    on cubic steps), Q P, and P Y and (P Y) P unless it is the last; each product only its mma tiles on and above the
    diagonal of the matrix padded to whole tiles."""
    cs = list(c_coefficients)
    products = 1 + sum((k > 0 and c != 0.0) + 1 + 2 * (k + 1 < len(cs)) for k, c in enumerate(cs))
    tile = LIMITS["cuda_small_mma_tile"]
    nt = -(-n // tile)
    return 2.0 * B * products * (nt * (nt + 1) // 2) * tile * tile * (nt * tile)


def _gram_ns_factor_cost(args, kwargs, out):
    from ._cost import Launch

    A, coeffs = args[0], args[1]
    B, n = A.shape[0], A.shape[-1]
    # One block per matrix, its n x n buffers in shared memory: A read once, Q written once.
    return [Launch("cuda gram_ns_factor_kernel", {"fp64_tc": gram_ns_factor_flops(B, n, coeffs[2::3])},
                   2.0 * B * n * n * 8)]


if REGISTERED:
    from ._cost import register_cost

    register_cost("orthokern.gram_ns_factor.default")(_gram_ns_factor_cost)
