"""Several layers at once (``--layer a,b``): each method's maps of every layer from one forward and one
backward pass, fused by LayerCAM's rule (Jiang et al., IEEE TIP 2021, eq. 9), against a NumPy reference
of the rule applied to tests/reference.py's single-layer maps, and against torchcam's LayerCAM fusion."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from reference import normalised, reference_map, reference_method_map, upsample_bilinear, vgg_activations_and_grads
from test_fidelity import TinyVGG
from test_methods import counted_passes

from campp_cli.cam.explain import explain, explain_top
from campp_cli.errors import UsageError

#: TinyVGG's layers: features.1 (the first ReLU, 32 x 32 at a 32 x 32 input) and features.6 (the last, 16 x 16);
#: their cuts for reference.vgg_activations_and_grads.
LAYERS = {"features.1": 2, "features.6": 7}
GRADIENT = ("gradcam", "xgradcam", "hirescam", "layercam", "gradcam_elementwise")


def _reference_fusion(maps: list[np.ndarray]) -> np.ndarray:
    """The rule written out: tanh(2 M) of each layer's map, OpenCV's bilinear resize to the largest, the
    element-wise maximum, divided by its maximum."""
    side = max(m.shape[-1] for m in maps)
    scaled = [np.tanh(2.0 * m) for m in maps]
    up = [s if s.shape[-1] == side else upsample_bilinear(s, side) for s in scaled]
    return normalised(np.maximum.reduce(up))


@pytest.mark.parametrize("seed", range(2))
def test_several_layers_are_fused_by_layercams_rule(seed):
    model = TinyVGG(seed)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    methods = [*GRADIENT, "gradcampp", "eigencam"]
    expl = explain(copy.deepcopy(model), ",".join(LAYERS), x, classes=[-1, 3], methods=methods)
    assert expl.layer == "features.1,features.6"
    for i in range(2):
        cls = None if i == 0 else 3
        split = [vgg_activations_and_grads(model, x[i:i + 1], cls, cut=cut) for cut in LAYERS.values()]
        assert all(int(expl.classes[i]) == s[3] for s in split)
        for method in GRADIENT:
            theirs = _reference_fusion([reference_method_map(A, g, method) for A, g, _, _ in split])
            np.testing.assert_allclose(expl.maps[method][i], theirs, atol=1e-5, err_msg=method)
        theirs = _reference_fusion([reference_map(A, g, "official") for A, g, _, _ in split])
        np.testing.assert_allclose(expl.maps["gradcampp"][i], theirs, atol=1e-5)
        theirs = _reference_fusion([reference_method_map(A, g, "eigencam") for A, g, _, _ in split])
        np.testing.assert_allclose(expl.maps["eigencam"][i], theirs, atol=1e-5)


def test_one_forward_and_one_backward_reach_every_layer():
    model = TinyVGG(3)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    _, calls = counted_passes(model, lambda: explain(model, "features.1,features.4,features.6", x,
                                                     methods=["gradcam", "gradcampp", "layercam"]))
    assert calls == {"forward": 1, "grad": 1}


def test_matches_torchcams_layercam_fusion():
    """torchcam's LayerCAM over two layers, fused with its fuse_cams: the same rule, on maps it min-max
    normalises (campp divides by the maximum: the same maps where their minimum is 0, as here)."""
    from torchcam.methods import LayerCAM

    model = TinyVGG(5)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    expl = explain(copy.deepcopy(model), ",".join(LAYERS), x, methods="layercam")
    singles = [explain(copy.deepcopy(model), layer, x, methods="layercam").maps["layercam"] for layer in LAYERS]
    assert all(m.min() == 0 for m in singles)  # where torchcam's min-max is campp's division by the maximum
    with LayerCAM(model, list(LAYERS)) as extractor:
        scores = model(x)
        cams = extractor(int(expl.classes[0]), scores)
        fused = LayerCAM.fuse_cams(cams)[0].detach().numpy()
    np.testing.assert_allclose(expl.maps["layercam"][0], fused / fused.max(), atol=1e-5)


def test_fullgrad_top_k_and_smoothing_in_a_fused_run():
    model = TinyVGG(6)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    both = ",".join(LAYERS)
    fused = explain(model, both, x, methods="gradcam,fullgrad")
    alone = explain(model, "features.6", x, methods="fullgrad")
    np.testing.assert_array_equal(fused.maps["fullgrad"], alone.maps["fullgrad"])  # made of every layer already
    ranked = explain_top(model, both, x, k=2, methods="gradcam")
    second = explain(model, both, x, classes=list(map(int, ranked[1].classes)), methods="gradcam")
    np.testing.assert_allclose(ranked[1].maps["gradcam"], second.maps["gradcam"], atol=1e-6)
    smoothed = explain(model, both, x, methods="gradcam", aug_smooth=True)
    assert smoothed.maps["gradcam"].shape == (2, 32, 32) and np.isfinite(smoothed.maps["gradcam"]).all()


def test_fused_maps_are_differentiable_and_the_flags_come_back():
    model = TinyVGG(7)
    model.features[0].bias.requires_grad_(False)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    expl = explain(model, ",".join(LAYERS), x, methods="gradcam", differentiable=True)
    expl.maps["gradcam"].sum().backward()
    assert model.features[3].weight.grad is not None and model.features[3].weight.grad.abs().sum() > 0
    explain(model, ",".join(LAYERS), x, methods="gradcam")
    assert not model.features[0].bias.requires_grad
    assert all(p.requires_grad for name, p in model.named_parameters() if name != "features.0.bias")


@pytest.mark.parametrize("layer,words", [("features.1,,features.6", "separated by commas"),
                                         ("features.1,features.1", "each layer once"),
                                         ("features.1,nope", "no such module")])
def test_a_bad_list_of_layers_is_one_line(layer, words):
    with pytest.raises(UsageError) as info:
        explain(TinyVGG(0), layer, torch.randn(1, 3, 32, 32))
    assert words in str(info.value) and "\n" not in str(info.value)


def test_several_layers_through_the_cli(run_cli, tmp_path):
    from conftest import IMAGES

    common = ("classify", "--arch", "efficientnet_lite0", "-f", IMAGES / "coffee.png", "-o", "c.jpeg",
              "--output-dir", tmp_path / "o", "--save-maps", "--methods", "gradcam")
    code, _, err = run_cli(*common, "--layer", "_blocks.4, _swish@1")
    assert code == 0, err
    assert np.load(tmp_path / "o" / "c_gradcam.npy").shape == (28, 28)  # _blocks.4's grid, the finer one
    assert "layer _blocks.4 (MBConvBlock), _swish@1 (ReLU6)," in err  # the run's header says both
    code, _, err = run_cli(*common, "--layer", "_blocks.4,_nope")
    assert code == 2 and err.strip().splitlines()[-1].startswith("campp: error: --layer _nope: "), err


def test_the_eta_counts_each_batchs_images_once_whatever_its_methods_and_layers():
    """Score-CAM and Ablation-CAM at two layers each plan their own passes for the same two images: the
    progress is told of every pass and of the two images once, so its passes per image are the batch's."""
    told = {"planned_passes": 0, "planned_images": 0, "passes": 0}

    class Progress:
        def __call__(self, n):
            told["passes"] += n

        def planned(self, passes, images):
            told["planned_passes"] += passes
            told["planned_images"] += images

    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    explain(TinyVGG(8), ",".join(LAYERS), x, methods="scorecam,ablationcam", image=x, progress=Progress())
    assert told["planned_images"] == 2
    assert told["planned_passes"] == told["passes"] > 4 * 2
