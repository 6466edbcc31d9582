"""Shape buckets that share one polar call on zero-padded matrices: ``dispatch.merge_buckets`` decides (on the GPU
path only), ``optim.batched.by_shape`` pads, calls and hands back each block's result."""
import pytest
import torch

import orthokern
from orthokern import _cost, dispatch, ns_schedule
from orthokern.bench import plan
from orthokern.bench.suites import RESNET50_SHAPES
from orthokern.optim import batched
from orthokern.optim.transforms import Transform, buckets, oriented
from orthokern.testing import random_matrix

KW = dict(rcond=1e-3, dtype=torch.float32)


def _resnet50_buckets() -> list[tuple[int, int, int]]:
    """(B, m, n) of each tall polar bucket of a ResNet-50 step, as by_shape forms them."""
    t = Transform.make("polar", where="test")
    blocks = [torch.empty(c, m, n, device="meta") for (m, n), c in RESNET50_SHAPES.items()]
    views = [oriented(b, t) for b in blocks]
    return [(sum(views[i].shape[0] for i in idx), key[1], key[2])
            for key, idx in buckets(views, [t] * len(views)).items()]


def test_buckets_are_merged_only_on_the_gpu_newton_schulz_path():
    shapes = [(7, 512, 128), (4, 1152, 128)]
    alone = [[0], [1]]
    assert dispatch.merge_buckets(shapes, method="auto", mode="accurate", backend=None, device_type="cpu",
                                  **KW) == alone
    with dispatch.assume(plan.GPU_ENV):
        assert dispatch.merge_buckets(shapes, method="auto", mode="accurate", backend=None, device_type="cuda",
                                      **KW) == [[0, 1]]
        for method in ("svd", "gram_eigh", "cholqr2"):  # zero padding is exact for the iteration, not for these
            assert dispatch.merge_buckets(shapes, method=method, mode="accurate", backend=None, device_type="cuda",
                                          **KW) == alone
        assert dispatch.merge_buckets(shapes, method="auto", mode="accurate", backend="torch", device_type="cuda",
                                      **KW) == alone
        assert dispatch.merge_buckets(shapes, method="auto", mode="accurate", backend=None, device_type="cuda",
                                      rcond=1e-3, dtype=torch.float64) == alone
        # auto below newton_schulz's rcond floor runs cholqr2
        assert dispatch.merge_buckets(shapes, method="auto", mode="accurate", backend=None, device_type="cuda",
                                      rcond=0.0, dtype=torch.float32) == alone


@pytest.mark.parametrize("mode", ["accurate", "fast"])
def test_resnet50_merges_share_a_schedule_and_the_plan_agrees_they_pay(mode):
    """The groups of a ResNet-50 step: every group's members share ns_schedule's bucket of n (so the padded call
    runs each member's own schedule); the small n = 64 and n = 128 buckets and the fc layer beside the 2048 x 1024
    layer are merged; the n = 512 bucket of 4608 rows is not (padding 7 x 2048 rows to 4608 costs more than it
    saves). And the dry-run plan, which costs every launch with its real tiles, agrees that each merge is faster
    than its members' separate calls."""
    shapes = _resnet50_buckets()
    with dispatch.assume(plan.GPU_ENV):
        groups = dispatch.merge_buckets(shapes, method="auto", mode=mode, backend=None, device_type="cuda", **KW)
    assert sorted(i for g in groups for i in g) == list(range(len(shapes)))
    assert len(groups) == 7  # of 15 buckets (the README's count)
    merged = [sorted(shapes[i] for i in g) for g in groups if len(g) > 1]
    for g in merged:
        assert len({ns_schedule.n_bucket(n) for _, _, n in g}) == 1, g
    assert [(1, 2048, 1000), (1, 2048, 1024)] in merged
    assert sorted([(1, 256, 128), (4, 1152, 128), (7, 512, 128)]) in merged
    assert sorted([(1, 64, 64), (1, 147, 64), (3, 576, 64), (6, 256, 64)]) in merged
    assert not any((3, 4608, 512) in g for g in merged)
    device = _cost.DEVICES["h100"]

    def modelled(parts):
        return plan.plan_case(plan.Case("x", parts, torch.float32), mode, device)["modelled_graph_s"]

    for g in merged:
        padded = (sum(b for b, _, _ in g), max(m for _, m, _ in g), max(n for _, _, n in g))
        assert modelled([padded]) < sum(modelled([s]) for s in g), g


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_a_padded_call_gives_each_block_its_own_polar_factor(monkeypatch, dtype, tol):
    """Blocks of different shapes (tall, wide, square; different m and n) in one padded call: each result is the
    block's own polar factor (as polar() gives it alone), in its orientation, dense; a non-finite block stays NaN
    and a zero block zero, without touching the others."""
    calls = []
    real = batched.polar
    monkeypatch.setattr(batched, "polar", lambda G, **kw: calls.append(tuple(G.shape)) or real(G, **kw))
    monkeypatch.setattr(dispatch, "merge_buckets", lambda shapes, **kw: [list(range(len(shapes)))])
    blocks = [random_matrix(2, 30, 10, "decaying", dtype=dtype, seed=41),
              random_matrix(1, 10, 24, "decaying", dtype=dtype, seed=42),  # wide: taken as 24 x 10
              random_matrix(3, 50, 12, "decaying", dtype=dtype, seed=43),
              random_matrix(1, 12, 12, "decaying", dtype=dtype, seed=44),
              random_matrix(2, 12, 50, "decaying", dtype=dtype, seed=45)]  # wide, the transpose of block 2's shape
    blocks[2][1, 3, 4] = float("nan")
    blocks[4][0] = 0
    t = Transform.make("polar", method="newton_schulz", where="test")
    out = batched.by_shape(blocks, [t] * len(blocks))
    assert calls == [(9, 50, 12)]  # one call: every block padded to the largest m and n
    for b, o in zip(blocks, out):
        assert o.shape == b.shape and o.dtype == b.dtype and o.is_contiguous()
        for j in range(b.shape[0]):
            alone = orthokern.polar(b[j], method="newton_schulz")
            if not torch.isfinite(b[j]).all():
                assert o[j].isnan().all()
            else:
                torch.testing.assert_close(o[j], alone, rtol=0, atol=tol)
    assert torch.equal(out[4][0], torch.zeros_like(out[4][0]))
