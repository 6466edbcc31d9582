"""torch.compile(fullgraph=True) over polar, and its gradient (gradcheck in float64)."""
import pytest
import torch

import orthokern
from orthokern.testing import accuracy, random_matrix


@pytest.mark.slow
@pytest.mark.parametrize("method", orthokern.METHODS)
def test_compile_fullgraph(method):
    torch._dynamo.reset()

    def f(G):
        return orthokern.polar(G, method=method) * 2.0

    G = random_matrix(3, 20, 8, "decaying", seed=0)
    compiled = torch.compile(f, fullgraph=True, backend="inductor" if method == "auto" else "aot_eager")
    out = compiled(G)
    torch.testing.assert_close(out, f(G), atol=1e-4, rtol=0)
    assert accuracy(G, out / 2).E < 1e-3


@pytest.mark.parametrize("method", ["svd", "gram_eigh", "newton_schulz"])
@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (5, 5), (2, 7, 3)])
def test_gradcheck(method, shape):
    G = random_matrix(shape[:-2], *shape[-2:], "well", dtype=torch.float64, seed=1).requires_grad_()
    assert torch.autograd.gradcheck(lambda g: orthokern.polar(g, method=method), (G,), eps=1e-6, atol=1e-6)


def test_gradcheck_cholqr2():
    # cholqr2's shift perturbs results at ~1e-11, which finite differences at eps=1e-6 amplify to ~1e-5.
    G = random_matrix((), 6, 4, "well", dtype=torch.float64, seed=2).requires_grad_()
    assert torch.autograd.gradcheck(lambda g: orthokern.polar(g, method="cholqr2"), (G,), eps=1e-5, atol=1e-4)


def test_gradient_of_orthogonality_loss_matches_svd_autograd():
    """The closed-form backward agrees with autograd through torch.linalg.svd (float64, distinct singular values)."""
    G = random_matrix(2, 9, 5, "well", dtype=torch.float64, seed=3)
    W = torch.randn(2, 9, 5, dtype=torch.float64)
    g1 = G.clone().requires_grad_()
    (orthokern.polar(g1) * W).sum().backward()
    g2 = G.clone().requires_grad_()
    U, s, Vh = torch.linalg.svd(g2, full_matrices=False)
    ((U @ Vh) * W).sum().backward()
    torch.testing.assert_close(g1.grad, g2.grad, atol=1e-9, rtol=1e-7)


def test_gradient_in_float32_and_compile():
    G = random_matrix(2, 12, 6, "well", dtype=torch.float32, seed=4).requires_grad_()
    W = torch.randn(2, 12, 6)
    (orthokern.polar(G) * W).sum().backward()
    assert G.grad is not None and torch.isfinite(G.grad).all()
    # The significant-subspace gradient is orthogonal to G's own direction: polar(c G) does not depend on c.
    assert abs(float((G.grad * G.detach()).sum())) < 1e-4 * float(G.grad.norm() * G.detach().norm())


@pytest.mark.slow
def test_compile_fullgraph_with_backward():
    torch._dynamo.reset()
    G = random_matrix(2, 10, 4, "well", seed=0).requires_grad_()
    W = torch.randn(2, 10, 4)

    def loss(g):
        return (orthokern.polar(g, method="gram_eigh") * W).sum()

    torch.compile(loss, fullgraph=True, backend="aot_eager")(G).backward()
    compiled_grad, G.grad = G.grad.clone(), None
    loss(G).backward()
    torch.testing.assert_close(compiled_grad, G.grad)


def test_schedule_built_inside_a_compiled_region():
    """The schedule's numpy simulation must not be traced: it is marked constant (ns_schedule._assume_constant_result),
    so a schedule first needed inside torch.compile is built eagerly and baked in."""
    from orthokern import ns_schedule as ns

    ns._SCHEDULES.clear()
    f = torch.compile(lambda G: orthokern.polar(G, method="newton_schulz", rcond=3e-4), fullgraph=True)
    G = torch.randn(3, 40, 8, dtype=torch.float64)
    torch.testing.assert_close(f(G), orthokern.polar(G, method="newton_schulz", rcond=3e-4))


def test_gpu_dispatch_decisions_trace_as_constants():
    """The GPU dispatch's shape decisions (the Newton–Schulz side, with its switch step, and the optimiser's merged
    buckets) run inside torch.compile(fullgraph=True) as trace-time constants. switch_step simulates the schedule in
    numpy, which dynamo would otherwise trace as tensors and stop at a data-dependent branch (a GPU polar() under
    fullgraph failed there). Decided from shapes alone, so this runs on a CPU: the CPU path never asks."""
    from orthokern import dispatch, ns_schedule
    from orthokern.bench.plan import GPU_ENV

    ns_schedule._SCHEDULES.clear()
    dispatch._MERGES.clear()
    shapes = [(7, 512, 128), (4, 1152, 128), (1, 256, 128)]

    def decide(x):
        side = dispatch.newton_schulz_side(7, 512, 128, "accurate", torch.float32, "cuda", 1e-3)
        groups = dispatch.merge_buckets(shapes, method="auto", mode="accurate", rcond=1e-3, backend=None,
                                        dtype=torch.float32, device_type="cuda")
        return x * len(side) + len(groups)

    torch._dynamo.reset()
    with dispatch.assume(GPU_ENV):
        out = torch.compile(decide, fullgraph=True, backend="eager")(torch.zeros(1))
        side = dispatch.newton_schulz_side(7, 512, 128, "accurate", torch.float32, "cuda", 1e-3)
        groups = dispatch.merge_buckets(shapes, method="auto", mode="accurate", rcond=1e-3, backend=None,
                                        dtype=torch.float32, device_type="cuda")
    assert out.item() == len(groups) == 1 and side == "tall"
