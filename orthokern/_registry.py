"""The table of implementations: which (method, backend) pairs exist and when each can run.

Every backend module registers its entry points here with :func:`register`; ``polar`` looks them up with
:func:`resolve`.  Keeping the table in one place means ``backend=None`` ("best available"), an explicit
``backend="cuda"`` and the error for an unavailable one all come from the same facts.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch

METHODS = ("auto", "svd", "gram_eigh", "newton_schulz", "cholqr2")
MODES = ("accurate", "fast")
BACKENDS = ("torch", "cpp", "triton", "cuda")

# Order in which ``backend=None`` tries the implementations of one method.  Specialised kernels first; the
# pure-torch reference is always last and always there.
_PREFERENCE = ("cuda", "triton", "cpp", "torch")

# An implementation takes a batch of *tall* matrices G (B, m, n), m >= n, of the caller's dtype and device
# (any strides), and returns the polar factor (B, m, n) in the same dtype.  It owns its own scaling,
# non-finite propagation and zero handling (the helpers in ``reference/_common.py`` do that for torch code),
# so that a fused kernel can do them inside its single pass over G.
ImplFn = Callable[..., torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Impl:
    method: str
    backend: str
    fn: ImplFn
    # Returns None when the implementation can run on this input, else a reason it cannot
    # ("not built", "no GPU", "n > 64 is not supported by the fused kernel", ...).
    why_not: Callable[[torch.Tensor], Optional[str]]
    # For backend=None only: False where the implementation can run but a later one in _PREFERENCE is
    # measured faster (an explicit backend= still gets it).
    prefer: Optional[Callable[[torch.Tensor], bool]] = None


_TABLE: dict[tuple[str, str], Impl] = {}


def register(
    method: str,
    backend: str,
    why_not: Callable[[torch.Tensor], Optional[str]],
    prefer: Optional[Callable[[torch.Tensor], bool]] = None,
):
    """Decorator: ``@register("gram_eigh", "cpp", why_not=...)`` over an :data:`ImplFn`."""
    if method not in METHODS or method == "auto":
        raise ValueError(f"register: method must be one of {METHODS[1:]}, got {method!r}")
    if backend not in BACKENDS:
        raise ValueError(f"register: backend must be one of {BACKENDS}, got {backend!r}")

    def deco(fn: ImplFn) -> ImplFn:
        _TABLE[(method, backend)] = Impl(method, backend, fn, why_not, prefer)
        return fn

    return deco


def implementations(method: str) -> list[Impl]:
    return [_TABLE[(method, b)] for b in _PREFERENCE if (method, b) in _TABLE]


def resolve(method: str, backend: Optional[str], G: torch.Tensor) -> Impl:
    """The implementation of ``method`` to run on the tall batch ``G``.

    ``backend=None`` takes the first one in :data:`_PREFERENCE` that can run; a named backend that cannot run
    raises a ``RuntimeError`` that says why.
    """
    _load_backends()
    if backend is not None:
        impl = _TABLE.get((method, backend))
        if impl is None:
            have = [i.backend for i in implementations(method)]
            raise RuntimeError(
                f"polar: method={method!r} has no backend={backend!r} implementation (it has: {have})"
            )
        reason = impl.why_not(G)
        if reason is not None:
            raise RuntimeError(f"polar: backend={backend!r} cannot run method={method!r} here: {reason}")
        return impl
    reasons = []
    for impl in implementations(method):
        if impl.backend == "triton" and G.device.type != "cuda":
            # Under TRITON_INTERPRET=1 Triton can run CPU tensors, but only to test the kernels: it is never
            # the best choice there, so only an explicit backend="triton" gets it.
            continue
        reason = impl.why_not(G)
        if reason is None and (impl.prefer is None or impl.prefer(G)):
            return impl
        reasons.append(f"{impl.backend}: {reason or 'slower than the next backend here'}")
    raise RuntimeError(f"polar: no implementation of method={method!r} can run here ({'; '.join(reasons)})")


_loaded = False


def _load_backends() -> None:
    """Import every backend module once; each registers what it can offer on this machine."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    from . import _backends, _cpp_backend, _triton_backend, reference  # noqa: F401  (each registers itself)

    _backends._warn_once_no_extension()
