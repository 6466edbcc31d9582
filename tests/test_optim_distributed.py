"""The optimisers and ``orthokern.polar`` under ``torch.distributed`` (gloo, CPU), in spawned processes.

World sizes 2, 1 and 4 are each spawned once (2 first: the world-size-1 run loads its checkpoint), and every
rank runs all the checks below in order, recording each outcome; the tests then read those records. Each check
compares with the single-process optimiser (``distributed=False``) run in the same process on the same values.

Shapes are chosen so that the splits are uneven: three (6, 54) matrices between 2 or 4 ranks, a (5, 96) weight
sharded 3+2 or 2+2+1+0 rows, a (3, 5) weight that leaves a rank of 4 with an empty shard, and a bucket with one
matrix (every other rank owns nothing of it).
"""
from __future__ import annotations

import datetime
import json
import os
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("torch.distributed with the gloo backend is not available", allow_module_level=True)

WORLD_SIZES = (2, 1, 4)  # 2 before 1: the world-size-1 run resumes from the checkpoint the 2-rank run saved
TIMEOUT_S = 120
STEPS = 3
# Gradients reduced over a different number of ranks differ by rounding (the sum's order); float64 models keep
# that at the 1e-16 level, and the polar factor's condition (well-conditioned test gradients) keeps it small.
TRAJECTORY_ATOL = 1e-9


# The models and data (imported by the spawned workers as well) -------------------------------------------------

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(6, 6, 3, padding=1)
        self.conv4 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc1 = nn.Linear(6 * 4 * 4, 5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def make_net(seed=0):
    torch.manual_seed(seed)
    return Net().double()


def data(step, batch=16):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(batch, 2, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (batch,), generator=g)


def local_batch(step, rank, world):
    x, y = data(step)
    per = x.shape[0] // world
    return x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per]


def train_reference(steps, start=0, model=None, opt=None, **opt_kw):
    """The single-process run every distributed run is compared with: the whole batch, distributed=False."""
    from orthokern.optim import FastOrthogonalSGD

    model = model or make_net()
    opt = opt or FastOrthogonalSGD(model.parameters(), lr=0.05, weight_decay=1e-3, distributed=False, **opt_kw)
    for step in range(start, start + steps):
        opt.zero_grad()
        x, y = data(step)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model, opt


# Synthetic parameters: every rank holds the same full gradients, so results can be compared bitwise.
SYNTH = [  # (shape, dtype, placement dim, view)
    ((6, 4, 3, 3), torch.float64, 0, None),
    ((6, 4, 3, 3), torch.float64, 0, None),
    ((6, 4, 3, 3), torch.float64, 1, None),
    ((5, 96), torch.float64, 0, None),
    ((3, 5), torch.float64, 0, None),
    ((1, 7), torch.float64, 0, None),  # a one-row weight: one rank holds it all, the others empty shards
    ((4, 6, 5), torch.float64, 0, {"batch_dims": 1}),  # 4 stacked experts
    ((9, 4), torch.float32, 0, {"split": ((3, 3, 3), 0)}),  # a fused QKV weight
    ((10, 6), torch.float32, 1, None),
    ((8, 8), torch.bfloat16, 0, None),
    ((7,), torch.float64, 0, None),  # a bias: not orthogonalised
]


def synth_values(step):
    g = torch.Generator().manual_seed(7 + step)
    return [torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) for shape, dtype, _, _ in SYNTH]


def synth_views():
    from orthokern.optim import MatrixView

    return {i: MatrixView(**v) for i, (_, _, _, v) in enumerate(SYNTH) if v}


def synth_groups(params, **kw):
    """Two groups: the polar factor for most, the paper's baselines and a learning-rate scale for the rest."""
    return [{"params": params[:8] + params[10:]},
            {"params": params[8:9], "transform": "norm", "lr_scale": "muon"},
            {"params": params[9:10], "transform": "comp_norm", "lr_scale": "match_adamw_rms"}]


# The checks each rank runs (rank, world, mesh, tmp) -> JSON-able data, or raise ----------------------------------

class PolarCounter:
    """Counts the matrices each ``orthokern.polar`` call of the optimisers receives on this rank."""

    def __init__(self):
        import orthokern.optim.batched as batched

        self.batched, self.real, self.matrices, self.calls = batched, batched.polar, 0, 0

    def __enter__(self):
        def counting(G, **kw):
            self.matrices += G.shape[0]
            self.calls += 1
            return self.real(G, **kw)

        self.batched.polar = counting
        return self

    def __exit__(self, *exc):
        self.batched.polar = self.real


