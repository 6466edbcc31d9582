"""Matrix views (components x fan-in, ``batch_dims``, ``split``, per-parameter) and the per-shape learning-rate
scales, checked against the polar factors of the matrices written out by hand (float64 SVD)."""
import math

import pytest
import torch
from torch import nn

import orthokern.optim as ok_optim
from orthokern.optim import FastOrthogonalSGD, MatrixView, Orthogonal, set_view
from orthokern.optim.views import lr_scale_factor

RCOND = 1e-3


def svd_polar(G):
    U, s, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    keep = s > RCOND * s[..., :1]
    return ((U * keep[..., None, :]) @ Vh).to(G.dtype)


def gen(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def one_step_update(param_shape, grad, **opt_kw):
    """The update one plain step applies (lr 1, no momentum, no weight decay: p_new = p - update)."""
    p = nn.Parameter(torch.zeros(param_shape, dtype=torch.float64))
    p.grad = grad.clone()
    view = opt_kw.pop("param_view", None)
    if view is not None:
        set_view(p, view)
    FastOrthogonalSGD([p], lr=1.0, momentum=0.0, method="svd", **opt_kw).step()
    return -p.detach()


@pytest.mark.parametrize("shape,view,expected_blocks", [
    ((6, 4, 3, 3), MatrixView(), [(1, 6, 36)]),
    ((5, 7), MatrixView(), [(1, 5, 7)]),
    ((4, 6, 5), MatrixView(batch_dims=1), [(4, 6, 5)]),
    ((2, 3, 6, 5), MatrixView(batch_dims=2), [(6, 6, 5)]),
    ((4, 6, 2, 3, 3), MatrixView(batch_dims=1), [(4, 6, 18)]),
    ((12, 4), MatrixView(split=((4, 4, 4), 0)), [(1, 4, 4)] * 3),
    ((6, 10), MatrixView(split=((3, 7), 1)), [(1, 6, 3), (1, 6, 7)]),
    ((6, 10), MatrixView(split=((3, 7), -1)), [(1, 6, 3), (1, 6, 7)]),
    ((3, 8, 5), MatrixView(batch_dims=1, split=((2, 6), 1)), [(3, 2, 5), (3, 6, 5)]),
], ids=["conv", "linear", "experts", "experts-heads", "conv-experts", "qkv", "split-cols", "split-neg",
        "batch+split"])
def test_blocks_round_trip(shape, view, expected_blocks):
    t = gen(*shape)
    blocks = view.blocks(t)
    assert [tuple(b.shape) for b in blocks] == expected_blocks == view.block_shapes(shape)
    assert torch.equal(view.assemble(blocks, shape), t)
    # Each matrix of a block is the components x fan-in reshape of its piece, in order.
    if view.split is None and view.batch_dims:
        k = view.batch_dims
        assert torch.equal(blocks[0][1], t.reshape(-1, *shape[k:])[1].reshape(shape[k], -1))


def test_batch_dims_orthogonalises_each_expert():
    G = gen(4, 6, 5, seed=1)
    update = one_step_update(G.shape, G, view=MatrixView(batch_dims=1))
    for e in range(4):
        torch.testing.assert_close(update[e], svd_polar(G[e]), atol=1e-12, rtol=0)
    # ... which is not the default view's single (4, 30) matrix.
    default = one_step_update(G.shape, G)
    torch.testing.assert_close(default, svd_polar(G.reshape(4, 30)).reshape(G.shape), atol=1e-12, rtol=0)
    assert (default - update).abs().max() > 0.1


def test_split_orthogonalises_each_piece():
    d = 4
    G = gen(3 * d, d, seed=2)  # fused QKV
    update = one_step_update(G.shape, G, view=MatrixView(split=((d, d, d), 0)))
    expected = torch.cat([svd_polar(G[i * d:(i + 1) * d]) for i in range(3)])
    torch.testing.assert_close(update, expected, atol=1e-12, rtol=0)
    Gc = gen(5, 9, seed=3)
    update = one_step_update(Gc.shape, Gc, view={"split": ((4, 5), 1)})  # a dict works as well
    expected = torch.cat([svd_polar(Gc[:, :4]), svd_polar(Gc[:, 4:])], dim=1)
    torch.testing.assert_close(update, expected, atol=1e-12, rtol=0)


def test_which_view_wins():
    G = gen(4, 6, 5, seed=4)
    experts = MatrixView(batch_dims=1)
    split = MatrixView(split=((2, 4), 1))
    own = one_step_update(G.shape, G, view=split, param_view=experts)  # the parameter's own attribute wins
    torch.testing.assert_close(own, one_step_update(G.shape, G, view=experts), atol=0, rtol=0)
    by_rule = one_step_update(G.shape, G, view=lambda p: split)
    torch.testing.assert_close(by_rule, one_step_update(G.shape, G, view=split), atol=0, rtol=0)
    none = one_step_update(G.shape, G, view=lambda p: None)  # None from the callable: the default view
    torch.testing.assert_close(none, one_step_update(G.shape, G), atol=0, rtol=0)


def test_view_callable_selects_by_identity():
    a, b = nn.Parameter(torch.zeros(4, 6, 5, dtype=torch.float64)), nn.Parameter(torch.zeros(4, 6, 5,
                                                                                          dtype=torch.float64))
    Ga, Gb = gen(4, 6, 5, seed=5), gen(4, 6, 5, seed=6)
    a.grad, b.grad = Ga.clone(), Gb.clone()
    views = {id(a): MatrixView(batch_dims=1)}
    FastOrthogonalSGD([a, b], lr=1.0, momentum=0.0, method="svd", view=lambda p: views.get(id(p))).step()
    torch.testing.assert_close(-a.detach()[2], svd_polar(Ga[2]), atol=1e-12, rtol=0)
    torch.testing.assert_close(-b.detach(), svd_polar(Gb.reshape(4, 30)).reshape(4, 6, 5), atol=1e-12, rtol=0)


def test_views_share_batched_calls(monkeypatch):
    # Four experts (6, 5), a (6, 5) linear weight and a QKV weight of three (6, 5) pieces: one polar call of 8.
    calls = []
    real = ok_optim.batched.polar

    def counting(G, **kw):
        calls.append(tuple(G.shape))
        return real(G, **kw)

    monkeypatch.setattr(ok_optim.batched, "polar", counting)
    experts = set_view(nn.Parameter(gen(4, 6, 5)), batch_dims=1)
    linear = nn.Parameter(gen(6, 5))
    qkv = set_view(nn.Parameter(gen(18, 5)), split=((6, 6, 6), 0))
    for p in (experts, linear, qkv):
        p.grad = torch.randn_like(p)
    FastOrthogonalSGD([experts, linear, qkv], lr=0.1).step()
    assert calls == [(8, 6, 5)]


@pytest.mark.parametrize("kind,factor", [
    ("spectral", lambda m, n: 1.0),
    ("muon", lambda m, n: math.sqrt(max(1.0, m / n))),
    ("match_adamw_rms", lambda m, n: 0.2 * math.sqrt(max(m, n))),
])
@pytest.mark.parametrize("shape", [(12, 3), (3, 12), (5, 5)])
def test_lr_scale(kind, factor, shape):
    G = gen(*shape, seed=7)
    update = one_step_update(shape, G, lr_scale=kind)
    torch.testing.assert_close(update, factor(*shape) * svd_polar(G), atol=1e-12, rtol=0)
    assert lr_scale_factor(kind, *shape) == pytest.approx(factor(*shape))


def test_lr_scale_is_per_matrix_of_the_view():
    G = gen(12, 3, seed=8)  # split into a (4, 3) and an (8, 3) piece: Muon factors 1.15 and 1.63
    update = one_step_update(G.shape, G, lr_scale="muon", view=MatrixView(split=((4, 8), 0)))
    expected = torch.cat([math.sqrt(4 / 3) * svd_polar(G[:4]), math.sqrt(8 / 3) * svd_polar(G[4:])])
    torch.testing.assert_close(update, expected, atol=1e-12, rtol=0)


def test_lr_scale_per_group_and_in_state_dict():
    a, b = nn.Parameter(torch.zeros(8, 2, dtype=torch.float64)), nn.Parameter(torch.zeros(8, 2, dtype=torch.float64))
    G = gen(8, 2, seed=9)
    a.grad, b.grad = G.clone(), G.clone()
    opt = FastOrthogonalSGD([{"params": [a]}, {"params": [b], "lr_scale": "muon"}], lr=1.0, momentum=0.0,
                            method="svd")
    opt.step()
    torch.testing.assert_close(-b.detach(), 2.0 * -a.detach(), atol=1e-12, rtol=0)
    saved = opt.state_dict()
    assert [g["lr_scale"] for g in saved["param_groups"]] == ["spectral", "muon"]
    other = FastOrthogonalSGD([{"params": [a]}, {"params": [b]}], lr=1.0, lr_scale="match_adamw_rms")
    other.load_state_dict(saved)
    assert [g["lr_scale"] for g in other.param_groups] == ["spectral", "muon"]


def test_view_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match="batch_dims"):
        MatrixView(batch_dims=-1)
    with pytest.raises(ValueError, match="split"):
        MatrixView(split=(4, 0))
    with pytest.raises(ValueError, match="split sizes"):
        MatrixView(split=((4, 0), 0))
    with pytest.raises(ValueError, match="no matrix after batch_dims=2"):
        set_view(nn.Parameter(torch.zeros(4, 5)), batch_dims=2)
    with pytest.raises(ValueError, match="add up to 8"):
        set_view(nn.Parameter(torch.zeros(9, 5)), split=((4, 4), 0))
    with pytest.raises(ValueError, match="matrix dimensions"):
        set_view(nn.Parameter(torch.zeros(3, 4, 5)), batch_dims=1, split=((1, 2), 0))
    with pytest.raises(ValueError, match="either"):
        set_view(nn.Parameter(torch.zeros(3, 4)), MatrixView(), batch_dims=1)
    with pytest.raises(TypeError, match="MatrixView"):
        FastOrthogonalSGD([nn.Parameter(torch.zeros(3, 4))], lr=0.1, view=3)
    with pytest.raises(ValueError, match="lr_scale"):
        FastOrthogonalSGD([nn.Parameter(torch.zeros(3, 4))], lr=0.1, lr_scale="adam")
    with pytest.raises(ValueError, match="lr_scale"):
        FastOrthogonalSGD([{"params": [nn.Parameter(torch.zeros(3, 4))], "lr_scale": "rms"}], lr=0.1)
    # A view that does not fit a parameter is reported at the step, with the parameter's shape.
    p = nn.Parameter(torch.zeros(3, 4))
    p.grad = torch.ones(3, 4)
    opt = FastOrthogonalSGD([p], lr=0.1, view=MatrixView(batch_dims=1))
    with pytest.raises(ValueError, match=r"shape \(3, 4\)"):
        opt.step()
    with pytest.raises(TypeError, match="view callable"):
        FastOrthogonalSGD([p], lr=0.1, view=lambda q: "rows").step()


