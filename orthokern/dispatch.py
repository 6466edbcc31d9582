"""Which implementation computes a polar factor: the whole rule, in one file, read top to bottom.

1. The names: methods, modes, backends.
2. The table: every (method, backend) implementation, what it calls and when it can run (``why_not``).
3. ``backend=None``: the order backends are tried in, and where one that can run declines because another was
   measured faster (``prefer``).
4. ``method="auto"``: which method for which device, shape and mode; and on a GPU, which shape buckets of an
   optimiser step share one call on zero-padded matrices (``merge_buckets``).
5. :func:`resolve` and :func:`run`: the choice for one tall batch, and the typed error when nothing can run.

Everything is decided from shapes, dtypes, devices and an :class:`~orthokern._env.Env` (what is built and what
the machine has), never from tensor values, so a choice costs no device synchronisation and ``torch.compile``
sees a fixed graph. ``python -m orthokern.bench plan`` passes the Env of a GPU machine to run this same rule on a
CPU-only one. The measurements behind each rule are in ``bench/RESULTS.md`` and ``docs/design.md``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import pathlib
import sys
from typing import Callable, Optional

import torch

from . import _cost, _env, compiled, ns_schedule, reference
from ._env import Env
from .reference.scaling import compute_dtype

# 1. Names ------------------------------------------------------------------------------------------------------

METHODS = ("auto", "svd", "gram_eigh", "newton_schulz", "cholqr2")
MODES = ("accurate", "fast")
BACKENDS = ("torch", "cpp", "triton", "cuda")


class BackendUnavailable(RuntimeError):
    """The requested (method, backend) cannot run on this input here; the message says why."""


# 2. The table --------------------------------------------------------------------------------------------------
# An implementation takes a batch of *tall* matrices G (B, m, n), m >= n, of the caller's dtype and device (any
# strides) and returns the polar factor (B, m, n) in the same dtype. It owns its scaling, non-finite propagation
# and zero handling, so that a fused kernel can do them inside its passes over G.

WhyNot = Callable[[torch.Tensor, Env], Optional[str]]


@dataclasses.dataclass(frozen=True)
class Impl:
    method: str
    backend: str
    fn: Callable[..., torch.Tensor]  # fn(G, *, mode, rcond) -> O
    why_not: WhyNot  # None when it can run on G in this Env, else the reason
    # backend=None only: False where this implementation can run but the next one in the order is faster
    # (measured; an explicit backend= still gets it).
    prefer: Callable[[torch.Tensor, str], bool] = lambda G, mode: True


def _always(G: torch.Tensor, env: Env) -> Optional[str]:
    return None


def _cpp_why_not(G: torch.Tensor, env: Env) -> Optional[str]:
    if env.extension is not None:
        return env.extension
    if G.device.type != "cpu":
        return f"this backend runs cpu tensors, got a tensor on {G.device}"
    return None


def _load_triton_kernels():
    """``orthokern.triton_kernels``, also from a source checkout (where setup.py's package_dir mapping of the
    top-level ``triton_kernels/`` does not exist yet; never a top-level ``triton_kernels``: another project owns
    that name)."""
    name = "orthokern.triton_kernels"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:
            raise
    src = pathlib.Path(__file__).resolve().parent.parent / "triton_kernels"
    spec = importlib.util.spec_from_file_location(name, src / "__init__.py", submodule_search_locations=[str(src)])
    if spec is None:
        raise ModuleNotFoundError(f"{name} is missing from this installation", name=name)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[name]
        raise
    sys.modules["orthokern"].triton_kernels = mod
    return mod


_TRITON_POLAR = None


def triton_polar():
    """``orthokern.triton_kernels.polar`` (imports Triton). Loaded at import where Triton can run, so that nothing
    is imported while torch.compile traces polar(); elsewhere (the dry-run plan) on first use."""
    global _TRITON_POLAR
    if _TRITON_POLAR is None:
        _load_triton_kernels()
        _TRITON_POLAR = importlib.import_module("orthokern.triton_kernels.polar")
    return _TRITON_POLAR


def _triton_why_not(G: torch.Tensor, env: Env) -> Optional[str]:
    reason = env.triton_why_not(G.device)
    if reason is not None:
        return reason
    return triton_polar().why_not_shape(G)


def newton_schulz_side(B: int, m: int, n: int, mode: str, dtype: torch.dtype, device_type: str,
                       rcond: float = 1e-3) -> str:
    """Which side newton_schulz iterates on for a tall (B, m, n) batch: "gram" (float64 n x n products, one pass over
    G each for the Gram matrix and the result), "tall" (three passes over X per step), or "tall_gram" (accurate
    mode on a GPU: the tall side until ``ns_schedule.switch_step``, then the remaining steps on the n x n Gram matrix
    of X_k in float32 on the tensor cores and one apply: cheaper than the tall side's last steps once m is a few
    times n).

    On a GPU, whichever the cost model (``orthokern/_cost.py``, H100 spec rates) says is cheaper: in accurate mode
    the Gram side wins at n <= 64 (one fused launch for the whole n x n iteration), from n = 128 to 512 only for
    very tall-skinny batches, from m ~ 24n to 128n depending on n and the batch (the tall side's float32 steps run
    as three float16 tensor-core passes, "fp16x3"), and "tall_gram" from m ~ 4n to there; rarely in fast mode
    (bfloat16 tensor cores are fast).
    On a CPU the Gram side whenever m >= 2n: its n x n float64 work is below the tall side's float32 work there, and
    it is far more accurate. float64 input always iterates on the tall side: a Gram matrix squares the
    condition number, which float64 resolves for a float32 result but not to float64's own contract (the same reason
    as gram_eigh's float64 floor).
    """
    if dtype == torch.float64:
        return "tall"
    if device_type != "cuda":
        return "gram" if m >= 2 * n else "tall"
    costs = _newton_schulz_costs(B, m, n, mode, dtype, rcond)
    return min(costs, key=costs.get)


def _newton_schulz_costs(B: int, m: int, n: int, mode: str, dtype: torch.dtype, rcond: float, *,
                         waves: bool = False, fused: bool = True) -> dict[str, float]:
    """Modelled GPU seconds of each side newton_schulz can take on a tall (B, m, n) batch (``orthokern/_cost.py``,
    H100 spec rates): the tall side's products on the tensor cores (fast mode's bfloat16 steps; accurate mode's
    float32 steps as three float16 passes, "fp16x3", triton_kernels/_dot.py), the Gram side's n x n iteration in one
    fused launch where n allows and ``fused`` (backend "cuda"), and "tall_gram" where the schedule has a switch step.
    ``waves``: count whole waves of programs on the tall and tall-gram sides (``merge_buckets`` compares batches)."""
    steps = ns_schedule.steps_for(mode, rcond, n, compute_dtype(dtype))
    quintics = sum(1 for s in steps if s.c != 0.0)
    unit, elem, passes = ("tc16", 2, 1) if mode == "fast" else ("tc16", 4, 3)
    nxn = (compiled.gram_ns_factor_flops(B, n, [s.c for s in steps])
           if fused and n <= compiled.LIMITS["cuda_small_max_n"] else None)
    device = _cost.DEVICES["h100"]
    tall, gram = _cost.newton_schulz_sides(B, m, n, len(steps), quintics, elem, unit, device, passes, nxn, waves)
    costs = {"tall": tall, "gram": gram}
    switch = ns_schedule.switch_step(mode, rcond, n, compute_dtype(dtype))
    if switch is not None:
        costs["tall_gram"] = _cost.newton_schulz_tall_gram(B, m, n, steps, switch, elem, unit, device, passes,
                                                           waves)
    return costs


def _triton_gram_eigh(G: torch.Tensor, *, mode: str, rcond: float) -> torch.Tensor:
    return triton_polar().polar_gram_eigh(G, mode=mode, rcond=rcond, eigh=torch.linalg.eigh)


def _gram_side_factor(A: torch.Tensor, steps) -> torch.Tensor:
    return triton_polar().gram_side_factor(A, steps)


def _triton_newton_schulz(G: torch.Tensor, *, mode: str, rcond: float) -> torch.Tensor:
    side = newton_schulz_side(*G.shape, mode, G.dtype, G.device.type, rcond)
    return triton_polar().polar_newton_schulz(G, mode=mode, rcond=rcond, side=side, factor=_gram_side_factor)


def _cuda_why_not(G: torch.Tensor, env: Env) -> Optional[str]:
    reason = env.cuda_ops or _triton_why_not(G, env)
    if reason is not None:
        return reason
    if G.shape[-1] > compiled.LIMITS["cuda_small_max_n"]:
        return f"n = {G.shape[-1]} > {compiled.LIMITS['cuda_small_max_n']} is not supported by the fused CUDA kernel"
    return None


def _cuda_newton_schulz(G: torch.Tensor, *, mode: str, rcond: float) -> torch.Tensor:
    # The Gram side with the whole n x n iteration in one launch of the fused kernel (csrc/gram_ns_factor.h) instead
    # of ~4 batched-matmul launches per step.
    return triton_polar().polar_newton_schulz(G, mode=mode, rcond=rcond, side="gram", factor=compiled.gram_ns_factor)


def _torch_newton_schulz(G: torch.Tensor, *, mode: str, rcond: float) -> torch.Tensor:
    side = newton_schulz_side(*G.shape, mode, G.dtype, G.device.type, rcond)
    if side == "gram":
        return reference.newton_schulz.polar_newton_schulz_gram_side(G, mode=mode, rcond=rcond)
    switch = ns_schedule.switch_step(mode, rcond, G.shape[-1], compute_dtype(G.dtype)) if side == "tall_gram" else None
    return reference.polar_newton_schulz(G, mode=mode, rcond=rcond, switch=switch)


def _torch_cholqr2(G: torch.Tensor, *, mode: str, rcond: float) -> torch.Tensor:
    # The polar factor of the small R: LAPACK's SVD on a CPU; on a GPU batched float64 matmuls (torch's batched SVD
    # runs one matrix at a time there).
    small = reference.cholqr2.newton_schulz_small if G.is_cuda else reference.cholqr2.svd_small
    return reference.polar_cholqr2(G, mode=mode, rcond=rcond, small_polar=small)


# Fast mode on a CPU from this n up: the torch backend's float32 Gram matrix and LAPACK's float32 eigensolver
# (reference/gram_eigh.py) beat the compiled float64 op, whose own eigensolver and single call for the batch win
# below it (bench/RESULTS.md, CPU section, gram_eigh/fast against gram_eigh/accurate: the float32 path is slower on
# all five ResNet-50 shapes with n = 64, where single matrices and small batches dominate, and faster on all with
# n >= 128; of the two large batches at n <= 64 it was as fast on one and faster on the other).
CPU_FAST_FLOAT32_MIN_N = 65

# Otherwise the compiled CPU ops are preferred at every n. Measured on the 2-core CPU (float32, one thread, paired
# CPU time; bench/RESULTS.md): the compiled gram_eigh (one triangle of a float64 Gram matrix reading G once, its own
# eigensolver up to n = 128, the apply through sgemm) is faster than the torch reference at every n tried, 1 to 1024
# (least for square n = 1024, where LAPACK's eigensolver dominates both); the compiled cholqr2 (no stored Q1, LAPACK
# for the small factorisations) is faster up to n = 512 and even with it at square n = 1024.
_IMPLS = (
    Impl("svd", "torch", reference.polar_svd, _always),
    Impl("gram_eigh", "torch", reference.polar_gram_eigh, _always),
    Impl("gram_eigh", "cpp", compiled.gram_eigh, _cpp_why_not,
         prefer=lambda G, mode: (mode == "accurate" or G.dtype == torch.float64
                                 or G.shape[-1] < CPU_FAST_FLOAT32_MIN_N)),
    Impl("gram_eigh", "triton", _triton_gram_eigh, _triton_why_not),
    Impl("newton_schulz", "torch", _torch_newton_schulz, _always),
    Impl("newton_schulz", "triton", _triton_newton_schulz, _triton_why_not),
    Impl("newton_schulz", "cuda", _cuda_newton_schulz, _cuda_why_not,
         prefer=lambda G, mode: newton_schulz_side(*G.shape, mode, G.dtype, "cuda") == "gram"),
    Impl("cholqr2", "torch", _torch_cholqr2, _always),
    Impl("cholqr2", "cpp", compiled.cholqr2, _cpp_why_not),
)
TABLE: dict[tuple[str, str], Impl] = {(i.method, i.backend): i for i in _IMPLS}


# 3. backend=None -------------------------------------------------------------------------------------------------
# Specialised kernels first, the pure-torch reference last (it always runs). Triton is never picked for CPU
# tensors: under TRITON_INTERPRET=1 it can run them, but only to test the kernels.
ORDER = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpp", "torch")}


def implementations(method: str) -> list[Impl]:
    """Every implementation of ``method``, in BACKENDS order."""
    return [TABLE[(method, b)] for b in BACKENDS if (method, b) in TABLE]


# 4. rcond floors and method="auto" --------------------------------------------------------------------------------
# The smallest rcond at which each method keeps the accuracy contract, per compute precision (float32 also serves
# bfloat16 and float16 inputs). A smaller rcond, 0 included, is raised to the floor: singular values below
# floor * s_max are then treated as zero (their directions go into [0, 1 + tol], as the contract allows for the
# insignificant ones). Measured by sweeping rcond on spectra whose smallest significant value sits just above it,
# rank-deficient ones and clusters at the threshold (tests/test_rcond_floor.py keeps them): each floor leaves
# E <= E_BOUND / 5 and ||O||_2 - 1 <= NORM_SLACK / 2 (orthokern/testing.py). Why each is where it is:
# * svd: a float64 SVD whatever the input, no squaring: limited only by float64.
# * gram_eigh: the float64 Gram squares the condition number (float64: ||O||_2 - 1 ~ 3e-16 / rcond^2, above the
#   1e-10 slack below 3e-3), and the float32 apply amplifies rounding by 1 / rcond (||O||_2 - 1 ~ 5e-8 / rcond).
# * newton_schulz: the float32 iteration (E ~ 1e-8 / rcond; 1e-1 at 3e-5); float64 to 1e-7.
# * cholqr2: float64 throughout, nothing squared in the significant directions.
RCOND_FLOOR: dict[tuple[str, torch.dtype], float] = {
    ("svd", torch.float32): 1e-10, ("svd", torch.float64): 1e-12,
    ("gram_eigh", torch.float32): 1e-3, ("gram_eigh", torch.float64): 3e-3,
    ("newton_schulz", torch.float32): 1e-4, ("newton_schulz", torch.float64): 1e-7,
    ("cholqr2", torch.float32): 1e-8, ("cholqr2", torch.float64): 1e-6,
}


def rcond_floor(method: str, dtype: torch.dtype) -> float:
    """The smallest rcond ``method`` (not "auto") keeps the contract at for inputs of ``dtype``."""
    return RCOND_FLOOR[(method, torch.float64 if dtype == torch.float64 else torch.float32)]


def effective_rcond(method: str, rcond: float, dtype: torch.dtype) -> float:
    """The rcond ``method`` runs with: the requested one, raised to the method's floor."""
    return max(rcond, rcond_floor(method, dtype))


