"""The ResNet shape lists of the benchmark suites against the architectures (built-in and torchvision's)."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from orthokern.bench import resnet, suites

# Known parameter counts of torchvision's ResNet-50 / ResNet-18 (1000 classes).
RESNET50_PARAMS = 25_557_032
RESNET18_PARAMS = 11_689_512


@pytest.mark.parametrize("build, shapes, total, n_matrices, n_tensors", [
    (resnet.resnet50_builtin, suites.RESNET50_SHAPES, RESNET50_PARAMS, 54, 161),
    (resnet.resnet18_builtin, suites.RESNET18_SHAPES, RESNET18_PARAMS, 21, 62),
])
def test_builtin_resnet_matches_suite_shapes(build, shapes, total, n_matrices, n_tensors):
    model = build()
    params = list(model.parameters())
    assert sum(p.numel() for p in params) == total
    assert len(params) == n_tensors
    got = resnet.gradient_matrix_shapes(model)
    # ResNet-50: 53 convolutions (stem + 16 bottlenecks x 3 + 4 downsamples) and the fc layer.
    assert len(got) == n_matrices == sum(shapes.values())
    assert Counter(got) == Counter(shapes)
    assert list(Counter(got)) == list(shapes)  # same first-appearance order as the suite lists


def test_resnet50_layer_facts():
    got = resnet.gradient_matrix_shapes(resnet.resnet50_builtin())
    assert got[0] == (64, 3 * 7 * 7) and got[-1] == (1000, 2048)
    assert sum(1 for m, n in got if (m, n) != (1000, 2048)) == 53
    assert len(suites.RESNET50_SHAPES) == 21  # distinct shapes: 21 batched polar calls per step


def test_builtin_resnet50_runs():
    model = resnet.resnet50_builtin().eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_torchvision_resnet50_has_the_same_shapes():
    torchvision = pytest.importorskip("torchvision")
    tv = torchvision.models.resnet50(weights=None)
    ours = resnet.resnet50_builtin()
    assert [(n, p.shape) for n, p in tv.named_parameters()] == [(n, p.shape) for n, p in ours.named_parameters()]