def test_views_and_scales_in_any_optimiser():
    G = gen(4, 6, 5, seed=10)
    p = set_view(nn.Parameter(torch.zeros(4, 6, 5, dtype=torch.float64)), batch_dims=1)
    p.grad = G.clone()
    seen = {}

    class Spy(torch.optim.SGD):
        def step(self, closure=None):
            seen["grad"] = p.grad.clone()
            return super().step(closure)

    Orthogonal(Spy)([p], lr=0.1, method="svd", lr_scale="muon").step()
    expected = torch.stack([math.sqrt(6 / 5) * svd_polar(G[e]) for e in range(4)])
    torch.testing.assert_close(seen["grad"], expected, atol=1e-12, rtol=0)


def test_step_with_views_reads_no_tensor_values():
    # Meta tensors have no values: a view, a scale or a split that read one would raise.
    experts = set_view(nn.Parameter(torch.empty(4, 6, 5, device="meta")), batch_dims=1)
    qkv = set_view(nn.Parameter(torch.empty(12, 4, device="meta")), split=((4, 4, 4), 0))
    conv = nn.Parameter(torch.empty(6, 4, 3, 3, device="meta"))
    for p in (experts, qkv, conv):
        p.grad = torch.empty_like(p)
    opt = FastOrthogonalSGD([{"params": [experts, qkv], "lr_scale": "match_adamw_rms"},
                             {"params": [conv], "transform": "comp_norm"}], lr=0.1, backend="torch",
                            method="gram_eigh")
    opt.step()
    assert all(p.device.type == "meta" for p in (experts, qkv, conv))
