"""orthokern.optim.StiefelSGD (Riemannian SGD with the polar retraction), project_to_stiefel_ and the polar
parametrisation orthokern.nn.utils.orthogonal."""
import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from orthokern.nn.init import orthogonal_
from orthokern.nn.utils import PolarOrthogonal, orthogonal, project_to_stiefel_
from orthokern.optim import StiefelSGD
from orthokern.optim.stiefel import tangent_projection

F64 = torch.float64


def _mat(p):
    return p.detach().reshape(p.shape[0], -1).double()


def off_manifold(p, gain):
    """||S - gain^2 I||_2 with S the Gram matrix on the smaller side."""
    A = _mat(p)
    S = A @ A.T if A.shape[0] <= A.shape[1] else A.T @ A
    return torch.linalg.matrix_norm(S - gain**2 * torch.eye(S.shape[0], dtype=F64), ord=2).item()


def polar_svd(A):
    U, _, Vh = torch.linalg.svd(A, full_matrices=False)
    return U @ Vh


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.wide = nn.Linear(20, 12)
        self.tall = nn.Linear(5, 30)
        self.conv = nn.Conv2d(3, 8, 3)
        self.twin = nn.Linear(20, 12)  # same shape as `wide`: one batched retraction

    def forward(self, x, img, z):
        return (self.wide(x).tanh().sum() + self.twin(x).square().mean() + self.tall(z).sin().sum()
                + self.conv(img).square().mean())


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 20, generator=g), torch.randn(4, 3, 6, 6, generator=g), torch.randn(16, 5, generator=g)


@pytest.mark.parametrize("momentum,nesterov,gain", [(0.0, False, 1.0), (0.9, False, 1.5), (0.9, True, 1.0)])
def test_weights_stay_on_the_manifold_for_200_float32_steps(momentum, nesterov, gain):
    torch.manual_seed(0)
    net = Net()
    opt = StiefelSGD(net.parameters(), lr=0.05, momentum=momentum, nesterov=nesterov, gain=gain)
    biases0 = [m.bias.detach().clone() for m in (net.wide, net.tall, net.conv)]
    w0 = net.wide.weight.detach().clone()
    for step in range(200):
        opt.zero_grad()
        net(*_batch(step)).backward()
        opt.step()
    for m in (net.wide, net.tall, net.conv, net.twin):
        assert m.weight.dtype == torch.float32
        assert off_manifold(m.weight, gain) <= 1e-6 * gain**2, m
    # it moved, and the biases took plain SGD steps
    assert (net.wide.weight - w0).abs().max() > 1e-2
    assert all((m.bias - b).abs().max() > 0 for m, b in zip((net.wide, net.tall, net.conv), biases0))


def test_solves_orthogonal_procrustes_to_the_svd_answer():
    # min_W ||A W - B||_F^2 over orthogonal W: W* = polar(A^T B) (Schonemann 1966).
    g = torch.Generator().manual_seed(0)
    A = torch.randn(64, 8, dtype=F64, generator=g)
    Q = polar_svd(torch.randn(8, 8, dtype=F64, generator=g))
    B = A @ Q + 0.1 * torch.randn(64, 8, dtype=F64, generator=g)
    W = nn.Parameter(orthogonal_(torch.empty(8, 8, dtype=F64), generator=g))
    opt = StiefelSGD([W], lr=0.01, momentum=0.9)
    for _ in range(300):
        opt.zero_grad()
        ((A @ W - B) ** 2).sum().backward()
        opt.step()
    answer = polar_svd(A.T @ B)
    assert (W.detach() - answer).abs().max() <= 1e-6
    assert off_manifold(W, 1.0) <= 1e-12


def _reference_run(W0, grads_of, steps, lr, mu, gain, nesterov=False, dampening=0.0):
    """The module docstring's update, written out per matrix with an SVD polar factor."""
    X = W0.clone()
    tall = X.shape[0] >= X.shape[1]
    buf = None
    for t in range(steps):
        G = grads_of(X, t)
        Xt, Gt = (X, G) if tall else (X.T, G.T)
        Y = Xt / gain
        xi = Gt - Y @ ((Y.T @ Gt + Gt.T @ Y) / 2)
        if mu:
            if buf is None:
                buf = xi
            else:
                buf = mu * (buf - Y @ ((Y.T @ buf + buf.T @ Y) / 2)) + (1 - dampening) * xi
            d = xi + mu * buf if nesterov else buf
        else:
            d = xi
        Xt = gain * polar_svd(Xt - lr * d)
        X = Xt if tall else Xt.T
    return X