def _split(count, ref_count, opt):
    """What the work-split test reads: this rank's polar matrices, the single-process run's, and the stats."""
    return {"polar_matrices": count.matrices, "single_process_matrices": ref_count.matrices,
            "stats": vars(opt.orthokern_stats)}


def _gather(obj):
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class RecordingSGD(torch.optim.SGD):
    """SGD that keeps a copy of the gradients its step saw: the orthogonalised updates, to compare bitwise."""

    def step(self, closure=None):
        self.seen = [p.grad.full_tensor().clone() if hasattr(p.grad, "full_tensor") else p.grad.clone()
                     for g in self.param_groups for p in g["params"] if p.grad is not None]
        return super().step(closure)


# Bitwise equality needs the polar factor of a matrix not to depend on which matrices share its batched call.
# orthokern's compiled kernels (the cpp backend, which auto uses on a CPU for n <= 64 as in every shape here)
# guarantee that; torch.linalg.eigh does not (MKL's batched results depend on where each matrix lies in memory,
# measured: 163 of 800 random 6 x 5 float64 matrices differ in the last bits between a batch of 4 and alone).
# So results are compared bitwise where the compiled extension is built, and to rounding where it is not: eps
# times the condition number of the test matrices (up to ~1e3) with a margin.
ROUNDING = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 2**-7}


def _exact(backend=None) -> bool:
    import orthokern

    return backend in (None, "cpp") and "cpp" in orthokern.available_backends("cpu")


def assert_same(a, b, exact, what=""):
    if exact:
        assert torch.equal(a, b), f"{what}: max diff {(a.double() - b.double()).abs().max()}"
    else:
        torch.testing.assert_close(a, b, atol=ROUNDING[b.dtype], rtol=0, msg=lambda m: f"{what}: {m}")


def _assert_same_step(ours, ref, opt, ref_opt):
    """The updates the base step received are equal (bitwise with the compiled backend); so are the parameters,
    except in bfloat16, where torch's elementwise kernels round differently on a shard than on the whole tensor
    (their vectorised loop and scalar tail differ), and momentum carries the difference on: there one unit in
    the last place at 1 is allowed (the parameters are of order 1)."""
    exact = _exact()
    for i, (a, b) in enumerate(zip(opt.seen, ref_opt.seen)):
        assert_same(a, b, exact, f"update {i} {tuple(b.shape)}")
    for i, (p, q) in enumerate(zip(ours, ref)):
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        assert_same(full, q, exact and q.dtype != torch.bfloat16, f"param {i} {tuple(q.shape)}")


def check_replicated_bitwise(rank, world, mesh, tmp):
    """Plain (replicated) parameters with identical gradients: the shared step equals the local one bitwise, each
    rank transforms only its share, and the shares add up to all the matrices once."""
    from orthokern.optim import Orthogonal, set_view

    views = synth_views()

    def params():
        ps = [nn.Parameter(v.clone()) for v in synth_values(-1)]
        for i, v in views.items():
            set_view(ps[i], v)
        return ps

    ours, ref = params(), params()
    opt = Orthogonal(RecordingSGD)(synth_groups(ours), lr=0.1, momentum=0.9, weight_decay=1e-2)
    ref_opt = Orthogonal(RecordingSGD)(synth_groups(ref), lr=0.1, momentum=0.9, weight_decay=1e-2,
                                       distributed=False)
    for step in range(STEPS):
        for p, q, g in zip(ours, ref, synth_values(step)):
            p.grad, q.grad = g.clone(), g.clone()
        with PolarCounter() as count:
            opt.step()
        with PolarCounter() as ref_count:
            ref_opt.step()
        _assert_same_step(ours, ref, opt, ref_opt)
    return _split(count, ref_count, opt)


