"""What this installation can run: the compiled extension, CUDA, Triton.

Each check is done once and cached; the reasons are kept so that errors and :func:`info` can say *why* a
backend is missing ("not built", "no GPU", "Triton missing") rather than only that it is.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import warnings
from typing import Optional

import torch


def _probe_extension() -> tuple[Optional[object], Optional[str]]:
    try:
        mod = importlib.import_module("orthokern._C")
    except ImportError as e:  # built without a compiler, or against another torch
        reason = (
            "the compiled extension orthokern._C is not built (install with "
            "`pip install --no-build-isolation .` against the torch you use)"
        )
        if "undefined symbol" in str(e) or "version" in str(e):
            reason = f"orthokern._C failed to load ({e}); rebuild it against the installed torch"
        checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if os.path.isfile(os.path.join(checkout, "setup.py")):
            # Python put the source checkout first on sys.path (`python -m ...` or `python -c` run from the
            # repository), which shadows the installed package and its compiled extension.
            reason = (
                f"orthokern is imported from the source checkout {checkout}, which has no built extension: run "
                "from another directory or with `python -P`, or build in place (python setup.py build_ext --inplace)"
            )
        return None, reason
    return mod, None


def _probe_triton() -> Optional[str]:
    # find_spec, not import: importing Triton costs a second, which a CPU-only user should not pay.
    try:
        found = importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        found = False
    return None if found else "Triton is not installed (pip install triton)"


# Probed once, at import: the why_not checks run inside polar(), which torch.compile traces, and dynamo cannot
# trace imports (nor does it honour functools.lru_cache), so they must only read these module constants.
_EXTENSION, _EXTENSION_REASON = _probe_extension()
_TRITON_REASON = _probe_triton()
# Triton reads TRITON_INTERPRET when it is imported, so a later change of the variable has no effect anyway.
_TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def compiled_extension() -> tuple[Optional[object], Optional[str]]:
    """(module, None) when ``orthokern._C`` loaded, else (None, reason)."""
    return _EXTENSION, _EXTENSION_REASON


def _warn_once_no_extension() -> None:
    mod, reason = compiled_extension()
    if mod is None and not getattr(_warn_once_no_extension, "done", False):
        _warn_once_no_extension.done = True
        warnings.warn(f"orthokern: {reason}; using the pure-PyTorch implementations", RuntimeWarning, stacklevel=3)


def cpp_ops_built() -> Optional[str]:
    """None when the C++ CPU ops are registered, else why not."""
    mod, reason = compiled_extension()
    return reason


def cuda_ops_built() -> Optional[str]:
    """None when the CUDA kernels of ``orthokern._C`` are compiled in, else why not."""
    mod, reason = compiled_extension()
    if mod is None:
        return reason
    if not getattr(mod, "WITH_CUDA", False):
        return "orthokern._C was built without CUDA (CPU torch, no nvcc, or ORTHOKERN_SKIP_CUDA_BUILD)"
    if not torch.cuda.is_available():
        return "no GPU: torch.cuda.is_available() is False"
    return None


def triton_interpret() -> bool:
    return _TRITON_INTERPRET


def triton_import_error() -> Optional[str]:
    return _TRITON_REASON


def triton_why_not(device: torch.device) -> Optional[str]:
    """None when Triton kernels can run on tensors of ``device``."""
    err = triton_import_error()
    if err is not None:
        return err
    if device.type == "cuda":
        return None
    if device.type == "cpu" and triton_interpret():
        return None
    return f"Triton kernels need a CUDA tensor (or TRITON_INTERPRET=1 for CPU tensors), got device {device}"


def available_backends(device: Optional[torch.device | str] = None) -> list[str]:
    """Backends that can run on ``device`` (default: CUDA when present, else CPU), best first."""
    from . import _registry

    _registry._load_backends()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    probe = torch.empty(0, 4, 2, device=device)
    out = []
    for backend in _registry._PREFERENCE:
        impls = [i for (m, b), i in _registry._TABLE.items() if b == backend]
        if impls and any(i.why_not(probe) is None for i in impls):
            out.append(backend)
    return out


def info() -> dict:
    """A summary of the build and of what can run here (the extension, CUDA, Triton, the backends per device)."""
    from . import _registry

    _registry._load_backends()
    mod, reason = compiled_extension()
    d = {
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "extension": "loaded" if mod is not None else reason,
        "extension_cuda": getattr(mod, "WITH_CUDA", False) if mod is not None else False,
        "triton": triton_import_error() or importlib.import_module("triton").__version__,
        "triton_interpret": triton_interpret(),
        "backends_cpu": available_backends("cpu"),
    }
    if torch.cuda.is_available():
        d["backends_cuda"] = available_backends("cuda")
    d["implementations"] = sorted(f"{m}/{b}" for (m, b) in _registry._TABLE)
    return d
