"""Soft orthogonality constraints: penalties on the distance of each weight matrix from gain * (orthonormal), and a
regulariser that adds one to a loss with a coefficient and a decay schedule.

Bansal, Chen & Wang, "Can We Gain More from Orthogonality Regularizations in Training Deep CNNs?" (NeurIPS 2018)
compare four penalties; Sokol & Park (ICLR 2020) add the gain: an initialisation W = sigma V (V orthonormal) is
erased by a plain penalty, which pulls every singular value to 1, and kept by ``gain=sigma``. Each weight is read
as its (components x fan-in) matrix A (c x f; ``orthokern/nn/_views.py``), k = min(c, f), and the Gram matrix on
the smaller side is S = A A^T (c <= f) or A^T A (c > f), k x k, which is gain^2 I exactly when A is gain times
an orthonormal matrix:

* ``"so"`` (single soft): ||S - gain^2 I||_F^2;
* ``"dso"`` (double soft): ||A^T A - gain^2 I||_F^2 + ||A A^T - gain^2 I||_F^2 (for c != f one of the two
  cannot vanish: its Gram matrix has rank k < max(c, f));
* ``"mc"`` (mutual coherence): max_ij |(S - gain^2 I)_ij|, the largest entry (Bansal et al.'s
  ||W^T W - I||_inf); its gradient is the subgradient at the largest entry (shared among ties);
* ``"srip"`` (spectral restricted isometry): ||S - gain^2 I||_2 by ``power_iters`` steps of the power method
  (the paper's sigma; the authors' PyTorch code adds its square).

``"so"`` and ``"dso"`` are smooth, with a gradient that vanishes at the target; ``"mc"`` and ``"srip"`` are norms
of S - gain^2 I and, like |x|, keep a gradient of size O(1) arbitrarily close to it (use them with a decaying
coefficient, as Bansal et al. do).

The penalties of all the weights are summed. Same-shape weights are stacked and computed in one batch; half
precision weights are computed in float32, float64 ones in float64, everything else in float32.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch

from .._checks import finite_number
from ._views import Weights, check_gain, named_weights

__all__ = ["orthogonality_penalty", "OrthogonalityRegulariser", "KINDS", "BANSAL_2018_SCHEDULE"]

KINDS = ("so", "dso", "mc", "srip")

# Bansal et al.'s own choice: two power steps. The estimate ||M v1||, v1 = M v0 / ||M v0||, is a lower bound on
# ||M||_2 that weights the largest deviations of the spectrum most, which is what a regulariser needs to push
# on; each step costs two products with A (the Gram matrix is never formed), and a fresh random start per call
# keeps any one direction from being missed for long. More steps converge to ||M||_2 (tests/test_nn_penalty.py).
SRIP_POWER_ITERS = 2

# Bansal et al.'s decay of the coefficient (their released CIFAR code): factors of the initial coefficient from
# the given epoch on; 0 from epoch 120, so the last epochs train on the task loss alone.
BANSAL_2018_SCHEDULE = {20: 1e-3, 50: 1e-4, 70: 1e-6, 120: 0.0}


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _identity_gap(S: torch.Tensor, g2: float) -> torch.Tensor:
    return S - g2 * torch.eye(S.shape[-1], dtype=S.dtype, device=S.device)


def _small_gram(A: torch.Tensor) -> torch.Tensor:
    return A @ A.mT if A.shape[-2] <= A.shape[-1] else A.mT @ A


def _safe_unit(u: torch.Tensor) -> torch.Tensor:
    # u / ||u||, and 0 where u = 0 (a weight exactly at gain * orthonormal): F.normalize's eps would give a
    # 1e12-sized gradient there instead of a zero one.
    n = torch.linalg.vector_norm(u, dim=-1, keepdim=True)
    return u / torch.where(n > 0, n, torch.ones_like(n))


def _srip(A: torch.Tensor, g2: float, power_iters: int, generator: Optional[torch.Generator]) -> torch.Tensor:
    """||S - gain^2 I||_2 estimated by the power method, differentiable through the iteration (as Bansal et al.)."""
    small_rows = A.shape[-2] <= A.shape[-1]
    k = min(A.shape[-2], A.shape[-1])

    def apply(v):  # (S - g2 I) v without forming S; v (B, k)
        if small_rows:
            return (A @ (A.mT @ v[..., None]))[..., 0] - g2 * v
        return (A.mT @ (A @ v[..., None]))[..., 0] - g2 * v

    draw_device = generator.device if generator is not None else A.device
    v = torch.randn(A.shape[0], k, dtype=A.dtype, device=draw_device, generator=generator).to(A.device)
    v = _safe_unit(v)
    for _ in range(power_iters - 1):
        v = _safe_unit(apply(v))
    return torch.linalg.vector_norm(apply(v), dim=-1)


def penalty_of_matrices(A: torch.Tensor, kind: str, gain: float, *, power_iters: int = SRIP_POWER_ITERS,
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The penalty of each matrix of A (B, c, f), in A's dtype: (B,). No argument checking (see
    :func:`orthogonality_penalty`)."""
    g2 = gain * gain
    if kind == "so":
        return _identity_gap(_small_gram(A), g2).square().sum((-2, -1))
    if kind == "dso":
        rows = _identity_gap(A @ A.mT, g2).square().sum((-2, -1))
        return rows + _identity_gap(A.mT @ A, g2).square().sum((-2, -1))
    if kind == "mc":
        return _identity_gap(_small_gram(A), g2).abs().amax((-2, -1))
    return _srip(A, g2, power_iters, generator)