def check_dtensor_bitwise(rank, world, mesh, tmp):
    """The same parameters as DTensors (Shard(0) and Shard(1), ragged and empty shards): bitwise equal to the
    single-process step, and each rank transforms only the tensors it owns."""
    from torch.distributed.tensor import Shard, distribute_tensor

    from orthokern.optim import Orthogonal, set_view

    views = synth_views()
    dims = [d for _, _, d, _ in SYNTH]
    ours = [nn.Parameter(distribute_tensor(v.clone(), mesh, [Shard(d)])) for v, d in zip(synth_values(-1), dims)]
    ref = [nn.Parameter(v.clone()) for v in synth_values(-1)]
    for i, v in views.items():
        set_view(ours[i], v)
        set_view(ref[i], v)
    opt = Orthogonal(RecordingSGD)(synth_groups(ours), lr=0.1, momentum=0.9, weight_decay=1e-2)
    ref_opt = Orthogonal(RecordingSGD)(synth_groups(ref), lr=0.1, momentum=0.9, weight_decay=1e-2,
                                       distributed=False)
    for step in range(STEPS):
        for p, q, g, d in zip(ours, ref, synth_values(step), dims):
            p.grad = distribute_tensor(g.clone(), mesh, [Shard(d)])
            q.grad = g.clone()
        with PolarCounter() as count:
            opt.step()
        with PolarCounter() as ref_count:
            ref_opt.step()
        _assert_same_step(ours, ref, opt, ref_opt)
    for i, p in enumerate(ours):
        assert p.placements == (Shard(dims[i]),), (i, p.placements)
    return _split(count, ref_count, opt)


def check_hsdp(rank, world, mesh, tmp):
    """HSDP's layout on a 2 x 2 mesh, (Replicate, Shard(0)): each replica group shares the work within itself;
    bitwise equal to the single-process step. orthokern.polar on that layout too. World size 4 only."""
    if world != 4:
        return {"skipped": True}
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    import orthokern
    from orthokern.optim import Orthogonal

    mesh2 = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
    layout = [Replicate(), Shard(0)]
    vals = synth_values(-1)[:6]
    ours = [nn.Parameter(distribute_tensor(v.clone(), mesh2, layout)) for v in vals]
    ref = [nn.Parameter(v.clone()) for v in vals]
    opt = Orthogonal(RecordingSGD)(ours, lr=0.1, momentum=0.9)
    ref_opt = Orthogonal(RecordingSGD)(ref, lr=0.1, momentum=0.9, distributed=False)
    for step in range(2):
        for p, q, g in zip(ours, ref, synth_values(step)[:6]):
            p.grad, q.grad = distribute_tensor(g.clone(), mesh2, layout), g.clone()
        with PolarCounter() as count:
            opt.step()
        ref_opt.step()
        _assert_same_step(ours, ref, opt, ref_opt)
    assert all(p.placements == tuple(layout) for p in ours)
    assert 0 < count.matrices < 6 and opt.orthokern_stats.world_size == 2, (count.matrices, opt.orthokern_stats)
    G = vals[0]
    O = orthokern.polar(distribute_tensor(G.reshape(6, 4, 9), mesh2, [Shard(0), Shard(2)]))
    assert O.placements == (Shard(0), Shard(2))
    assert_same(O.full_tensor(), orthokern.polar(G.reshape(6, 4, 9)), _exact(), "polar on a 2-D mesh")
    return {}


def check_every_rank_baseline(rank, world, mesh, tmp):
    """distributed=False on DTensors: every rank gathers and computes everything (the benchmark's baseline)."""
    from torch.distributed.tensor import Shard, distribute_tensor

    from orthokern.optim import FastOrthogonalSGD

    vals = synth_values(0)[:6]
    ours = [nn.Parameter(distribute_tensor(v.clone(), mesh, [Shard(0)])) for v in vals]
    ref = [nn.Parameter(v.clone()) for v in vals]
    for p, q, g in zip(ours, ref, synth_values(1)[:6]):
        p.grad, q.grad = distribute_tensor(g.clone(), mesh, [Shard(0)]), g.clone()
    opt = FastOrthogonalSGD(ours, lr=0.1, distributed=False)
    with PolarCounter() as count:
        opt.step()
    FastOrthogonalSGD(ref, lr=0.1, distributed=False).step()
    for p, q in zip(ours, ref):
        assert_same(p.full_tensor(), q, _exact(), "every-rank baseline")
    assert count.matrices == 6 and opt.orthokern_stats.matrices == 6, (count.matrices, opt.orthokern_stats)
    return {}


