"""Optimisers built on ``orthokern.polar``: Orthogonal-SGDM and the same gradient replacement for any optimiser,
Riemannian SGD on the Stiefel manifold, and Layca."""
from .batched import polar_by_shape
from .distributed import Stats
from .layca import Layca
from .orthogonal import SELECTIONS, FastOrthogonalSGD, Orthogonal, orthogonalise
from .stiefel import StiefelSGD
from .transforms import TRANSFORMS
from .views import LR_SCALES, MatrixView, set_view

__all__ = ["FastOrthogonalSGD", "Orthogonal", "orthogonalise", "polar_by_shape", "SELECTIONS", "TRANSFORMS",
           "LR_SCALES", "MatrixView", "set_view", "Stats", "StiefelSGD", "Layca"]