def choose_method(m: int, n: int, device_type: str, mode: str, rcond: float = 1e-3,
                  dtype: torch.dtype = torch.float32) -> str:
    """The method ``auto`` runs on a tall batch of m x n matrices (m >= n).

    * CPU: ``gram_eigh``. LAPACK's eigensolver is fast at every n a gradient has, the Gram matrix costs one pass
      over G, and the compiled kernel folds everything else into the n x n side.
    * GPU: ``newton_schulz``, on the side the cost model picks (``newton_schulz_side``): batched matmuls on tensor
      cores and no eigensolver, which on a GPU is the trap (torch's batched eigh runs one matrix at a time above
      n = 32; a one-block-per-matrix Jacobi is latency-bound).

    Below the chosen method's rcond floor, ``cholqr2`` (float64 throughout, the lowest floor of the fast methods)
    serves instead, so that rcond=0 means what the working precision can resolve.
    """
    method = "gram_eigh" if device_type != "cuda" else "newton_schulz"
    if rcond < rcond_floor(method, dtype):
        return "cholqr2"
    return method


def merge_buckets(shapes: list[tuple[int, int, int]], *, method: str, mode: str, rcond: float,
                  backend: Optional[str], dtype: torch.dtype, device_type: str) -> list[list[int]]:
    """Which tall (B, m, n) shape buckets of one polar call each (``optim.batched.by_shape``) run as one call
    instead, on their matrices zero-padded to the largest m and n of the group: groups of indices into ``shapes``.

    Zero rows and columns change nothing in a Newton–Schulz iteration (A = X^T X gains a zero block, every product
    keeps the padding zero, the scale and the normalisation see the same numbers), so the padded call gives each
    matrix its own result in its first m rows and n columns. It pays where a batch alone leaves most of the GPU idle
    in each of its launches: a ResNet-50 step's three n = 128 buckets (7 x 512, 4 x 1152, 1 x 256 rows) or its fc
    layer (n = 1000) beside the 2048 x 1024 layer. Only on a GPU, for the Newton–Schulz path, between buckets with the
    same schedule (``ns_schedule``: the same power-of-two bucket of n), and only where the cost model says the padded
    call is faster than the separate ones: each call modelled on the side it would take (``newton_schulz_side``),
    the tall and tall-gram sides with whole waves of programs on an H100 (``_newton_schulz_costs``). Greedy: the
    largest buckets first, each joining the group it saves most in, or starting its own. Decided from shapes alone.
    """
    if not _merges(method, mode, rcond, backend, dtype, device_type):
        return [[i] for i in range(len(shapes))]
    # Every optimiser step asks again with the same shapes: the greedy search is kept (a plain dict, as
    # ns_schedule's schedules, for dynamo's sake).
    key = (tuple(shapes), method, mode, rcond, backend, dtype, device_type, current_env())
    if key not in _MERGES:
        _MERGES[key] = tuple(tuple(g) for g in _merge_groups(list(shapes), method, mode, rcond, backend, dtype))
    return [list(g) for g in _MERGES[key]]


