"""FastOrthogonalSGD and the orthogonalising wrappers, stepped side by side with a plain SVD implementation of
Orthogonal-SGDM (reshape the gradient, SVD in float64, U V^T, then the torch optimiser's own step)."""
import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import orthokern
import orthokern.optim as ok_optim
from orthokern.optim import FastOrthogonalSGD, Orthogonal, orthogonalise

RCOND = orthokern.DEFAULT_RCOND


class SmallCNN(nn.Module):
    """conv2 and conv3 share the matrix shape (6, 54): they must go through one batched polar call."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(6, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.bn(self.conv3(x)))
        return self.fc(x.flatten(1))


def make_model(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return SmallCNN().to(dtype)


def batch(i, dtype=torch.float64):
    g = torch.Generator().manual_seed(1000 + i)
    return torch.randn(16, 2, 8, 8, generator=g, dtype=dtype), torch.randint(0, 5, (16,), generator=g)


def backward(model, i):
    x, y = batch(i, next(model.parameters()).dtype)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss


def svd_polar(G):
    """The reference: U V^T of G in float64, dropping singular values below rcond * s_max like orthokern does."""
    U, s, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    keep = s > RCOND * s[0]
    return (U[:, keep] @ Vh[keep]).to(G.dtype)


def orthogonalise_reference(model, selected=lambda name, p: p.dim() >= 2):
    """The paper's rule, plainly: overwrite p.grad with the polar factor of its (out, fan-in) reshape."""
    for name, p in model.named_parameters():
        if p.grad is not None and selected(name, p):
            p.grad = svd_polar(p.grad.reshape(p.shape[0], -1)).reshape(p.shape)


def train_pair(model, opt, ref_model, ref_opt, steps, selected=None, start=0):
    kw = {} if selected is None else {"selected": selected}
    for i in range(start, start + steps):
        opt.zero_grad()
        backward(model, i)
        opt.step()
        ref_opt.zero_grad()
        backward(ref_model, i)
        orthogonalise_reference(ref_model, **kw)
        ref_opt.step()


def assert_params_close(model, ref_model, atol):
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, atol=atol, rtol=0, msg=lambda m, name=name: f"{name}: {m}")


SGD_VARIANTS = [
    dict(momentum=0.9),
    dict(momentum=0.9, nesterov=True, weight_decay=5e-4),
    dict(momentum=0.5, dampening=0.1, weight_decay=1e-2),
    dict(momentum=0.0),
    dict(momentum=0.9, weight_decay=5e-4, maximize=True),
    dict(momentum=0.9, foreach=False),
    dict(momentum=0.9, weight_decay=5e-4, fused=True),
]


@pytest.mark.parametrize("variant", SGD_VARIANTS, ids=lambda v: ",".join(f"{k}={v}" for k, v in v.items()))
def test_sgd_matches_svd_reference(variant):
    model = make_model()
    ref = copy.deepcopy(model)
    opt = FastOrthogonalSGD(model.parameters(), lr=0.05, method="svd", **variant)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, **variant)
    train_pair(model, opt, ref, ref_opt, steps=5)
    assert_params_close(model, ref, atol=1e-10)
    # The reference moved the parameters a lot (so the comparison is not vacuous) ...
    assert (model.conv1.weight - make_model().conv1.weight).abs().max() > 1e-2
    # ... and plain SGD, on the raw gradients, would not have matched.
    plain = make_model()
    plain_opt = torch.optim.SGD(plain.parameters(), lr=0.05, **variant)
    for i in range(5):
        plain_opt.zero_grad()
        backward(plain, i)
        plain_opt.step()
    assert (plain.conv1.weight - model.conv1.weight).abs().max() > 1e-3


@pytest.mark.parametrize("method", ["auto", "gram_eigh", "cholqr2", "newton_schulz"])
def test_sgd_other_methods_match_reference(method):
    # float64 everywhere: every method's accurate mode agrees with the SVD to well below 1e-6 there.
    model = make_model()
    ref = copy.deepcopy(model)
    opt = FastOrthogonalSGD(model.parameters(), lr=0.05, weight_decay=5e-4, method=method)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    train_pair(model, opt, ref, ref_opt, steps=4)
    assert_params_close(model, ref, atol=1e-6)


