"""Orthogonalised optimisers: Orthogonal-SGDM (Tuddenham, Prügel-Bennett, Hare, "Orthogonalising gradients
to speed up neural network optimisation", 2022) and the same gradient replacement in front of any optimiser.

Each selected parameter's gradient is viewed as matrices, by default one (components x fan-in) matrix,
``p.grad.reshape(p.shape[0], -1)`` (a conv weight (out, in, kh, kw) becomes (out, in*kh*kw); other views:
:mod:`orthokern.optim.views`), each matrix is replaced by its polar factor U V^T (or by a baseline transform:
:mod:`orthokern.optim.transforms`), and the wrapped optimiser's ordinary step runs on that. Weight decay,
momentum, Adam moments etc. are the wrapped optimiser's own, applied after the replacement, exactly as the
paper's reference code does (it overwrites ``p.grad`` and then calls the base ``step``).

What happens to ``p.grad``: unlike the paper's code, ``p.grad`` is left as the raw gradient. The orthogonalised
tensors are put in ``p.grad`` only for the duration of the wrapped step and the original tensors are put back
afterwards (nothing is written into the user's gradient tensors). torch's own optimisers never change
``p.grad``, and code after ``step()`` relies on that: gradient-norm logging, gradient accumulation that
skips ``zero_grad``, closures. The cost is that the orthogonalised gradients are transient: they live only
while ``step()`` runs.

Batching: in one ``step()``, all selected matrices with the same shape, dtype, device and transform (across
parameter groups, whatever their original shapes) are stacked and go through ONE ``orthokern.polar`` call.
Under ``torch.distributed`` that work is shared between the ranks (:mod:`orthokern.optim.distributed`).
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

Saved per param group (so ``state_dict`` round trips keep them, and a group may override them): ``orthogonalise``,
``transform``, ``lr_scale``, ``method``, ``mode``, ``rcond``, ``backend``. Optimiser-wide only: the predicate,
``view=`` and ``distributed=``. ``copy.deepcopy`` and ``pickle`` keep all of them; pickling refuses, naming the
argument, when a callable cannot be pickled or a ``ProcessGroup`` was passed.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import pickle
from typing import Any, Callable, Optional, Union

import torch

from .._polar import check_options
from . import batched
from . import distributed as sharing
from .transforms import Transform, check_transform
from .views import MatrixView, ViewRule, check_lr_scale, check_view_rule, lr_scale_factor, view_of

__all__ = ["FastOrthogonalSGD", "Orthogonal", "orthogonalise", "SELECTIONS"]

SELECTIONS = ("all", "conv", "none")
# Group value standing for "the optimiser's predicate": a callable cannot live in a param group, because
# param groups go into the state dict and a lambda cannot be pickled.
_PREDICATE = "predicate"
# The per-group keys, in the order the optimisers' signatures name them.
GROUP_KEYS = ("orthogonalise", "transform", "lr_scale", "method", "mode", "rcond", "backend")

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


def _check_picklable(value, argument: str, owner: str) -> None:
    try:
        pickle.dumps(value)
    except Exception as e:
        raise TypeError(
            f"{owner} cannot be pickled: its {argument}={value!r} cannot be ({type(e).__name__}: {e}). Use a "
            f"module-level function or class for {argument}=; copy.deepcopy works (it shares {argument})."
        ) from None


@dataclasses.dataclass
class _Settings:
    """What the orthogonalising step needs besides the param groups; kept on the optimiser as ``_orthokern``."""

    defaults: dict  # GROUP_KEYS -> value, for groups that do not name one
    predicate: Optional[Callable[[torch.Tensor], bool]]
    view: ViewRule
    distributed: sharing.Option

    def __deepcopy__(self, memo):
        # Callables and process groups are configuration, shared by the copy (a ProcessGroup cannot be copied).
        return _Settings(dict(self.defaults), self.predicate, self.view, self.distributed)

    def __copy__(self):
        return self.__deepcopy__({})

    def __getstate__(self):
        owner = "orthokern optimiser"
        if self.predicate is not None:
            _check_picklable(self.predicate, "orthogonalise", owner)
        if callable(self.view) and not isinstance(self.view, MatrixView):
            _check_picklable(self.view, "view", owner)
        if self.distributed not in ("auto", True, False):
            raise TypeError(f"{owner} cannot be pickled: its distributed= is a ProcessGroup, which exists only in "
                            "this process; build the optimiser with distributed='auto' or set it after loading")
        return dict(self.__dict__)


def _make_settings(orthogonalise, method, mode, rcond, backend, transform, lr_scale, view, distributed,
                   where) -> _Settings:
    # Fail at construction, not at the first step: the same checks as polar()'s.
    check_options(method, mode, rcond, backend, where=where)
    check_transform(transform, where)
    check_lr_scale(lr_scale, where)
    sharing.check_option(distributed, where)
    default = _normalise_selection(orthogonalise, where, allow_callable=True)
    defaults = dict(orthogonalise=default, transform=transform, lr_scale=lr_scale, method=method, mode=mode,
                    rcond=rcond, backend=backend)
    return _Settings(defaults, orthogonalise if default == _PREDICATE else None, check_view_rule(view, where),
                     distributed)


def _check_group(group: dict, where: str) -> None:
    """Validate the orthokern keys a param group names (at add_param_group; the step checks them again)."""
    if "orthogonalise" in group:
        group["orthogonalise"] = _normalise_selection(group["orthogonalise"], where, allow_callable=False)
    if "transform" in group:
        check_transform(group["transform"], where)
    if "lr_scale" in group:
        check_lr_scale(group["lr_scale"], where)
    opts = {k: group[k] for k in ("method", "mode", "rcond", "backend") if k in group}
    if opts:
        check_options(opts.get("method", "auto"), opts.get("mode", "accurate"), opts.get("rcond"),
                      opts.get("backend"), where=where)


def _selected(settings: _Settings, group: dict, p: torch.Tensor) -> bool:
    if p.dim() < 2:
        return False
    rule = group.get("orthogonalise", settings.defaults["orthogonalise"])
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


def _group_rule(settings: _Settings, group: dict) -> tuple[Transform, str]:
    """The group's transform (with its polar options) and lr_scale, checked (a loaded state dict may carry
    anything)."""
    def get(key):
        return group.get(key, settings.defaults[key])

    where = "orthokern optimiser param group"
    t = Transform.make(get("transform"), get("method"), get("mode"), get("rcond"), get("backend"), where=where)
    return t, check_lr_scale(get("lr_scale"), where)


@dataclasses.dataclass
class _Job:
    p: torch.Tensor
    grad: torch.Tensor
    view: MatrixView
    transform: Transform
    lr_scale: str


def _scaled(block: torch.Tensor, lr_scale: str) -> torch.Tensor:
    factor = lr_scale_factor(lr_scale, block.shape[-2], block.shape[-1])
    return block if factor == 1.0 else block * factor


def _update_of(job: _Job, outs: list[torch.Tensor]) -> torch.Tensor:
    """The parameter-shaped update from its transformed blocks."""
    return job.view.assemble([_scaled(o, job.lr_scale) for o in outs], job.p.shape)


def _job_cost(job: _Job) -> float:
    return sum(k * sharing.matrix_cost(m, n) for k, m, n in job.view.block_shapes(job.p.shape))


@torch.no_grad()
def _orthogonalised_grads(param_groups: list[dict], settings: _Settings,
                          stats: Optional[sharing.Stats] = None) -> dict[torch.Tensor, torch.Tensor]:
    """{param: replacement of its gradient, shaped like the param} for the selected params with a gradient.

    Only shapes and flags steer the Python here, never tensor values, so nothing synchronises with the device.
    """
    jobs: list[_Job] = []
    for group in param_groups:
        if group.get("differentiable", False):
            raise NotImplementedError(
                "orthogonalise: differentiable=True is not supported (the polar factor is taken without autograd)"
            )
        rule = None
        for p in group["params"]:
            if p.grad is None or not _selected(settings, group, p):
                continue
            if p.grad.is_sparse:
                raise RuntimeError("orthogonalise: sparse gradients cannot be orthogonalised")
            rule = rule or _group_rule(settings, group)
            view = view_of(p, settings.view)
            view.check(p.shape, f"orthokern optimiser: the view of a parameter of shape {tuple(p.shape)}")
            jobs.append(_Job(p, p.grad, view, *rule))
    stats = stats if stats is not None else sharing.Stats()
    out: dict[torch.Tensor, torch.Tensor] = {}

    plain = [j for j in jobs if not sharing.is_dtensor(j.grad)]
    blocks, transforms, owner = [], [], []
    for n, job in enumerate(plain):
        for b in job.view.blocks(job.grad):
            blocks.append(b)
            transforms.append(job.transform)
            owner.append(n)
    group = sharing.process_group(settings.distributed) if blocks else None
    if group is not None:
        outs = sharing.replicated(blocks, transforms, batched.apply, group, stats)
    else:
        outs = batched.by_shape(blocks, transforms)
        for b in blocks:
            stats.add_local(b.shape[0], sharing.matrix_cost(b.shape[-2], b.shape[-1]))
    per_job: list[list[torch.Tensor]] = [[] for _ in plain]
    for n, o in zip(owner, outs):
        per_job[n].append(o)
    for job, o in zip(plain, per_job):
        out[job.p] = _update_of(job, o)

    dts = [j for j in jobs if sharing.is_dtensor(j.grad)]
    if dts:
        def update(indices: list[int], wholes: list[torch.Tensor]) -> list[torch.Tensor]:
            # On the owner rank: the whole gradients of the DTensor jobs it owns, transformed like plain ones.
            wblocks, wts, wowner = [], [], []
            for k, (i, w) in enumerate(zip(indices, wholes)):
                for b in dts[i].view.blocks(w):
                    wblocks.append(b)
                    wts.append(dts[i].transform)
                    wowner.append(k)
            res: list[list[torch.Tensor]] = [[] for _ in wholes]
            for k, o in zip(wowner, batched.by_shape(wblocks, wts)):
                res[k].append(o)
            return [_update_of(dts[i], r) for i, r in zip(indices, res)]

        results = sharing.sharded([j.grad for j in dts], [_job_cost(j) for j in dts], update,
                                  share=settings.distributed is not False, stats=stats,
                                  matrices=[sum(k for k, _, _ in j.view.block_shapes(j.p.shape)) for j in dts])
        for job, r in zip(dts, results):
            out[job.p] = r
    return out


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
    # GradScaler hands optimisers that support it the scale to divide the gradients by inside their (fused)
    # kernel; the replaced gradients are unit-scale already, so GradScaler must unscale the raw gradients first.
    _step_supports_amp_scaling = False
    #: What the last ``step()`` computed and exchanged (a :class:`orthokern.optim.distributed.Stats`).
    orthokern_stats: Optional[sharing.Stats] = None

    def _init_orthogonal(self, orthogonalise, method, mode, rcond, backend, transform, lr_scale, view,
                         distributed) -> None:
        # Set before Optimizer.__init__, which calls add_param_group.
        self._orthokern = _make_settings(orthogonalise, method, mode, rcond, backend, transform, lr_scale, view,
                                         distributed, type(self).__name__)

    def add_param_group(self, param_group: dict) -> None:
        _check_group(param_group, f"{type(self).__name__}.add_param_group")
        for key, value in self._orthokern.defaults.items():
            self.defaults.setdefault(key, value)
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
        stats = sharing.Stats()
        saved = _swap_grads(_orthogonalised_grads(self.param_groups, self._orthokern, stats))  # type: ignore
        self.orthokern_stats = stats
        try:
            self._base_step()()
        finally:
            _restore_grads(saved)
        return loss

    def _after_base_init(self) -> None:
        # The base __init__ may have set the instance attribute (SGD and Adam do when fused=True).
        self._step_supports_amp_scaling = False

    # copy, deepcopy, pickle: torch's Optimizer.__getstate__ keeps only defaults, state and param_groups.
    def __getstate__(self):
        state = super().__getstate__()  # type: ignore[misc]
        state["_orthokern"] = self._orthokern
        return state

    def __setstate__(self, state):
        # Also called by load_state_dict with only "state" and "param_groups": the settings then stay.
        if "_orthokern" in state:
            self._orthokern = state.pop("_orthokern")
        elif "_orthokern" not in self.__dict__:
            raise TypeError(f"{type(self).__name__}: this pickle has no orthokern settings (it was not made by "
                            "an orthokern optimiser)")
        super().__setstate__(state)  # type: ignore[misc]
        self._step_supports_amp_scaling = False


# Orthogonal(X) classes are made on demand, one per base class, and registered in this module under a name that
# says which base class they wrap, so that pickle finds them by reference (module __getattr__ below rebuilds one
# in a fresh process). The name has no dots (pickle would split on them): "Orthogonal[torch/optim/adam:Adam]".
_CLASS_PREFIX = "Orthogonal["


def _class_name(cls: type) -> str:
    return f"{_CLASS_PREFIX}{cls.__module__.replace('.', '/')}:{cls.__qualname__.replace('.', '/')}]"


def __getattr__(name: str):
    if name.startswith(_CLASS_PREFIX) and name.endswith("]") and ":" in name:
        module, qualname = name[len(_CLASS_PREFIX):-1].replace("/", ".").split(":", 1)
        try:
            base: Any = importlib.import_module(module)
            for part in qualname.split("."):
                base = getattr(base, part)
        except (ImportError, AttributeError) as e:
            raise AttributeError(f"{__name__}.{name}: its base optimiser {module}.{qualname} cannot be found "
                                 f"({e})") from None
        return Orthogonal(base)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.lru_cache(maxsize=None)
def Orthogonal(optimizer_cls: type) -> type:
    """``Orthogonal(torch.optim.AdamW)``: the same optimiser with its selected gradients orthogonalised first.

    The class takes the base class's arguments plus the keyword-only ``orthogonalise="all"``,
    ``method="auto"``, ``mode="accurate"``, ``rcond=None``, ``backend=None`` (see ``orthokern.polar``),
    ``transform="polar"``, ``lr_scale="spectral"``, ``view=None`` and ``distributed="auto"`` (see
    :class:`FastOrthogonalSGD`)::

        opt = orthokern.optim.Orthogonal(torch.optim.AdamW)(model.parameters(), lr=1e-3, weight_decay=0.05,
                                                             orthogonalise="conv")

    Calling it twice with the same class returns the same class; the class and its instances pickle by
    reference to the base class.
    """
    _check_base(optimizer_cls)

    def __init__(self, *args, orthogonalise: Selection = "all", method: str = "auto", mode: str = "accurate",
                 rcond: Optional[float] = None, backend: Optional[str] = None, transform: str = "polar",
                 lr_scale: str = "spectral", view: ViewRule = None, distributed: sharing.Option = "auto",
                 **kwargs):
        self._init_orthogonal(orthogonalise, method, mode, rcond, backend, transform, lr_scale, view, distributed)
        optimizer_cls.__init__(self, *args, **kwargs)
        self._after_base_init()

    name = _class_name(optimizer_cls)
    cls = type(f"Orthogonal{optimizer_cls.__name__}", (_OrthogonalMixin, optimizer_cls), {
        "__init__": __init__,
        "__doc__": f"{optimizer_cls.__name__} on orthogonalised gradients (see orthokern.optim.Orthogonal).",
        "__module__": __name__,
        "__qualname__": name,
    })
    globals()[name] = cls
    return cls


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
        method, mode, rcond, backend: passed to ``orthokern.polar``. ``rcond`` (default 1e-3) drops the
            directions whose singular value is below ``rcond * s_max`` from the update; ``rcond=0`` is the
            paper's rule (every direction gets unit weight).
        transform: ``"polar"`` (U V^T), or the paper's baselines ``"norm"`` (G / ||G||_F, N-SGDM) and
            ``"comp_norm"`` (each row / its norm, CN-SGDM).
        lr_scale: ``"spectral"`` (no scale, the paper), ``"muon"`` (``sqrt(max(1, m/n))``) or
            ``"match_adamw_rms"`` (``0.2 sqrt(max(m, n))``), per matrix of m components x n fan-in.
        view: how parameters are viewed as matrices: a :class:`~orthokern.optim.views.MatrixView` for all, or
            ``callable(param) -> MatrixView | None``; a view set with ``orthokern.optim.set_view`` wins.
        distributed: ``"auto"`` shares the work between ranks when ``torch.distributed`` is initialised
            (:mod:`orthokern.optim.distributed`); ``False`` makes every rank compute everything; a
            ``ProcessGroup`` shares over that group.

    These keyword arguments (all but ``view`` and ``distributed``) are also param-group keys.
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
        transform: str = "polar",
        lr_scale: str = "spectral",
        view: ViewRule = None,
        distributed: sharing.Option = "auto",
        maximize: bool = False,
        foreach: Optional[bool] = None,
        fused: Optional[bool] = None,
    ):
        self._init_orthogonal(orthogonalise, method, mode, rcond, backend, transform, lr_scale, view, distributed)
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
    transform: str = "polar",
    lr_scale: str = "spectral",
    view: ViewRule = None,
    distributed: sharing.Option = "auto",
) -> torch.optim.Optimizer:
    """Make an existing optimiser instance orthogonalise its gradients before every step; returns it.

    The instance becomes an instance of ``Orthogonal(type(optimizer))`` (a subclass of its class: ``isinstance``
    checks still pass) and keeps its state, param groups and hooks. A class rather than step hooks, so that
    ``copy.deepcopy``, ``pickle`` and ``state_dict`` treat it like any orthokern optimiser (torch does not
    copy step hooks, and a copy would silently have become the plain optimiser). Step hooks, whenever
    registered, see the raw gradients. Param groups get the orthokern keys (groups that already have one keep
    it). The keyword arguments are :class:`FastOrthogonalSGD`'s.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"orthogonalise: optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if isinstance(optimizer, _OrthogonalMixin):
        raise ValueError("orthogonalise: this optimizer already orthogonalises its gradients")
    _check_base(type(optimizer))
    settings = _make_settings(orthogonalise, method, mode, rcond, backend, transform, lr_scale, view, distributed,
                              "orthogonalise")
    for group in optimizer.param_groups:
        _check_group(group, "orthogonalise")
        for key, value in settings.defaults.items():
            group.setdefault(key, value)
    for key, value in settings.defaults.items():
        optimizer.defaults.setdefault(key, value)
    optimizer.__class__ = Orthogonal(type(optimizer))
    optimizer._orthokern = settings  # type: ignore[attr-defined]
    optimizer._after_base_init()  # type: ignore[attr-defined]
    optimizer._patch_step_function()  # torch's hook runner around the new class's step
    return optimizer

