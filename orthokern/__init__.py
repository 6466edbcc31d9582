"""orthokern: fast batched polar decomposition (orthogonalisation) of gradients, with Triton and CUDA kernels.

    import orthokern
    P = orthokern.polar(G)                       # (..., m, n) -> nearest orthonormal, same shape and dtype
    orthokern.available_backends()               # e.g. ['torch', 'cpp']
"""
from . import _env, monitor, nn, optim
from ._polar import DEFAULT_RCOND, polar
from ._version import __version__
from .dispatch import BACKENDS, METHODS, MODES, BackendUnavailable, available_backends, info
from .optim import FastOrthogonalSGD

_env.warn_if_no_extension()

__all__ = ["polar", "FastOrthogonalSGD", "METHODS", "MODES", "BACKENDS", "DEFAULT_RCOND", "BackendUnavailable",
           "available_backends", "info", "monitor", "nn", "optim", "__version__"]
