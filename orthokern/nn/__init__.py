"""Orthogonality for network weights, around ``orthokern.polar``.

* :mod:`orthokern.nn.init`: ``orthogonal_`` (Haar-random orthonormal rows or columns per matrix, batched over
  experts, heads and convolution groups, with a gain) and ``delta_orthogonal_`` for convolutions;
* :mod:`orthokern.nn.penalty`: soft constraints, ``orthogonality_penalty`` (single soft, double soft, mutual
  coherence, spectral restricted isometry; gain-adjusted) and ``OrthogonalityRegulariser`` (coefficient and decay
  schedule);
* :mod:`orthokern.nn.utils`: hard constraints outside an optimiser, ``project_to_stiefel_`` and the polar
  parametrisation ``orthogonal(module, "weight")``.

Every weight is read as its (components x fan-in) matrix, ``w.reshape(w.shape[0], -1)``, as orthokern's
optimisers read gradients. :class:`orthokern.optim.StiefelSGD` keeps weights on the manifold while training.
"""
from . import init, utils
from .penalty import BANSAL_2018_SCHEDULE, KINDS, OrthogonalityRegulariser, orthogonality_penalty

__all__ = ["init", "utils", "orthogonality_penalty", "OrthogonalityRegulariser", "KINDS", "BANSAL_2018_SCHEDULE"]
