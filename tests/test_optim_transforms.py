"""The paper's baselines as ``transform=`` (N-SGDM: G / ||G||_F; CN-SGDM: each component / its norm), checked
against the formulas in float64, and what ``rcond`` does to the update (``rcond=0``: the paper's rule)."""
import pytest
import torch
from torch import nn

import orthokern
import orthokern.optim as ok_optim
from orthokern.optim import FastOrthogonalSGD, Orthogonal, orthogonalise
from orthokern.optim.transforms import normalise_frobenius, normalise_rows
from orthokern.testing import NORM_SLACK, random_matrix

# float64 formulas vs our float32 path: the result's own rounding (a few eps32 per entry).
ATOL = {torch.float64: 1e-15, torch.float32: 1e-6, torch.bfloat16: 1e-2}


def nsgdm(G):
    G = G.double()
    return G / torch.linalg.matrix_norm(G, "fro", keepdim=True)


def cnsgdm(G):
    G = G.double()
    return G / torch.linalg.vector_norm(G, dim=-1, keepdim=True)


def one_step_update(grad, **opt_kw):
    """The update one plain step applies (lr 1, no momentum, no weight decay: p_new = p - update)."""
    p = nn.Parameter(torch.zeros(grad.shape, dtype=grad.dtype))
    p.grad = grad.clone()
    FastOrthogonalSGD([p], lr=1.0, momentum=0.0, **opt_kw).step()
    return -p.detach()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(6, 4, 3, 3), (5, 7), (9, 2)])
def test_norm_and_comp_norm_match_the_formulas(shape, dtype):
    G = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)
    M = G.reshape(shape[0], -1)
    got = one_step_update(G, transform="norm")
    torch.testing.assert_close(got.double(), nsgdm(M).reshape(shape), atol=ATOL[dtype], rtol=0)
    got = one_step_update(G, transform="comp_norm")
    torch.testing.assert_close(got.double(), cnsgdm(M).reshape(shape), atol=ATOL[dtype], rtol=0)


@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e30])
def test_normalisations_do_not_overflow_or_underflow(scale):
    # In float32 a sum of squares overflows above ~1e19 and underflows below ~1e-19: the power-of-two
    # pre-scaling keeps both normalisations exact at any magnitude.
    G = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    X = (G * scale).float()
    torch.testing.assert_close(normalise_frobenius(X).double(), nsgdm(X), atol=1e-6, rtol=0)
    torch.testing.assert_close(normalise_rows(X).double(), cnsgdm(X), atol=1e-6, rtol=0)


def test_zero_stays_zero_and_nan_propagates():
    X = torch.randn(4, 5, 6, generator=torch.Generator().manual_seed(2))
    X[0] = 0.0  # a zero matrix
    X[1, 2] = 0.0  # a zero component (row)
    X[2, 1, 3] = float("nan")
    X[3, 0, 0] = float("inf")
    for f in (normalise_frobenius, normalise_rows):
        O = f(X)
        assert torch.equal(O[0], torch.zeros(5, 6)), f.__name__
        assert torch.isnan(O[2]).all() and torch.isnan(O[3]).all(), f.__name__
        assert torch.isfinite(O[1]).all(), f.__name__
    assert torch.equal(normalise_rows(X)[1, 2], torch.zeros(6))
    torch.testing.assert_close(normalise_rows(X)[1].double(), torch.nan_to_num(cnsgdm(X[1])), atol=1e-6, rtol=0)


def test_transforms_do_not_call_polar(monkeypatch):
    calls = []
    real = ok_optim.batched.polar
    monkeypatch.setattr(ok_optim.batched, "polar", lambda G, **kw: calls.append(G.shape) or real(G, **kw))
    ps = [nn.Parameter(torch.randn(4, 3)) for _ in range(3)]
    for p in ps:
        p.grad = torch.randn(4, 3)
    FastOrthogonalSGD([{"params": ps[:1]}, {"params": ps[1:2], "transform": "norm"},
                       {"params": ps[2:], "transform": "comp_norm"}], lr=0.1).step()
    assert calls == [torch.Size([1, 4, 3])]