_MERGES: dict[tuple, tuple[tuple[int, ...], ...]] = {}


def _merge_groups(shapes: list[tuple[int, int, int]], method: str, mode: str, rcond: float, backend: Optional[str],
                  dtype: torch.dtype) -> list[list[int]]:
    ns_rcond = effective_rcond("newton_schulz", rcond, dtype)
    # backend=None runs the Gram side's n x n iteration in the fused CUDA kernel where it can (``_cuda_newton_schulz``)
    fused = backend is None and current_env().cuda_ops is None

    def seconds(members: list[int]) -> float:
        B, m, n = (sum(shapes[i][0] for i in members), max(shapes[i][1] for i in members),
                   max(shapes[i][2] for i in members))
        side = newton_schulz_side(B, m, n, mode, dtype, "cuda", ns_rcond)  # the side the call would take
        return _newton_schulz_costs(B, m, n, mode, dtype, ns_rcond, waves=True, fused=fused)[side]

    alone: list[list[int]] = []
    groups: list[tuple[int, list[int]]] = []  # (power-of-two bucket of n, members)
    for i in sorted(range(len(shapes)), key=lambda i: -shapes[i][0] * shapes[i][1] * shapes[i][2]):
        B, m, n = shapes[i]
        if method == "auto" and choose_method(m, n, "cuda", mode, rcond, dtype) != "newton_schulz":
            alone.append([i])
            continue
        key = ns_schedule.n_bucket(n)
        best, gain = None, 0.0
        for k, members in groups:
            if k == key:
                saved = seconds(members) + seconds([i]) - seconds(members + [i])
                if saved > gain:
                    best, gain = members, saved
        if best is None:
            groups.append((key, [i]))
        else:
            best.append(i)
    return sorted(alone + [sorted(members) for _, members in groups], key=min)


