"""FullGrad, pinned to an independent reference (tests/reference_fullgrad.py, written from the paper and the
official code without reading campp's), to its completeness property and to pytorch-grad-cam's FullGrad."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision
from conftest import IMAGES
from PIL import Image
from reference import IMAGENET_MEAN, IMAGENET_STD, paper_square
from reference_fullgrad import fullgrad_reference, fullgrad_terms
from test_fidelity import TARGET, TinyVGG

from campp_cli.cam.explain import explain, explain_top
from campp_cli.cam.methods import register_method, unregister_method
from campp_cli.cam.taps import bias_layers
from campp_cli.errors import UsageError

nn = torch.nn


class Normed(nn.Module):
    """Convolutions with and without biases, batch norms with running statistics (one without affine
    parameters), in-place ReLUs, a residual sum of two batch norms, global average pooling and a linear
    head."""

    def __init__(self, seed: int, classes: int = 5, affine: bool = False):
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8, affine=affine))
        self.side = nn.BatchNorm2d(8)  # summed with body: both outputs are handed the same gradient tensor
        self.down = nn.Sequential(nn.Conv2d(8, 12, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(12),
                                  nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, classes))
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                if module.affine:
                    module.weight.data.uniform_(0.5, 1.5)
                    module.bias.data.normal_(0, 0.3)
        self.eval()

    def forward(self, x):
        a = self.stem(x)
        a = torch.relu(self.side(a) + self.body(a))
        return self.head(self.down(a))


def _images(seed: int, n: int = 2, size: int = 20) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


MODELS = {"normed": (Normed, "down.2"), "vgg": (TinyVGG, TARGET)}


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_fullgrad_matches_the_official_definition(kind, seed):
    klass, layer = MODELS[kind]
    model = klass(seed).double()
    x = _images(seed, 3, 32)
    expl = explain(copy.deepcopy(model), layer, x, classes=[-1, 2, 4], methods="gradcam,fullgrad")
    theirs = fullgrad_reference(model, x, list(map(int, expl.classes)))
    assert expl.maps["fullgrad"].shape == (3, 32, 32)  # the input's resolution, not the layer's
    np.testing.assert_allclose(expl.maps["fullgrad"], theirs, atol=1e-9)
    # the other maps of the pass are what they are without FullGrad, whose backward goes on to the input
    alone = explain(copy.deepcopy(model), layer, x, classes=[-1, 2, 4], methods="gradcam")
    np.testing.assert_array_equal(expl.maps["gradcam"], alone.maps["gradcam"])


@pytest.fixture
def captured():
    """A method of the test's own that keeps the biases it is given (FullGrad's raw terms)."""
    seen = []

    @register_method("keep_biases", uses=("biases",), replace=True)
    def keep(inp):
        seen.append(inp.biases)
        return inp.acts.sum(dim=1)

    yield seen
    unregister_method("keep_biases")


@pytest.mark.parametrize("seed", range(2))
def test_the_terms_add_up_to_the_score_and_are_the_references(captured, seed):
    """Completeness (the paper's eq. 2): in eval mode a ReLU network's logit is the input term's sum plus
    every bias term's sum, plus the linear head's bias: an identity campp's terms must meet on their own."""
    model = Normed(seed).double()
    x = _images(seed)
    expl = explain(model, "down.2", x, classes=[1, 3], methods="keep_biases")
    inputs, terms = captured[0]
    assert len(terms) == len(bias_layers(model)) == 5  # the stem's conv and bn, the side bn, the bns after
    # bias-free convs
    total = inputs.sum(dim=(1, 2, 3)) + sum(t.sum(dim=(1, 2, 3)) for t in terms)
    head_bias = model.head[2].bias.detach()[[1, 3]]
    np.testing.assert_allclose((total + head_bias).numpy(), expl.logits[[0, 1], [1, 3]], rtol=1e-5)
    their_inputs, their_terms = fullgrad_terms(model, x, [1, 3])
    np.testing.assert_allclose(inputs.numpy(), their_inputs, atol=1e-12)
    # campp's terms come in the order the forward pass runs the layers (side before body), the reference's
    # in the order of model.modules(): each of one is one of the other
    assert len(terms) == len(their_terms)
    for ours in terms:
        assert sum(t.shape == ours.shape and np.allclose(ours.numpy(), t, rtol=0, atol=1e-12)
                   for t in their_terms) == 1


def test_each_target_of_top_k_gets_its_own_fullgrad():
    model = Normed(4).double()
    x = _images(4)
    ranked = explain_top(model, "down.2", x, k=2, methods="fullgrad,gradcam")
    for expl in ranked:
        np.testing.assert_allclose(expl.maps["fullgrad"], fullgrad_reference(model, x, list(map(int, expl.classes))),
                                   atol=1e-9)
    assert not np.allclose(ranked[0].maps["fullgrad"], ranked[1].maps["fullgrad"])


def test_fullgrad_ignores_the_layer_and_is_not_differentiable():
    model = Normed(5).double()
    x = _images(5)
    one = explain(model, "down.2", x, methods="fullgrad").maps["fullgrad"]
    other = explain(model, "stem.2", x, methods="fullgrad").maps["fullgrad"]
    np.testing.assert_allclose(one, other, atol=1e-12)
    with pytest.raises(UsageError) as info:
        explain(model, "down.2", x, methods="gradcam,fullgrad", differentiable=True)
    assert info.value.param == "differentiable" and "fullgrad" in str(info.value)


class BatchNormAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d in small: a batch norm that applies its activation inside its forward."""

    def forward(self, x):
        return torch.relu(super().forward(x))


def test_only_layers_whose_output_is_an_affine_map_give_bias_terms():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), BatchNormAct(4), nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4),
                          nn.Conv2d(4, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    assert [name for name, _ in bias_layers(model)] == ["0", "3", "4"]


def test_fullgrad_is_pytorch_grad_cams_given_its_rescaling(captured):
    """pytorch-grad-cam's FullGrad rescales each channel of each term on its own (min-max), resizes with
    OpenCV and rescales the sum: built that way from campp's raw terms, its map is pytorch-grad-cam's (on a
    model whose batch norms all have affine parameters: pytorch-grad-cam leaves out the others)."""
    from pytorch_grad_cam import FullGrad
    from pytorch_grad_cam.utils.image import scale_accross_batch_and_channels, scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = Normed(6, affine=True).float()
    x = _images(6, 1, 32).float()
    expl = explain(copy.deepcopy(model), "down.2", x, methods="keep_biases,fullgrad")
    c = int(expl.classes[0])
    inputs, terms = captured[0]
    size = (32, 32)
    parts = [scale_accross_batch_and_channels(np.abs(inputs.numpy()), size)]
    parts += [scale_accross_batch_and_channels(np.abs(t.numpy()), size).sum(axis=1)[:, None] for t in terms]
    ours = scale_cam_image(np.concatenate(parts, axis=1).sum(axis=1))[0]
    cam = FullGrad(model, [])
    try:
        theirs = cam(input_tensor=x.clone(), targets=[ClassifierOutputTarget(c)])[0]
    finally:
        cam.activations_and_grads.release()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    # and campp's own rescaling (the official code's: each term as a whole, aligned corners) differs from it
    assert np.abs(expl.maps["fullgrad"][0] - theirs).max() > 1e-3


def test_fullgrad_through_the_cli(run_cli, tmp_path):
    """campp methods lists it with its source and its pass; classify writes its map at the input's size,
    the reference's of the photo's pixels, whatever --layer says."""
    code, out, _ = run_cli("methods")
    assert code == 0
    line = [line for line in out.splitlines() if line.startswith("fullgrad ")][0]
    assert "1905.00780" in line and "whole model" in line
    torch.manual_seed(12)
    model = torchvision.models.resnet18().eval()
    torch.save(model.state_dict(), tmp_path / "r18.pth")
    code, stdout, err = run_cli("classify", "--arch", "resnet18", "--weights", tmp_path / "r18.pth",
                                "--layer", "layer2", "-f", IMAGES / "coffee.png", "-o", "c.jpeg",
                                "--methods", "gradcam,fullgrad", "--save-maps", "--output-dir", tmp_path / "o")
    assert code == 0, err
    rgb = np.asarray(Image.open(IMAGES / "coffee.png").convert("RGB"))
    square = paper_square(rgb, 224).astype(np.float64) / 255.0
    x = torch.from_numpy(((square - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)[None].astype(np.float32))
    cls = int(model(x).argmax())
    assert f"explained: {cls} " in stdout
    ours = np.load(tmp_path / "o" / "c_fullgrad.npy")
    assert ours.shape == (224, 224) and np.load(tmp_path / "o" / "c_gradcam.npy").shape == (28, 28)
    np.testing.assert_allclose(ours, fullgrad_reference(model, x, [cls])[0], atol=1e-5)


class InPlaceInput(nn.Module):
    """A model that clamps its input in place before its first layer (or, ``in_place=False``, a copy)."""

    def __init__(self, in_place: bool):
        super().__init__()
        torch.manual_seed(13)
        self.in_place = in_place
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.norm = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)
        self.eval()

    def forward(self, x):
        x = x.clamp_(-1.0, 1.0) if self.in_place else x.clamp(-1.0, 1.0)
        return self.fc(torch.relu(self.norm(self.conv(x))).mean(dim=(2, 3)))


def test_a_model_that_changes_its_input_in_place_gets_its_fullgrad():
    x = _images(13, 2, 12)
    ours = explain(InPlaceInput(True), "conv", x.clone(), methods="fullgrad,gradcam").maps
    theirs = explain(InPlaceInput(False), "conv", x.clone(), methods="fullgrad,gradcam").maps
    for name in ours:
        np.testing.assert_array_equal(ours[name], theirs[name])


class Folded(nn.Module):
    """Each image's four quadrants through a convolution as one batch of 4N, then put back together."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(14)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.last = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)
        self.eval()

    def forward(self, x):
        n, c, h, w = x.shape
        tiles = x.reshape(n, c, 2, h // 2, 2, w // 2).permute(0, 2, 4, 1, 3, 5).reshape(4 * n, c, h // 2, w // 2)
        tiles = self.conv(tiles)
        whole = tiles.reshape(n, 2, 2, 4, h // 2, w // 2).permute(0, 3, 1, 4, 2, 5).reshape(n, 4, h, w)
        return self.fc(torch.relu(self.last(whole)).mean(dim=(2, 3)))


@pytest.mark.parametrize("images", [1, 2])
def test_fullgrad_refuses_layers_without_one_row_per_image_and_training_batch_norms(images):
    with pytest.raises(UsageError) as info:
        explain(Folded(), "last", torch.randn(images, 3, 8, 8), methods="fullgrad")
    assert info.value.param == "methods" and "rows for" in str(info.value) and "\n" not in str(info.value)
    assert explain(Folded(), "last", torch.randn(images, 3, 8, 8), methods="gradcam").maps["gradcam"].shape[0] \
        == images
    model = Normed(15).train()
    with pytest.raises(UsageError) as info:
        explain(model, "down.2", _images(15, images), methods="fullgrad")
    assert info.value.param == "methods" and "training mode" in str(info.value)


def test_a_batch_norm_without_running_statistics_is_refused_not_skipped():
    """track_running_stats=False normalises with the batch's statistics in eval mode too: no constant bias,
    so the terms would not add up; refused in one line (it used to be left out without a word)."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3)).eval()
    assert [name for name, _ in bias_layers(model)] == ["0", "1", "3"]
    with pytest.raises(UsageError) as info:
        explain(model, "3", torch.randn(2, 3, 8, 8), methods="fullgrad")
    assert info.value.param == "methods" and "track_running_stats=False" in str(info.value)
    assert "\n" not in str(info.value)
    assert explain(model, "3", torch.randn(2, 3, 8, 8), methods="gradcam").maps["gradcam"].shape == (2, 8, 8)


class Checkpointed(nn.Module):
    """A block run through torch.utils.checkpoint before the layer, reentrant or not."""

    def __init__(self, reentrant: bool):
        super().__init__()
        torch.manual_seed(16)
        self.reentrant = reentrant
        self.block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.last = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)
        self.eval()

    def forward(self, x):
        from torch.utils.checkpoint import checkpoint

        h = checkpoint(self.block, x, use_reentrant=self.reentrant)
        return self.fc(torch.relu(self.last(h)).mean(dim=(2, 3)))


def test_a_reentrant_checkpoint_is_one_line_and_a_plain_one_gets_its_map():
    x = _images(16, 1, 8).float()
    plain = Checkpointed(False)
    assert explain(plain, "last", x, methods="fullgrad").maps["fullgrad"].shape == (1, 8, 8)
    with pytest.raises(UsageError) as info:
        explain(Checkpointed(True), "last", x, methods="fullgrad")
    assert info.value.param == "methods" and "use_reentrant=False" in str(info.value)
    assert "\n" not in str(info.value)
