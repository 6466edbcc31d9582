"""The fused Gram-side Newton–Schulz factor (csrc/gram_ns_factor.h): the CPU twin runs the CUDA kernel's own
per-thread and per-warp phases with the tensor-core instruction emulated from the PTX ISA's fragment layout, so its
agreement with the torch reference tests the kernel's tiling, fragment indexing and arithmetic here; on a GPU the
kernel must then agree with the twin to rounding (the mma instruction's rounding of its four products is the
hardware's, not the twin's fma chain)."""
from __future__ import annotations

import pytest
import torch

from orthokern import _env, compiled
from orthokern import ns_schedule as ns
from orthokern.reference.newton_schulz import gram_side_factor
from orthokern.testing import devices, random_matrix

pytestmark = pytest.mark.skipif(_env.EXTENSION is None, reason="orthokern._C is not built")


def _gram(B, n, kind="decaying", seed=0, m=None):
    X = random_matrix(B, m or 2 * n + 3, n, kind, dtype=torch.float64, seed=seed)
    return X.mT @ X


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 15, 16, 17, 31, 33, 48, 63, 64])
@pytest.mark.parametrize("mode", ["accurate", "fast"])
def test_twin_matches_the_reference(n, mode):
    A = _gram(3, n, seed=n)
    steps = ns.steps_for(mode, 1e-3, n, torch.float32)
    Q, R = compiled.gram_ns_factor(A, steps), gram_side_factor(A, steps)
    # Q amplifies the weakest directions by up to the product of the steps' a (~1e4): compare relative to |R|.
    assert (Q - R).abs().max() <= 1e-10 * R.abs().max(), n


@pytest.mark.parametrize("kind", ["rank_deficient", "well", "gaussian"])
def test_twin_on_other_spectra_and_a_zero_matrix(kind):
    A = _gram(4, 24, kind, seed=1)
    A[2] = 0
    steps = ns.steps_for("accurate", 1e-3, 24, torch.float32)
    Q, R = compiled.gram_ns_factor(A, steps), gram_side_factor(A, steps)
    # Exactly rank-deficient: Q holds the product of the a coefficients (~5e3) on the null space, where rounding
    # differs from the reference at 1e-10 of it.
    assert torch.isfinite(Q).all() and (Q - R).abs().max() <= 1e-9 * R.abs().max()


@pytest.mark.parametrize("n", [5, 24, 64])
def test_every_product_is_symmetric_exactly(n):
    # The kernel computes the tiles on and above the diagonal and mirrors them: Q (a polynomial in A) comes out
    # exactly symmetric, and the padding to whole 8 x 8 tiles (n = 5) leaves nothing behind.
    A = _gram(2, n, seed=3)
    Q = compiled.gram_ns_factor(A, ns.steps_for("accurate", 1e-3, n, torch.float32))
    assert torch.equal(Q, Q.mT)


def test_empty_and_no_steps():
    assert compiled.gram_ns_factor(torch.zeros(0, 8, 8, dtype=torch.float64), ()).shape == (0, 8, 8)
    A = _gram(2, 8)
    # No steps: Q = I / t, t = 1.01 ||A^2||_F^(1/4).
    t = 1.01 * torch.linalg.matrix_norm(A @ A).sqrt().sqrt()
    torch.testing.assert_close(compiled.gram_ns_factor(A, ()), torch.eye(8, dtype=torch.float64) / t[:, None, None])


@pytest.mark.parametrize("device", devices())
def test_bad_input_names_the_problem(device):
    A = _gram(1, 8).to(device)
    steps = ns.steps_for("fast", 1e-3, 8, torch.float32)
    with pytest.raises(RuntimeError, match="float64"):
        compiled.gram_ns_factor(A.float(), steps)
    with pytest.raises(RuntimeError, match="square"):
        compiled.gram_ns_factor(A[:, :, :4], steps)
    with pytest.raises(RuntimeError, match="n = 65 > 64"):
        compiled.gram_ns_factor(_gram(1, 65).to(device), steps)
    with pytest.raises(RuntimeError, match="coeffs"):
        torch.ops.orthokern.gram_ns_factor(A, [1.0, 2.0])


def test_opcheck():
    A = _gram(2, 12)
    coeffs = [float(v) for s in ns.steps_for("fast", 1e-3, 12, torch.float32) for v in s[:3]]
    torch.library.opcheck(torch.ops.orthokern.gram_ns_factor.default, (A, coeffs))


@pytest.mark.cuda
@pytest.mark.skipif(_env.CURRENT.cuda_ops is not None, reason="the CUDA kernels are not built or there is no GPU")
@pytest.mark.parametrize("n", [1, 7, 32, 64])
def test_cuda_kernel_equals_its_twin(n):
    A = _gram(33, n, seed=n)
    steps = ns.steps_for("accurate", 1e-3, n, torch.float32)
    Q, T = compiled.gram_ns_factor(A.cuda(), steps).cpu(), compiled.gram_ns_factor(A, steps)
    assert torch.equal(Q, Q.mT) and (Q - T).abs().max() <= 1e-10 * T.abs().max()


@pytest.mark.cuda
@pytest.mark.skipif(_env.CURRENT.cuda_ops is not None or torch.cuda.device_count() < 2,
                    reason="needs the CUDA kernels and two GPUs")
def test_cuda_kernel_on_a_non_current_device():
    A = _gram(4, 16)
    steps = ns.steps_for("accurate", 1e-3, 16, torch.float32)
    with torch.cuda.device(0):
        Q = compiled.gram_ns_factor(A.to("cuda:1"), steps)
    T = compiled.gram_ns_factor(A, steps)
    assert Q.device == torch.device("cuda:1") and (Q.cpu() - T).abs().max() <= 1e-10 * T.abs().max()
