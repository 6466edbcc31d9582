"""orthokern: fast batched polar decomposition (orthogonalisation) of gradients, with Triton and CUDA kernels.

    import orthokern
    P = orthokern.polar(G)                       # (..., m, n) -> nearest orthonormal, same shape and dtype
    orthokern.available_backends()               # e.g. ['cpp', 'torch']
"""
from ._backends import available_backends, info
from ._polar import DEFAULT_RCOND, polar
from ._registry import BACKENDS, METHODS, MODES
from .optim import FastOrthogonalSGD

__version__ = "0.1.0"

# Register every backend now, not at the first polar() call: that call may be inside torch.compile's trace,
# and dynamo cannot trace the imports that registration does.
from . import _registry  # noqa: E402

_registry._load_backends()

__all__ = ["polar", "FastOrthogonalSGD", "METHODS", "MODES", "BACKENDS", "DEFAULT_RCOND", "available_backends", "info", "__version__"]