def test_float32_model_matches_reference():
    model = make_model(torch.float32)
    ref = copy.deepcopy(model)
    opt = FastOrthogonalSGD(model.parameters(), lr=0.05, weight_decay=5e-4)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    train_pair(model, opt, ref, ref_opt, steps=4)
    # Each step's update is lr * (P + wd p) with ||P||_2 = 1; E <= 1e-3 per step is the float32 contract.
    assert_params_close(model, ref, atol=4 * 0.05 * 1e-3)


@pytest.mark.parametrize("fused", [False, True])
def test_grad_scaler(fused):
    # With fused=True, GradScaler would hand the optimiser its scale to divide the gradients by inside the
    # fused kernel; the polar factors are unit-scale already, so the optimiser must opt out of that path.
    model = make_model(torch.float32)
    ref = copy.deepcopy(model)
    opt = FastOrthogonalSGD(model.parameters(), lr=0.05, method="svd", fused=fused)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    for i in range(3):
        opt.zero_grad()
        x, y = batch(i, torch.float32)
        scaler.scale(F.cross_entropy(model(x), y)).backward()
        scaler.step(opt)
        scaler.update()
        ref_opt.zero_grad()
        backward(ref, i)
        orthogonalise_reference(ref)
        ref_opt.step()
    assert_params_close(model, ref, atol=1e-4)


def test_grad_is_left_as_the_raw_gradient():
    model = make_model()
    opt = FastOrthogonalSGD(model.parameters(), lr=0.1)
    backward(model, 0)
    raw = {n: p.grad.clone() for n, p in model.named_parameters()}
    grad_objects = {n: p.grad for n, p in model.named_parameters()}
    opt.step()
    for n, p in model.named_parameters():
        assert p.grad is grad_objects[n], n
        assert torch.equal(p.grad, raw[n]), n


def test_state_dict_round_trip_continues_identically():
    model = make_model()
    opt = FastOrthogonalSGD(model.parameters(), lr=0.05, weight_decay=5e-4, nesterov=True, orthogonalise="conv")
    for i in range(3):
        opt.zero_grad()
        backward(model, i)
        opt.step()
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf)

    clone = make_model(seed=123)  # different initial values: everything must come from the checkpoint
    clone.load_state_dict(saved["model"])
    clone_opt = FastOrthogonalSGD(clone.parameters(), lr=1.0, momentum=0.1)  # overwritten by load_state_dict
    clone_opt.load_state_dict(saved["opt"])
    assert clone_opt.param_groups[0]["orthogonalise"] == "conv"
    assert clone_opt.param_groups[0]["lr"] == 0.05
    for i in range(3, 6):
        for m, o in ((model, opt), (clone, clone_opt)):
            o.zero_grad()
            backward(m, i)
            o.step()
    for p, q in zip(model.parameters(), clone.parameters()):
        assert torch.equal(p, q)


def test_loads_a_plain_sgd_state_dict():
    # Switching a run from SGD to Orthogonal-SGDM: the momentum buffers carry over, selection is the default.
    model = make_model()
    sgd = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    backward(model, 0)
    sgd.step()
    opt = FastOrthogonalSGD(model.parameters(), lr=0.05)
    # deepcopy: load_state_dict keeps the saved buffers when dtype and device match, and both would update them.
    opt.load_state_dict(copy.deepcopy(sgd.state_dict()))
    ref = copy.deepcopy(model)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    ref_opt.load_state_dict(copy.deepcopy(sgd.state_dict()))
    train_pair(model, opt, ref, ref_opt, steps=2, start=1)
    assert_params_close(model, ref, atol=1e-6)


def test_conv_only_selection():
    model = make_model()
    ref = copy.deepcopy(model)
    opt = FastOrthogonalSGD(model.parameters(), lr=0.05, method="svd", orthogonalise="conv")
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    train_pair(model, opt, ref, ref_opt, steps=3, selected=lambda name, p: p.dim() > 2)
    assert_params_close(model, ref, atol=1e-10)


def test_none_selection_is_plain_sgd():
    model = make_model()
    ref = copy.deepcopy(model)
    opt = FastOrthogonalSGD(model.parameters(), lr=0.05, orthogonalise=False)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    train_pair(model, opt, ref, ref_opt, steps=3, selected=lambda name, p: False)
    assert_params_close(model, ref, atol=0)


