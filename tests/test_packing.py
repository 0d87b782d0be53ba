"""Prepacked oneDNN convolutions: same numbers as nn.Conv2d, plain path whenever a gradient is needed."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from torch import nn

from campp_cli.cam.explain import explain
from campp_cli.models.fast.packing import PackedConv2d, _ops_available, pack_convolutions

pytestmark = pytest.mark.skipif(not _ops_available(), reason="this torch build has no oneDNN convolution ops")


class _ScaledConv(nn.Conv2d):
    """A subclass that computes something else: must be left alone."""

    def forward(self, x):
        return 2.0 * super().forward(x)


def assorted(seed: int) -> nn.Module:
    """Convolutions of every kind campp meets: strided, grouped, depthwise, dilated, 1x1, no bias."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 12, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(12, 12, 3, stride=2, padding=1, groups=12, bias=False), nn.ReLU(),
        nn.Conv2d(12, 16, 5, padding=4, dilation=2, groups=4), nn.ReLU(),
        nn.Conv2d(16, 16, 1), nn.ReLU(),
        _ScaledConv(16, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    ).eval()


def packed_copy(model: nn.Module) -> nn.Module:
    packed = copy.deepcopy(model)
    pack_convolutions(packed)
    return packed


def packed_caches(model: nn.Module) -> list:
    return [m._packed for m in model.modules() if isinstance(m, PackedConv2d)]


def test_only_plain_zero_padded_conv2d_is_converted():
    model = assorted(0)
    assert pack_convolutions(model) == 5  # four plain ones and the reflect-padded one (which then runs plain)
    kinds = [type(m).__name__ for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert kinds == ["PackedConv2d"] * 4 + ["_ScaledConv", "PackedConv2d"]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_no_grad_outputs_equal_plain_convolutions(batch, channels_last):
    model = assorted(1)
    packed = packed_copy(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        packed.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 29, 23, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        expected, got = model(x), packed(x)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    caches = packed_caches(packed)
    assert sum(c is not None for c in caches) == 4  # the packed path really ran (not the reflect-padded one)


def test_gradients_go_through_the_plain_path_and_agree():
    model = assorted(2)
    packed = packed_copy(model)
    x = torch.randn(2, 3, 20, 20, generator=torch.Generator().manual_seed(5))
    grads = []
    for m in (model, packed):
        xi = x.clone().requires_grad_(True)
        m(xi).sum().backward()
        grads.append((xi.grad, [p.grad.clone() for p in m.parameters()]))
    assert all(c is None for c in packed_caches(packed))
    np.testing.assert_allclose(grads[1][0].numpy(), grads[0][0].numpy(), rtol=1e-5, atol=1e-6)
    for a, b in zip(grads[0][1], grads[1][1]):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6)


def test_new_weights_are_repacked():
    model, other = assorted(3), assorted(4)
    packed = packed_copy(model)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        packed(x)
        packed.load_state_dict(other.state_dict())
        np.testing.assert_allclose(packed(x).numpy(), other(x).numpy(), rtol=1e-5, atol=1e-5)
        packed[0].weight.mul_(-1.0)  # in place, same storage
        other[0].weight.mul_(-1.0)
        np.testing.assert_allclose(packed(x).numpy(), other(x).numpy(), rtol=1e-5, atol=1e-5)


def test_state_dict_and_names_are_unchanged():
    model = assorted(5)
    packed = packed_copy(model)
    with torch.no_grad():
        packed(torch.randn(1, 3, 8, 8))  # fills the caches
    assert [n for n, _ in packed.named_modules()] == [n for n, _ in model.named_modules()]
    ours, theirs = packed.state_dict(), model.state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    twin = copy.deepcopy(packed)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        np.testing.assert_allclose(twin(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)
    torch.save(packed, io.BytesIO())


def test_float64_models_run_plain():
    model = assorted(6).double()
    packed = packed_copy(model)
    x = torch.randn(1, 3, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        np.testing.assert_allclose(packed(x).numpy(), model(x).numpy(), rtol=1e-12)
    assert all(c is None for c in packed_caches(packed))


@pytest.mark.parametrize("layer", ["1", "5"])  # early target: later convolutions need gradients
def test_explain_on_a_packed_model_equals_the_plain_model(layer):
    model = assorted(7)
    packed = packed_copy(model)
    x = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(8))
    ours, plain = explain(packed, layer, x), explain(model, layer, x)
    np.testing.assert_allclose(ours.logits, plain.logits, rtol=1e-5, atol=1e-5)
    for method in plain.maps:
        np.testing.assert_allclose(ours.maps[method], plain.maps[method], atol=1e-5)
    assert packed_caches(packed)[0] is not None  # the frozen part before the target was packed