def _merges(method: str, mode: str, rcond: float, backend: Optional[str], dtype: torch.dtype,
            device_type: str) -> bool:
    """Whether ``merge_buckets`` may group buckets of this call: the Triton Newton–Schulz path on a GPU."""
    return (device_type == "cuda" and method in ("auto", "newton_schulz") and backend in (None, "triton")
            and dtype in (torch.float32, torch.bfloat16, torch.float16)
            and current_env().triton_why_not(torch.device("cuda")) is None)


# Breakdown guard of auto (eager, CPU): every column of O must have norm <= 1 + slack, since a column norm bounds
# ||O||_2 from below (a direction amplified past the orthonormal bound shows in the columns it maps to), and the
# result must be finite for finite input. One reduction over O (the compiled column_norm_max streams O once; torch's
# vector_norm over dim -2 took several times longer); a broken matrix (never seen on any input tried: the floors
# keep every method bounded) is recomputed with cholqr2. On a GPU reading the verdict would synchronise with
# the device, so there the guard does not run; the GPU methods are bounded by construction (polynomial iterations
# map [0, 1] into [0, 1 + tol]).
_GUARD_SLACK = 1e-2


def broken(G: torch.Tensor, O: torch.Tensor) -> torch.Tensor:
    """(B,) bool: matrices whose result shows a breakdown (a column longer than 1 + slack, or NaN from finite G)."""
    if O.device.type == "cpu" and compiled.REGISTERED:
        col = compiled.column_norm_max(O)
    else:
        col = torch.linalg.vector_norm(O, dim=-2, dtype=compute_dtype(O.dtype)).amax(-1)
    suspect = ~(col <= 1.0 + _GUARD_SLACK)  # NaN compares False: caught here
    if bool(suspect.any()):
        suspect &= torch.isfinite(G).flatten(1).all(-1)
    return suspect


