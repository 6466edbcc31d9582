import pytest
import torch

from orthokern import _env


def pytest_collection_modifyitems(config, items):
    no_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    no_interp = pytest.mark.skip(reason="Triton on CPU needs TRITON_INTERPRET=1 set before pytest starts")
    try:
        import triton  # noqa: F401

        have_triton = True
    except ImportError:
        have_triton = False
    interp = _env.interpreting()
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_cuda)
        if "triton_interpret" in item.keywords:
            if not have_triton:
                item.add_marker(pytest.mark.skip(reason="Triton is not installed"))
            elif not interp and not torch.cuda.is_available():
                item.add_marker(no_interp)
