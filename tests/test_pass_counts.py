"""How many times each method's default implementation touches full-size data (G, O or a temporary as large), per
device: the numbers docs/design.md states ("Passes over memory"), kept by counting the ops that read or write a
tensor of B m n elements or more. On the CPU with real tensors; on a GPU through the dry-run plan's recorder (the
real dispatch on fake CUDA tensors), where the Triton and CUDA kernels are single ops."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import orthokern
from orthokern import _env, dispatch

B, M, N = 4, 256, 16  # m >= 2n: newton_schulz takes the Gram side; 16384 elements, one gram64 block


class FullSizeOps(TorchDispatchMode):
    def __init__(self, threshold: int):
        super().__init__()
        self.threshold, self.ops = threshold, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from orthokern.bench.plan import aten_launches

        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        flat = [t for t in torch.utils._pytree.tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
        name = str(func)
        # Work, as the plan counts it: orthokern's ops, and aten ops that move data (not views or allocations).
        moves = name.startswith("orthokern.") or bool(aten_launches(name, func, args, kwargs, out))
        if moves and any(t.numel() >= self.threshold for t in flat):
            self.ops.append(name.split(".")[1])
        return out


# (method, backend) -> full-size ops on a CPU, float32 input. The minimum for a Gram-based method is 3 passes
# (read G for the Gram matrix, read it again for the apply, write O); a fused op is one call for all of them.
CPU_PASSES = {
    ("gram_eigh", "cpp"): 1,  # the fused op: G read twice, O written once inside it
    ("gram_eigh", "torch"): 5,  # scale reduction, scaled copy X, float64 block of X, Gram, apply
    ("cholqr2", "cpp"): 1,
    ("cholqr2", "torch"): 7,  # reduction, float64 X, Gram, Q1 = X R1^-1, Gram of Q1, Q1 M, cast
    ("newton_schulz", "torch"): 7,  # reduction, X, float64 block, Gram, float64 block, X Q, store
    ("svd", "torch"): 6,  # reduction, float64 X, zeroing, SVD, U V^T, cast
}


@pytest.mark.parametrize("method,backend", sorted(CPU_PASSES), ids=lambda x: str(x))
def test_cpu_pass_counts(method, backend):
    if backend == "cpp" and _env.CURRENT.extension is not None:
        pytest.skip("orthokern._C is not built")
    G = torch.randn(B, M, N)
    counter = FullSizeOps(B * M * N)
    with counter:
        orthokern.polar(G, method=method, backend=backend)
    assert len(counter.ops) == CPU_PASSES[(method, backend)], counter.ops


def test_fast_gram_eigh_on_cpu_reads_g_twice_and_writes_o_once():
    # float32 Gram matrix and eigensolver (reference/gram_eigh.py, _polar_float32): the Gram matrix of G itself and
    # the apply, no scaling pass; auto adds its guard's reduction. n above dispatch.CPU_FAST_FLOAT32_MIN_N, where
    # fast mode takes this path (below it, the compiled op of accurate mode: one pass count for both modes).
    n = dispatch.CPU_FAST_FLOAT32_MIN_N
    G = torch.randn(B, M, n)
    for method, expected in (("gram_eigh", ["bmm", "bmm"]), ("auto", ["bmm", "bmm", "column_norm_max"])):
        if method == "auto" and _env.CURRENT.extension is not None:
            continue
        counter = FullSizeOps(B * M * n)
        with counter:
            orthokern.polar(G, method=method, mode="fast")
        assert counter.ops == expected, (method, counter.ops)


def test_auto_on_cpu_adds_one_reduction_for_its_guard():
    if _env.CURRENT.extension is not None:
        pytest.skip("orthokern._C is not built")
    G = torch.randn(B, M, N)
    counter = FullSizeOps(B * M * N)
    with counter:
        orthokern.polar(G)
    assert counter.ops == ["gram_eigh_polar", "column_norm_max"], counter.ops


@pytest.mark.parametrize("shape,mode,passes,dtype", [
    # Gram side: Triton Gram (reads G), Triton apply (reads G, writes O)
    ((256, 576, 64), "accurate", 2, torch.float32),
    ((256, 576, 64), "fast", 2, torch.float32),
    # n > 64: the n x n iteration as batched float64 matmuls, the same 2 passes
    ((16, 4096, 128), "accurate", 2, torch.float32),
    # fp16x3 steps on X cost less than the float64 n x n iteration at n = 512, and their last steps less still on
    # the n x n side: the scale, per step on X a Gram and an apply, then the Gram of X_k and the apply of its factor
    ((8, 4608, 512), "accurate", "tall_gram", torch.float32),
    ((1, 1152, 1024), "accurate", None, torch.float32),  # tall side: the scale, then per step a Gram and an apply
    ((1, 1152, 1024), "fast", None, torch.float32),
    # half precision: the last step stores bfloat16 itself, no float32 result converted in another pass
    ((1, 1152, 1024), "fast", None, torch.bfloat16),
    ((1, 1152, 1024), "accurate", None, torch.bfloat16),
])
def test_gpu_pass_counts_from_the_plan(shape, mode, passes, dtype):
    pytest.importorskip("triton")
    from orthokern import _cost
    from orthokern.bench import plan

    rec, _ = plan.record(plan.Case("x", [shape], dtype), mode, _cost.DEVICES["h100"])
    full = [r.op for r in rec.records
            if r.largest >= shape[0] * shape[1] * shape[2] and (r.launches or r.op.startswith("orthokern."))]
    if passes is None:
        steps = len(orthokern.ns_schedule.steps_for(mode, 1e-3, shape[2], torch.float32))
        # the scale reduction, then per step the Gram (reads X) and the apply (reads X, writes the next X); the
        # polynomial of the n x n Gram is not full-size
        passes = 1 + 2 * steps
    elif passes == "tall_gram":
        passes = 1 + 2 * orthokern.ns_schedule.switch_step(mode, 1e-3, shape[2], torch.float32) + 2
    assert len(full) == passes, full