def _check_kind(kind, where: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"{where}: kind must be one of {KINDS}, got {kind!r}")
    return kind


def _check_power_iters(power_iters, where: str) -> int:
    if isinstance(power_iters, bool) or not isinstance(power_iters, int) or power_iters < 1:
        raise ValueError(f"{where}: power_iters must be an int >= 1, got {power_iters!r}")
    return power_iters


def _check_finite(named: list[tuple[str, torch.Tensor]], where: str) -> None:
    if not named:
        return
    flags = torch.stack([torch.isfinite(t).all().to(named[0][1].device) for _, t in named]).tolist()
    bad = [name for (name, t), ok in zip(named, flags) if not ok]
    if bad:
        raise ValueError(f"{where}: weights {bad} hold NaN or Inf")


def orthogonality_penalty(weights: Weights, kind: str = "so", gain: float = 1.0, *,
                          power_iters: int = SRIP_POWER_ITERS, generator: Optional[torch.Generator] = None,
                          check_finite: bool = False) -> torch.Tensor:
    """The sum over ``weights`` of the ``kind`` penalty of each weight matrix against ``gain`` (module docstring).

    Args:
        weights: a module (its parameters), one tensor, a dict {name: tensor}, or an iterable of tensors or
            (name, tensor) pairs. Tensors with fewer than 2 dimensions in a module or an iterable are left out
            (a lone 1-D tensor is an error).
        kind: ``"so"``, ``"dso"``, ``"mc"`` or ``"srip"``.
        gain: the target scale sigma: the penalties vanish where W = sigma * (orthonormal rows or columns).
        power_iters: ``"srip"`` only: products with S - gain^2 I (>= 1; 2 as Bansal et al.). The start vector is
            drawn as ``torch.randn(B, k, generator=generator)`` per stack of same-shape weights, in the compute
            dtype, in the order the shapes first appear.
        generator: ``"srip"`` only: the generator of the start vectors (default: torch's global one).
        check_finite: raise ``ValueError`` naming the weights that hold NaN or Inf (this synchronises with the
            device). Otherwise such a weight makes the penalty NaN or Inf.

    Returns a 0-dim tensor, float64 if any weight is float64 and float32 otherwise, differentiable with respect
    to the weights; 0 when there is no weight matrix.
    """
    where = "orthogonality_penalty"
    _check_kind(kind, where)
    gain = check_gain(gain, where)
    power_iters = _check_power_iters(power_iters, where)
    named = named_weights(weights, where)
    if check_finite:
        _check_finite(named, where)
    buckets: dict[tuple, list[torch.Tensor]] = {}
    for _, t in named:
        c = t.shape[0]
        buckets.setdefault((c, t.numel() // c if c else 0, t.dtype, t.device), []).append(t)
    parts = []
    for (c, f, dtype, _), ts in buckets.items():
        if c == 0 or f == 0:
            continue
        A = torch.stack([t.reshape(c, f) for t in ts]).to(_compute_dtype(dtype))
        parts.append(penalty_of_matrices(A, kind, gain, power_iters=power_iters, generator=generator).sum())
    if not parts:
        dtype = torch.float64 if any(t.dtype == torch.float64 for _, t in named) else torch.float32
        return torch.zeros((), dtype=dtype, device=named[0][1].device if named else None)
    out_dtype = torch.float64 if any(p.dtype == torch.float64 for p in parts) else torch.float32
    device = parts[0].device
    total = parts[0].to(out_dtype)
    for p in parts[1:]:
        total = total + p.to(device=device, dtype=out_dtype)
    return total


Schedule = Union[None, dict, Callable[[int], float]]


class OrthogonalityRegulariser:
    """Adds ``coefficient * factor(step) * orthogonality_penalty(weights, kind, gain)`` to a loss::

        reg = orthokern.nn.OrthogonalityRegulariser(model, 1e-2, kind="srip",
                                                    schedule=orthokern.nn.BANSAL_2018_SCHEDULE)
        for epoch in range(epochs):
            for x, y in data:
                loss = reg(F.cross_entropy(model(x), y))
                ...
            reg.step()                       # once per epoch: the schedule's unit is whatever step() counts

    Args:
        weights: as :func:`orthogonality_penalty`; collected once, here.
        coefficient: lambda >= 0, the penalty's weight at factor 1.
        kind, gain, power_iters, generator: as :func:`orthogonality_penalty`.
        schedule: the factor on ``coefficient`` as a function of the number of ``step()`` calls so far: ``None``
            (always 1), a dict {step: factor} (piecewise constant: the factor of the largest key <= step, 1
            before the first key; :data:`BANSAL_2018_SCHEDULE` is Bansal et al.'s, in epochs), or a callable
            ``step -> factor``.

    When the current factor is 0 the penalty is not computed and ``reg(loss)`` returns ``loss`` itself.
    """

    def __init__(self, weights: Weights, coefficient: float, kind: str = "so", gain: float = 1.0, *,
                 schedule: Schedule = None, power_iters: int = SRIP_POWER_ITERS,
                 generator: Optional[torch.Generator] = None):
        where = "OrthogonalityRegulariser"
        self.kind = _check_kind(kind, where)
        self.gain = check_gain(gain, where)
        self.power_iters = _check_power_iters(power_iters, where)
        self.coefficient = self._check_factor(coefficient, "coefficient")
        self.schedule = self._check_schedule(schedule)
        self.weights = named_weights(weights, where)
        self.generator = generator
        self.steps = 0

    @staticmethod
    def _check_factor(value, what: str) -> float:
        return finite_number(value, what, "OrthogonalityRegulariser")

    def _check_schedule(self, schedule: Schedule) -> Schedule:
        if schedule is None or callable(schedule):
            return schedule
        if isinstance(schedule, dict):
            out = {}
            for k, v in schedule.items():
                if isinstance(k, bool) or not isinstance(k, int) or k < 0:
                    raise ValueError(f"OrthogonalityRegulariser: schedule keys must be steps (ints >= 0), got {k!r}")
                out[k] = self._check_factor(v, f"schedule[{k}]")
            return dict(sorted(out.items()))
        raise TypeError(f"OrthogonalityRegulariser: schedule must be None, a dict {{step: factor}} or a callable "
                        f"step -> factor, got {type(schedule).__name__}")

    @property
    def factor(self) -> float:
        """The schedule's factor at the current step."""
        if self.schedule is None:
            return 1.0
        if callable(self.schedule):
            return self._check_factor(self.schedule(self.steps), f"schedule({self.steps})")
        factor = 1.0
        for k, v in self.schedule.items():
            if k <= self.steps:
                factor = v
        return factor

    @property
    def current_coefficient(self) -> float:
        return self.coefficient * self.factor

    def penalty(self) -> torch.Tensor:
        """The unweighted penalty of the weights now."""
        return orthogonality_penalty(self.weights, self.kind, self.gain, power_iters=self.power_iters,
                                     generator=self.generator)

    def __call__(self, loss: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``loss + current_coefficient * penalty`` (just the weighted penalty when ``loss`` is None)."""
        lam = self.current_coefficient
        if lam == 0.0:
            if loss is not None:
                return loss
            return torch.zeros((), device=self.weights[0][1].device if self.weights else None)
        term = lam * self.penalty()
        return term if loss is None else loss + term

    def step(self) -> None:
        """Advance the schedule by one (an epoch or an iteration: the unit is the caller's)."""
        self.steps += 1

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
