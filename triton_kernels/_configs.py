"""Autotuning: a few configurations per (kernel family, operand class, n class), keys that name every
specialisation, and decisions cached on disk.

* **Candidates.** Each autotuned kernel is given the union of its table below, and its early-prune hook keeps
  the candidates of the launch's operand class (:func:`operand_class`: the dtype its dots run in and, for
  float32, the precision) and n class (``_common.n_class``). Most classes have one candidate: the launch then
  compiles one config and benchmarks nothing. Only n > 256, where the tile shape of the n x n and apply
  products matters most, offers two. Every entry compiles for sm_90 without register spills and within the
  shared memory of an H100 (bench/check_triton_configs.py checks each one, with Triton 3.6 and 3.9; its test
  checks a subset).
* **Keys.** Every kernel's key lists its n class and every constexpr that changes the compiled code (HAS_SCALE,
  PARTIAL, ACC_F64, PRECISION); Triton appends the dtypes of the tensor arguments itself. (The apply's residual is
  a runtime branch in its epilogue, not a specialisation: tall_apply.py.)
* **Disk cache.** ``cache_results=True`` (Triton 3.6 and 3.9 both have it): a decision is stored in Triton's
  cache directory, keyed by Triton's version, the target (backend, compute capability, ptxas version), the kernel
  source, the key and the candidate configs, so later processes on a GPU of the same compute capability
  benchmark nothing. (The device name is not in Triton's key: an H100 and an H200, both sm_90, share decisions.)
* **The interpreter** (``TRITON_INTERPRET=1``) gets one tiny config per kernel: no benchmarking through the slow
  interpreter, and Triton skips its disk cache there.

:func:`tune_key` says, for a launch, which key it hits and how many configs that key compiles on a first call
(the dry-run plan's count).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton

from .._env import interpreting
from ._common import KernelCall, n_class


def _c(num_warps: int, num_stages: int, **blocks) -> triton.Config:
    return triton.Config(blocks, num_warps=num_warps, num_stages=num_stages)


# Operand classes: what a kernel's dots run on.
#   "f16": bfloat16/float16 operands (16-bit tensor cores, fp32 accumulation);
#   "tc32": float32 operands on TF32 tensor cores ("tf32", "tf32x3", "bf16x3": split operands held twice);
#   "f16x3": float32 operands as three float16 passes ("fp16x3": split operands and a second accumulator);
#   "fma32": float32 operands, "ieee" (CUDA-core FMA: small tiles, or the accumulator spills);
#   "f64": float64 dots (DMMA; tiles of 8-byte values).
CLASSES = ("f16", "tc32", "f16x3", "fma32", "f64")


def operand_class(dot_dtype: torch.dtype, precision: str) -> str:
    if dot_dtype == torch.float64:
        return "f64"
    if dot_dtype in (torch.bfloat16, torch.float16):
        return "f16"
    if precision == "fp16x3":
        return "f16x3"
    return "fma32" if precision == "ieee" else "tc32"


# TABLES[family][operand class][n class] -> candidates. n classes are 16, 32, ..., _common.N_CLASS_CAP; a class
# missing from a table uses the next smaller one listed. Two candidates only where n > 256 (the class 512), for the
# products whose tile shape matters most there; one elsewhere, so that a first step compiles about one config
# per key (bench/check_triton_configs.py --resnet50 counts them).
TABLES: dict[str, dict[str, dict[int, list[triton.Config]]]] = {
    # Symmetric Gram: a BLOCK_N x BLOCK_N tile of G^T G per program, streaming BLOCK_K rows of G at a time. At most
    # 64 wide: gram.choose_splits counts 64-wide tiles when it decides how far to split.
    "gram": {
        "f16": {
            16: [_c(4, 3, BLOCK_N=16, BLOCK_K=64)],
            32: [_c(4, 3, BLOCK_N=32, BLOCK_K=32)],  # BLOCK_K=64 spilled 24 bytes storing a 16-bit result
            64: [_c(4, 3, BLOCK_N=64, BLOCK_K=64)],
        },
        "tc32": {
            # Small spills (8-28 bytes, ptxas capping registers at 72-80) moved with stages and BLOCK_K between
            # Triton 3.6 and 3.9; these compile clean on both
            16: [_c(4, 3, BLOCK_N=16, BLOCK_K=16)],
            32: [_c(4, 2, BLOCK_N=32, BLOCK_K=16)],
            64: [_c(4, 3, BLOCK_N=64, BLOCK_K=32)],
        },
        "f16x3": {
            # the tc32 tiles: the second accumulator fits beside them (no spills on Triton 3.6 or 3.9)
            16: [_c(4, 3, BLOCK_N=16, BLOCK_K=16)],
            32: [_c(4, 2, BLOCK_N=32, BLOCK_K=16)],
            64: [_c(4, 3, BLOCK_N=64, BLOCK_K=32)],
        },
        "fma32": {
            16: [_c(4, 2, BLOCK_N=16, BLOCK_K=16)],
            32: [_c(4, 2, BLOCK_N=32, BLOCK_K=16)],
            # 32 wide at every n: a 64 x 64 FMA accumulator spilled (40 bytes over 4 warps, 16 over 8 on Triton 3.9)
            64: [_c(4, 2, BLOCK_N=32, BLOCK_K=16)],
        },
        "f64": {
            16: [_c(4, 2, BLOCK_N=16, BLOCK_K=16)],
            32: [_c(4, 3, BLOCK_N=32, BLOCK_K=16)],
            # 64 x 16 spilled 8-16 bytes over 4 warps on Triton 3.6 and over 8 on Triton 3.9 (ptxas capping
            # registers at 128 / 80); 64 x 32 over 8 warps compiles clean on both
            64: [_c(8, 3, BLOCK_N=64, BLOCK_K=32)],
        },
    },
    # b A + c A^2: a BLOCK_N x BLOCK_N tile of A @ A per program, BLOCK_K columns of A at a time.
    "poly": {
        "f16": {
            16: [_c(4, 3, BLOCK_N=16, BLOCK_K=16)],
            32: [_c(4, 3, BLOCK_N=32, BLOCK_K=32)],
            64: [_c(4, 3, BLOCK_N=64, BLOCK_K=64)],
            512: [_c(8, 3, BLOCK_N=128, BLOCK_K=64), _c(4, 4, BLOCK_N=64, BLOCK_K=64)],
        },
        "tc32": {
            16: [_c(4, 3, BLOCK_N=16, BLOCK_K=16)],
            32: [_c(4, 3, BLOCK_N=32, BLOCK_K=32)],
            64: [_c(4, 3, BLOCK_N=64, BLOCK_K=32)],
            512: [_c(8, 3, BLOCK_N=128, BLOCK_K=32), _c(4, 3, BLOCK_N=64, BLOCK_K=32)],
        },
        "f16x3": {
            16: [_c(4, 3, BLOCK_N=16, BLOCK_K=16)],
            32: [_c(4, 3, BLOCK_N=32, BLOCK_K=32)],
            64: [_c(4, 3, BLOCK_N=64, BLOCK_K=32)],
            # 128 x 128 tiles spilled 40 bytes on Triton 3.6 (two 128 x 128 accumulators), whatever BLOCK_K
            512: [_c(4, 3, BLOCK_N=64, BLOCK_K=32), _c(8, 3, BLOCK_N=64, BLOCK_K=64)],
        },
        "fma32": {
            16: [_c(4, 2, BLOCK_N=16, BLOCK_K=16)],
            32: [_c(4, 2, BLOCK_N=32, BLOCK_K=16)],
            64: [_c(4, 2, BLOCK_N=64, BLOCK_K=16)],
        },
        "f64": {
            16: [_c(4, 2, BLOCK_N=16, BLOCK_K=16)],
            32: [_c(4, 3, BLOCK_N=32, BLOCK_K=16)],
            64: [_c(4, 3, BLOCK_N=64, BLOCK_K=16)],
            512: [_c(4, 3, BLOCK_N=64, BLOCK_K=16), _c(8, 3, BLOCK_N=64, BLOCK_K=32)],
        },
    },
    # alpha G + beta (s G) @ Mat: a BLOCK_M x BLOCK_N tile of the tall result per program, BLOCK_K of n at a time.
    "apply": {
        "f16": {
            16: [_c(4, 3, BLOCK_M=128, BLOCK_N=16, BLOCK_K=16)],
            32: [_c(4, 3, BLOCK_M=128, BLOCK_N=32, BLOCK_K=32)],
            64: [_c(4, 3, BLOCK_M=128, BLOCK_N=64, BLOCK_K=64)],
            128: [_c(8, 3, BLOCK_M=128, BLOCK_N=128, BLOCK_K=64)],
            512: [_c(8, 3, BLOCK_M=128, BLOCK_N=256, BLOCK_K=64), _c(8, 3, BLOCK_M=128, BLOCK_N=128, BLOCK_K=64)],
        },
        "tc32": {
            16: [_c(4, 3, BLOCK_M=128, BLOCK_N=16, BLOCK_K=16)],
            32: [_c(4, 3, BLOCK_M=128, BLOCK_N=32, BLOCK_K=32)],
            # 8 warps: float32 operands split hi/lo in registers (and a 16-bit or fp64 G converted) took 4 warps to
            # 250-255 registers per thread at 128 x 64 and 64 x 128
            64: [_c(8, 3, BLOCK_M=128, BLOCK_N=64, BLOCK_K=32)],
            128: [_c(8, 3, BLOCK_M=128, BLOCK_N=128, BLOCK_K=32)],
            512: [_c(8, 3, BLOCK_M=128, BLOCK_N=128, BLOCK_K=32), _c(8, 3, BLOCK_M=128, BLOCK_N=64, BLOCK_K=32)],
        },
        "f16x3": {
            16: [_c(4, 3, BLOCK_M=128, BLOCK_N=16, BLOCK_K=16)],
            32: [_c(4, 3, BLOCK_M=128, BLOCK_N=32, BLOCK_K=32)],
            64: [_c(8, 3, BLOCK_M=128, BLOCK_N=64, BLOCK_K=32)],
            # 128 x 128 tiles spilled 24-28 bytes on Triton 3.6 with a float64 G converted in registers, whatever
            # BLOCK_K (two 128 x 128 accumulators)
            128: [_c(8, 3, BLOCK_M=128, BLOCK_N=64, BLOCK_K=32)],
            512: [_c(8, 3, BLOCK_M=128, BLOCK_N=64, BLOCK_K=32), _c(8, 3, BLOCK_M=64, BLOCK_N=128, BLOCK_K=32)],
        },
        "fma32": {
            16: [_c(4, 2, BLOCK_M=64, BLOCK_N=16, BLOCK_K=16)],
            # 32 wide at every n: 64 x 64 spilled 8 bytes with a float64 G on Triton 3.6
            32: [_c(4, 2, BLOCK_M=64, BLOCK_N=32, BLOCK_K=16)],
        },
        "f64": {
            # Triton 3.6's ptxas spilled 8-36 bytes at 64 x 16 over 4 warps, 64 x 64 over 4, and 128 x 64 over 8
            16: [_c(8, 3, BLOCK_M=128, BLOCK_N=16, BLOCK_K=16)],
            32: [_c(4, 2, BLOCK_M=64, BLOCK_N=32, BLOCK_K=16)],
            64: [_c(8, 3, BLOCK_M=64, BLOCK_N=64, BLOCK_K=16)],
            512: [_c(8, 3, BLOCK_M=64, BLOCK_N=64, BLOCK_K=16), _c(8, 3, BLOCK_M=128, BLOCK_N=32, BLOCK_K=16)],
        },
    },
}

# Under the interpreter: one small config per family (every block 16: the smallest tl.dot accepts).
INTERPRETER = {
    "gram": _c(1, 1, BLOCK_N=16, BLOCK_K=16),
    "poly": _c(1, 1, BLOCK_N=16, BLOCK_K=16),
    "apply": _c(1, 1, BLOCK_M=16, BLOCK_N=16, BLOCK_K=16),
}

# The split-K reduction is memory-bound and not tuned: one block size.
REDUCE_BLOCK_N = 32
REDUCE_WARPS = 4


def table_candidates(family: str, cls: str, n: int) -> list[triton.Config]:
    """The GPU candidates of a launch of ``family`` with operand class ``cls`` on matrices with n columns."""
    table = TABLES[family][cls]
    nc = n_class(n)
    below = [k for k in table if k <= nc]
    return table[max(below) if below else min(table)]


def all_configs(family: str) -> list[triton.Config]:
    """What the autotuner of ``family`` is given: every candidate (the prune hook picks), or the interpreter's."""
    if interpreting():
        return [INTERPRETER[family]]
    seen: dict[str, triton.Config] = {}
    for by_n in TABLES[family].values():
        for configs in by_n.values():
            for c in configs:
                seen.setdefault(str(c), c)
    return list(seen.values())


