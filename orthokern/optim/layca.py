"""Layca: layer-level controlled amount of weight rotation, around any optimiser.

Carbonnelle & De Vleeschouwer, "Layer rotation: a surprisingly powerful indicator of generalization in deep
networks?" (2019), Algorithm 1. For each layer's weight vector w (a whole parameter, flattened) and the update
Delta the base optimiser computes for it:

    Delta <- Delta - (<Delta, w> / <w, w>) w          orthogonal to w
    Delta <- Delta * ||w|| / ||Delta||                 as long as w
    w     <- w + rho * Delta                           rho: the group's learning rate
    w     <- w * ||w_0|| / ||w||                       back to the layer's initial norm

so each step turns the layer by exactly atan(rho) (rho for small rho: within rho^2 / 3 relative) and its norm never
changes. The base optimiser's own magnitudes (its learning rate, Adam's scaling) only set the direction of Delta.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch

from .._checks import finite_number
from .finite import check_params_finite

__all__ = ["Layca", "LAYCA_SELECTIONS"]

LAYCA_SELECTIONS = ("auto", True, False)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class Layca(torch.optim.Optimizer):
    """The Layca controller around ``base(params, lr=lr, **base_kwargs)``.

    Args:
        params: parameters or param groups (a group may set its own ``lr``, the rotation rate, and ``layca``).
        lr: the rotation rate rho per step (>= 0), and the learning rate the base optimiser is built with.
        base: a ``torch.optim.Optimizer`` subclass (default ``torch.optim.SGD``); not LBFGS, which re-evaluates its
            closure inside its step.
        layca: which parameters are rotated: ``"auto"`` (those with at least 2 dimensions: weights, not biases
            or norm scales), ``True`` (all of the group's) or ``False`` (none). The others take the base
            optimiser's ordinary step with the group's ``lr`` (the paper's code leaves them frozen; freeze them with
            ``requires_grad_(False)`` to do the same).
        check_finite: before each step, check that the stepped parameters and their gradients hold no NaN or Inf,
            and if one does raise ``FloatingPointError`` naming it, with nothing changed (one synchronisation with
            the device per step).
        base_kwargs: the base optimiser's other arguments (momentum, betas, weight decay, ...).

    Param groups and state are the base optimiser's own objects (learning-rate schedulers act on both), and
    ``state_dict()`` is the base's plus each layer's initial norm. A rotated parameter whose norm is 0 when it is
    added is an error: it has no direction to turn.
    """

    def __init__(self, params, lr: float, base: type = torch.optim.SGD, *, layca: Any = "auto",
                 check_finite: bool = True, **base_kwargs):
        where = "Layca"
        if not (isinstance(base, type) and issubclass(base, torch.optim.Optimizer)):
            raise TypeError(f"{where}: base must be a torch.optim.Optimizer subclass, got {base!r}")
        if issubclass(base, (torch.optim.LBFGS, Layca)):
            raise TypeError(f"{where}: base cannot be {base.__name__} (LBFGS re-evaluates its closure inside its "
                            "step; Layca is already the controller)")
        self._check_rate(lr, "lr")
        self._check_layca(layca)
        self.check_finite = bool(check_finite)
        self._initial_norms: dict[torch.Tensor, torch.Tensor] = {}
        self._base = base(params, lr=lr, **base_kwargs)
        self._building = True
        super().__init__(self._base.param_groups, {**self._base.defaults, "layca": layca})
        self._building = False
        # The same group dicts and state as the base optimiser, so that schedulers, zero_grad and state_dict see
        # one set.
        self.param_groups = self._base.param_groups
        self.state = self._base.state

    @property
    def base(self) -> torch.optim.Optimizer:
        """The wrapped optimiser."""
        return self._base

    @staticmethod
    def _check_rate(value, name: str) -> float:
        return finite_number(value, name, "Layca", about=" (the rotation rate)")

    @staticmethod
    def _check_layca(value):
        if isinstance(value, bool) or value == "auto":
            return value
        raise ValueError(f"Layca: layca must be one of {LAYCA_SELECTIONS}, got {value!r}")

    @staticmethod
    def _selected(group: dict, p: torch.Tensor) -> bool:
        rule = group["layca"]
        return p.dim() >= 2 if rule == "auto" else bool(rule)

    def add_param_group(self, param_group: dict) -> None:
        if "layca" in param_group:
            self._check_layca(param_group["layca"])
        if self._building:
            super().add_param_group(param_group)
        else:
            self._base.add_param_group(param_group)
            param_group.setdefault("layca", self.defaults["layca"])
        group = param_group
        self._check_rate(group["lr"], "lr")
        index = len(self.param_groups) - 1
        chosen = [(i, p) for i, p in enumerate(group["params"]) if self._selected(group, p)]
        if not chosen:
            return
        norms = [torch.linalg.vector_norm(p.detach().to(_compute_dtype(p.dtype))) for _, p in chosen]
        device = norms[0].device
        values = torch.stack([n.to(device, torch.float64) for n in norms]).tolist()
        bad = [f"group {index} #{i} {tuple(p.shape)}" for (i, p), v in zip(chosen, values)
               if not (v > 0 and math.isfinite(v))]
        if bad:
            raise ValueError(f"Layca: parameters {bad} have norm 0 (or hold NaN or Inf): Layca keeps each layer at "
                             "its initial norm and cannot rotate them; initialise them, or set layca=False for "
                             "their group")
        for (_, p), n in zip(chosen, norms):
            self._initial_norms[p] = n

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None):
        """The base optimiser's step, then the rotation control of every selected layer that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.check_finite:
            check_params_finite(self, "Layca")
        rotated = [(p, group["lr"]) for group in self.param_groups for p in group["params"]
                   if p.grad is not None and self._selected(group, p)]
        before = [p.detach().clone() for p, _ in rotated]
        self._base.step()
        for (p, rate), w in zip(rotated, before):
            cd = _compute_dtype(p.dtype)
            w = w.to(cd).reshape(-1)
            delta = p.detach().to(cd).reshape(-1) - w
            delta = delta - (torch.dot(delta, w) / torch.dot(w, w)) * w
            n_delta = torch.linalg.vector_norm(delta)
            # A zero update (no gradient signal) stays zero instead of 0/0.
            scale = torch.where(n_delta > 0, torch.linalg.vector_norm(w) / n_delta, torch.zeros_like(n_delta))
            new = w + (float(rate) * scale) * delta
            new = new * (self._initial_norms[p].to(new.device, cd) / torch.linalg.vector_norm(new))
            p.copy_(new.reshape(p.shape))
        return loss

    def state_dict(self) -> dict:
        sd = super().state_dict()
        index = {}
        for group in self.param_groups:
            for p in group["params"]:
                index.setdefault(p, len(index))
        sd["layca_initial_norms"] = {index[p]: n.clone() for p, n in self._initial_norms.items() if p in index}
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        sd = dict(state_dict)
        norms = sd.pop("layca_initial_norms", None)
        # The base's own load (its __setstate__ fills in defaults its version expects), then the shared objects.
        self._base.load_state_dict(sd)
        self.param_groups = self._base.param_groups
        self.state = self._base.state
        if norms is not None:
            params = [p for group in self.param_groups for p in group["params"]]
            for i, n in norms.items():
                p = params[int(i)]
                self._initial_norms[p] = n.detach().to(p.device, _compute_dtype(p.dtype)).clone()
