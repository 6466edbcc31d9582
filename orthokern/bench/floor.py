"""The floor: the least time a case could take on this device, from measured bandwidth and matmul rates.

Memory floor: G read once plus O written once, at the measured device-to-device copy bandwidth. Compute
floor: the method's matmul flops at the measured matmul rate of the dtype it computes in. A method's
"floor ratio" is time / max(memory floor, compute floor): 1 would be perfect, and a large value says how
much a kernel leaves on the table.

The rates are measured at the start of the run that uses them, on the same device: on a GPU, a 1 GiB copy and
8192^2 matmuls; on a CPU, with the run's thread count (one by default), a copy far larger than the last-level
cache and 1024^2 matmuls through the BLAS torch links. A shared CPU's rates move with its load, which the report
gives beside them; the ratio is as good as that.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from .. import dispatch, ns_schedule
from .._polar import DEFAULT_RCOND
from ..reference.scaling import compute_dtype
from .suites import Case
from .timing import time_fn


@dataclasses.dataclass
class DeviceRates:
    copy_bytes_per_s: float  # bytes read + written per second
    matmul_flops_per_s: dict[str, float]  # dtype name -> flop/s

    def as_dict(self) -> dict:
        return {"copy_GBps": self.copy_bytes_per_s / 1e9,
                "matmul_TFLOPs": {k: v / 1e12 for k, v in self.matmul_flops_per_s.items()}}


def _median_seconds(fn, device) -> float:
    do_bench = None
    if device.type == "cuda":
        try:
            from triton.testing import do_bench
        except ImportError:
            pass
    if do_bench is not None:
        try:
            return do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e-3
        except Exception:  # noqa: BLE001 (a Triton without a working driver: time it ourselves)
            pass
    return time_fn(fn, device=device, rounds=20, warmup=3, min_round_s=5e-3).median


def _copy_rate(device: torch.device, mib: int) -> float:
    """Bytes read plus written per second by a device-to-device copy of ``mib`` MiB."""
    src = torch.zeros(mib << 20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() / _median_seconds(lambda: dst.copy_(src), device)


def _matmul_rate(device: torch.device, dtype: torch.dtype, n: int) -> float:
    """flop/s of an n x n matmul in ``dtype``."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return 2 * n**3 / _median_seconds(lambda: a @ b, device)


# Per device type: MiB copied and the matmul size per dtype. A CPU's copy must be far larger than its last-level
# cache (else it measures the cache); 1024^2 reaches a CPU BLAS's steady rate, and bfloat16, which a CPU without
# bfloat16 units runs about a hundred times slower than float32, is measured smaller.
MEASURE_SIZES = {"cuda": (1024, {"float32": 8192, "bfloat16": 8192, "float64": 4096}),
                 "cpu": (256, {"float32": 1024, "bfloat16": 256, "float64": 1024})}


def measure_rates(device: torch.device | str, sizes: Optional[tuple[int, dict[str, int]]] = None
                  ) -> Optional[DeviceRates]:
    """Copy bandwidth and matmul rates (float32, bfloat16, float64) of a CUDA device or the CPU, at the current
    torch thread count; None on any other device. ``sizes``: (copy MiB, {dtype name: matmul n}), by default
    ``MEASURE_SIZES`` of the device type."""
    device = torch.device(device)
    if device.type not in MEASURE_SIZES:
        return None
    copy_mib, matmul_n = sizes or MEASURE_SIZES[device.type]
    rates = {name: _matmul_rate(device, getattr(torch, name), n) for name, n in matmul_n.items()}
    copy_rate = _copy_rate(device, copy_mib)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return DeviceRates(copy_rate, rates)


def _compute_dtype(dtype: torch.dtype) -> str:
    return str(compute_dtype(dtype)).removeprefix("torch.")


# The part of a dense n x n factorisation's flops (in units of n^3) that no input lets it skip: for a symmetric
# eigensolver with eigenvectors, the reduction to tridiagonal form (4/3) and the back-transformation of the
# eigenvectors (2); for an SVD with both sets of vectors, the reduction to bidiagonal form (8/3) and both
# back-transformations (4). The tridiagonal and bidiagonal solvers in between are counted as free: on decaying spectra
# divide and conquer deflates most of their work (LAPACK's nominal 9 n^3 for eigh overstated the floor: a measured
# gram_eigh ran at 0.96x of a floor that counted it).
EIGH_N3 = 4.0 / 3.0 + 2.0
SVD_N3 = 8.0 / 3.0 + 4.0


def method_flops(method: str, mode: str, case: Case, device_type: str = "cuda") -> list[tuple[float, str]]:
    """[(matmul flops, dtype name they run in), ...] of one call of ``method`` on the case's batch.

    Tall orientation m >= n. Counts the O(m n^2) and O(n^3) matmul terms; small factorisations (eigh / SVD /
    Cholesky of n x n blocks) count only the flops no input lets them skip (EIGH_N3, SVD_N3), as if they ran at
    matmul rate: both only make the floor lower.
    """
    B, m, n = case.batch, max(case.m, case.n), min(case.m, case.n)
    mn2, n3 = float(B) * m * n * n, float(B) * n**3
    cdt = _compute_dtype(case.dtype)
    if method == "auto":
        method = dispatch.choose_method(m, n, device_type, mode)
    if method in ("svd", "torch_svd", "torch_svd_tall"):
        # R-SVD: the QR of G (2 m n^2), the SVD of R, Q times U_R V_R^T (2 m n^2) and U_R V_R^T (2 n^3).
        return [(4 * mn2 + (SVD_N3 + 2) * n3, cdt)]
    if method == "gram_eigh":
        # Gram (one triangle) in float64 in either mode (reference/gram_eigh.py says why), eigh and
        # W diag W^T (one triangle, n^3) likewise, then the apply G W' (2 m n^2) in the compute dtype.
        return [(mn2 + (EIGH_N3 + 1) * n3, "float64"), (2 * mn2, cdt)]
    if method == "cholqr2":
        # two (Gram + triangular solve), the n x n SVD and Q times the small polar, all float64.
        return [(2 * (mn2 + mn2) + SVD_N3 * n3 + 2 * mn2, "float64")]
    if method == "newton_schulz":
        steps = ns_schedule.steps_for(mode, DEFAULT_RCOND, n, compute_dtype(case.dtype))
        low = "bfloat16" if device_type == "cuda" else cdt
        # per step: A = X^T X (2 m n^2), A^2 (2 n^3), X B (2 m n^2); the cubic has no A^2.
        terms = [(4 * mn2 + (2 * n3 if s.c != 0.0 else 0.0), low if s.precision == "low" else cdt) for s in steps]
        return terms + [(2 * n3, cdt)]  # the normalisation's A^2
    if method in ("muon_ns5", "muon_ns5_batched"):
        return [(5 * (4 * mn2 + 2 * n3), "bfloat16")]
    if method == "polar_express":
        dt = "bfloat16" if case.dtype == torch.bfloat16 else "float32"
        return [(len(ns_schedule.POLAR_EXPRESS) * (4 * mn2 + 2 * n3), dt)]
    raise ValueError(f"method_flops: unknown method {method!r}")


def floor_seconds(rates: DeviceRates, method: str, mode: str, case: Case, device_type: str = "cuda") -> float:
    elem = torch.empty((), dtype=case.dtype).element_size()
    mem = 2.0 * case.batch * case.m * case.n * elem / rates.copy_bytes_per_s
    compute = sum(f / rates.matmul_flops_per_s[dt] for f, dt in method_flops(method, mode, case, device_type))
    return max(mem, compute)