def test_predicate_selection():
    model = make_model()
    ref = copy.deepcopy(model)
    opt = FastOrthogonalSGD(model.parameters(), lr=0.05, method="svd",
                            orthogonalise=lambda p: p is model.conv2.weight or p is model.fc.weight)
    assert opt.param_groups[0]["orthogonalise"] == "predicate"
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    train_pair(model, opt, ref, ref_opt, steps=3, selected=lambda name, p: name in ("conv2.weight", "fc.weight"))
    assert_params_close(model, ref, atol=1e-10)


def test_per_group_flag_overrides_the_default():
    model = make_model()
    ref = copy.deepcopy(model)
    fc = list(model.fc.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc.")]
    opt = FastOrthogonalSGD(
        [{"params": rest}, {"params": fc, "orthogonalise": False, "lr": 0.02}], lr=0.05, method="svd"
    )
    ref_fc = list(ref.fc.parameters())
    ref_rest = [p for n, p in ref.named_parameters() if not n.startswith("fc.")]
    ref_opt = torch.optim.SGD([{"params": ref_rest}, {"params": ref_fc, "lr": 0.02}], lr=0.05, momentum=0.9)
    train_pair(model, opt, ref, ref_opt, steps=3, selected=lambda name, p: p.dim() >= 2 and not name.startswith("fc."))
    assert_params_close(model, ref, atol=1e-10)
    # add_param_group later gets the optimiser's default and validates its flag.
    extra = nn.Parameter(torch.randn(3, 4, dtype=torch.float64))
    opt.add_param_group({"params": [extra]})
    assert opt.param_groups[-1]["orthogonalise"] == "all"
    with pytest.raises(ValueError, match="orthogonalise"):
        opt.add_param_group({"params": [nn.Parameter(torch.randn(2, 2))], "orthogonalise": "dense"})


@pytest.mark.parametrize("base,kwargs", [
    (torch.optim.Adam, dict(lr=1e-2, weight_decay=1e-3)),
    (torch.optim.AdamW, dict(lr=1e-2, weight_decay=5e-2)),
    (torch.optim.AdamW, dict(lr=1e-2, amsgrad=True, foreach=False)),
], ids=["Adam", "AdamW", "AdamW-amsgrad"])
def test_orthogonal_wrapper_matches_reference(base, kwargs):
    model = make_model()
    ref = copy.deepcopy(model)
    opt = Orthogonal(base)(model.parameters(), method="svd", **kwargs)
    assert isinstance(opt, base) and type(opt).__name__ == f"Orthogonal{base.__name__}"
    ref_opt = base(ref.parameters(), **kwargs)
    train_pair(model, opt, ref, ref_opt, steps=4)
    # Adam divides by sqrt(v): rounding-level differences in small gradients grow to ~1e-9 in 4 steps.
    assert_params_close(model, ref, atol=1e-8)
    assert Orthogonal(base) is type(opt)


@pytest.mark.parametrize("base", [torch.optim.Adam, torch.optim.AdamW])
def test_orthogonalise_instance_matches_reference(base):
    model = make_model()
    ref = copy.deepcopy(model)
    plain = base(model.parameters(), lr=1e-2, weight_decay=1e-2)
    opt = orthogonalise(plain, method="svd", orthogonalise="conv")
    # The same object, now of the Orthogonal(base) subclass (so that copies and pickles keep orthogonalising).
    assert opt is plain and isinstance(opt, base) and type(opt) is Orthogonal(base)
    ref_opt = base(ref.parameters(), lr=1e-2, weight_decay=1e-2)
    train_pair(model, opt, ref, ref_opt, steps=4, selected=lambda name, p: p.dim() > 2)
    assert_params_close(model, ref, atol=1e-8)
    backward(model, 9)
    raw = model.conv1.weight.grad.clone()
    opt.step()
    assert torch.equal(model.conv1.weight.grad, raw)
    with pytest.raises(ValueError, match="already"):
        orthogonalise(opt)


@pytest.mark.parametrize("how", ["class", "instance"])
def test_closure_is_evaluated_once_before_orthogonalising(how):
    model = make_model()
    ref = copy.deepcopy(model)
    if how == "class":
        opt = FastOrthogonalSGD(model.parameters(), lr=0.05, method="svd")
    else:
        opt = orthogonalise(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), method="svd")
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        return backward(model, 0)

    loss = opt.step(closure)
    assert len(calls) == 1 and isinstance(loss, torch.Tensor)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    ref_loss = backward(ref, 0)
    orthogonalise_reference(ref)
    ref_opt.step()
    torch.testing.assert_close(loss, ref_loss)
    assert_params_close(model, ref, atol=1e-10)