def _launch_class(family: str, named: dict, meta: dict) -> str:
    """The operand class of a launch from its arguments (the kernels' parameter names)."""
    if meta.get("ACC_F64"):
        return "f64"
    dot_dtype = (named.get("MAT") if family == "apply" else named.get("G", named.get("A"))).dtype
    return operand_class(dot_dtype, meta.get("PRECISION", "ieee"))


# An apply of 16-bit operands that stores a float32 result (fast mode's last step on a float32 G) holds the
# float32 residual and result tiles where a 16-bit store packs them: its 128 x 256 candidate spilled 16-24 bytes at
# 255 registers for sm_90 on Triton 3.9 (bench/check_triton_configs.py), so such launches keep tiles of at most this
# many elements.
F16_APPLY_FLOAT32_OUT_MAX_TILE = 128 * 128


def candidates(family: str, named: dict, meta: dict, *, gpu: Optional[bool] = None) -> list[triton.Config]:
    """The configs a launch with runtime arguments ``named`` and constexprs ``meta`` benchmarks (the GPU table's,
    or the interpreter's one config when ``gpu`` is False; default: whichever this process runs)."""
    if gpu is None:
        gpu = not interpreting()
    if not gpu:
        return [INTERPRETER[family]]
    cls = _launch_class(family, named, meta)
    cands = table_candidates(family, cls, int(named["N"]))
    if family == "apply" and cls == "f16" and named["OUT"].dtype == torch.float32:
        cands = [c for c in cands if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= F16_APPLY_FLOAT32_OUT_MAX_TILE]
    return cands


