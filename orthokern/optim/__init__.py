"""Optimisers built on ``orthokern.polar``: Orthogonal-SGDM and the same gradient replacement for any optimiser."""
from .batched import polar_by_shape
from .layca import Layca
from .orthogonal import SELECTIONS, FastOrthogonalSGD, Orthogonal, orthogonalise
from .stiefel import StiefelSGD

__all__ = ["FastOrthogonalSGD", "Orthogonal", "orthogonalise", "polar_by_shape", "SELECTIONS", "StiefelSGD", "Layca"]
