"""polar()'s interface: shapes, strides, dtypes, bad input, special values, backends."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import orthokern
from orthokern.testing import accuracy, random_matrix


def test_exports():
    assert orthokern.METHODS == ("auto", "svd", "gram_eigh", "newton_schulz", "cholqr2")
    backends = orthokern.available_backends("cpu")
    assert "torch" in backends and "cuda" not in backends
    info = orthokern.info()
    assert {"torch", "extension", "backends_cpu", "implementations"} <= set(info)


@pytest.mark.parametrize(
    "G,exc,words",
    [
        (torch.randn(5), ValueError, "at least 2 dimensions"),
        (torch.randn(()), ValueError, "at least 2 dimensions"),
        (torch.ones(3, 3, dtype=torch.int64), TypeError, "float64, float32"),
        (torch.ones(3, 3, dtype=torch.bool), TypeError, "got torch.bool"),
        (torch.ones(3, 3, dtype=torch.complex64), TypeError, "complex"),
        ([[1.0, 0.0]], TypeError, "torch.Tensor"),
    ],
)
def test_bad_input_names_the_argument(G, exc, words):
    with pytest.raises(exc, match="G") as info:
        orthokern.polar(G)
    assert words in str(info.value)


@pytest.mark.parametrize(
    "kwargs,words",
    [
        (dict(method="qr"), "method must be one of"),
        (dict(mode="exact"), "mode must be one of"),
        (dict(backend="cudnn"), "backend must be None or one of"),
        (dict(rcond=1.5), "rcond must be in"),
        (dict(rcond=-1e-3), "rcond must be in"),
    ],
)
def test_bad_options_name_the_argument(kwargs, words):
    with pytest.raises(ValueError, match=words):
        orthokern.polar(torch.randn(4, 3), **kwargs)


def test_unavailable_backend_says_why():
    G = torch.randn(6, 4)
    with pytest.raises(RuntimeError, match="cuda") as info:
        orthokern.polar(G, method="gram_eigh", backend="cuda")
    msg = str(info.value)
    assert any(w in msg for w in ("not built", "no GPU", "has no backend", "without CUDA")), msg
    with pytest.raises(RuntimeError, match="svd"):
        orthokern.polar(G, method="svd", backend="triton")


@pytest.mark.parametrize("method", orthokern.METHODS)
def test_zero_matrix_gives_zeros(method):
    for shape in [(5, 3), (3, 5), (2, 4, 4)]:
        O = orthokern.polar(torch.zeros(shape), method=method)
        assert O.shape == shape and torch.equal(O, torch.zeros(shape))


@pytest.mark.parametrize("method", orthokern.METHODS)
@pytest.mark.parametrize("shape", [(0, 5, 3), (4, 0, 3), (4, 3, 0), (2, 0, 0)])
def test_empty_input_gives_empty_result(method, shape):
    G = torch.randn(shape)
    O = orthokern.polar(G, method=method)
    assert O.shape == G.shape and O.dtype == G.dtype and O.numel() == 0


@pytest.mark.parametrize("method", orthokern.METHODS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_input_gives_nonfinite_output(method, bad):
    G = random_matrix(3, 12, 5, "well", seed=0)
    G[1, 4, 2] = bad
    O = orthokern.polar(G, method=method)
    assert not torch.isfinite(O[1]).any(), "a non-finite input must not give a finite-looking answer"
    assert torch.isfinite(O[0]).all() and torch.isfinite(O[2]).all(), "other matrices of the batch are unaffected"
    with pytest.raises(ValueError, match="NaN or Inf"):
        orthokern.polar(G, method=method, check_finite=True)


@pytest.mark.parametrize("method", orthokern.METHODS)
def test_input_not_modified_and_result_is_new(method):
    G = random_matrix(2, 10, 6, "decaying", seed=1)
    before = G.clone()
    O = orthokern.polar(G, method=method)
    assert torch.equal(G, before)
    assert O.data_ptr() != G.data_ptr()


@settings(max_examples=25, deadline=None)
@given(
    batch=st.lists(st.integers(1, 3), max_size=2),
    m=st.integers(1, 12),
    n=st.integers(1, 12),
    layout=st.sampled_from(["contiguous", "transposed", "strided", "expanded"]),
    method=st.sampled_from(orthokern.METHODS),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_shapes_and_strides(batch, m, n, layout, method, dtype):
    base = random_matrix(tuple(batch), m, n, "well", dtype=dtype, seed=len(batch) * 100 + m * 10 + n)
    if layout == "transposed":
        G = base.mT.contiguous().mT
    elif layout == "strided":
        G = torch.zeros(*batch, 2 * m, 3 * n, dtype=dtype)[..., ::2, ::3]
        G.copy_(base)
    elif layout == "expanded":
        G = base[..., :1, :, :].expand(*batch, m, n) if batch else base
    else:
        G = base
    O = orthokern.polar(G, method=method)
    assert O.shape == G.shape and O.dtype == G.dtype
    ref = orthokern.polar(G.contiguous(), method="svd")
    assert torch.allclose(O, ref, atol=1e-4 if dtype == torch.float32 else 1e-9), (O - ref).abs().max()
    assert accuracy(G, O).E < 1e-4


def test_wide_is_transpose_of_tall():
    G = random_matrix(2, 7, 19, "decaying", dtype=torch.float64, seed=2)
    for method in orthokern.METHODS:
        wide = orthokern.polar(G, method=method)
        tall = orthokern.polar(G.mT.contiguous(), method=method)
        torch.testing.assert_close(wide, tall.mT, atol=1e-10, rtol=0)


def test_result_is_orthonormal_and_nearest():
    """P is the orthonormal matrix nearest to G: no random orthonormal Q of the same shape is nearer."""
    G = random_matrix((), 30, 10, "decaying", dtype=torch.float64, seed=4)
    P = orthokern.polar(G)
    torch.testing.assert_close(P.mT @ P, torch.eye(10, dtype=torch.float64), atol=1e-10, rtol=0)
    d = (G - P).norm()
    for _ in range(20):
        Q, _ = torch.linalg.qr(P + 0.05 * torch.randn_like(P))
        assert (G - Q).norm() >= d


def test_backend_none_follows_the_order_and_preferences():
    """backend=None takes the first implementation in the device's order that can run and is preferred (the compiled
    CPU ops at every n, measured faster; newton_schulz has no compiled CPU op); an explicit backend= is obeyed."""
    from orthokern import dispatch

    if "cpp" not in orthokern.available_backends("cpu"):
        pytest.skip("orthokern._C is not built")
    for n in (32, 64, 65, 300):
        G = torch.empty(2, 400, n)
        assert dispatch.resolve("cholqr2", None, G).backend == "cpp"
        assert dispatch.resolve("gram_eigh", None, G).backend == "cpp"
        assert dispatch.resolve("gram_eigh", "torch", G).backend == "torch"
    assert dispatch.resolve("newton_schulz", None, torch.empty(2, 100, 64)).backend == "torch"
    # A backend that can run but is not preferred is skipped by backend=None (the cuda backend of newton_schulz
    # declines where the cost model picks the tall side); shown here with a preference stood in.
    impl = dispatch.TABLE[("gram_eigh", "cpp")]
    try:
        dispatch.TABLE[("gram_eigh", "cpp")] = dispatch.Impl(impl.method, impl.backend, impl.fn, impl.why_not,
                                                             prefer=lambda G, mode: G.shape[-1] <= 64)
        assert dispatch.resolve("gram_eigh", None, torch.empty(2, 100, 65)).backend == "torch"
        assert dispatch.resolve("gram_eigh", "cpp", torch.empty(2, 100, 65)).backend == "cpp"
    finally:
        dispatch.TABLE[("gram_eigh", "cpp")] = impl
