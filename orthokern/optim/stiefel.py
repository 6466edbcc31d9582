"""Riemannian SGD on the Stiefel manifold with the polar retraction: the hard orthogonality constraint.

Each selected weight is read as its (components x fan-in) matrix W = p.reshape(p.shape[0], -1), c x f, as in
``orthokern/optim/orthogonal.py``, and kept on the scaled Stiefel manifold

    { W : W W^T = gain^2 I_c }  (c <= f)      or      { W : W^T W = gain^2 I_f }  (c > f),

orthonormal along its smaller side. Written for the tall orientation X (m x n, m >= n; X = W^T when W is wide)
with Y = X / gain, one step with Euclidean gradient G is (Absil, Mahony & Sepulchre, "Optimization Algorithms on
Matrix Manifolds", 2008, sections 3.6 and 4.1, with the metric the embedding's):

    xi  = G - Y sym(Y^T G)                              the Riemannian gradient (tangent projection of G)
    buf = momentum * proj_X(buf) + (1 - dampening) xi   the old momentum moved to this tangent space by projection
    d   = buf  (or xi + momentum * buf with nesterov)
    X  <- gain * polar(X - lr * d)                      the polar retraction: the nearest point of the manifold

For X on the manifold and d tangent, (X - lr d)^T (X - lr d) = gain^2 I + lr^2 d^T d, so every singular value of
the matrix to retract is at least gain: the retraction is well conditioned at any step size, and the default
``rcond`` of ``orthokern.polar`` drops nothing. All the retractions of a step go through one
:func:`orthokern.optim.polar_by_shape` call (one batched polar per shape).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from .._checks import finite_number
from .._polar import check_options
from .batched import polar_by_shape
from .finite import check_params_finite

__all__ = ["StiefelSGD", "tangent_projection", "project_parameters_", "check_gain", "STIEFEL_SELECTIONS"]

STIEFEL_SELECTIONS = ("auto", True, False)

# Largest |(small Gram) / gain^2 - I| entry accepted after projecting an arbitrary weight, per compute dtype. A
# full-rank float32 weight lands within about 1e-6 (cholqr2 works in float64); an exactly rank-deficient one
# leaves a singular value near 1e-4 (measured on a 16 x 8 matrix with a repeated column), far outside.
_PROJECTION_TOL = {torch.float64: 1e-8, torch.float32: 1e-4}


def check_gain(gain, where: str) -> float:
    """``gain``, the scale of the manifold (W W^T = gain^2 I), as a float; an error naming it unless finite and
    > 0."""
    return finite_number(gain, "gain", where, strict=True)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tall(W: torch.Tensor) -> torch.Tensor:
    """The tall orientation of a stack (B, c, f): itself when c >= f, else its transpose (a view)."""
    return W if W.shape[-2] >= W.shape[-1] else W.mT


def tangent_projection(X: torch.Tensor, Z: torch.Tensor, gain: float) -> torch.Tensor:
    """Z - X sym(X^T Z) / gain^2: the projection of Z onto the tangent space at X, for tall X (..., m, n) with
    X^T X = gain^2 I."""
    S = X.mT @ Z
    return Z - X @ ((S + S.mT) * (0.5 / (gain * gain)))


def _off_manifold(O: torch.Tensor) -> torch.Tensor:
    """max |O^T O - I| (tall orientation) per matrix of the stack O (B, c, f)."""
    T = _tall(O)
    D = T.mT @ T - torch.eye(T.shape[-1], dtype=T.dtype, device=T.device)
    return D.abs().amax((-2, -1))


@torch.no_grad()
def project_parameters_(named: list[tuple[str, torch.Tensor, float]], *, where: str,
                          backend: Optional[str] = None) -> None:
    """Replace each weight by gain * its polar factor (its nearest point on the manifold), in place.

    Arbitrary weights can be ill-conditioned, so this uses ``cholqr2`` with ``rcond=0`` (float64 inside, no
    direction dropped), and checks the result: a weight that holds NaN or Inf, or is (numerically)
    rank-deficient, has no unique nearest point and raises ``ValueError`` naming it, with nothing changed.
    """
    items = [(n, p, g) for n, p, g in named if p.numel() > 0]
    if not items:
        return
    mats = [p.detach().reshape(p.shape[0], -1).to(_compute_dtype(p.dtype)) for _, p, _ in items]
    outs = polar_by_shape(mats, method="cholqr2", rcond=0.0, backend=backend)
    device = items[0][1].device
    finite = torch.stack([torch.isfinite(m).all().to(device) for m in mats]).tolist()
    errors = torch.stack([_off_manifold(o[None])[0].to(device=device, dtype=torch.float64) for o in outs]).tolist()
    bad_values = [n for (n, _, _), ok in zip(items, finite) if not ok]
    if bad_values:
        raise ValueError(f"{where}: parameters {bad_values} hold NaN or Inf; nothing was projected")
    bad_rank = [n for (n, _, _), o, e in zip(items, outs, errors) if not (e <= _PROJECTION_TOL[o.dtype])]
    if bad_rank:
        raise ValueError(
            f"{where}: parameters {bad_rank} are rank-deficient (or too ill-conditioned to project): their "
            "nearest point on the Stiefel manifold is not unique; initialise them with "
            "orthokern.nn.init.orthogonal_ instead. Nothing was projected."
        )
    for (_, p, g), o in zip(items, outs):
        p.copy_((o * g).reshape(p.shape))


class StiefelSGD(torch.optim.Optimizer):
    """SGD with momentum on the Stiefel manifold for the selected >= 2-D parameters, plain SGD for the rest.

    See the module docstring for the update. The selected parameters are projected onto the manifold (gain * their
    polar factor) when they are added to the optimiser, so that every step starts on it: initialise them with
    :func:`orthokern.nn.init.orthogonal_` to start from a random point instead of the nearest one. A rank-deficient
    parameter cannot be projected and raises ``ValueError``.

    Args:
        params: parameters or param groups; a group may set its own ``lr``, ``momentum``, ``dampening``,
            ``nesterov``, ``weight_decay``, ``gain`` and ``stiefel``.
        lr: step size (>= 0).
        momentum, dampening, nesterov: as ``torch.optim.SGD`` (the buffer starts as the first direction).
        gain: the manifold's scale: W W^T = gain^2 I (or W^T W) for each selected matrix.
        weight_decay: for the plain-SGD parameters only; on the manifold the norm is fixed (weight decay's
            direction W is normal to the manifold, and the tangent projection would remove it).
        stiefel: which parameters: ``"auto"`` (every parameter with at least 2 dimensions; the others get plain
            SGD), ``True`` (every parameter of the group; one with fewer than 2 dimensions is an error) or
            ``False`` (plain SGD for the group).
        method, mode, rcond, backend: ``orthokern.polar``'s, for the retraction.
        check_finite: before each step, check that the stepped parameters and their gradients hold no NaN or
            Inf, and if one does raise ``FloatingPointError`` naming it, with nothing changed (one synchronisation
            with the device per step; set ``False`` to skip it, e.g. under CUDA graph capture).
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, *, gain: float = 1.0, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0, stiefel: Any = "auto", method: str = "auto",
                 mode: str = "accurate", rcond: Optional[float] = None, backend: Optional[str] = None,
                 check_finite: bool = True):
        where = "StiefelSGD"
        check_options(method, mode, rcond, backend, where=where)
        self._polar_options = {"method": method, "mode": mode, "rcond": rcond, "backend": backend}
        self.check_finite = bool(check_finite)
        defaults = {"lr": finite_number(lr, "lr", where), "momentum": finite_number(momentum, "momentum", where),
                    "dampening": finite_number(dampening, "dampening", where), "nesterov": bool(nesterov),
                    "weight_decay": finite_number(weight_decay, "weight_decay", where),
                    "gain": check_gain(gain, where), "stiefel": self._check_stiefel(stiefel, where)}
        super().__init__(params, defaults)

    @staticmethod
    def _check_stiefel(value, where: str):
        if isinstance(value, bool) or value == "auto":
            return value
        raise ValueError(f"{where}: stiefel must be 'auto', True or False, got {value!r}")

    def add_param_group(self, param_group: dict) -> None:
        where = "StiefelSGD"
        for key, lo in (("lr", 0.0), ("momentum", 0.0), ("dampening", 0.0), ("weight_decay", 0.0)):
            if key in param_group:
                param_group[key] = finite_number(param_group[key], key, where, lo=lo)
        if "gain" in param_group:
            param_group["gain"] = check_gain(param_group["gain"], where)
        if "stiefel" in param_group:
            param_group["stiefel"] = self._check_stiefel(param_group["stiefel"], where)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        index = len(self.param_groups) - 1
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(f"{where}: nesterov needs momentum > 0 and dampening = 0 (param group {index})")
        if group["stiefel"] is True:
            for i, p in enumerate(group["params"]):
                if p.dim() < 2:
                    raise ValueError(
                        f"{where}: param group {index} has stiefel=True but its parameter {i} has shape "
                        f"{tuple(p.shape)}; the Stiefel constraint needs at least 2 dimensions (components x "
                        "fan-in). Use stiefel='auto' to give such parameters plain SGD."
                    )
        named = [(f"group {index} #{i} {tuple(p.shape)}", p, group["gain"])
                 for i, p in enumerate(group["params"]) if self._selected(group, p)]
        project_parameters_(named, where=where, backend=self._polar_options["backend"])

    @staticmethod
    def _selected(group: dict, p: torch.Tensor) -> bool:
        rule = group["stiefel"]
        if rule == "auto":
            return p.dim() >= 2
        return bool(rule)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None):
        """One step; ``closure`` (optional) re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.check_finite:
            check_params_finite(self, "StiefelSGD")
        retract: list[tuple[torch.Tensor, float, torch.Tensor]] = []
        for group in self.param_groups:
            on, off = [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("StiefelSGD: sparse gradients are not supported")
                if p.numel():
                    (on if self._selected(group, p) else off).append(p)
            self._sgd(group, off)
            retract += self._riemannian(group, on)
        outs = polar_by_shape([c for _, _, c in retract], **self._polar_options)
        for (p, gain, _), o in zip(retract, outs):
            p.copy_((o * gain).reshape(p.shape))
        return loss

    def _sgd(self, group: dict, params: list[torch.Tensor]) -> None:
        """torch.optim.SGD's update (weight decay, momentum, dampening, nesterov)."""
        lr, mu, damp, wd = group["lr"], group["momentum"], group["dampening"], group["weight_decay"]
        for p in params:
            d = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
            if mu != 0:
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = d.detach().clone()
                else:
                    buf.mul_(mu).add_(d, alpha=1 - damp)
                d = d.add(buf, alpha=mu) if group["nesterov"] else buf
            p.add_(d, alpha=-lr)

    def _riemannian(self, group: dict, params: list[torch.Tensor]) -> list[tuple[torch.Tensor, float, torch.Tensor]]:
        """The matrices to retract, (param, gain, W - lr d in (c, f) orientation), one batch per shape."""
        lr, mu, damp, gain = group["lr"], group["momentum"], group["dampening"], group["gain"]
        buckets: dict[tuple, list[torch.Tensor]] = {}
        for p in params:
            buckets.setdefault((p.shape[0], p.numel() // p.shape[0], p.dtype, p.device), []).append(p)
        out = []
        for (c, f, dtype, _), ps in buckets.items():
            cd = _compute_dtype(dtype)
            W = torch.stack([p.reshape(c, f) for p in ps]).to(cd)
            G = torch.stack([p.grad.reshape(c, f) for p in ps]).to(cd)
            X, xi = _tall(W), tangent_projection(_tall(W), _tall(G), gain)
            d = xi
            if mu != 0:
                old = [self.state[p].get("momentum_buffer") for p in ps]
                if all(b is None for b in old):  # the first step: the buffer starts as the direction
                    buf = xi
                else:
                    B = torch.stack([xi_i if b is None else _tall(b.reshape(c, f).to(cd)[None])[0]
                                     for xi_i, b in zip(xi.unbind(0), old)])
                    buf = mu * tangent_projection(X, B, gain) + (1 - damp) * xi
                    if any(b is None for b in old):  # parameters added since the last step start afresh
                        fresh = torch.tensor([b is None for b in old], device=W.device)[:, None, None]
                        buf = torch.where(fresh, xi, buf)
                bufs_cf = buf if c >= f else buf.mT
                for p, b_old, b_new in zip(ps, old, bufs_cf.unbind(0)):
                    if b_old is None:
                        self.state[p]["momentum_buffer"] = torch.empty_like(p).copy_(b_new.reshape(p.shape))
                    else:
                        b_old.copy_(b_new.reshape(p.shape))
                d = xi + mu * buf if group["nesterov"] else buf
            cand = X - lr * d
            cand = cand if c >= f else cand.mT
            out += [(p, gain, m) for p, m in zip(ps, cand.unbind(0))]
        return out
