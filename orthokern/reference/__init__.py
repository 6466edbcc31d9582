"""Pure-PyTorch implementations of every method: the always-available backend and the readable reference
each kernel is tested against."""
from . import cholqr2, gram_eigh, newton_schulz, svd  # noqa: F401  (each registers itself)