def test_transform_in_any_optimiser_and_in_the_state_dict():
    G = torch.randn(5, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    seen = {}

    class Spy(torch.optim.Adam):
        def step(self, closure=None):
            seen["grad"] = self.param_groups[0]["params"][0].grad.clone()
            return super().step(closure)

    p = nn.Parameter(torch.zeros(5, 7, dtype=torch.float64))
    p.grad = G.clone()
    opt = Orthogonal(Spy)([p], lr=1e-3, transform="comp_norm")
    opt.step()
    torch.testing.assert_close(seen["grad"], cnsgdm(G), atol=1e-15, rtol=0)
    inst = orthogonalise(Spy([p], lr=1e-3), transform="norm")
    inst.step()
    torch.testing.assert_close(seen["grad"], nsgdm(G), atol=1e-15, rtol=0)
    assert inst.state_dict()["param_groups"][0]["transform"] == "norm"


def test_unknown_transform_is_refused():
    p = nn.Parameter(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="transform must be one of"):
        FastOrthogonalSGD([p], lr=0.1, transform="whiten")
    with pytest.raises(ValueError, match="transform must be one of"):
        FastOrthogonalSGD([{"params": [p], "transform": "svd"}], lr=0.1)
    with pytest.raises(ValueError, match="transform must be one of"):
        orthogonalise(torch.optim.SGD([p], lr=0.1), transform="unit")
    # A state dict edited by hand is caught at the step.
    opt = FastOrthogonalSGD([p], lr=0.1)
    saved = opt.state_dict()
    saved["param_groups"][0]["transform"] = "sign"
    opt.load_state_dict(saved)
    p.grad = torch.ones(3, 4)
    with pytest.raises(ValueError, match="transform must be one of"):
        opt.step()


# rcond ---------------------------------------------------------------------------------------------------------

def classifier_gradient(classes, features, batch, dtype, seed):
    """A linear classifier's cross-entropy gradient: sum over the batch of (softmax - onehot) x^T, of rank
    <= batch - 1 (the softmax residuals of each example sum to zero)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, features, generator=g, dtype=torch.float64)
    p = (3 * torch.randn(batch, classes, generator=g, dtype=torch.float64)).softmax(1)
    p[torch.arange(batch), torch.randint(0, classes, (batch,), generator=g)] -= 1
    return (p.T @ x / batch).to(dtype)


def test_rcond_drops_weak_directions_from_the_update():
    # Singular values 1 .. 1e-4 (log-spaced): the default rcond (1e-3) keeps those >= 1e-3 * s_max at unit weight
    # and drops the rest; rcond=0 gives every direction unit weight (the paper's U V^T).
    U, _ = torch.linalg.qr(torch.randn(20, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    s = torch.logspace(0, -4, 8, dtype=torch.float64)
    G = (U * s) @ V.T
    for rcond, kept in ((None, int((s >= 1e-3).sum())), (0.0, 8), (0.05, int((s >= 0.05).sum()))):
        sv = torch.linalg.svdvals(one_step_update(G, method="svd", rcond=rcond))
        assert torch.allclose(sv[:kept], torch.ones(kept, dtype=torch.float64), atol=1e-12), (rcond, sv)
        assert (sv[kept:] < 1e-12).all(), (rcond, sv)


def _rcond0_cases():
    # Every method resolves what its precision can and raises rcond to that floor (docs/design.md, "rcond floors").
    for method in orthokern.METHODS:
        for dtype in (torch.float32, torch.float64):
            yield pytest.param(method, dtype, id=f"{method}-{str(dtype)[6:]}")


@pytest.mark.parametrize("method,dtype", list(_rcond0_cases()))
def test_rcond_zero_is_bounded_for_every_method(method, dtype):
    # The paper's rule (rcond=0) on the gradients it is hardest for: a 10-class linear classifier on 512 features
    # with a batch of 4 (rank 3), and a random rank-deficient matrix. No crash, finite, ||update||_2 <= 1 + tol.
    grads = [classifier_gradient(10, 512, 4, dtype, seed) for seed in range(3)]
    grads += [random_matrix(1, 40, 24, "rank_deficient", dtype=dtype, seed=6)[0]]
    for G in grads:
        O = one_step_update(G, method=method, rcond=0.0)
        assert torch.isfinite(O).all()
        norm = torch.linalg.matrix_norm(O.double(), 2)
        assert norm <= 1 + NORM_SLACK[dtype], f"||O||_2 = {norm:.4g} for a {tuple(G.shape)} gradient"


def test_transposed_shapes_share_one_polar_call_and_keep_their_orientation(monkeypatch):
    """by_shape takes polar blocks tall (optim/transforms.py: oriented): wide and tall blocks of transposed shapes
    form one call; each result is its block's polar factor, in the block's orientation, contiguous. The
    normalisations keep the orientation (their result depends on it)."""
    from orthokern.optim import batched
    from orthokern.optim.transforms import Transform

    calls = []
    real = batched.polar
    monkeypatch.setattr(batched, "polar", lambda G, **kw: calls.append(tuple(G.shape)) or real(G, **kw))
    blocks = [random_matrix(2, 6, 4, "decaying", dtype=torch.float64, seed=1),
              random_matrix(3, 4, 6, "decaying", dtype=torch.float64, seed=2),
              random_matrix(1, 4, 6, "gaussian", dtype=torch.float64, seed=3),
              random_matrix(2, 5, 5, "gaussian", dtype=torch.float64, seed=4)]
    polar_t = Transform.make("polar", method="svd", where="test")
    out = batched.by_shape(blocks, [polar_t] * 4)
    assert sorted(calls) == [(2, 5, 5), (6, 6, 4)]
    for b, o in zip(blocks, out):
        assert o.shape == b.shape and o.is_contiguous()
        torch.testing.assert_close(o, orthokern.polar(b, method="svd"), rtol=0, atol=1e-13)
    rows_t = Transform.make("comp_norm", where="test")
    out = batched.by_shape(blocks[:2], [rows_t] * 2)
    for b, o in zip(blocks[:2], out):
        torch.testing.assert_close(o, normalise_rows(b))


def test_resnet50_gradients_form_15_polar_calls_not_21():
    """The README's count: ResNet-50's 54 weight matrices come in 21 shapes, 15 up to transposition."""
    from orthokern.bench.suites import RESNET50_SHAPES
    from orthokern.optim.transforms import Transform, buckets, oriented

    t = Transform.make("polar", where="test")
    blocks = [torch.empty(c, m, n, device="meta") for (m, n), c in RESNET50_SHAPES.items()]
    assert sum(b.shape[0] for b in blocks) == 54 and len(buckets(blocks, [t] * len(blocks))) == 21
    assert len(buckets([oriented(b, t) for b in blocks], [t] * len(blocks))) == 15
