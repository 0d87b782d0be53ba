"""Every formula pinned against independent NumPy transcriptions and against pytorch-grad-cam."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from reference import reference_map, vgg_activations_and_grads
from torch import nn

from campp_cli.cam.explain import cam_maps, explain
from campp_cli.cam.guided import GuidedReLU, guided_backprop
from campp_cli.cam.taps import FeatureTap

CAMPP_TO_REFERENCE = {"gradcam": ("gradcam", "official"), "gradcampp-official": ("gradcampp", "official"),
                      "gradcampp-paper": ("gradcampp", "paper")}


class TinyVGG(nn.Module):
    """VGG's shape (features / avgpool / classifier) at a size that runs in milliseconds."""

    def __init__(self, seed: int, classes: int = 10, scale: float = 1.0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(nn.Linear(64, 32), nn.ReLU(inplace=True), nn.Linear(32, classes))
        with torch.no_grad():
            self.classifier[2].weight.mul_(scale)
        self.eval()

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


TARGET = "features.6"  # the last ReLU, 8x8 at a 32x32 input; features[7:] is the head


def campp_map(name: str, A: np.ndarray, g: np.ndarray) -> np.ndarray:
    method, variant = CAMPP_TO_REFERENCE[name]
    maps = cam_maps(torch.from_numpy(g)[None], torch.from_numpy(A)[None], methods=(method,), variant=variant)
    return maps[method][0].numpy()


def crafted_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Activations and gradients with every awkward channel the formulas must survive."""
    rng = np.random.default_rng(seed)
    K, H, W = 12, 7, 7
    A = np.maximum(rng.normal(0.5, 1.0, (K, H, W)), 0.0)
    g = rng.normal(0.0, 0.05, (K, H, W))
    g[0] = 0.0  # gradient all zero
    g[1] = -np.abs(g[1]) - 1e-3  # gradient all negative
    A[2] = 0.0  # activations whose spatial sum is zero
    g[3] = rng.normal(0.0, 1e-4, (H, W))  # tiny gradients (where an epsilon would dominate)
    A[4] = 0.0
    A[4, 0, 0] = 2.0  # sum 2 and g = -1: the denominator 2g^2 + sum*g^3 is exactly 0
    g[4, 0, 0] = -1.0
    g[5, :, :3] = 0.0  # partly zero gradient
    return A.astype(np.float32), g.astype(np.float32)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("name", sorted(CAMPP_TO_REFERENCE))
def test_formulas_match_numpy_transcription(seed, name):
    A, g = crafted_case(seed)
    ref_method = "gradcam" if name == "gradcam" else name.split("-")[1]
    got = campp_map(name, A, g)
    ref = reference_map(A, g, ref_method)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_variants_really_differ():
    """The test above could not tell the two Grad-CAM++ variants apart if they coincided."""
    A, g = crafted_case(0)
    assert np.abs(campp_map("gradcampp-official", A, g) - campp_map("gradcampp-paper", A, g)).max() > 1e-3


def test_all_zero_map_stays_zero():
    A = np.zeros((4, 5, 5), np.float32)
    g = np.ones((4, 5, 5), np.float32)
    for name in CAMPP_TO_REFERENCE:
        got = campp_map(name, A, g)
        assert np.all(got == 0.0)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("variant", ["official", "paper"])
def test_one_pass_matches_reference_on_seeded_models(seed, variant):
    model = TinyVGG(seed)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(100 + seed))
    classes = [-1, 4, 9]
    expl = explain(model, TARGET, x, classes=classes, variant=variant)
    for i in range(3):
        A, g, logits, cls = vgg_activations_and_grads(model, x[i:i + 1], None if classes[i] < 0 else classes[i],
                                                      cut=7)
        assert expl.classes[i] == cls
        np.testing.assert_allclose(expl.logits[i], logits, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(expl.maps["gradcam"][i], reference_map(A, g, "gradcam"), atol=1e-5)
        np.testing.assert_allclose(expl.maps["gradcampp"][i], reference_map(A, g, variant), atol=1e-5)


def test_vgg16_paper_layer_matches_reference(vgg):
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(7))
    expl = explain(vgg.module, "features.29", vgg.preprocessing(torch.sigmoid(x)), variant="official")
    A, g, _, _ = vgg_activations_and_grads(vgg.module, vgg.preprocessing(torch.sigmoid(x)))
    assert expl.maps["gradcampp"].shape == (1, 14, 14)
    np.testing.assert_allclose(expl.maps["gradcampp"][0], reference_map(A, g, "official"), atol=1e-5)


def test_pass_leaves_model_untouched_and_freezes_only_while_running():
    model = TinyVGG(0)
    model.features[0].weight.requires_grad_(True)
    model.features[3].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = {}

    def spy(module, inputs, output):
        seen["frozen"] = not any(p.requires_grad for p in model.parameters())

    handle = model.classifier.register_forward_hook(spy)
    explain(model, TARGET, torch.randn(1, 3, 32, 32))
    handle.remove()
    assert seen["frozen"]
    assert model.features[0].weight.requires_grad and not model.features[3].weight.requires_grad
    assert all(p.grad is None for p in model.parameters())  # no gradient for any weight
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


def test_tap_removes_hook_even_when_forward_fails():
    model = TinyVGG(0)
    with pytest.raises(RuntimeError):
        with FeatureTap(model, TARGET):
            model(torch.randn(1, 5, 32, 32))  # wrong channel count
    assert all(not m._forward_hooks for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


# --------------------------------------------------------------------------- pytorch-grad-cam


def _pgc_maps(model, layer, x, cls):
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    out = {}
    for name, klass in (("gradcam", GradCAM), ("gradcampp", GradCAMPlusPlus)):
        with klass(model=model, target_layers=[layer]) as cam:
            out[name] = cam(input_tensor=x, targets=[ClassifierOutputTarget(cls)])[0]
    return out


def _same_normalisation(low_res: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """pytorch-grad-cam's: min-max at low resolution, cv2's bilinear resize, min-max again."""
    import cv2

    def min_max(m):
        m = m - m.min()
        return m / (1e-7 + m.max())

    return min_max(cv2.resize(np.float32(min_max(low_res)), size))


@pytest.mark.parametrize("seed", range(3))
def test_matches_pytorch_grad_cam_on_tiny_models(seed):
    # Logits scaled up so gradients dwarf pytorch-grad-cam's epsilon (1e-6 in eq. 19's denominator).
    model = TinyVGG(seed, scale=1000.0)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    expl = explain(copy.deepcopy(model), TARGET, x, variant="paper")
    cls = int(expl.classes[0])
    theirs = _pgc_maps(model, model.features[6], x, cls)
    for method in ("gradcam", "gradcampp"):
        ours = _same_normalisation(expl.maps[method][0], (32, 32))
        np.testing.assert_allclose(ours, theirs[method], atol=1e-4)


def test_matches_pytorch_grad_cam_on_vgg16(vgg):
    model = copy.deepcopy(vgg.module)
    with torch.no_grad():
        model.classifier[6].weight.mul_(1000.0)
    x = vgg.preprocessing(torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(3)))
    expl = explain(model, "features.29", x, variant="paper")
    theirs = _pgc_maps(model, model.features[29], x, int(expl.classes[0]))
    for method in ("gradcam", "gradcampp"):
        np.testing.assert_allclose(_same_normalisation(expl.maps[method][0], (224, 224)), theirs[method],
                                   atol=1e-4)


# --------------------------------------------------------------------------- guided backpropagation


class _GuidedReLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x > 0) * (grad > 0)


class _GuidedModule(nn.Module):
    def forward(self, x):
        return _GuidedReLUFn.apply(x)


def _reference_guided(model, x, cls):
    ref = copy.deepcopy(model)
    for parent in ref.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                setattr(parent, name, _GuidedModule())
    x = x.clone().requires_grad_(True)
    ref(x)[0, cls].backward()
    return x.grad[0].numpy()


@pytest.mark.parametrize("seed", range(3))
def test_guided_backprop_matches_a_custom_autograd_reference(seed):
    model = TinyVGG(seed)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    inplace = [m.inplace for m in model.modules() if isinstance(m, nn.ReLU)]
    got = guided_backprop(model, x, [2])
    np.testing.assert_allclose(got[0], _reference_guided(model, x, 2), rtol=1e-5, atol=1e-7)
    assert (got != 0).any()
    # The model is exactly as it was: no hook left, in-place flags back, no weight gradient.
    assert [m.inplace for m in model.modules() if isinstance(m, nn.ReLU)] == inplace
    assert all(not m._backward_hooks and not m._forward_hooks for m in model.modules())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


class _GuidedReLU6Fn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(0, 6)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x > 0) * (x < 6) * (grad > 0)


class _GuidedModule6(nn.Module):
    def forward(self, x):
        return _GuidedReLU6Fn.apply(x)


def test_guided_backprop_rectifies_relu6():
    """A ReLU6 network (MobileNet's, EfficientNet-Lite's) is guided too: against a custom autograd reference
    of guided ReLU6 (gradient passed where 0 < x < 6 and the gradient is positive)."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU6(inplace=True), nn.Conv2d(6, 6, 3, padding=1),
                          nn.ReLU6(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 4)).eval()
    x = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(4)) * 3
    got = guided_backprop(model, x, [1])
    ref = copy.deepcopy(model)
    for i, child in enumerate(ref):
        if isinstance(child, nn.ReLU6):
            ref[i] = _GuidedModule6()
    xr = x.clone().requires_grad_(True)
    ref(xr)[0, 1].backward()
    np.testing.assert_allclose(got[0], xr.grad[0].numpy(), rtol=1e-5, atol=1e-7)
    plain = x.clone().requires_grad_(True)
    model(plain)[0, 1].backward()
    assert not np.allclose(got[0], plain.grad[0].numpy())  # guided is not the plain gradient here
    assert model[1].inplace


def test_guided_relu_restores_on_error():
    model = TinyVGG(0)
    with pytest.raises(RuntimeError):
        with GuidedReLU(model):
            model(torch.randn(1, 4, 32, 32))
    assert all(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))
    assert all(not m._backward_hooks for m in model.modules())