@pytest.mark.parametrize("shape", [(9, 4), (4, 9), (6, 6)])
@pytest.mark.parametrize("nesterov", [False, True])
def test_matches_the_written_out_update_in_float64(shape, nesterov):
    gain, lr, mu = 1.3, 0.05, 0.8
    g = torch.Generator().manual_seed(1)
    T = torch.randn(shape, dtype=F64, generator=g)
    C = torch.randn(shape, dtype=F64, generator=g)

    def grads_of(X, t):  # the gradient of sum(sin(X) * T) + t * ||X - C||^2 / 10, a made-up smooth loss
        return torch.cos(X) * T + (t / 5.0) * (X - C)

    W0 = orthogonal_(torch.empty(shape, dtype=F64), gain, generator=g)
    W = nn.Parameter(W0.clone())
    opt = StiefelSGD([W], lr=lr, momentum=mu, nesterov=nesterov, gain=gain)
    for t in range(25):
        W.grad = grads_of(W.detach(), t)
        opt.step()
    ref = _reference_run(W0, grads_of, 25, lr, mu, gain, nesterov=nesterov)
    assert (W.detach() - ref).abs().max() <= 1e-10


def test_tangent_projection_is_a_projection_onto_the_tangent_space():
    gain = 2.0
    X = orthogonal_(torch.empty(3, 10, 4, dtype=F64), gain, batch_dims=1)
    Z = torch.randn(3, 10, 4, dtype=F64)
    P = tangent_projection(X, Z, gain)
    assert (X.mT @ P + P.mT @ X).abs().max() <= 1e-12  # tangent
    assert (tangent_projection(X, P, gain) - P).abs().max() <= 1e-12  # idempotent
    assert tangent_projection(X, X, gain).abs().max() <= 1e-12  # weight decay's direction is normal


def test_plain_parameters_follow_torch_sgd_exactly():
    torch.manual_seed(0)
    net = Net()
    kw = {"lr": 0.03, "momentum": 0.9, "weight_decay": 1e-2, "nesterov": True}
    opt = StiefelSGD([{"params": [p for p in net.parameters() if p.dim() >= 2]},
                      {"params": [p for p in net.parameters() if p.dim() < 2], "stiefel": False}], **kw)
    ref = copy.deepcopy(net)  # after the projection, so that the forward passes agree
    for p in ref.parameters():
        p.requires_grad_(p.dim() < 2)
    sgd = torch.optim.SGD([p for p in ref.parameters() if p.dim() < 2], **kw)
    for step in range(10):
        opt.zero_grad()
        sgd.zero_grad()
        net(*_batch(step)).backward()
        ref(*_batch(step)).backward()
        opt.step()
        sgd.step()
        for a, b in zip(net.parameters(), ref.parameters()):
            if a.dim() < 2:
                assert torch.equal(a, b)
            else:  # keep the two forward passes identical
                with torch.no_grad():
                    b.copy_(a)


def test_construction_projects_selected_weights_to_their_nearest_point():
    torch.manual_seed(3)
    lin = nn.Linear(7, 5).double()
    W = lin.weight.detach().clone()
    StiefelSGD(lin.parameters(), lr=0.1, gain=2.0)
    assert (lin.weight.detach() - 2.0 * polar_svd(W)).abs().max() <= 1e-10
    assert lin.bias.dim() == 1  # untouched by the projection, which only applies to >= 2-D weights


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(0)
    a = Net()
    opt_a = StiefelSGD(a.parameters(), lr=0.05, momentum=0.9, gain=1.2)
    for step in range(3):
        opt_a.zero_grad()
        a(*_batch(step)).backward()
        opt_a.step()
    b = copy.deepcopy(a)
    opt_b = StiefelSGD(b.parameters(), lr=0.05, momentum=0.9, gain=1.2)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # torch shares the state tensors otherwise
    for step in range(3, 6):
        for net, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            net(*_batch(step)).backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_bad_input_names_the_argument():
    lin = nn.Linear(4, 3)
    with pytest.raises(ValueError, match="stiefel=True.*parameter 1.*shape \\(3,\\)"):
        StiefelSGD([{"params": list(lin.parameters()), "stiefel": True}], lr=0.1)
    with pytest.raises(ValueError, match="gain"):
        StiefelSGD(lin.parameters(), lr=0.1, gain=0.0)
    with pytest.raises(ValueError, match="gain"):
        StiefelSGD([{"params": [lin.weight], "gain": -1.0}], lr=0.1)
    with pytest.raises(ValueError, match="stiefel"):
        StiefelSGD(lin.parameters(), lr=0.1, stiefel="conv")
    with pytest.raises(ValueError, match="lr"):
        StiefelSGD(lin.parameters(), lr=-0.1)
    with pytest.raises(ValueError, match="nesterov"):
        StiefelSGD(lin.parameters(), lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="method"):
        StiefelSGD(lin.parameters(), lr=0.1, method="qr")


