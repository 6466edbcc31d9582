"""Pure-PyTorch implementations of every method: the always-available backend ``"torch"`` and the readable
reference each kernel is tested against. Pure functions of a tall batch (B, m, n); they register nothing (the
table of implementations is ``orthokern/dispatch.py``)."""
from .cholqr2 import polar_cholqr2
from .gram_eigh import polar_gram_eigh
from .newton_schulz import polar_newton_schulz
from .svd import polar_svd

__all__ = ["polar_cholqr2", "polar_gram_eigh", "polar_newton_schulz", "polar_svd"]
