"""Registers the compiled ops of ``orthokern._C`` as backends "cpp" (CPU tensors) and "cuda" (CUDA tensors).

Both backends are always in the table, so that asking for one explicitly says why it cannot run ("not built",
"built without CUDA", "no GPU", a shape limit) instead of only that it does not exist; the fake kernels
(``orthokern.ops``) are registered only when the extension is built.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _backends
from ._registry import register

# The fused CUDA kernel keeps the n x n Gram matrix and its eigenvectors in shared memory (two 64 x 64 float64
# blocks = 64 KiB): n <= 64. On CPU the op itself takes any n, but above 64 the torch reference (BLAS Gram and
# apply) is faster (measured, 1 thread, 64 x 1152 x 128 float32 accurate: 691 ms compiled vs 409 ms torch), so
# the backend declines there and the reference serves.
GRAM_EIGH_MAX_N = 64
# cholqr2: the n x n factors live in global (L2-resident) memory on CUDA; Jacobi SVD sweeps grow as n^3.
CHOLQR2_MAX_N = 256
# CUDA kernels: cholqr2's triangular solve puts ceil(m / 256) blocks on grid axis y (<= 65535); ops_cuda.cu checks
# the same bound (kMaxRowsCuda).
CUDA_MAX_M = 65535 * 256

if _backends.compiled_extension()[0] is not None:
    from . import ops  # noqa: F401  (fake kernels for torch.compile)


def _why_not(G: torch.Tensor, device_type: str, built: Optional[str], max_n: int, method: str) -> Optional[str]:
    if built is not None:
        return built
    if G.device.type != device_type:
        return f"this backend runs {device_type} tensors, got a tensor on {G.device}"
    n = G.shape[-1]
    if n > max_n:
        return f"n = {n} > {max_n} is not supported by the compiled {method} kernel"
    if device_type == "cuda" and G.shape[-2] > CUDA_MAX_M:
        return f"m = {G.shape[-2]} > {CUDA_MAX_M} rows is not supported by the CUDA {method} kernel"
    return None


def _cpp_why_not(max_n: int, method: str):
    return lambda G: _why_not(G, "cpu", _backends.cpp_ops_built(), max_n, method)


def _cuda_why_not(max_n: int, method: str):
    return lambda G: _why_not(G, "cuda", _backends.cuda_ops_built(), max_n, method)


def gram_eigh_compiled(G: torch.Tensor, *, mode: str = "accurate", rcond: float) -> torch.Tensor:
    """Fused Gram + Jacobi eigh polar factor (one op call for the whole batch)."""
    return torch.ops.orthokern.gram_eigh_polar(G, float(rcond), mode == "accurate")


def cholqr2_compiled(G: torch.Tensor, *, mode: str = "accurate", rcond: float) -> torch.Tensor:
    """Shifted CholeskyQR2 in float64 + Jacobi SVD polar of R; ``mode`` does not change it (always accurate)."""
    return torch.ops.orthokern.cholqr2_polar(G, float(rcond))


register("gram_eigh", "cpp", why_not=_cpp_why_not(GRAM_EIGH_MAX_N, "gram_eigh"))(gram_eigh_compiled)
register("gram_eigh", "cuda", why_not=_cuda_why_not(GRAM_EIGH_MAX_N, "gram_eigh"))(gram_eigh_compiled)
# On CPU the compiled cholqr2 loses to the torch reference (LAPACK SVD of R) from n = 64 on: measured, float32, 1
# thread: 256 x 576 x 64 944 ms compiled vs 662 ms torch, 64 x 1152 x 128 1629 vs 857 ms; 1024 x 256 x 32 538 vs
# 572 ms. backend=None therefore takes it only for n < 64.
register(
    "cholqr2", "cpp", why_not=_cpp_why_not(CHOLQR2_MAX_N, "cholqr2"), prefer=lambda G: G.shape[-1] < 64
)(cholqr2_compiled)
register("cholqr2", "cuda", why_not=_cuda_why_not(CHOLQR2_MAX_N, "cholqr2"))(cholqr2_compiled)
