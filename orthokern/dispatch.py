"""Which implementation computes a polar factor: the whole rule, in one file, read top to bottom.

1. The names: methods, modes, backends.
2. The table: every (method, backend) implementation, what it calls and when it can run (``why_not``).
3. ``backend=None``: the order backends are tried in, and where one that can run declines because another was
   measured faster (``prefer``).
4. ``method="auto"``: which method for which device, shape and mode.
5. :func:`resolve` and :func:`run`: the choice for one tall batch, and the typed error when nothing can run.

Everything is decided from shapes, dtypes, devices and an :class:`~orthokern._env.Env` (what is built and what
the machine has), never from tensor values, so a choice costs no device synchronisation and ``torch.compile``
sees a fixed graph. ``python -m orthokern.bench plan`` passes the Env of a GPU machine to run this same rule on a
CPU-only one. The measurements behind each rule are in ``bench/RESULTS.md`` and ``docs/design.md``.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import pathlib
import sys
from typing import Callable, Optional

import torch

from . import _env, compiled, reference
from ._env import Env

# 1. Names ------------------------------------------------------------------------------------------------------

METHODS = ("auto", "svd", "gram_eigh", "newton_schulz", "cholqr2")
MODES = ("accurate", "fast")
BACKENDS = ("torch", "cpp", "triton", "cuda")


class BackendUnavailable(RuntimeError):
    """The requested (method, backend) cannot run on this input here; the message says why."""


# 2. The table --------------------------------------------------------------------------------------------------
# An implementation takes a batch of *tall* matrices G (B, m, n), m >= n, of the caller's dtype and device (any
# strides) and returns the polar factor (B, m, n) in the same dtype. It owns its scaling, non-finite propagation
# and zero handling, so that a fused kernel can do them inside its passes over G.

WhyNot = Callable[[torch.Tensor, Env], Optional[str]]


@dataclasses.dataclass(frozen=True)
class Impl:
    method: str
    backend: str
    fn: Callable[..., torch.Tensor]  # fn(G, *, mode, rcond) -> O
    why_not: WhyNot  # None when it can run on G in this Env, else the reason
    # backend=None only: False where this implementation can run but the next one in the order is faster
    # (measured; an explicit backend= still gets it).
    prefer: Callable[[torch.Tensor], bool] = lambda G: True


def _always(G: torch.Tensor, env: Env) -> Optional[str]:
    return None


def _cpp_why_not(G: torch.Tensor, env: Env) -> Optional[str]:
    if env.extension is not None:
        return env.extension
    if G.device.type != "cpu":
        return f"this backend runs cpu tensors, got a tensor on {G.device}"
    return None


def _load_triton_kernels():
    """``orthokern.triton_kernels``, also from a source checkout (where setup.py's package_dir mapping of the
    top-level ``triton_kernels/`` does not exist yet; never a top-level ``triton_kernels``: another project owns
    that name)."""
    name = "orthokern.triton_kernels"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:
            raise
    src = pathlib.Path(__file__).resolve().parent.parent / "triton_kernels"
    spec = importlib.util.spec_from_file_location(name, src / "__init__.py", submodule_search_locations=[str(src)])
    if spec is None:
        raise ModuleNotFoundError(f"{name} is missing from this installation", name=name)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[name]
        raise
    sys.modules["orthokern"].triton_kernels = mod
    return mod


_TRITON_POLAR = None


def triton_polar():
    """``orthokern.triton_kernels.polar`` (imports Triton). Loaded at import where Triton can run, so that nothing
    is imported while torch.compile traces polar(); elsewhere (the dry-run plan) on first use."""
    global _TRITON_POLAR
    if _TRITON_POLAR is None:
        _load_triton_kernels()
        _TRITON_POLAR = importlib.import_module("orthokern.triton_kernels.polar")
    return _TRITON_POLAR


def _triton_why_not(G: torch.Tensor, env: Env) -> Optional[str]:
    reason = env.triton_why_not(G.device)
    if reason is not None:
        return reason
    return triton_polar().why_not_shape(G)


# Accurate-mode newton_schulz on Triton iterates on the n x n Gram side once m >= GRAM_SIDE_RATIO * n. Per step
# the tall iteration costs ~3 m n^2 + n^3 multiply-adds in float32, the Gram-side one ~3.5 n^3 in float64 (plus one
# final m n^2 apply); on H100/H200 spec sheets float64 (tensor core) and float32 (CUDA core) peak at about the same
# rate, so the crossover is near m = 4n. 8 leaves a margin (not yet measured on a GPU).
GRAM_SIDE_RATIO = 8


def _triton_gram_eigh(G: torch.Tensor, *, mode: str, rcond: float) -> torch.Tensor:
    return triton_polar().polar_gram_eigh(G, mode=mode, rcond=rcond, eigh=torch.linalg.eigh)


def _triton_newton_schulz(G: torch.Tensor, *, mode: str, rcond: float) -> torch.Tensor:
    side = "gram" if (mode == "accurate" and G.shape[-2] >= GRAM_SIDE_RATIO * G.shape[-1]) else "tall"
    return triton_polar().polar_newton_schulz(G, mode=mode, rcond=rcond, side=side)


# Measured on the 2-core CPU (float32, one thread, paired CPU time; bench/RESULTS.md): the compiled gram_eigh (one
# triangle of a float64 Gram matrix reading G once, its own eigensolver up to n = 128, the apply through sgemm) is
# faster than the torch reference at every n tried, 1 to 1024 (least for square n = 1024, where LAPACK's
# eigensolver dominates both); the compiled cholqr2 (no stored Q1, LAPACK for the small factorisations) is faster
# up to n = 512 and even with it at square n = 1024, where LAPACK's SVD of R dominates both. backend=None takes
# them at every n: None is no limit.
_CPP_GRAM_EIGH_MAX_N: Optional[int] = None
_CPP_CHOLQR2_MAX_N: Optional[int] = None


_IMPLS = (
    Impl("svd", "torch", reference.polar_svd, _always),
    Impl("gram_eigh", "torch", reference.polar_gram_eigh, _always),
    Impl("gram_eigh", "cpp", compiled.gram_eigh, _cpp_why_not,
         prefer=lambda G: _CPP_GRAM_EIGH_MAX_N is None or G.shape[-1] <= _CPP_GRAM_EIGH_MAX_N),
    Impl("gram_eigh", "triton", _triton_gram_eigh, _triton_why_not),
    Impl("newton_schulz", "torch", reference.polar_newton_schulz, _always),
    Impl("newton_schulz", "triton", _triton_newton_schulz, _triton_why_not),
    Impl("cholqr2", "torch", reference.polar_cholqr2, _always),
    Impl("cholqr2", "cpp", compiled.cholqr2, _cpp_why_not,
         prefer=lambda G: _CPP_CHOLQR2_MAX_N is None or G.shape[-1] <= _CPP_CHOLQR2_MAX_N),
)
TABLE: dict[tuple[str, str], Impl] = {(i.method, i.backend): i for i in _IMPLS}


# 3. backend=None -------------------------------------------------------------------------------------------------
# Specialised kernels first, the pure-torch reference last (it always runs). Triton is never picked for CPU
# tensors: under TRITON_INTERPRET=1 it can run them, but only to test the kernels.
ORDER = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpp", "torch")}


def implementations(method: str) -> list[Impl]:
    """Every implementation of ``method``, in BACKENDS order."""
    return [TABLE[(method, b)] for b in BACKENDS if (method, b) in TABLE]


# 4. method="auto" ------------------------------------------------------------------------------------------------

_TALL_RATIO = 4
_TALL_MAX_N = 512
_FUSED_MAX_N = 64


def choose_method(m: int, n: int, device_type: str, mode: str) -> str:
    """The method ``auto`` runs on a tall batch of m x n matrices (m >= n).

    * CPU: ``gram_eigh``. LAPACK's eigensolver is fast at every n a gradient has; the Gram matrix costs one pass
      over G.
    * GPU, n <= 64: ``gram_eigh`` (the fused Gram + Jacobi kernel).
    * GPU, accurate, tall-skinny (m >= 4 n, n <= 512): ``gram_eigh`` (the Gram matrix is small next to G).
    * GPU otherwise: ``newton_schulz`` (matmuls only; torch's batched eigh is slow and squares the conditioning of
      large square blocks).
    """
    if device_type != "cuda":
        return "gram_eigh"
    if n <= _FUSED_MAX_N:
        return "gram_eigh"
    if mode == "accurate" and m >= _TALL_RATIO * n and n <= _TALL_MAX_N:
        return "gram_eigh"
    return "newton_schulz"


# Breakdown fallback of auto: a result that is non-finite for finite input, or has an entry above 1 + slack (a
# direction amplified past the orthonormal bound), is recomputed with cholqr2. It reads a flag from the device, so
# it runs only in eager mode.
_BOUND_SLACK = 1e-2


def _capturing() -> bool:
    if torch.compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def broken(X: torch.Tensor, O: torch.Tensor) -> torch.Tensor:
    """(B,) bool: matrices whose result shows a breakdown."""
    finite_in = torch.isfinite(X).all(dim=(-2, -1))
    finite_out = torch.isfinite(O).all(dim=(-2, -1))
    too_big = O.abs().amax(dim=(-2, -1)).float() > 1.0 + _BOUND_SLACK
    return finite_in & (~finite_out | too_big)


# 5. resolve and run ------------------------------------------------------------------------------------------------

def resolve(method: str, backend: Optional[str], G: torch.Tensor, env: Optional[Env] = None) -> Impl:
    """The implementation of ``method`` (not "auto") to run on the tall batch ``G``.

    ``backend=None`` takes the first implementation in :data:`ORDER` that can run and is preferred; a named backend
    that cannot run raises :class:`BackendUnavailable` saying why.
    """
    env = env or _env.CURRENT
    if backend is not None:
        impl = TABLE.get((method, backend))
        if impl is None:
            have = [i.backend for i in implementations(method)]
            raise BackendUnavailable(f"polar: method={method!r} has no backend={backend!r} implementation "
                                     f"(it has: {have})")
        reason = impl.why_not(G, env)
        if reason is not None:
            raise BackendUnavailable(f"polar: backend={backend!r} cannot run method={method!r} here: {reason}")
        return impl
    reasons = []
    for b in ORDER["cuda" if G.device.type == "cuda" else "cpu"]:
        impl = TABLE.get((method, b))
        if impl is None:
            continue
        reason = impl.why_not(G, env)
        if reason is None and impl.prefer(G):
            return impl
        reasons.append(f"{b}: {reason or 'slower than the next backend here'}")
    raise BackendUnavailable(f"polar: no implementation of method={method!r} can run here ({'; '.join(reasons)})")


def run(G: torch.Tensor, method: str, mode: str, rcond: float, backend: Optional[str],
        env: Optional[Env] = None) -> torch.Tensor:
    """The polar factor of the tall batch G (B, m, n) by ``method`` ("auto" included) on ``backend``."""
    if method != "auto":
        return resolve(method, backend, G, env).fn(G, mode=mode, rcond=rcond)
    chosen = choose_method(G.shape[-2], G.shape[-1], G.device.type, mode)
    O = resolve(chosen, backend, G, env).fn(G, mode=mode, rcond=rcond)
    if _capturing() or env is not None:
        return O
    bad = broken(G, O)
    if bool(bad.any()):
        idx = bad.nonzero().squeeze(1)
        O = O.clone()
        O[idx] = resolve("cholqr2", None, G[idx]).fn(G[idx], mode="accurate", rcond=rcond)
    return O


# What can run here ------------------------------------------------------------------------------------------------

def available_backends(device: Optional[torch.device | str] = None) -> list[str]:
    """Backends that can run on ``device`` (default: CUDA when present, else CPU), in BACKENDS order."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    probe = torch.empty(0, 4, 2, device=device)
    return [b for b in BACKENDS if any(i.why_not(probe, _env.CURRENT) is None for i in _IMPLS if i.backend == b)]


def info() -> dict:
    """A summary of the build and of what can run here (the extension, CUDA, Triton, the backends per device)."""
    env = _env.CURRENT
    d = {
        "torch": torch.__version__,
        "cuda_available": env.cuda_available,
        "extension": "loaded" if env.extension is None else env.extension,
        "extension_cuda": bool(getattr(_env.EXTENSION, "WITH_CUDA", False)),
        "triton": env.triton or importlib.import_module("triton").__version__,
        "triton_interpret": env.interpret,
        "backends_cpu": available_backends("cpu"),
    }
    if env.cuda_available:
        d["backends_cuda"] = available_backends("cuda")
    d["implementations"] = sorted(f"{m}/{b}" for (m, b) in TABLE)
    return d


# Where Triton can run, load its kernels now (not at the first polar() call, which may be inside torch.compile's
# trace: dynamo cannot trace imports).
if any(_env.CURRENT.triton_why_not(torch.device(d)) is None for d in ("cuda", "cpu")):
    triton_polar()
