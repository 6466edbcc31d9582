"""Store helper for symmetric results: one computed tile (i <= j) written to both triangles."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def store_symmetric(OUT, N, ri, rj, acc):
    """Write tile ``acc`` (rows ri, cols rj, block row <= block column) to OUT and its mirror.

    Every element is written exactly once: the upper triangle (incl. diagonal) from ``acc``, the strict
    lower from ``acc``'s transpose. A diagonal tile is thus taken from one half only, so the result is exactly
    symmetric even where the dot unit does not compute g_i.g_j and g_j.g_i in the same order.
    """
    val = acc.to(OUT.dtype.element_ty)
    inb = (ri[:, None] < N) & (rj[None, :] < N)
    tl.store(OUT + ri[:, None] * N + rj[None, :], val, mask=inb & (ri[:, None] <= rj[None, :]))
    valt = tl.trans(val)
    inbt = (rj[:, None] < N) & (ri[None, :] < N)
    tl.store(OUT + rj[:, None] * N + ri[None, :], valt, mask=inbt & (rj[:, None] > ri[None, :]))