def _ddp_run(rank, world, steps):
    from torch.nn.parallel import DistributedDataParallel as DDP

    from orthokern.optim import FastOrthogonalSGD

    model = make_net()
    ddp = DDP(model)
    opt = FastOrthogonalSGD(ddp.parameters(), lr=0.05, weight_decay=1e-3)
    for step in range(steps):
        opt.zero_grad()
        x, y = local_batch(step, rank, world)
        F.cross_entropy(ddp(x), y).backward()
        with PolarCounter() as count:
            opt.step()
    return model, opt, count


def check_ddp(rank, world, mesh, tmp):
    """DDP: matches the single-process optimiser on the whole batch; the work is shared."""
    model, opt, count = _ddp_run(rank, world, STEPS)
    ref, ref_opt = train_reference(STEPS - 1)
    with PolarCounter() as ref_count:
        train_reference(1, start=STEPS - 1, model=ref, opt=ref_opt)
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, atol=TRAJECTORY_ATOL, rtol=0, msg=lambda m, name=name: f"{name}: {m}")
    return dict(_split(count, ref_count, opt), params=[p.detach().flatten()[:8].tolist() for p in model.parameters()])


def _fsdp_model(mesh):
    from torch.distributed.fsdp import fully_shard

    model = make_net()
    for m in (model.conv1, model.conv2, model.conv3, model.conv4, model.fc1, model.fc2):
        fully_shard(m, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _fsdp_train(model, opt, rank, world, steps, start=0):
    for step in range(start, start + steps):
        opt.zero_grad()
        x, y = local_batch(step, rank, world)
        F.cross_entropy(model(x), y).backward()
        with PolarCounter() as count:
            opt.step()
    return count


def check_fsdp2(rank, world, mesh, tmp):
    """FSDP2 (fully_shard): matches the single-process optimiser on the whole batch; the work is shared;
    the optimiser state saved at this world size is written for the world-size-1 run to resume from."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    from orthokern.optim import FastOrthogonalSGD

    model = _fsdp_model(mesh)
    opt = FastOrthogonalSGD(model.parameters(), lr=0.05, weight_decay=1e-3, method="gram_eigh", nesterov=True)
    count = _fsdp_train(model, opt, rank, world, STEPS)
    ref, ref_opt = train_reference(STEPS - 1, method="gram_eigh", nesterov=True)
    with PolarCounter() as ref_count:
        train_reference(1, start=STEPS - 1, model=ref, opt=ref_opt)
    # A copy at every world size (on one rank full_tensor() returns the parameter itself).
    full = {n: p.full_tensor().detach().clone() for n, p in model.named_parameters()}
    for (name, q) in ref.named_parameters():
        torch.testing.assert_close(full[name], q, atol=TRAJECTORY_ATOL, rtol=0,
                                   msg=lambda m, name=name: f"{name}: {m}")
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd, osd = get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, opt, options=opts)
    _fsdp_train(model, opt, rank, world, 2, start=STEPS)
    final = {n: p.full_tensor() for n, p in model.named_parameters()}  # a collective: every rank takes part
    if rank == 0 and world == 2:
        torch.save({"model": msd, "optim": osd, "final": final}, os.path.join(tmp, "fsdp_w2.pt"))
    dist.barrier()
    return dict(_split(count, ref_count, opt), params=[full[n].flatten()[:8].tolist() for n in sorted(full)])


def check_resume_from_two_ranks(rank, world, mesh, tmp):
    """World size 1 only: the optimiser state saved by 2 FSDP2 ranks loads into a plain single-process model and
    optimiser, keeps the orthokern settings, and continues where the 2-rank run went."""
    if world != 1:
        return {"skipped": True}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    from orthokern.optim import FastOrthogonalSGD

    saved = torch.load(os.path.join(tmp, "fsdp_w2.pt"), weights_only=True)
    model = make_net(seed=1)
    model.load_state_dict(saved["model"])
    opt = FastOrthogonalSGD(model.parameters(), lr=1.0, momentum=0.1)  # everything comes from the checkpoint
    set_optimizer_state_dict(model, opt, saved["optim"], options=StateDictOptions(full_state_dict=True))
    group = opt.param_groups[0]
    assert (group["lr"], group["method"], group["nesterov"], group["transform"]) == (0.05, "gram_eigh", True,
                                                                                     "polar"), group
    train_reference(2, start=STEPS, model=model, opt=opt)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), saved["final"][name], atol=TRAJECTORY_ATOL, rtol=0,
                                   msg=lambda m, name=name: f"{name}: {m}")
    return {}


def check_polar_on_dtensor(rank, world, mesh, tmp):
    """orthokern.polar on DTensors: batch shards stay local, matrix shards are moved or gathered, Partial is
    reduced; the result has the input's placements and the plain result's values; autograd flows through."""
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor

    import orthokern
    from orthokern.testing import random_matrix

    G = random_matrix(4, 10, 6, "decaying", dtype=torch.float64, seed=3)
    backends = [None, "torch"] + (["cpp"] if "cpp" in orthokern.available_backends("cpu") else [])
    for backend in backends:
        for placements in ([Shard(0)], [Shard(1)], [Shard(2)], [Replicate()]):
            D = distribute_tensor(G, mesh, placements)
            O = orthokern.polar(D, backend=backend)
            assert isinstance(O, DTensor) and O.placements == tuple(placements), (backend, O.placements)
            assert_same(O.full_tensor(), orthokern.polar(G, backend=backend), _exact(backend),
                        f"backend {backend}, {placements}")
        wide = distribute_tensor(G[0].mT.contiguous(), mesh, [Shard(1)])
        assert_same(orthokern.polar(wide, backend=backend).full_tensor(), orthokern.polar(G[0].mT, backend=backend),
                    _exact(backend), f"backend {backend}, wide")
    # Partial: the sum of the ranks' values is reduced before the polar factor, and the result is replicated.
    part = DTensor.from_local(G / world, mesh, [Partial()], run_check=False)
    O = orthokern.polar(part)
    assert O.placements == (Replicate(),)
    torch.testing.assert_close(O.full_tensor(), orthokern.polar(G), atol=1e-12, rtol=0)
    # Autograd through the redistributions matches the plain gradient.
    W = torch.randn(4, 10, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    X = G.clone().requires_grad_()
    (orthokern.polar(X) * W).sum().backward()
    Xd = distribute_tensor(G.clone(), mesh, [Shard(1)]).requires_grad_()
    (orthokern.polar(Xd) * distribute_tensor(W, mesh, [Shard(1)])).sum().backward()
    torch.testing.assert_close(Xd.grad.full_tensor(), X.grad, atol=1e-12, rtol=0)
    # check_finite decides on the whole tensor: every rank raises, none hangs.
    bad = G.clone()
    bad[3, 9, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        orthokern.polar(distribute_tensor(bad, mesh, [Shard(0)]), check_finite=True)
    return {}


def check_ops_on_dtensor(rank, world, mesh, tmp):
    """The compiled ops called directly on DTensors run (sharding rules registered by orthokern._dtensor)."""
    from torch.distributed.tensor import Shard, distribute_tensor

    import orthokern
    import orthokern._dtensor as odt
    from orthokern.testing import random_matrix

    if "cpp" not in orthokern.available_backends("cpu"):
        return {"skipped": "the compiled extension is not built"}
    assert {"gram_eigh_polar", "cholqr2_polar", "gram_ns_factor"} <= set(odt.REGISTERED), odt.REGISTERED
    G = random_matrix(4, 10, 6, "decaying", dtype=torch.float64, seed=4)
    for placements in ([Shard(0)], [Shard(1)]):
        D = distribute_tensor(G, mesh, placements)
        torch.testing.assert_close(torch.ops.orthokern.gram_eigh_polar(D, 1e-3).full_tensor(),
                                   torch.ops.orthokern.gram_eigh_polar(G, 1e-3), atol=0, rtol=0)
        torch.testing.assert_close(torch.ops.orthokern.cholqr2_polar(D, 1e-3).full_tensor(),
                                   torch.ops.orthokern.cholqr2_polar(G, 1e-3), atol=0, rtol=0)
    A = G.mT @ G
    coeffs = [1.5, -0.5, 0.0] * 3
    Q = torch.ops.orthokern.gram_ns_factor(distribute_tensor(A, mesh, [Shard(0)]), coeffs)
    assert torch.equal(Q.full_tensor(), torch.ops.orthokern.gram_ns_factor(A, coeffs))
    return {}


def check_triton_on_dtensor(rank, world, mesh, tmp):
    """The Triton backend (interpreted on a CPU) through polar on a DTensor, and a Triton op called directly."""
    from torch.distributed.tensor import Shard, distribute_tensor

    import orthokern
    import orthokern._dtensor as odt
    from orthokern.testing import random_matrix

    if "triton" not in orthokern.available_backends("cpu"):
        return {"skipped": "Triton cannot run here (on a CPU it needs TRITON_INTERPRET=1)"}
    assert "triton_sym_gram" in odt.REGISTERED, odt.REGISTERED
    G = random_matrix(2, 16, 8, "decaying", dtype=torch.float32, seed=5)
    O = orthokern.polar(distribute_tensor(G, mesh, [Shard(1)]), backend="triton", method="gram_eigh")
    # Its eigensolver is torch.linalg.eigh: equal to rounding (see ROUNDING).
    assert_same(O.full_tensor(), orthokern.polar(G, backend="triton", method="gram_eigh"), False, "triton")
    A = torch.ops.orthokern.triton_sym_gram(distribute_tensor(G, mesh, [Shard(0)]), None, False, torch.float32, 1,
                                            "tf32x3")
    torch.testing.assert_close(A.full_tensor(), torch.ops.orthokern.triton_sym_gram(G, None, False, torch.float32,
                                                                                      1, "tf32x3"), atol=0, rtol=0)
    return {}


def check_polar_by_shape(rank, world, mesh, tmp):
    """polar_by_shape (the entry point other optimisers use) shares plain matrices and handles DTensors."""
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    import orthokern
    from orthokern.optim import polar_by_shape
    from orthokern.testing import random_matrix

    mats = [random_matrix(1, m, n, dtype=torch.float64, seed=s)[0]
            for s, (m, n) in enumerate([(8, 5), (8, 5), (8, 5), (3, 9), (6, 6)])]
    expect = [orthokern.polar(G) for G in mats]
    with PolarCounter() as count:
        got = polar_by_shape(mats)
    for a, b in zip(got, expect):
        assert_same(a, b, _exact(), "polar_by_shape")
    shares = _gather(count.matrices)
    assert sum(shares) == len(mats), shares
    dts = [distribute_tensor(G, mesh, [Shard(0)]) for G in mats]
    got = polar_by_shape(dts)
    for o, e in zip(got, expect):
        assert isinstance(o, DTensor)
        assert_same(o.full_tensor(), e, _exact(), "polar_by_shape on DTensors")
    return {"shares": shares}


def check_process_group_option(rank, world, mesh, tmp):
    """distributed=<ProcessGroup>: shares over that group; deepcopy shares the group, pickle refuses by name."""
    import copy
    import pickle

    from orthokern.optim import FastOrthogonalSGD

    ps = [nn.Parameter(v.clone()) for v in synth_values(0)[:5]]
    opt = FastOrthogonalSGD(ps, lr=0.1, distributed=dist.group.WORLD)
    for p, g in zip(ps, synth_values(1)[:5]):
        p.grad = g
    opt.step()
    assert opt.orthokern_stats.world_size == world
    assert copy.deepcopy(opt)._orthokern.distributed is dist.group.WORLD
    with pytest.raises(TypeError, match="ProcessGroup"):
        pickle.dumps(opt)
    return {}


CHECKS = [check_replicated_bitwise, check_dtensor_bitwise, check_hsdp, check_every_rank_baseline, check_ddp,
          check_fsdp2, check_resume_from_two_ranks, check_polar_on_dtensor, check_ops_on_dtensor,
          check_triton_on_dtensor, check_polar_by_shape, check_process_group_option]


def _worker(rank, world, tmp):
    torch.set_num_threads(1)  # several ranks share the CPU
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store_{world}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S // 2))
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    results = {}
    for check in CHECKS:
        try:
            results[check.__name__] = {"ok": True, "data": check(rank, world, mesh, tmp)}
        except Exception:
            results[check.__name__] = {"ok": False, "error": traceback.format_exc()}
        dist.barrier()
    with open(os.path.join(tmp, f"result_{world}_{rank}.json"), "w") as f:
        json.dump(results, f)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{world: [results of rank 0, rank 1, ...]} for every world size, each spawned once."""
    import torch.multiprocessing as mp

    tmp = str(tmp_path_factory.mktemp("distributed"))
    # A fork server imports torch and orthokern once and forks every worker from that clean process (one that
    # has run no OpenMP region, unlike this one): spawning would import them again in each of the 7 workers.
    mp.set_forkserver_preload(["torch", "torch.distributed.tensor", "orthokern", __name__])
    out = {}
    for world in WORLD_SIZES:
        ctx = mp.start_processes(_worker, args=(world, tmp), nprocs=world, join=False, start_method="forkserver")
        try:
            deadline = TIMEOUT_S
            while not ctx.join(timeout=5):
                deadline -= 5
                if deadline <= 0:
                    raise TimeoutError(f"world size {world}: workers did not finish in {TIMEOUT_S} s")
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
        out[world] = []
        for rank in range(world):
            with open(os.path.join(tmp, f"result_{world}_{rank}.json")) as f:
                out[world].append(json.load(f))
    return out


def _results(runs, world, check):
    per_rank = [r[check] for r in runs[world]]
    errors = [f"rank {i}:\n{r['error']}" for i, r in enumerate(per_rank) if not r["ok"]]
    assert not errors, "\n".join(errors)
    return [r["data"] for r in per_rank]


@pytest.mark.parametrize("world", WORLD_SIZES)
@pytest.mark.parametrize("check", [c.__name__ for c in CHECKS])
def test_distributed(runs, world, check):
    _results(runs, world, check)


@pytest.mark.parametrize("world", WORLD_SIZES)
@pytest.mark.parametrize("check", ["check_replicated_bitwise", "check_dtensor_bitwise", "check_ddp", "check_fsdp2"])
def test_each_rank_transforms_only_its_share(runs, world, check):
    datas = _results(runs, world, check)
    seen = [d["polar_matrices"] for d in datas]
    total = datas[0]["single_process_matrices"]
    stats = [d["stats"] for d in datas]
    # The ranks' polar calls together saw every matrix of the single-process step exactly once ...
    assert sum(seen) == total, (seen, total)
    assert all(s["world_size"] == world for s in stats), stats
    if world > 1:
        # ... each rank only a part of them, and the shares were exchanged.
        assert max(seen) < total and min(seen) > 0, seen
        assert all(s["collectives"] > 0 and s["bytes_received"] > 0 for s in stats), stats
    else:
        assert all(s["bytes_received"] == 0 for s in stats), stats


@pytest.mark.parametrize("check", ["check_ddp", "check_fsdp2"])
def test_same_trajectory_at_every_world_size(runs, check):
    first = {w: _results(runs, w, check)[0]["params"] for w in WORLD_SIZES}
    for w in WORLD_SIZES[1:]:
        for a, b in zip(first[WORLD_SIZES[0]], first[w]):
            torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=TRAJECTORY_ATOL, rtol=0)