# 5. resolve and run ------------------------------------------------------------------------------------------------

# The environment the dispatch decides from: the machine's (_env.CURRENT), unless a caller stands in another one for
# a while (the dry-run plan: a GPU machine's, on fake CUDA tensors; see ``assume``).
_ASSUMED: list[Env] = []


@contextlib.contextmanager
def assume(env: Env):
    """Within the block, decide as if on a machine described by ``env`` (for ``python -m orthokern.bench plan``)."""
    _ASSUMED.append(env)
    try:
        yield env
    finally:
        _ASSUMED.pop()


def current_env() -> Env:
    return _ASSUMED[-1] if _ASSUMED else _env.CURRENT


def resolve(method: str, backend: Optional[str], G: torch.Tensor, env: Optional[Env] = None,
            mode: str = "accurate") -> Impl:
    """The implementation of ``method`` (not "auto") to run on the tall batch ``G``.

    ``backend=None`` takes the first implementation in :data:`ORDER` that can run and is preferred; a named backend
    that cannot run raises :class:`BackendUnavailable` saying why.
    """
    env = env or current_env()
    if backend is not None:
        impl = TABLE.get((method, backend))
        if impl is None:
            have = [i.backend for i in implementations(method)]
            raise BackendUnavailable(f"polar: method={method!r} has no backend={backend!r} implementation "
                                     f"(it has: {have})")
        reason = impl.why_not(G, env)
        if reason is not None:
            raise BackendUnavailable(f"polar: backend={backend!r} cannot run method={method!r} here: {reason}")
        return impl
    reasons = []
    for b in ORDER["cuda" if G.device.type == "cuda" else "cpu"]:
        impl = TABLE.get((method, b))
        if impl is None:
            continue
        reason = impl.why_not(G, env)
        if reason is None and impl.prefer(G, mode):
            return impl
        reasons.append(f"{b}: {reason or 'slower than the next backend here'}")
    raise BackendUnavailable(f"polar: no implementation of method={method!r} can run here ({'; '.join(reasons)})")


