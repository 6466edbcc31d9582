"""Optimisers built on ``orthokern.polar``: Orthogonal-SGDM and the same gradient replacement for any optimiser."""
from .batched import polar_by_shape
from .distributed import Stats
from .orthogonal import SELECTIONS, FastOrthogonalSGD, Orthogonal, orthogonalise
from .transforms import TRANSFORMS
from .views import LR_SCALES, MatrixView, set_view

__all__ = ["FastOrthogonalSGD", "Orthogonal", "orthogonalise", "polar_by_shape", "SELECTIONS", "TRANSFORMS",
           "LR_SCALES", "MatrixView", "set_view", "Stats"]