def test_rank_deficient_weight_is_refused_at_construction():
    W = nn.Parameter(torch.zeros(4, 6))
    with pytest.raises(ValueError, match="rank-deficient"):
        StiefelSGD([W], lr=0.1)
    W2 = torch.randn(6, 4)
    W2[:, 3] = W2[:, 0]
    with pytest.raises(ValueError, match="rank-deficient"):
        StiefelSGD([nn.Parameter(W2)], lr=0.1)


def test_non_finite_gradient_raises_and_changes_nothing():
    torch.manual_seed(0)
    net = Net()
    opt = StiefelSGD(net.parameters(), lr=0.1, momentum=0.9)
    net(*_batch(0)).backward()
    net.conv.weight.grad[0, 0, 0, 0] = float("nan")
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(FloatingPointError, match=r"group 0 #4 \(8, 3, 3, 3\)"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before))
    assert len(opt.state) == 0


def test_project_to_stiefel_gives_the_nearest_point_and_names_bad_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 9), nn.Conv1d(2, 3, 4)).double()
    ws = {n: p.detach().clone() for n, p in model.named_parameters()}
    project_to_stiefel_(model, gain=0.5)
    for n, p in model.named_parameters():
        if p.dim() >= 2:
            expect = 0.5 * polar_svd(_mat(ws[n])).reshape(p.shape)
            assert (p.detach() - expect).abs().max() <= 1e-12, n
        else:
            assert torch.equal(p, ws[n])
    bad = {"ok": torch.randn(3, 5), "zero": torch.zeros(3, 5), "nan": torch.full((2, 2), float("nan"))}
    keep = bad["ok"].clone()
    with pytest.raises(ValueError, match="nan"):
        project_to_stiefel_(bad)
    with pytest.raises(ValueError, match="zero"):
        project_to_stiefel_({"ok": bad["ok"], "zero": bad["zero"]})
    assert torch.equal(bad["ok"], keep)
    with pytest.raises(ValueError, match="gain"):
        project_to_stiefel_(model, gain=float("inf"))


def test_polar_parametrisation_keeps_the_weight_on_the_manifold_while_training():
    torch.manual_seed(0)
    lin = orthogonal(nn.Linear(12, 5), gain=1.5)
    assert parametrize.is_parametrized(lin, "weight")
    assert off_manifold(lin.weight, 1.5) <= 1e-5
    opt = torch.optim.SGD(lin.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(64, 12), torch.randn(64, 5)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = ((lin(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]
    assert off_manifold(lin.weight, 1.5) <= 1e-5
    # assigning a weight stores its nearest orthonormal matrix
    W = torch.randn(5, 12)
    with torch.no_grad():
        lin.weight = W
    assert torch.allclose(lin.weight.double(), 1.5 * polar_svd(W.double()), atol=1e-5)


def test_polar_parametrisation_gradient_is_polars_backward():
    param = PolarOrthogonal(gain=2.0)
    X = torch.randn(7, 4, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(param, (X,), eps=1e-6, atol=1e-6)
    nodes, stack = set(), [param(X).grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and type(node).__name__ not in nodes:
            nodes.add(type(node).__name__)
            stack += [n for n, _ in node.next_functions]
    assert any("PolarFunction" in n for n in nodes), nodes


def test_polar_parametrisation_bad_input():
    with pytest.raises(ValueError, match="2 dimensions"):
        orthogonal(nn.Linear(3, 3), "bias")
    with pytest.raises(ValueError, match="no tensor named 'weigth'"):
        orthogonal(nn.Linear(3, 3), "weigth")
    with pytest.raises(ValueError, match="gain"):
        orthogonal(nn.Linear(3, 3), gain=0)
    with pytest.raises(TypeError, match="module"):
        orthogonal(torch.randn(3, 3))
