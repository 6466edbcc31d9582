"""Triton kernels of orthokern (installed as ``orthokern.triton_kernels``).

* :func:`sym_gram` — batched symmetric Gram G^T G, one triangle, deterministic split-K, fp32 or fp64 accumulation;
* :func:`sym_poly` — b A + c A^2 of symmetric A (the Newton–Schulz polynomial, epilogue-fused);
* :func:`sym_mul` — alpha X + beta X Y of commuting symmetric X, Y (the n x n late steps), one triangle computed;
* :func:`apply` — alpha G + beta s_b G @ M for tall-skinny G (final multiply of gram_eigh, last product of a
  Newton–Schulz step);
* :func:`ns_step` — one fused Newton–Schulz step X <- a X + X (b A + c A^2), A = X^T X (tall orientation).

Every function takes ``precision``, the precision of its float32 dots (:data:`PRECISIONS`; default "tf32x3",
float32 accuracy on the tensor cores). :func:`assume_sm_count` sets the device model where there is no GPU to
ask (the dry-run plan on fake tensors).

Importing this package never fails: without Triton, ``AVAILABLE`` is False and ``IMPORT_ERROR`` says why.
"""
try:
    import triton  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only where Triton is absent
    AVAILABLE = False
    IMPORT_ERROR = f"Triton is not installed ({e})"
else:
    AVAILABLE = True
    IMPORT_ERROR = None
    from ._common import ACCURATE, PRECISIONS, assume_sm_count
    from .gram import choose_splits, sym_gram
    from .newton_schulz import ns_step
    from .poly import sym_mul, sym_poly
    from .tall_apply import apply

    __all__ = ["apply", "sym_gram", "sym_poly", "sym_mul", "ns_step", "choose_splits", "assume_sm_count", "PRECISIONS",
               "ACCURATE"]
