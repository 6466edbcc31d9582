"""Layer rotation: how far each layer's weights have turned from their initialisation.

Carbonnelle & De Vleeschouwer, "Layer rotation: a surprisingly powerful indicator of generalization in deep
networks?" (2019) measure, for each layer l, the cosine distance between its weight vector now and at
initialisation,

    d_l(t) = 1 - <w_l(t), w_l(0)> / (||w_l(t)|| ||w_l(0)||),

and plot the curves of all layers over training, coloured by depth. In their experiments, the larger and the
more uniform across layers the final rotations (up to d near 1 for every layer), the better the network
generalised. :class:`orthokern.optim.Layca` controls the rotation rate per layer.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Optional

import torch

from .nn._views import Weights, named_weights

__all__ = ["LayerRotation"]


class LayerRotation:
    """Records each layer's cosine distance to its initialisation.

    Args:
        model_or_named_params: a module (its parameters with at least 2 dimensions: weights, not biases or norm
            scales), a dict {name: tensor} or an iterable of (name, tensor) pairs (tensors with fewer than 2
            dimensions left out), in depth order.
        include: optional ``include(name, tensor) -> bool`` to choose among those.

    The weights' directions are copied now (float64 weights in float64, others in float32): the initialisation every
    later distance is measured from, and step 0 of :attr:`history` (distance 0). A layer whose weights are all zero
    has no direction and is an error.

    ::

        rot = orthokern.monitor.LayerRotation(model)
        handle = rot.hook(optimizer, every=10)      # or call rot.update() yourself
        ...train...
        rot.history                                  # plain lists: json.dump-able
        rot.plot("layer_rotation.png")
    """

    def __init__(self, model_or_named_params: Weights,
                 include: Optional[Callable[[str, torch.Tensor], bool]] = None):
        where = "LayerRotation"
        named = named_weights(model_or_named_params, where)
        if include is not None:
            named = [(n, t) for n, t in named if include(n, t)]
        if not named:
            raise ValueError(f"{where}: no layer to monitor (no tensor with at least 2 dimensions was given)")
        self.params = [t for _, t in named]
        self.names = [n for n, _ in named]
        w0 = [self._flat(t).clone() for t in self.params]
        norms = [torch.linalg.vector_norm(w) for w in w0]
        values = torch.stack([n.to(w0[0].device, torch.float64) for n in norms]).tolist()
        bad = [n for n, v in zip(self.names, values) if not (v > 0 and math.isfinite(v))]
        if bad:
            raise ValueError(f"{where}: layers {bad} are all zeros or hold NaN or Inf at the snapshot; their cosine "
                             "distance to it is undefined (leave them out with include=)")
        self._u0 = [w / n for w, n in zip(w0, norms)]  # the initial directions
        self.history: dict = {"step": [], "layers": list(self.names), "cosine_distance": {n: [] for n in self.names}}
        self._steps_seen = 0
        self.update(step=0)

    @staticmethod
    def _flat(t: torch.Tensor) -> torch.Tensor:
        return t.detach().reshape(-1).to(torch.float64 if t.dtype == torch.float64 else torch.float32)

    @torch.no_grad()
    def distances(self) -> dict[str, float]:
        """{layer: cosine distance to its initialisation} now (one synchronisation with the device)."""
        vals = []
        for t, u0 in zip(self.params, self._u0):
            w = self._flat(t)
            # 1 - cos = ||w / ||w|| - w0 / ||w0||||^2 / 2: the same number, without the cancellation of 1 - cos
            # (float32 would round rotations below ~1e-7 to 0 or to a negative distance).
            d = 0.5 * torch.linalg.vector_norm(w / torch.linalg.vector_norm(w) - u0).square()
            vals.append(d.to(self._u0[0].device, torch.float64))
        out = dict(zip(self.names, torch.stack(vals).tolist()))
        bad = [n for n, v in out.items() if not math.isfinite(v)]
        if bad:
            warnings.warn(f"LayerRotation: layers {bad} hold NaN or Inf, or are all zeros; their distance is "
                          "recorded as NaN", RuntimeWarning, stacklevel=2)
            out = {n: (v if math.isfinite(v) else math.nan) for n, v in out.items()}
        return out

    def update(self, step: Optional[int] = None) -> dict[str, float]:
        """Measure and append to :attr:`history` (``step`` defaults to the last recorded step + 1); returns the
        distances."""
        d = self.distances()
        if step is None:
            step = self.history["step"][-1] + 1 if self.history["step"] else 0
        self.history["step"].append(int(step))
        for n, v in d.items():
            self.history["cosine_distance"][n].append(v)
        return d

    def hook(self, optimizer: torch.optim.Optimizer, every: int = 1):
        """Call :meth:`update` after every ``every``-th ``optimizer.step()`` (step = the number of steps since the
        hook was attached); returns the handle (``handle.remove()`` detaches it)."""
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"LayerRotation.hook: every must be an int >= 1, got {every!r}")
        start = self.history["step"][-1] if self.history["step"] else 0
        count = [0]

        def after_step(opt, args, kwargs):
            count[0] += 1
            if count[0] % every == 0:
                self.update(step=start + count[0])

        return optimizer.register_step_post_hook(after_step)

    def final(self) -> dict[str, float]:
        """The last recorded distance of each layer."""
        return {n: v[-1] for n, v in self.history["cosine_distance"].items()}

    def plot(self, path=None, *, ax=None, title: Optional[str] = None, xlabel: str = "step", cmap: str = "viridis",
             ylim: Optional[tuple[float, float]] = None):
        """Draw the layer-rotation curves: one line per layer, coloured by depth (first layer to last, with a
        colour bar), cosine distance against step, on [0, 1] as in the paper unless ``ylim`` is given (or a distance
        exceeds 1). Draws into ``ax`` when given; saves a PNG to ``path`` when given; returns the figure."""
        import matplotlib
        from matplotlib.figure import Figure

        # A Figure of its own, not pyplot's: no global backend or figure state is touched.
        fig = ax.figure if ax is not None else Figure(figsize=(5.5, 4))
        ax = ax if ax is not None else fig.add_subplot(1, 1, 1)
        colours = matplotlib.colormaps[cmap]
        L = len(self.names)
        steps = self.history["step"]
        for i, n in enumerate(self.names):
            ax.plot(steps, self.history["cosine_distance"][n], color=colours(i / max(L - 1, 1)), lw=1.2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("cosine distance to initialisation")
        ax.set_ylim(*(ylim if ylim is not None else (0.0, max(1.0, ax.get_ylim()[1]))))
        ax.grid(alpha=0.3)
        if title:
            ax.set_title(title)
        sm = matplotlib.cm.ScalarMappable(cmap=colours, norm=matplotlib.colors.Normalize(1, max(L, 2)))
        fig.colorbar(sm, ax=ax, label="layer (input to output)")
        if path is not None:
            fig.tight_layout()
            fig.savefig(path, dpi=120)
        return fig
