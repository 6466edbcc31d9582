"""Orthogonal initialisation: Haar-random orthonormal rows or columns per weight matrix, batched, with a gain.

Saxe, McClelland & Ganguli (2014) and Sokol & Park, "Information Geometry of Orthogonal Initializations and
Training" (ICLR 2020): with orthogonal weights the layer maps are isometries at initialisation, so activations
and gradients neither shrink nor grow with depth. ``torch.nn.init.orthogonal_`` draws one matrix by QR; here a
whole stack of matrices (experts, heads, convolution groups) is drawn in one batched ``orthokern.polar`` call.

Which matrix: the (components x fan-in) view of ``orthokern/nn/_views.py``, ``w.reshape(w.shape[0], -1)``
(a convolution (out, in, kh, kw) is (out, in * kh * kw)). With c components and f = fan-in, the result has
orthonormal rows (W W^T = gain^2 I) when c <= f and orthonormal columns (W^T W = gain^2 I) when c > f. A 1-D
tensor has no such matrix and is an error.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._polar import polar
from ._views import check_gain, matrix_view

__all__ = ["orthogonal_", "delta_orthogonal_"]

_FLOAT = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def _check_float(t: torch.Tensor, where: str, arg: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{where}: {arg} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT:
        raise TypeError(f"{where}: {arg} must be float64, float32, bfloat16 or float16, got {t.dtype}")


def haar_matrices(count: int, rows: int, cols: int, *, dtype: torch.dtype, device,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(count, rows, cols) independent Haar-random matrices with orthonormal rows or columns (the smaller side).

    The polar factor of a Gaussian matrix Z = P H is Haar-distributed and independent of H (Z's law is invariant
    under Z -> Q Z for every orthogonal Q, so P's is too). Z is drawn in float64 for a float64 result and in
    float32 otherwise.

    The method is ``cholqr2`` with ``rcond=0``: a square n x n Gaussian matrix is often ill-conditioned (its
    condition number exceeds x * n with probability about 2 / x, Edelman 1988; 0.46 for x = 4 measured at n = 64),
    so the default rcond would drop directions,
    and on 200 square 256 x 256 float32 draws ``gram_eigh`` left ||P^T P - I||_F up to 5e-2 against 6e-7 for
    ``cholqr2``, which works in float64 with a shift that cannot break down (``orthokern/reference/cholqr2.py``).
    """
    work = torch.float64 if dtype == torch.float64 else torch.float32
    draw_device = generator.device if generator is not None else device
    Z = torch.randn(count, rows, cols, dtype=work, device=draw_device, generator=generator)
    return polar(Z.to(device), method="cholqr2", rcond=0.0).to(dtype)


@torch.no_grad()
def orthogonal_(tensor: torch.Tensor, gain: float = 1.0, *, batch_dims: int = 0, groups: int = 1,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Fill ``tensor`` in place with Haar-random orthonormal rows or columns scaled by ``gain``; returns it.

    Args:
        tensor: float tensor with at least ``batch_dims + 2`` dimensions, read as a stack of (components x
            fan-in) matrices: the leading ``batch_dims`` dimensions index independent matrices (experts, heads),
            the next is the components, the rest (flattened) the fan-in.
        gain: positive scale: W W^T = gain^2 I (c <= f) or W^T W = gain^2 I (c > f) for each matrix.
        batch_dims: how many leading dimensions are a batch of independent matrices.
        groups: split the components of each matrix into ``groups`` independent blocks (a grouped
            convolution's weight (out, in/groups, kh, kw) with ``groups=`` its groups).
        generator: a ``torch.Generator`` for reproducible draws (its device is where the Gaussian is drawn).

    Each matrix is drawn independently; every entry of a c x f matrix has mean 0 and variance gain^2 / max(c, f).
    """
    where = "orthogonal_"
    _check_float(tensor, where, "tensor")
    gain = check_gain(gain, where)
    mats = matrix_view(tensor, batch_dims=batch_dims, groups=groups, where=where)
    if tensor.numel() == 0:
        return tensor
    count, rows, cols = mats.shape
    O = haar_matrices(count, rows, cols, dtype=tensor.dtype, device=tensor.device, generator=generator)
    tensor.copy_((O * gain).reshape(tensor.shape))
    return tensor


@torch.no_grad()
def delta_orthogonal_(weight: torch.Tensor, gain: float = 1.0, *, groups: int = 1,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Delta-orthogonal initialisation of a convolution weight (Xiao et al., "Dynamical Isometry and a Mean Field
    Theory of CNNs", 2018): a Haar-random orthogonal (out x in) matrix times ``gain`` at the kernel centre, zero
    elsewhere; returns ``weight``.

    ``weight`` is (out, in/groups, k1, ..., kd) with d >= 1. The centre tap of a size-k dimension is (k - 1) // 2:
    the middle of an odd kernel, and for an even one the tap that ``padding="same"`` aligns with the output
    position (torch pads the extra element on the right). With out >= in the convolution is then an isometry of
    its input (the paper's condition); with out < in it has orthonormal rows. ``groups``: one matrix per group.
    """
    where = "delta_orthogonal_"
    _check_float(weight, where, "weight")
    if weight.dim() < 3:
        raise ValueError(f"delta_orthogonal_: weight must be a convolution weight (out, in, k1, ..., kd) with at "
                         f"least 3 dimensions, got shape {tuple(weight.shape)}")
    gain = check_gain(gain, where)
    centre = torch.empty(weight.shape[:2], dtype=weight.dtype, device=weight.device)
    matrix_view(centre, groups=groups, where=where, arg="weight")  # checks groups against out
    weight.zero_()
    if weight.numel() == 0:
        return weight
    orthogonal_(centre, gain, groups=groups, generator=generator)
    weight[(slice(None), slice(None), *((k - 1) // 2 for k in weight.shape[2:]))] = centre
    return weight
