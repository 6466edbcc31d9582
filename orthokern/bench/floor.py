"""The floor: the least time a case could take on this device, from measured bandwidth and matmul rates.

Memory floor: G read once plus O written once, at the measured device-to-device copy bandwidth. Compute
floor: the method's matmul flops at the measured matmul rate of the dtype it computes in. A method's
"floor ratio" is time / max(memory floor, compute floor): 1 would be perfect, and a large value says how
much a kernel leaves on the table. Only measured on a GPU (a shared CPU's rates are not stable enough to be
worth a ratio); elsewhere the ratio is reported as n/a.
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
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:
        try:
            return do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e-3
        except Exception:  # noqa: BLE001 (a Triton without a working driver: time it ourselves)
            pass
    return time_fn(fn, device=device, rounds=20, warmup=3, min_round_s=5e-3).median


def _copy_rate(device: torch.device, mib: int) -> float:
    """Bytes read plus written per second by a device-to-device copy of ``mib`` MiB."""
    src = torch.empty(mib << 20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() / _median_seconds(lambda: dst.copy_(src), device)


def _matmul_rate(device: torch.device, dtype: torch.dtype, n: int) -> float:
    """flop/s of an n x n matmul in ``dtype``."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return 2 * n**3 / _median_seconds(lambda: a @ b, device)


def measure_rates(device: torch.device | str, copy_mib: int = 1024, matmul_n: int = 8192) -> Optional[DeviceRates]:
    """Copy bandwidth and matmul rates of a CUDA device; None on any other device."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    copy_rate = _copy_rate(device, copy_mib)
    rates = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        n = matmul_n if dtype != torch.float64 else matmul_n // 2
        rates[str(dtype).replace("torch.", "")] = _matmul_rate(device, dtype, n)
    torch.cuda.empty_cache()
    return DeviceRates(copy_rate, rates)


def _compute_dtype(dtype: torch.dtype) -> str:
    return str(compute_dtype(dtype)).removeprefix("torch.")


def method_flops(method: str, mode: str, case: Case, device_type: str = "cuda") -> list[tuple[float, str]]:
    """[(matmul flops, dtype name they run in), ...] of one call of ``method`` on the case's batch.

    Tall orientation m >= n. Counts the O(m n^2) and O(n^3) matmul terms; small factorisations (eigh / SVD /
    Cholesky of n x n blocks) are counted at their LAPACK flop counts as if they ran at matmul rate, which
    only makes the floor lower.
    """
    B, m, n = case.batch, max(case.m, case.n), min(case.m, case.n)
    mn2, n3 = float(B) * m * n * n, float(B) * n**3
    cdt = _compute_dtype(case.dtype)
    if method == "auto":
        method = dispatch.choose_method(m, n, device_type, mode)
    if method in ("svd", "torch_svd", "torch_svd_tall"):
        # R-SVD with U_1 and V (Golub & Van Loan, table 8.6.1): 6 m n^2 + 20 n^3, plus U V^T.
        return [(6 * mn2 + 20 * n3 + 2 * mn2, cdt)]
    if method == "gram_eigh":
        # Gram (one triangle) in float64 for the accurate mode, eigh (~9 n^3) and W diag W^T (2 n^3) likewise,
        # then the apply G W' (2 m n^2) in the compute dtype.
        gram = "float64" if mode == "accurate" else cdt
        return [(mn2 + 11 * n3, gram), (2 * mn2, cdt)]
    if method == "cholqr2":
        # two (Gram + triangular solve), the n x n SVD (~22 n^3) and Q times the small polar, all float64.
        return [(2 * (mn2 + mn2) + 22 * n3 + 2 * mn2, "float64")]
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


def floor_seconds(rates: DeviceRates, method: str, mode: str, case: Case) -> float:
    elem = torch.empty((), dtype=case.dtype).element_size()
    mem = 2.0 * case.batch * case.m * case.n * elem / rates.copy_bytes_per_s
    compute = sum(f / rates.matmul_flops_per_s[dt] for f, dt in method_flops(method, mode, case))
    return max(mem, compute)
