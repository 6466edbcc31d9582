"""Orthogonalised optimisers: Orthogonal-SGDM (Tuddenham, Prügel-Bennett, Hare, "Orthogonalising gradients
to speed up neural network optimisation", 2022) and the same gradient replacement in front of any optimiser.

Each selected parameter's gradient is viewed as a (components x fan-in) matrix, ``p.grad.reshape(p.shape[0],
-1)`` (a conv weight (out, in, kh, kw) becomes (out, in*kh*kw)), replaced by its polar factor U V^T, and the
wrapped optimiser's ordinary step runs on that. Weight decay, momentum, Adam moments etc. are the wrapped
optimiser's own, applied after the replacement, exactly as the paper's reference code does (it overwrites
``p.grad`` and then calls the base ``step``).

What happens to ``p.grad``: unlike the paper's code, ``p.grad`` is left as the raw gradient. The orthogonalised
tensors are put in ``p.grad`` only for the duration of the wrapped step and the original tensors are put back
afterwards (nothing is written into the user's gradient tensors). torch's own optimisers never change
``p.grad``, and code after ``step()`` relies on that: gradient-norm logging, gradient accumulation that
skips ``zero_grad``, closures. The cost is that the orthogonalised gradients are transient: they live only
while ``step()`` runs.

Batching: in one ``step()``, all selected gradients with the same matrix shape, dtype and device (across
parameter groups, whatever their original shapes) are stacked and go through ONE ``orthokern.polar`` call.
Nothing in the step reads a tensor value on the host, so the step can be captured in a CUDA graph or compiled
with ``torch.compile`` (``method="auto"``'s eager-only breakdown check is skipped under both; see
``orthokern/dispatch.py``).

Which parameters (``orthogonalise=``, also a per-group key ``{"params": ..., "orthogonalise": ...}``):

* ``"all"`` (default, or ``True``): every parameter with at least 2 dimensions;
* ``"conv"``: only parameters with more than 2 dimensions (the paper's "conv only" variant: dense layers, whose
  gradients have rank <= batch size, are left to the base optimiser);
* ``"none"`` (or ``False``): none, the optimiser is the plain base optimiser for that group;
* a callable ``predicate(param) -> bool`` (optimiser-wide only; it is not saved in the state dict).

Parameters with fewer than 2 dimensions (biases, norm scales) always pass straight to the base optimiser.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Union

import torch

from .._polar import check_options
from .batched import polar_by_shape

__all__ = ["FastOrthogonalSGD", "Orthogonal", "orthogonalise", "SELECTIONS"]

SELECTIONS = ("all", "conv", "none")
# Group value standing for "the optimiser's predicate": a callable cannot live in a param group, because
# param groups go into the state dict and a lambda cannot be pickled.
_PREDICATE = "predicate"

Selection = Union[str, bool, Callable[[torch.Tensor], bool]]


def _normalise_selection(value: Any, where: str, allow_callable: bool) -> str:
    if value is True:
        return "all"
    if value is False:
        return "none"
    if isinstance(value, str) and (value in SELECTIONS or value == _PREDICATE):
        return value
    if callable(value) and allow_callable:
        return _PREDICATE
    if callable(value):
        raise ValueError(
            f"{where}: a param group's 'orthogonalise' must be one of {SELECTIONS} or a bool; pass a predicate "
            "as the optimiser's orthogonalise= argument instead (param groups are saved in the state dict)"
        )
    raise ValueError(f"{where}: orthogonalise must be one of {SELECTIONS}, a bool or a callable, got {value!r}")


@dataclasses.dataclass
class _Settings:
    """What the orthogonalising step needs besides the param groups; kept on the optimiser as ``_orthokern``."""

    method: str
    mode: str
    rcond: Optional[float]
    backend: Optional[str]
    default: str  # the selection for groups that do not name one
    predicate: Optional[Callable[[torch.Tensor], bool]]


def _make_settings(orthogonalise, method, mode, rcond, backend, where) -> _Settings:
    # Fail at construction, not at the first step: the same checks as polar()'s.
    check_options(method, mode, rcond, backend, where=where)
    default = _normalise_selection(orthogonalise, where, allow_callable=True)
    return _Settings(method, mode, rcond, backend, default, orthogonalise if default == _PREDICATE else None)


def _selected(settings: _Settings, group: dict, p: torch.Tensor) -> bool:
    if p.dim() < 2:
        return False
    rule = group.get("orthogonalise", settings.default)
    if rule == "all":
        return True
    if rule == "conv":
        return p.dim() > 2
    if rule == "none":
        return False
    if rule == _PREDICATE:
        if settings.predicate is None:
            # A state dict saved by an optimiser built with a predicate, loaded into one built without.
            raise RuntimeError(
                "orthogonalise: a param group asks for the optimiser's predicate but this optimiser has none "
                "(pass orthogonalise=<callable> when building it)"
            )
        return bool(settings.predicate(p))
    raise ValueError(f"orthogonalise: param group has orthogonalise={rule!r}; expected one of {SELECTIONS}")


@torch.no_grad()
def _orthogonalised_grads(
    param_groups: list[dict],
    settings: _Settings,
) -> dict[torch.Tensor, torch.Tensor]:
    """{param: polar factor of its gradient, shaped like the param} for the selected params with a gradient.

    Each gradient is viewed as its (components x fan-in) matrix; :func:`polar_by_shape` makes one batched
    ``polar`` call per matrix shape, dtype and device. Only shapes and flags steer the Python here, never tensor
    values, so nothing synchronises with the device.
    """
    params: list[torch.Tensor] = []
    for group in param_groups:
        if group.get("differentiable", False):
            raise NotImplementedError(
                "orthogonalise: differentiable=True is not supported (the polar factor is taken without autograd)"
            )
        for p in group["params"]:
            if p.grad is None or not _selected(settings, group, p):
                continue
            if p.grad.is_sparse:
                raise RuntimeError("orthogonalise: sparse gradients cannot be orthogonalised")
            params.append(p)
    mats = [p.grad.reshape(p.shape[0], -1) for p in params]
    outs = polar_by_shape(mats, method=settings.method, mode=settings.mode, rcond=settings.rcond,
                          backend=settings.backend)
    # reshape, not view: a kernel backend may hand back a non-contiguous result.
    return {p: o.reshape(p.shape) for p, o in zip(params, outs)}


def _swap_grads(grads: dict[torch.Tensor, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Point each p.grad at its replacement; returns what to put back."""
    saved = []
    for p, g in grads.items():
        saved.append((p, p.grad))
        p.grad = g
    return saved


