"""The ops of the compiled extension ``orthokern._C`` (``torch.ops.orthokern.*``): their fake (meta) kernels,
the Python entry points the dispatch calls, and the kernels' size limits (read from ``orthokern._C.LIMITS``,
which ``csrc/limits.h`` defines; nothing here restates them).

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

    return True


REGISTERED = _register_fakes()


def gram_eigh(G: torch.Tensor, *, mode: str = "accurate", rcond: float) -> torch.Tensor:
    """Gram + eigh polar factor of a tall batch (one op call for the whole batch): float64 Gram matrix and
    eigensolver whatever ``mode`` (a float32 Gram matrix cannot resolve singular values near rcond)."""
    return torch.ops.orthokern.gram_eigh_polar(G, float(rcond))


def cholqr2(G: torch.Tensor, *, mode: str = "accurate", rcond: float) -> torch.Tensor:
    """Shifted CholeskyQR2 in float64 + the SVD of the small R; ``mode`` does not change it (always accurate)."""
    return torch.ops.orthokern.cholqr2_polar(G, float(rcond))