def test_one_polar_call_per_shape_group(monkeypatch):
    model = make_model()
    # A dense layer with the same matrix shape as conv2/conv3 (6, 54) in another param group, a float32
    # parameter of that shape (a different dtype: its own call), and one frozen and one unused parameter.
    same = nn.Parameter(torch.randn(6, 54, dtype=torch.float64))
    tall = nn.Parameter(torch.randn(54, 6, dtype=torch.float64))  # the transposed shape: the same call
    other_dtype = nn.Parameter(torch.randn(6, 54))
    unused = nn.Parameter(torch.randn(4, 4, dtype=torch.float64))
    model.conv1.bias.requires_grad_(False)
    calls = []
    real = ok_optim.batched.polar

    def counting_polar(G, **kw):
        calls.append((tuple(G.shape), G.dtype))
        return real(G, **kw)

    monkeypatch.setattr(ok_optim.batched, "polar", counting_polar)
    opt = FastOrthogonalSGD([{"params": model.parameters()}, {"params": [same, tall, other_dtype, unused]}], lr=0.1)
    before = unused.detach().clone()
    for i in range(2):
        calls.clear()
        opt.zero_grad()
        loss = F.cross_entropy(model(batch(i)[0]), batch(i)[1])
        (loss + (same * model.conv3.weight.reshape(6, 54)).sum() + other_dtype.square().sum()
         + tall.square().sum()).backward()
        opt.step()
        # Polar blocks are taken tall (optim/transforms.py: oriented): a wide (6, 54) and a tall (54, 6) matrix share
        # a call.
        assert sorted(calls, key=str) == sorted([
            ((1, 18, 6), torch.float64),   # conv1
            ((4, 54, 6), torch.float64),   # conv2, conv3, same, tall
            ((1, 96, 5), torch.float64),   # fc
            ((1, 54, 6), torch.float32),   # other_dtype
        ], key=str)
    assert unused.grad is None and torch.equal(unused, before) and unused not in opt.state
    assert model.conv1.bias.grad is None


def test_step_hooks_run_once():
    # Once any SGD has stepped, torch has wrapped SGD.step with its hook runner; calling that wrapped step from
    # our own (also wrapped) step would run the user's hooks twice.
    p = nn.Parameter(torch.randn(3, 3))
    plain = torch.optim.SGD([p], lr=0.1)
    p.grad = torch.randn(3, 3)
    plain.step()
    model = make_model()
    opt = FastOrthogonalSGD(model.parameters(), lr=0.1)
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: seen.append("post"))
    backward(model, 0)
    opt.step()
    assert seen == ["pre", "post"]


def test_argument_errors():
    model = make_model()
    with pytest.raises(ValueError, match="method"):
        FastOrthogonalSGD(model.parameters(), lr=0.1, method="qr")
    with pytest.raises(ValueError, match="mode"):
        FastOrthogonalSGD(model.parameters(), lr=0.1, mode="quick")
    with pytest.raises(ValueError, match="orthogonalise"):
        FastOrthogonalSGD(model.parameters(), lr=0.1, orthogonalise="dense")
    with pytest.raises(ValueError, match="predicate"):
        FastOrthogonalSGD([{"params": model.parameters(), "orthogonalise": lambda p: True}], lr=0.1)
    with pytest.raises(ValueError, match="rcond"):
        FastOrthogonalSGD(model.parameters(), lr=0.1, rcond=2.0)
    with pytest.raises(TypeError, match="LBFGS"):
        Orthogonal(torch.optim.LBFGS)
    with pytest.raises(TypeError, match="optimizer_cls"):
        Orthogonal(nn.Linear)
    with pytest.raises(TypeError, match="already"):
        Orthogonal(FastOrthogonalSGD)
    opt = FastOrthogonalSGD(model.parameters(), lr=0.1, backend="cuda")
    backward(model, 0)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="cuda"):
            opt.step()


def test_predicate_state_dict_needs_a_predicate():
    model = make_model()
    opt = FastOrthogonalSGD(model.parameters(), lr=0.1, orthogonalise=lambda p: p.dim() > 2)
    other = FastOrthogonalSGD(model.parameters(), lr=0.1)
    other.load_state_dict(opt.state_dict())
    backward(model, 0)
    with pytest.raises(RuntimeError, match="predicate"):
        other.step()


