"""Hard orthogonality outside an optimiser: a one-off projection onto the Stiefel manifold, and a parametrisation
that makes a module's weight the polar factor of an unconstrained tensor.

Both read a weight as its (components x fan-in) matrix (``orthokern/nn/_views.py``) and put it on the manifold
W W^T = gain^2 I (c <= f) or W^T W = gain^2 I (c > f); :class:`orthokern.optim.StiefelSGD` keeps it there while
training.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn.utils import parametrize

from .._polar import check_options, polar
from ..optim.stiefel import project_parameters_
from ._views import Weights, check_gain, named_weights

__all__ = ["project_to_stiefel_", "orthogonal", "PolarOrthogonal"]


@torch.no_grad()
def project_to_stiefel_(params: Weights, gain: float = 1.0, *, backend: Optional[str] = None) -> None:
    """Replace each weight by its nearest point on the manifold, gain * polar(W), in place.

    ``params``: a module, one tensor, a dict or an iterable of tensors or (name, tensor) pairs (tensors with
    fewer than 2 dimensions in a module or an iterable are left alone). Weights of any conditioning are projected
    accurately (``cholqr2`` without a cut-off); one that holds NaN or Inf or is rank-deficient (whose nearest point
    is not unique) raises ``ValueError`` naming it, and then nothing is changed.
    """
    where = "project_to_stiefel_"
    gain = check_gain(gain, where)
    named = [(name, p, gain) for name, p in named_weights(params, where)]
    project_parameters_(named, where=where, backend=backend)


class PolarOrthogonal(nn.Module):
    """The parametrisation W = gain * polar(X) of :func:`orthogonal` (X read as its components x fan-in matrix)."""

    def __init__(self, gain: float = 1.0, *, method: str = "auto", mode: str = "accurate",
                 rcond: Optional[float] = None, backend: Optional[str] = None):
        super().__init__()
        self.gain = check_gain(gain, "orthogonal")
        check_options(method, mode, rcond, backend, where="orthogonal")
        self.method, self.mode, self.rcond, self.backend = method, mode, rcond, backend

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        P = polar(X.reshape(X.shape[0], -1), method=self.method, mode=self.mode, rcond=self.rcond,
                  backend=self.backend)
        return (P * self.gain).reshape(X.shape)

    @torch.no_grad()
    def right_inverse(self, W: torch.Tensor) -> torch.Tensor:
        """The X stored for a weight W: W's nearest orthonormal matrix, so that forward(right_inverse(W)) = W for W on
        the manifold (and gain * polar(W), the nearest point, otherwise)."""
        X = W.detach().clone()
        project_parameters_([("weight", X, 1.0)], where="orthogonal", backend=self.backend)
        return X

    def extra_repr(self) -> str:
        return f"gain={self.gain}, method={self.method!r}, mode={self.mode!r}"


def orthogonal(module: nn.Module, name: str = "weight", *, gain: float = 1.0, method: str = "auto",
               mode: str = "accurate", rcond: Optional[float] = None, backend: Optional[str] = None) -> nn.Module:
    """Constrain ``module.<name>`` to the manifold with the polar map, as ``torch.nn.utils.parametrizations.
    orthogonal`` does with the matrix exponential or the Cayley map; returns ``module``.

    The stored tensor X is unconstrained (``module.parametrizations.<name>.original``) and the weight is
    gain * polar(X), differentiated through ``orthokern.polar``'s own backward. X starts as the current weight's
    nearest orthonormal matrix, so the weight becomes its nearest point on the manifold (a rank-deficient weight
    raises ``ValueError``). A plain gradient step on X = P H never lowers its smallest singular value (the gradient
    of polar(X) is P K + (I - P P^T) N with K skew, and sigma_min(H + K) >= lambda_min(H)), so X stays about as well
    conditioned as it starts (every singular value 1) unless weight decay shrinks it; ``rcond`` (default
    ``orthokern.DEFAULT_RCOND``) would drop the directions of a badly conditioned X. Every access to the weight
    computes one polar factor: wrap repeated accesses in ``torch.nn.utils.parametrize.cached()``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"orthogonal: module must be a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(name, str):
        raise TypeError(f"orthogonal: name must be a str, got {type(name).__name__}")
    weight = getattr(module, name, None)
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"orthogonal: module {type(module).__name__} has no tensor named {name!r}")
    if weight.dim() < 2:
        raise ValueError(f"orthogonal: module.{name} must have at least 2 dimensions (components x fan-in), got "
                         f"shape {tuple(weight.shape)}")
    parametrize.register_parametrization(
        module, name, PolarOrthogonal(gain, method=method, mode=mode, rcond=rcond, backend=backend))
    return module