def _prune(family: str):
    def prune(configs, named_args, **kwargs):
        return candidates(family, named_args, kwargs)

    return prune


def autotune(family: str, key: list[str]):
    """triton.autotune for a kernel of ``family``: its candidates, its key, the prune hook, the disk cache; the
    result is tagged with its family (:func:`tune_key` reads it)."""
    tuner = triton.autotune(configs=all_configs(family), key=key,
                            prune_configs_by={"early_config_prune": _prune(family)}, cache_results=True)

    def deco(fn):
        kernel = tuner(fn)
        kernel.orthokern_family = family
        return kernel

    return deco


def family_of(kernel) -> Optional[str]:
    return getattr(kernel, "orthokern_family", None)


def tune_key(call: KernelCall, *, gpu: Optional[bool] = None) -> Optional[tuple[tuple, int]]:
    """(autotune key, number of configs it compiles on a first call) of a launch, or None if not autotuned.

    The key is built as Triton's Autotuner.run builds it (the ``key`` arguments' values, then the dtype of every
    tensor argument in parameter order); the count is that of the candidates the prune hook keeps (one candidate:
    compiled, not benchmarked).
    """
    family = family_of(call.kernel)
    if family is None:
        return None
    all_args = {**call.args, **call.meta}
    key = [all_args[k] for k in call.kernel.keys if k in all_args]
    key += [str(v.dtype) for v in all_args.values() if hasattr(v, "dtype")]
    return tuple(key), len(candidates(family, call.args, call.meta, gpu=gpu))
