"""What this installation and machine can run: the compiled extension, its CUDA kernels, a GPU, Triton.

Probed once, at import. The dispatch (``orthokern/dispatch.py``) decides from an :class:`Env` value, never from
the machine directly, so that ``python -m orthokern.bench plan`` can hand it the environment of a GPU machine
and run the real CUDA dispatch on a CPU-only one. Each probe keeps its reason, so an error can say *why* a
backend is missing ("not built", "no GPU", "Triton missing") rather than only that it is.

This module imports nothing of orthokern's: everything else may import it.
"""
from __future__ import annotations

import dataclasses
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


def interpreting() -> bool:
    """Whether Triton runs its kernels in the CPU interpreter (TRITON_INTERPRET=1).

    Triton reads the variable when it is imported, so it must be set before the process imports Triton; the
    one place in orthokern that reads it.
    """
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


EXTENSION, EXTENSION_REASON = _probe_extension()


_TRITON_INSTALLED_REASON = _probe_triton()


@dataclasses.dataclass(frozen=True)
class Env:
    """The facts the dispatch decides from. A ``None`` reason means "available"."""

    extension: Optional[str]  # why orthokern._C (its CPU ops) cannot be used, or None
    cuda_ops: Optional[str]  # why its CUDA kernels cannot be used (not built with CUDA, or no GPU), or None
    triton: Optional[str]  # why the triton package cannot be used, or None
    interpret: bool  # Triton runs its kernels on CPU tensors in the interpreter (TRITON_INTERPRET=1)
    cuda_available: bool

    def triton_why_not(self, device: torch.device) -> Optional[str]:
        """None when Triton kernels can run on tensors of ``device``."""
        if self.triton is not None:
            return self.triton
        if device.type == "cuda":
            return None if self.cuda_available else "no GPU: torch.cuda.is_available() is False"
        if device.type == "cpu" and self.interpret:
            return None
        return f"Triton kernels need a CUDA tensor (or TRITON_INTERPRET=1 for CPU tensors), got device {device}"


def _current() -> Env:
    cuda = torch.cuda.is_available()
    if EXTENSION is None:
        cuda_ops = EXTENSION_REASON
    elif not getattr(EXTENSION, "WITH_CUDA", False):
        cuda_ops = "orthokern._C was built without CUDA (CPU torch, no nvcc, or ORTHOKERN_SKIP_CUDA_BUILD)"
    elif not cuda:
        cuda_ops = "no GPU: torch.cuda.is_available() is False"
    else:
        cuda_ops = None
    return Env(extension=EXTENSION_REASON, cuda_ops=cuda_ops, triton=_TRITON_INSTALLED_REASON,
               interpret=interpreting(), cuda_available=cuda)


# Probed once: the dispatch runs inside polar(), which torch.compile traces, and dynamo cannot trace the
# imports and driver queries a probe makes; it reads this constant instead.
CURRENT = _current()


def warn_if_no_extension() -> None:
    """One RuntimeWarning per process when orthokern._C is missing (the pure-PyTorch paths still work)."""
    if EXTENSION is None and not getattr(warn_if_no_extension, "done", False):
        warn_if_no_extension.done = True
        warnings.warn(f"orthokern: {EXTENSION_REASON}; using the pure-PyTorch implementations", RuntimeWarning,
                      stacklevel=3)