def method_and_rcond(G: torch.Tensor, method: str, mode: str, rcond: float) -> tuple[str, float]:
    """(the method that runs, the rcond it runs with) for the tall batch G."""
    if method == "auto":
        method = choose_method(G.shape[-2], G.shape[-1], G.device.type, mode, rcond, G.dtype)
    return method, effective_rcond(method, rcond, G.dtype)


def run(G: torch.Tensor, method: str, mode: str, rcond: float, backend: Optional[str],
        env: Optional[Env] = None) -> torch.Tensor:
    """The polar factor of the tall batch G (B, m, n) by ``method`` ("auto" included) on ``backend``."""
    chosen, rc = method_and_rcond(G, method, mode, rcond)
    O = resolve(chosen, backend, G, env, mode).fn(G, mode=mode, rcond=rc)
    if method != "auto" or G.is_cuda or torch.compiler.is_compiling():
        return O
    bad = broken(G, O)
    if bool(bad.any()):
        idx = bad.nonzero().squeeze(1)
        O = O.clone()
        O[idx] = resolve("cholqr2", None, G[idx]).fn(
            G[idx], mode="accurate", rcond=effective_rcond("cholqr2", rcond, G.dtype))
    return O


# What can run here ------------------------------------------------------------------------------------------------

def available_backends(device: Optional[torch.device | str] = None) -> list[str]:
    """Backends that can run on ``device`` (default: CUDA when present, else CPU), in BACKENDS order."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    probe = torch.empty(0, 4, 2, device=device)
    return [b for b in BACKENDS if any(i.why_not(probe, _env.CURRENT) is None for i in _IMPLS if i.backend == b)]


def info() -> dict:
    """A summary of the build and of what can run here (the extension, CUDA, Triton, the backends per device)."""
    env = _env.CURRENT
    d = {
        "torch": torch.__version__,
        "cuda_available": env.cuda_available,
        "extension": "loaded" if env.extension is None else env.extension,
        "extension_cuda": bool(getattr(_env.EXTENSION, "WITH_CUDA", False)),
        "triton": env.triton or importlib.import_module("triton").__version__,
        "triton_interpret": env.interpret,
        "backends_cpu": available_backends("cpu"),
    }
    if env.cuda_available:
        d["backends_cuda"] = available_backends("cuda")
    d["implementations"] = sorted(f"{m}/{b}" for (m, b) in TABLE)
    return d


# Where Triton can run, load its kernels now (not at the first polar() call, which may be inside torch.compile's
# trace: dynamo cannot trace imports).
if any(_env.CURRENT.triton_why_not(torch.device(d)) is None for d in ("cuda", "cpu")):
    triton_polar()