def test_bfloat16_parameters():
    g = torch.Generator().manual_seed(5)
    w = (0.1 * torch.randn(6, 6, 3, 3, generator=g)).bfloat16()
    G = torch.randn(6, 6, 3, 3, generator=g).bfloat16()
    p = nn.Parameter(w.clone())
    p.grad = G
    FastOrthogonalSGD([p], lr=0.1, momentum=0.0).step()
    expected = w.double() - 0.1 * svd_polar(G.double().reshape(6, -1)).reshape(w.shape)
    assert p.dtype == torch.bfloat16 and p.grad is G
    # bfloat16 storage of p (|p| < 0.5: 2^-9) and of the polar factor (E <= 1e-2, times lr).
    torch.testing.assert_close(p.double(), expected, atol=2e-3 + 0.1 * 1e-2, rtol=0)
    assert (p.double() - w.double()).abs().max() > 0.01


@pytest.mark.parametrize("method", ["svd", "gram_eigh", "newton_schulz", "cholqr2"])
def test_step_reads_no_tensor_values(method):
    # Meta tensors have shapes but no values: any .item(), bool(tensor) or value-dependent branch in the step
    # raises. That is what makes the step capturable in a CUDA graph. (method="auto" runs its eager-only
    # breakdown check here, which reads values by design and is skipped under capture and compile.)
    params = [nn.Parameter(torch.empty(6, 4, 3, 3, device="meta")) for _ in range(2)]
    params += [nn.Parameter(torch.empty(5, 7, device="meta")), nn.Parameter(torch.empty(5, device="meta"))]
    for p in params:
        p.grad = torch.empty_like(p)
    opt = FastOrthogonalSGD(params, lr=0.1, weight_decay=1e-3, nesterov=True, method=method, backend="torch")
    opt.step()
    opt.step()
    assert all(p.device.type == "meta" for p in params)
    assert opt.state[params[0]]["momentum_buffer"].shape == params[0].shape


@pytest.mark.slow
def test_compiled_step_matches_eager():
    torch._dynamo.reset()
    model = make_model(torch.float32)
    eager = copy.deepcopy(model)
    opt = FastOrthogonalSGD(model.parameters(), lr=0.05, weight_decay=5e-4)
    eager_opt = FastOrthogonalSGD(eager.parameters(), lr=0.05, weight_decay=5e-4)

    @torch.compile
    def compiled_step():
        opt.step()

    for i in range(3):
        for m in (model, eager):
            m.zero_grad()
            backward(m, i)
        raw = model.fc.weight.grad.clone()
        compiled_step()
        eager_opt.step()
        assert torch.equal(model.fc.weight.grad, raw)
    for p, q in zip(model.parameters(), eager.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-5)
    assert (model.conv1.weight - make_model(torch.float32).conv1.weight).abs().max() > 1e-2


@pytest.mark.cuda
@pytest.mark.parametrize("method", ["newton_schulz", "auto"])
def test_cuda_graph_capture(method):
    # "auto" skips its breakdown check under capture; it then also needs the backend it picks (gram_eigh for
    # these small n) to be sync-free on the GPU, which is that backend's contract.
    device = "cuda"
    model = make_model(torch.float32).to(device)
    eager = copy.deepcopy(model)
    opt = FastOrthogonalSGD(model.parameters(), lr=0.05, weight_decay=5e-4, method=method)
    eager_opt = FastOrthogonalSGD(eager.parameters(), lr=0.05, weight_decay=5e-4, method=method)
    x, y = (t.to(device) for t in batch(0, torch.float32))

    def train_step(m, o):
        o.zero_grad(set_to_none=False)
        F.cross_entropy(m(x), y).backward()
        o.step()

    # Warm up on a side stream (creates grads and momentum buffers), as torch's CUDA-graph recipe asks.
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            train_step(model, opt)
    torch.cuda.current_stream().wait_stream(s)
    for _ in range(2):
        train_step(eager, eager_opt)

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        train_step(model, opt)
    for _ in range(3):
        graph.replay()
        train_step(eager, eager_opt)
    torch.cuda.synchronize()
    for p, q in zip(model.parameters(), eager.parameters()):
        torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-4)