@pytest.mark.parametrize("world", [2, 3, 4, 8])
def test_plan_balances_cost_to_within_one_matrix(world):
    from orthokern.bench.suites import RESNET50_SHAPES
    from orthokern.optim.distributed import matrix_cost, plan

    buckets = [(count, matrix_cost(m, n)) for (m, n), count in RESNET50_SHAPES.items()]
    counts = plan(buckets, world)
    assert [sum(c) for c in counts] == [n for n, _ in buckets]
    for (n, _), c in zip(buckets, counts):
        assert set(c) <= {n // world, n // world + 1}, c  # even parts, one more for the luckiest
    loads = [sum(c[r] * cost for (_, cost), c in zip(buckets, counts)) for r in range(world)]
    assert max(loads) - min(loads) <= max(cost for _, cost in buckets), loads
    assert plan(buckets, world) == counts  # a function of the shapes alone: every rank gets the same plan


@pytest.mark.slow
def test_distributed_digits_example(tmp_path):
    """``torchrun --nproc_per_node=2 examples/distributed_digits.py`` trains under FSDP2, shares the work, and
    learns (one epoch)."""
    import pathlib
    import subprocess
    import sys

    pytest.importorskip("sklearn", reason="the digits example needs scikit-learn")
    script = pathlib.Path(__file__).resolve().parents[1] / "examples" / "distributed_digits.py"
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--standalone", str(script), "--epochs", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["world_size"] == 2 and report["test_accuracy"][-1] > 0.8, report
    ranks = report["per_rank"]
    assert sum(r["matrices"] for r in ranks) == ranks[0]["matrices_total"] == 4, ranks
    assert all(0 < r["matrices"] < 4 and r["bytes_received"] > 0 for r in ranks), ranks
