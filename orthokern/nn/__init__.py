"""Orthogonality for network weights, around ``orthokern.polar``.

* :mod:`orthokern.nn.init`: ``orthogonal_`` (Haar-random orthonormal rows or columns per matrix, batched over
  experts, heads and convolution groups, with a gain) and ``delta_orthogonal_`` for convolutions.

Every weight is read as its (components x fan-in) matrix, ``w.reshape(w.shape[0], -1)``, as orthokern's
optimisers read gradients.
"""
from . import init

__all__ = ["init"]