def _restore_grads(saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for p, g in saved:
        p.grad = g


def _check_base(cls: type) -> None:
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise TypeError(f"Orthogonal: optimizer_cls must be a torch.optim.Optimizer subclass, got {cls!r}")
    if issubclass(cls, _OrthogonalMixin):
        raise TypeError(f"Orthogonal: {cls.__name__} already orthogonalises its gradients")
    if issubclass(cls, torch.optim.LBFGS):
        # LBFGS re-evaluates the closure inside its step; the gradients it sees there would not be replaced.
        raise TypeError("Orthogonal: LBFGS re-evaluates its closure inside step() and cannot be orthogonalised")


class _OrthogonalMixin:
    """Placed before a torch optimiser in the MRO: replaces the selected gradients around the base step."""

    _orthokern: _Settings

    def _init_orthogonal(self, orthogonalise, method, mode, rcond, backend) -> None:
        # Set before Optimizer.__init__, which calls add_param_group.
        self._orthokern = _make_settings(orthogonalise, method, mode, rcond, backend, type(self).__name__)

    def add_param_group(self, param_group: dict) -> None:
        where = f"{type(self).__name__}.add_param_group"
        if "orthogonalise" in param_group:
            param_group["orthogonalise"] = _normalise_selection(
                param_group["orthogonalise"], where, allow_callable=False
            )
        else:
            param_group["orthogonalise"] = self._orthokern.default
        self.defaults.setdefault("orthogonalise", self._orthokern.default)
        super().add_param_group(param_group)  # type: ignore[misc]

    def _base_step(self):
        """The base class's step, without the profiling/hook wrapper torch puts on every optimiser class.

        Our own step is wrapped by that same machinery (Optimizer._patch_step_function), so calling a wrapped
        base step would run the user's step hooks twice.
        """
        for klass in type(self).__mro__:
            if issubclass(klass, _OrthogonalMixin):
                continue
            if "step" in klass.__dict__:
                fn = klass.__dict__["step"]
                if getattr(fn, "hooked", False):
                    fn = fn.__wrapped__
                return fn.__get__(self, klass)
        raise TypeError(f"{type(self).__name__}: no base optimiser step found")  # pragma: no cover

    def step(self, closure: Optional[Callable[[], Any]] = None):
        """Evaluate ``closure`` (if given), replace the selected gradients by their polar factors, run the base
        optimiser's step on them, and put the raw gradients back in ``p.grad``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        saved = _swap_grads(_orthogonalised_grads(self.param_groups, self._orthokern))  # type: ignore[attr-defined]
        try:
            self._base_step()()
        finally:
            _restore_grads(saved)
        return loss

    def _after_base_init(self) -> None:
        # GradScaler hands fused optimisers the scale to divide the gradients by inside their kernel; the
        # replaced gradients are unit-scale already, so have GradScaler unscale the raw gradients first instead.
        self._step_supports_amp_scaling = False


@functools.lru_cache(maxsize=None)
def Orthogonal(optimizer_cls: type) -> type:
    """``Orthogonal(torch.optim.AdamW)``: the same optimiser with its selected gradients orthogonalised first.

    The class takes the base class's arguments plus the keyword-only ``orthogonalise="all"``,
    ``method="auto"``, ``mode="accurate"``, ``rcond=None`` and ``backend=None`` (see ``orthokern.polar``)::

        opt = orthokern.optim.Orthogonal(torch.optim.AdamW)(model.parameters(), lr=1e-3, weight_decay=0.05,
                                                             orthogonalise="conv")

    Calling it twice with the same class returns the same class.
    """
    _check_base(optimizer_cls)

    def __init__(self, *args, orthogonalise: Selection = "all", method: str = "auto", mode: str = "accurate",
                 rcond: Optional[float] = None, backend: Optional[str] = None, **kwargs):
        self._init_orthogonal(orthogonalise, method, mode, rcond, backend)
        optimizer_cls.__init__(self, *args, **kwargs)
        self._after_base_init()

    name = f"Orthogonal{optimizer_cls.__name__}"
    return type(name, (_OrthogonalMixin, optimizer_cls), {
        "__init__": __init__,
        "__doc__": f"{optimizer_cls.__name__} on orthogonalised gradients (see orthokern.optim.Orthogonal).",
        "__module__": __name__,
        "__qualname__": name,
    })


class FastOrthogonalSGD(_OrthogonalMixin, torch.optim.SGD):
    """Orthogonal-SGDM: SGD with momentum on the polar factors of the gradients.

    For each selected parameter, G = p.grad reshaped to (p.shape[0], -1) is replaced by P = U V^T (computed by
    ``orthokern.polar`` with ``method``, ``mode``, ``rcond``, ``backend``), and ``torch.optim.SGD``'s step runs
    on P: ``d = P + weight_decay * p``, ``v <- momentum * v + (1 - dampening) * d``, ``p <- p - lr * v`` (or the
    Nesterov form). Everything else (state dict, param groups, ``maximize``, ``foreach``, ``fused``, LR
    schedulers) is ``torch.optim.SGD``'s. ``p.grad`` is left holding the raw gradient (see the module docs).

    Args:
        params, lr, momentum, dampening, weight_decay, nesterov, maximize, foreach, fused: as
            ``torch.optim.SGD`` (momentum defaults to 0.9, the paper's value).
        orthogonalise: which parameters: ``"all"`` (every >= 2-D parameter), ``"conv"`` (> 2-D only),
            ``"none"``, or ``callable(param) -> bool``; a param group may override with its own
            ``"orthogonalise"`` entry (``"all"``, ``"conv"``, ``"none"``, or a bool).
        method, mode, rcond, backend: passed to ``orthokern.polar``.
    """

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.9,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        orthogonalise: Selection = "all",
        method: str = "auto",
        mode: str = "accurate",
        rcond: Optional[float] = None,
        backend: Optional[str] = None,
        maximize: bool = False,
        foreach: Optional[bool] = None,
        fused: Optional[bool] = None,
    ):
        self._init_orthogonal(orthogonalise, method, mode, rcond, backend)
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                         nesterov=nesterov, maximize=maximize, foreach=foreach, fused=fused)
        self._after_base_init()


def orthogonalise(
    optimizer: torch.optim.Optimizer,
    *,
    orthogonalise: Selection = "all",
    method: str = "auto",
    mode: str = "accurate",
    rcond: Optional[float] = None,
    backend: Optional[str] = None,
) -> torch.optim.Optimizer:
    """Make an existing optimiser instance orthogonalise its gradients before every step; returns it.

    Works through the optimiser's step hooks (a pre-hook swaps the polar factors into ``p.grad``, a post-hook
    puts the raw gradients back), so the instance keeps its class and state. Hooks registered before this call
    see the raw gradients, hooks registered after it see the orthogonalised ones. A closure passed to
    ``step`` is evaluated once, before the replacement. Param groups get an ``"orthogonalise"`` entry (groups
    that already have one keep it).
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"orthogonalise: optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    _check_base(type(optimizer))
    if isinstance(optimizer, _OrthogonalMixin) or hasattr(optimizer, "_orthokern"):
        raise ValueError("orthogonalise: this optimizer already orthogonalises its gradients")
    settings = _make_settings(orthogonalise, method, mode, rcond, backend, "orthogonalise")
    for group in optimizer.param_groups:
        group["orthogonalise"] = _normalise_selection(
            group.get("orthogonalise", settings.default), "orthogonalise", allow_callable=False
        )
    optimizer.defaults.setdefault("orthogonalise", settings.default)
    optimizer._orthokern = settings  # type: ignore[attr-defined]
    optimizer._step_supports_amp_scaling = False  # type: ignore[attr-defined]  (see _after_base_init)
    saved: list = []

    def pre_hook(opt, args, kwargs):
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
        new = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
            # The base step calls the closure again: hand it the value instead of a second forward/backward.
            kwargs = dict(kwargs, closure=lambda: loss)
            new = (args[:1], kwargs)
        saved.extend(_swap_grads(_orthogonalised_grads(opt.param_groups, settings)))
        return new

    def post_hook(opt, args, kwargs):
        _restore_grads(saved)
        saved.clear()

    optimizer.register_step_pre_hook(pre_hook)
    optimizer.register_step_post_hook(post_hook)
    return optimizer
