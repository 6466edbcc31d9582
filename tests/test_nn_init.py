"""orthokern.nn.init: orthogonal_ gives gain * orthonormal rows or columns per block, Haar-distributed;
delta_orthogonal_ puts one at the kernel centre."""
import math

import pytest
import torch
import torch.nn.functional as F

from orthokern.nn.init import delta_orthogonal_, orthogonal_

# max |W W^T - gain^2 I| (smaller side) per dtype of the filled tensor, relative to gain^2 (float64: cholqr2 measured
# 3e-12 on a 16 x 36 matrix)
ORTHO_TOL = {torch.float64: 1e-10, torch.float32: 2e-6, torch.bfloat16: 2e-2}


def _blocks(W, batch_dims=0, groups=1):
    c = W.shape[batch_dims]
    return W.reshape(-1, c // groups, math.prod(W.shape[batch_dims + 1:]))


def _gram_gap(A, gain):
    A = A.double()
    S = A @ A.mT if A.shape[-2] <= A.shape[-1] else A.mT @ A
    return (S - gain**2 * torch.eye(S.shape[-1], dtype=torch.float64)).abs().amax().item()


@pytest.mark.parametrize("shape,batch_dims,groups", [
    ((5, 9), 0, 1),             # wide: orthonormal rows
    ((9, 5), 0, 1),             # tall: orthonormal columns
    ((7, 7), 0, 1),             # square
    ((16, 4, 3, 3), 0, 1),      # conv (out, in*kh*kw) = (16, 36)
    ((40, 2, 3), 0, 1),         # conv1d, tall (40, 6)
    ((3, 4, 6, 10), 2, 1),      # a (3, 4) batch of 6 x 10 matrices (experts x heads)
    ((8, 2, 3, 3), 0, 4),       # grouped conv: 4 groups of (2, 18)
    ((2, 12, 5), 1, 3),         # batch and groups: 2 x 3 blocks of (4, 5)
])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_orthogonal_blocks_have_gain_times_orthonormal_rows_or_columns(shape, batch_dims, groups, dtype):
    gain = 1.7
    W = torch.full(shape, float("nan"), dtype=dtype)
    out = orthogonal_(W, gain, batch_dims=batch_dims, groups=groups, generator=torch.Generator().manual_seed(0))
    assert out is W and W.dtype == dtype and W.shape == shape
    blocks = _blocks(W, batch_dims, groups)
    for A in blocks:
        assert _gram_gap(A, gain) <= ORTHO_TOL[dtype] * gain**2, (shape, dtype)
    # independent draws: no two blocks equal
    flat = blocks.double().flatten(1)
    if len(flat) > 1:
        assert torch.cdist(flat, flat).add(torch.eye(len(flat), dtype=torch.float64)).min() > 0.1


def test_generator_makes_draws_reproducible_and_default_rng_is_used_without_one():
    a = orthogonal_(torch.empty(6, 4), generator=torch.Generator().manual_seed(3))
    b = orthogonal_(torch.empty(6, 4), generator=torch.Generator().manual_seed(3))
    c = orthogonal_(torch.empty(6, 4), generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(11)
    d = orthogonal_(torch.empty(6, 4))
    torch.manual_seed(11)
    assert torch.equal(d, orthogonal_(torch.empty(6, 4)))


def test_haar_entry_moments():
    # Every entry of a Haar-random orthogonal n x n matrix has mean 0 and variance 1/n; of a c x f matrix with
    # orthonormal rows (c <= f), variance 1/f. E[x^4] = 3 / (n (n + 2)) gives the standard error of the sample
    # variance. 20000 independent draws in one batched call, fixed seed.
    N, n = 20000, 8
    W = orthogonal_(torch.empty(N, n, n, dtype=torch.float64), batch_dims=1,
                    generator=torch.Generator().manual_seed(1234))
    for i, j in ((0, 0), (3, 5), (7, 1)):
        x = W[:, i, j]
        assert abs(x.mean().item()) <= 4 * math.sqrt(1 / n / N), (i, j)
        se_var = math.sqrt((3 / (n * (n + 2)) - 1 / n**2) / N)
        assert abs(x.square().mean().item() - 1 / n) <= 4 * se_var, (i, j)
        assert 4 * se_var / (1 / n) < 0.04  # the bound is a few percent of 1/n
    # wide 3 x 10 blocks: variance 1/10 per entry
    V = orthogonal_(torch.empty(N, 3, 10, dtype=torch.float64), batch_dims=1,
                    generator=torch.Generator().manual_seed(99))
    assert abs(V[:, 2, 7].square().mean().item() - 0.1) <= 0.004


def test_haar_trace_moments_and_sign_balance():
    # For Haar O(n), n >= 4: E[tr O] = 0, E[(tr O)^2] = 1, E[(tr O)^4] = 3 (the moments of a standard normal), and
    # det O = +1 and -1 equally often. A QR without the sign correction, or a polar factor of a non-invariant
    # distribution, fails these.
    N, n = 20000, 6
    W = orthogonal_(torch.empty(N, n, n, dtype=torch.float64), batch_dims=1,
                    generator=torch.Generator().manual_seed(7))
    t = W.diagonal(dim1=-2, dim2=-1).sum(-1)
    assert abs(t.mean().item()) <= 4 * math.sqrt(1 / N)
    assert abs(t.square().mean().item() - 1) <= 4 * math.sqrt(2 / N)
    det = torch.linalg.det(W)
    assert torch.allclose(det.abs(), torch.ones_like(det), atol=1e-10)
    assert abs((det > 0).double().mean().item() - 0.5) <= 4 * math.sqrt(0.25 / N)


def test_orthogonal_large_square_is_orthogonal_despite_ill_conditioned_gaussian():
    # The square Gaussian drawn inside is often ill-conditioned at this size (condition > 1e3 about half the time);
    # the result must still be orthogonal to float32 rounding.
    W = orthogonal_(torch.empty(8, 192, 192), batch_dims=1, generator=torch.Generator().manual_seed(5))
    for A in W:
        assert _gram_gap(A, 1.0) <= 1e-5


def test_orthogonal_empty_tensor_is_left_alone():
    W = torch.empty(0, 5)
    assert orthogonal_(W) is W


@pytest.mark.parametrize("call,exc,words", [
    (lambda: orthogonal_(torch.empty(5)), ValueError, ["tensor", "at least 2 dimensions"]),
    (lambda: orthogonal_(torch.empty(3, 4), 0.0), ValueError, ["gain"]),
    (lambda: orthogonal_(torch.empty(3, 4), -1.0), ValueError, ["gain"]),
    (lambda: orthogonal_(torch.empty(3, 4), float("nan")), ValueError, ["gain"]),
    (lambda: orthogonal_(torch.empty(3, 4), "big"), TypeError, ["gain"]),
    (lambda: orthogonal_(torch.empty(3, 4), batch_dims=1), ValueError, ["tensor", "batch dimension"]),
    (lambda: orthogonal_(torch.empty(3, 4), batch_dims=-1), ValueError, ["batch_dims"]),
    (lambda: orthogonal_(torch.empty(6, 4), groups=4), ValueError, ["groups"]),
    (lambda: orthogonal_(torch.empty(6, 4), groups=0), ValueError, ["groups"]),
    (lambda: orthogonal_(torch.empty(3, 4, dtype=torch.int64)), TypeError, ["tensor", "float"]),
    (lambda: orthogonal_([[1.0, 2.0]]), TypeError, ["tensor"]),
    (lambda: delta_orthogonal_(torch.empty(4, 4)), ValueError, ["weight", "3 dimensions"]),
    (lambda: delta_orthogonal_(torch.empty(4, 4, 3), gain=0), ValueError, ["gain"]),
    (lambda: delta_orthogonal_(torch.empty(6, 2, 3), groups=4), ValueError, ["groups"]),
])
def test_bad_input_names_the_argument(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for w in words:
        assert w in str(info.value), (w, str(info.value))


@pytest.mark.parametrize("shape", [(8, 8, 3, 3), (12, 5, 5), (6, 4, 4, 4), (4, 6, 3, 3, 3)])
def test_delta_orthogonal_centre_tap_and_zeros(shape):
    W = torch.randn(shape, dtype=torch.float64)
    delta_orthogonal_(W, gain=2.0, generator=torch.Generator().manual_seed(0))
    centre = tuple((k - 1) // 2 for k in shape[2:])
    H = W[(slice(None), slice(None), *centre)]
    assert _gram_gap(H, 2.0) <= 4e-10
    mask = torch.ones(shape[2:], dtype=torch.bool)
    mask[centre] = False
    assert W[:, :, mask].abs().max() == 0


def test_delta_orthogonal_conv_is_an_isometry_of_its_input():
    # out >= in and padding "same": each output pixel is H times the input pixel, so the norm is kept exactly.
    W = torch.empty(16, 4, 3, 3, dtype=torch.float64)
    delta_orthogonal_(W, generator=torch.Generator().manual_seed(1))
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    y = F.conv2d(x, W, padding=1)
    assert torch.allclose(y.square().sum(), x.square().sum(), rtol=1e-12)


def test_delta_orthogonal_groups():
    W = torch.empty(8, 2, 3, 3, dtype=torch.float64)
    delta_orthogonal_(W, groups=4, generator=torch.Generator().manual_seed(2))
    for blk in W[:, :, 1, 1].reshape(4, 2, 2):
        assert _gram_gap(blk, 1.0) <= 1e-10
