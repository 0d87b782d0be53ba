"""The methods registry and every method in it, pinned against NumPy transcriptions and other libraries.

References come from tests/reference.py (written from the definitions in the
issue, no campp code); pytorch-grad-cam and torchcam are the test extras.
"""

from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
import torch
import torchvision
from conftest import IMAGES, fresh_campp
from PIL import Image
from reference import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    normalised,
    paper_square,
    reference_map,
    reference_method_map,
    scorecam_map,
    upsample_bilinear,
)
from test_fidelity import TARGET, TinyVGG, _same_normalisation, crafted_case

from campp_cli.cam.explain import cam_maps, explain
from campp_cli.cam.methods import (
    DEFAULT_METHODS,
    channel_sum,
    check_method_settings,
    get_method,
    list_methods,
    method_settings,
    parse_methods,
    register_method,
    unregister_method,
)
from campp_cli.cam.methods.eigencam import projection
from campp_cli.draw import geometry
from campp_cli.draw.panels import side_by_side
from campp_cli.errors import UsageError
from campp_cli.io import decode
from campp_cli.registry import Setting

#: Every method that needs only A and g (and Eigen-CAM, which needs A alone).
ONE_PASS = ["gradcam", "xgradcam", "hirescam", "gradcam_elementwise", "layercam", "eigencam"]
BUILT_IN = ["gradcam", "gradcampp", "xgradcam", "hirescam", "gradcam_elementwise", "layercam", "eigencam", "scorecam",
            "cam", "eigengradcam", "kpcacam", "shapleycam", "finercam", "ablationcam", "sscam", "iscam"]


#: The smoothing settings every method takes, at their defaults (off).
SMOOTHING = {"eigen_smooth": False, "aug_smooth": False, "noise_samples": 0, "noise_sigma": 0.15}


def campp(method, A, g, variant="official"):
    maps = cam_maps(torch.from_numpy(g)[None], torch.from_numpy(A)[None], methods=(method,), variant=variant)
    return maps[method][0].numpy()


# --------------------------------------------------------------------------- the registry


def test_builtins_are_registered_in_order():
    assert list_methods()[:len(BUILT_IN)] == BUILT_IN
    assert parse_methods("all") == tuple(m for m in list_methods() if m != "cam")  # CAM: GAP + linear heads only
    assert parse_methods(None) == DEFAULT_METHODS == ("gradcam", "gradcampp")
    assert parse_methods(" LayerCAM, gradcam,layercam ") == ("layercam", "gradcam")


@pytest.mark.parametrize("spec,needle", [("gradcm", "did you mean gradcam"), ("", "at least one"),
                                         ("gradcam,nope", "'nope'")])
def test_unknown_methods_are_usage_errors(spec, needle):
    with pytest.raises(UsageError, match=needle):
        parse_methods(spec)


def test_cli_refuses_an_unknown_method_before_importing_torch(tmp_path):
    code, loaded, err = fresh_campp(["classify", "-f", "x.jpg", "--methods", "layrcam"], tmp_path)
    assert (code, loaded) == (2, False), err
    assert "did you mean layercam" in err and len(err.strip().splitlines()) == 1


def test_methods_command_lists_every_registered_method(run_cli):
    code, out, _ = run_cli("methods")
    assert code == 0
    *listing, last = out.splitlines()
    names = [line.split()[0] for line in listing if line and not line.startswith(" ")]
    assert names == list_methods()
    assert last.startswith("What each costs on a model: campp methods --measure")
    assert "extra forward passes" in out and "class-agnostic" in out


def test_a_method_of_your_own_in_a_few_lines(tmp_path):
    @register_method("absgrad", title="|g|-CAM", summary="w_k = mean |g|")
    def absgrad(inp):
        return channel_sum(inp.grads.abs().mean(dim=(2, 3)), inp.acts)

    try:
        A, g = crafted_case(1)
        expected = normalised(np.tensordot(np.abs(g.astype(np.float64)).mean(axis=(1, 2)), A.astype(np.float64), 1))
        np.testing.assert_allclose(campp("absgrad", A, g), expected, atol=1e-6)
        with pytest.raises(ValueError, match="already registered"):
            register_method("absgrad")(absgrad)
        model = TinyVGG(0)
        expl = explain(model, TARGET, torch.randn(1, 3, 32, 32), methods="gradcam,absgrad")
        assert list(expl.maps) == ["gradcam", "absgrad"]
    finally:
        unregister_method("absgrad")
    assert "absgrad" not in list_methods()


def test_registering_a_method_name_twice_is_a_value_error():
    with pytest.raises(ValueError, match="method 'gradcam' is already registered"):
        register_method("gradcam")(lambda inp: inp.acts.sum(dim=1))
    assert get_method("gradcam").title == "Grad-CAM"  # the built-in is untouched


def test_a_method_declares_its_own_settings():
    """A setting declared by a method is listed by method_settings(), taken by explain() as a keyword
    (checked, else its default) and handed to the method in inp.settings, with the run's other settings."""
    seen = []
    power = Setting("power", int, "P", "Exponent of the gradient.", minimum=1, maximum=4, default=2)

    @register_method("gradpow", title="g^p-CAM", summary="w_k = mean g^p", settings=(power,))
    def gradpow(inp):
        seen.append(dict(inp.settings))
        return channel_sum((inp.grads ** inp.settings["power"]).mean(dim=(2, 3)), inp.acts)

    try:
        assert power in method_settings() and method_settings("gradpow")[0] == power
        own = [s.name for s in method_settings("gradcampp") if s.name not in SMOOTHING]
        assert [s.name for s in method_settings(["gradcam"])] == list(SMOOTHING) and own == ["variant"]
        model, x = TinyVGG(0), torch.randn(1, 3, 32, 32)
        explain(model, TARGET, x, methods="gradcampp,gradpow")
        explain(model, TARGET, x, methods="gradpow", power=3, variant="paper")
        explain(model, TARGET, x, methods="gradpow", settings={"power": 1})
        assert seen == [{"variant": "official", "power": 2, **SMOOTHING}, {"power": 3, **SMOOTHING},
                        {"power": 1, **SMOOTHING}]
        with pytest.raises(UsageError, match="power 5: give at most 4"):
            explain(model, TARGET, x, methods="gradpow", power=5)
        expl = explain(model, TARGET, x, methods="gradcampp", variant="paper")
        assert expl.settings == {"variant": "paper", **SMOOTHING}
    finally:
        unregister_method("gradpow")
    assert power not in method_settings()


def test_check_method_settings_names_the_setting_at_fault():
    assert check_method_settings({}, ["gradcam", "scorecam"]) == {"score_batch": 32, **SMOOTHING}
    every = check_method_settings({"variant": "paper", "score_batch": 8.0}, "all")
    assert every == {**{s.name: s.default for s in method_settings("all")}, "variant": "paper", "score_batch": 8}
    assert every["score_batch"] == 8 and type(every["score_batch"]) is int
    assert check_method_settings({"score_batch": 8}, ["gradcam"]) == SMOOTHING  # checked, not the run's
    with pytest.raises(UsageError, match="did you mean variant") as unknown:
        check_method_settings({"varient": "paper"}, ["gradcampp"])
    assert unknown.value.param == "varient" and "no method declares" in str(unknown.value)
    for given, param, needle in (({"variant": "fast"}, "variant", "choose from official, paper"),
                                 ({"score_batch": 0}, "score_batch", "give at least 1"),
                                 ({"score_batch": "many"}, "score_batch", "give an integer")):
        with pytest.raises(UsageError, match=needle) as bad:
            check_method_settings(given, ["gradcampp"])
        assert bad.value.param == param, given
    with pytest.raises(UsageError, match="variant fast"):
        explain(TinyVGG(0), TARGET, torch.randn(1, 3, 32, 32), variant="fast")


@pytest.mark.parametrize("settings", [(Setting("classes", int, "N", "clashes with explain()'s own"),),
                                      (Setting("variant", str, "V", "another meaning", default="x"),),
                                      (Setting("k", int, "N", "a default out of range", minimum=1, default=0),)])
def test_a_method_setting_must_not_clash(settings):
    with pytest.raises(ValueError):
        register_method("clashing", settings=settings)(lambda inp: None)
    assert "clashing" not in list_methods()


@pytest.mark.parametrize("name", ["All", "all", "bad-name", "1x"])
def test_method_names_must_be_file_name_safe(name):
    with pytest.raises(ValueError):
        register_method(name)(lambda inp: None)


# --------------------------------------------------------------------------- formulas


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("method", ONE_PASS)
def test_formulas_match_numpy_transcriptions(seed, method):
    A, g = crafted_case(seed)
    got = campp(method, A, g)
    assert np.isfinite(got).all() and got.min() >= 0 and got.max() <= 1
    np.testing.assert_allclose(got, reference_method_map(A, g, method), atol=1e-5)


def test_methods_really_differ_on_crafted_data():
    """The test above could not tell methods apart if they coincided on its data.

    On activations >= 0 (after a ReLU) relu(g A) = relu(g) A, so LayerCAM and
    element-wise Grad-CAM are one map there (README); signed activations part them.
    """
    A, g = crafted_case(0)
    assert np.array_equal(campp("layercam", A, g), campp("gradcam_elementwise", A, g))
    A = A - np.float32(0.3)
    for method in ONE_PASS:
        np.testing.assert_allclose(campp(method, A, g), reference_method_map(A, g, method), atol=1e-5)
    maps = {m: campp(m, A, g) for m in ONE_PASS}
    for a in ONE_PASS:
        for b in ONE_PASS:
            if a < b:
                assert np.abs(maps[a] - maps[b]).max() > 1e-3, (a, b)


def test_xgradcam_gives_zero_weight_to_a_channel_summing_to_zero():
    A = np.zeros((2, 3, 3), np.float32)
    A[0] = 1.0
    A[1, 0, 0], A[1, 0, 1] = 1.0, -1.0  # sums to exactly 0: must not divide by it
    g = np.ones_like(A)
    np.testing.assert_allclose(campp("xgradcam", A, g), np.ones((3, 3)), atol=1e-7)


def test_eigencam_sign_follows_the_channel_sum():
    rng = np.random.default_rng(0)
    blob = np.zeros((7, 7))
    blob[2:5, 2:5] = 1.0
    A = (blob[None] * rng.uniform(0.5, 1.5, (6, 1, 1)) + rng.normal(0, 0.01, (6, 7, 7))).astype(np.float32)
    got = campp("eigencam", A, A)
    assert got[3, 3] == pytest.approx(1.0, abs=0.05) and got[0, 0] == 0.0  # the active blob is positive
    raw = projection(torch.from_numpy(-A[None]).double())[0].numpy()  # signs flip with the data
    assert np.corrcoef(raw.ravel(), -A.sum(0).ravel())[0, 1] > 0


def test_eigencam_sign_is_stable_where_channel_sums_vanish():
    """LayerNorm'd tokens: every position's channels sum to about 0, so the channel sum cannot pick the sign;
    perturbations at float32's rounding level must not flip the map (they did with the channel-sum rule)."""
    rng = np.random.default_rng(3)
    A = rng.normal(0, 1, (16, 7, 7))
    A -= A.mean(axis=0, keepdims=True)  # zero channel sum at every position
    maps = []
    for seed in range(12):
        noisy = A + np.random.default_rng(seed).normal(0, 1e-6, A.shape)
        maps.append(campp("eigencam", noisy.astype(np.float32), noisy.astype(np.float32)))
        np.testing.assert_allclose(maps[-1], reference_method_map(noisy, noisy, "eigencam"), atol=1e-4)
    for m in maps[1:]:
        np.testing.assert_allclose(m, maps[0], atol=1e-4)


def test_paper_variant_gives_no_weight_where_eq19_is_undefined():
    """A channel with sum(A) = -2 and g = 1 somewhere: eq. 19's denominator 2g^2 + sum(A) g^3 is 0 there and
    g > 0, so relu(g) * alpha would count it; the paper's variant gives it alpha 0, the authors' code 1 * g^2."""
    from campp_cli.cam.methods.gradcampp import alphas

    A = np.zeros((1, 1, 2, 2))
    A[0, 0, 0, 0] = -2.0
    g = np.full((1, 1, 2, 2), 0.5)
    g[0, 0, 1, 1] = 1.0
    paper = alphas(torch.from_numpy(g), torch.from_numpy(A), "paper")[0, 0].numpy()
    assert paper[1, 1] == 0.0 and paper[0, 0] == pytest.approx(0.25 / (0.5 - 0.25))
    official = alphas(torch.from_numpy(g), torch.from_numpy(A), "official")[0, 0].numpy()
    raw = np.full((2, 2), 0.25 / (2 * 0.25 - 2 * 0.125))  # g^2 / (2g^2 + sum(A) g^3) at g = 0.5
    raw[1, 1] = 1.0  # g^2 / 1 where the denominator is 0, as the authors' np.where does
    np.testing.assert_allclose(official, raw / raw.sum())


def counted_passes(model: torch.nn.Module, run):
    """``run()``'s result and how many forward passes of ``model`` and ``torch.autograd.grad`` calls it made."""
    calls = {"forward": 0, "grad": 0}
    hook = model.register_forward_hook(lambda *a: calls.__setitem__("forward", calls["forward"] + 1))
    real_grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        calls["grad"] += 1
        return real_grad(*args, **kwargs)

    torch.autograd.grad = counting_grad
    try:
        result = run()
    finally:
        torch.autograd.grad = real_grad
        hook.remove()
    return result, calls


@pytest.mark.parametrize("seed", range(3))
def test_every_gradient_method_from_one_pass_on_seeded_models(seed):
    from reference import vgg_activations_and_grads

    model = TinyVGG(seed)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    # Finer-CAM's target is one more column of the same pass; ShapleyCAM's H A is zero after TinyVGG's
    # piecewise-linear head, without a second backward; FullGrad's input and bias gradients take a second
    # autograd call past the layer's
    one_pass = [m for m in parse_methods("all") if get_method(m).needs != "forward passes"
                and "biases" not in get_method(m).uses]
    assert {"gradcam", "eigengradcam", "kpcacam", "finercam", "shapleycam"} <= set(one_pass)
    expl, calls = counted_passes(model, lambda: explain(model, TARGET, x, classes=[-1, 3], methods=one_pass))
    assert calls == {"forward": 1, "grad": 1}  # every map, one forward and one backward pass
    for i in range(2):
        A, g, _, cls = vgg_activations_and_grads(model, x[i:i + 1], None if i == 0 else 3, cut=7)
        assert expl.classes[i] == cls
        for method in ONE_PASS:
            np.testing.assert_allclose(expl.maps[method][i], reference_method_map(A, g, method), atol=1e-5)
        np.testing.assert_allclose(expl.maps["gradcampp"][i], reference_map(A, g, "official"), atol=1e-5)


class GapLinear(torch.nn.Module):
    """Convolutions, global average pooling, one linear layer: g = W_c / hw at the last feature map."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 3, padding=1), torch.nn.ReLU(),
                                            torch.nn.Conv2d(12, 16, 3, stride=2, padding=1), torch.nn.ReLU())
        self.fc = torch.nn.Linear(16, 5)
        self.eval()

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


@pytest.mark.parametrize("seed", range(3))
def test_methods_collapse_into_two_maps_behind_a_gap_linear_head(seed):
    """At such a layer Grad-CAM = XGrad-CAM = HiResCAM (weights W_c) and LayerCAM = element-wise =
    official Grad-CAM++ (weights relu(W_c)), as the README says; an earlier layer parts them."""
    model = GapLinear(seed)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    maps = explain(model, "features.3", x, methods="all", image=x).maps
    for a, b in (("gradcam", "xgradcam"), ("gradcam", "hirescam"), ("layercam", "gradcampp"),
                 ("layercam", "gradcam_elementwise")):
        np.testing.assert_allclose(maps[a], maps[b], atol=1e-5, err_msg=f"{a} vs {b}")
    assert np.abs(maps["gradcam"] - maps["layercam"]).max() > 1e-3  # W_c has negative weights too
    early = explain(model, "features.1", x, methods="gradcam,xgradcam,hirescam,layercam,gradcampp").maps
    assert np.abs(early["gradcam"] - early["hirescam"]).max() > 1e-3
    assert np.abs(early["layercam"] - early["gradcampp"]).max() > 1e-3


def test_no_backward_pass_when_no_method_needs_gradients(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a backward pass ran")

    monkeypatch.setattr(torch.autograd, "grad", refuse)
    expl = explain(TinyVGG(0), TARGET, torch.randn(1, 3, 32, 32), methods=["eigencam"])
    assert list(expl.maps) == ["eigencam"] and expl.maps["eigencam"].max() == pytest.approx(1.0)


# --------------------------------------------------------------------------- Score-CAM


def _probability_fn(model, cls):
    def prob(img):
        with torch.no_grad():
            logits = model(torch.from_numpy(np.ascontiguousarray(img, np.float32))[None])
        return float(torch.softmax(logits.double(), 1)[0, cls])
    return prob


@pytest.mark.parametrize("seed", range(2))
def test_scorecam_matches_a_channel_by_channel_reference(seed):
    model = TinyVGG(seed)
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    passes = []
    expl = explain(model, TARGET, image, methods=["scorecam"], image=image, preprocess=None, score_batch=5,
                   progress=passes.append)
    with torch.no_grad():
        A = model.features[:7](image)
    flat = A.flatten(2)
    live = int((flat.amax(2) > flat.amin(2)).sum())
    assert sum(passes) == live and max(passes) <= 5  # one pass per non-constant channel, in batches of 5
    for i in range(2):
        ref = scorecam_map(A[i].numpy(), image[i].numpy(), _probability_fn(model, int(expl.classes[i])))
        np.testing.assert_allclose(expl.maps["scorecam"][i], ref, atol=1e-5)


def test_scorecam_masks_the_image_before_the_models_normalisation():
    model = TinyVGG(1)
    rgb = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    mean = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)

    def prep(x):
        return (x - mean) / 0.25

    expl = explain(model, TARGET, prep(rgb), methods=["scorecam"], image=rgb, preprocess=prep)
    with torch.no_grad():
        A = model.features[:7](prep(rgb))[0].numpy()

    def prob(img):
        with torch.no_grad():
            x = prep(torch.from_numpy(np.float32(img))[None])
            return float(torch.softmax(model(x).double(), 1)[0, int(expl.classes[0])])

    np.testing.assert_allclose(expl.maps["scorecam"][0], scorecam_map(A, rgb[0].numpy(), prob), atol=1e-5)


def test_scorecam_does_not_depend_on_its_batch_size():
    model = TinyVGG(2)
    image = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    maps = [explain(model, TARGET, image, methods=["scorecam"], image=image, score_batch=b).maps["scorecam"]
            for b in (1, 7, 1000)]
    np.testing.assert_allclose(maps[0], maps[1], atol=1e-6)
    np.testing.assert_allclose(maps[0], maps[2], atol=1e-6)


# --------------------------------------------------------------------------- through the CLI, on a real architecture


def _resnet_layer1_split(model, x):
    """A = layer1 output, g = dS/dA, by running resnet18's parts by hand (no hooks)."""
    with torch.no_grad():
        A = model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x)))))
    A = A.clone().requires_grad_(True)
    h = model.layer4(model.layer3(model.layer2(A)))
    logits = model.fc(torch.flatten(model.avgpool(h), 1))
    cls = int(logits[0].argmax())
    (g,) = torch.autograd.grad(logits[0, cls], A)
    return A.detach()[0].numpy(), g[0].numpy(), cls


@pytest.mark.slow
def test_every_method_through_the_cli_on_a_seeded_resnet(run_cli, tmp_path):
    torch.manual_seed(11)
    model = torchvision.models.resnet18().eval()
    weights = tmp_path / "r18.pth"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "o"
    code, stdout, err = run_cli("classify", "--arch", "resnet18", "--weights", weights, "--layer", "layer1",
                                "-f", IMAGES / "coffee.png", "-o", "c.jpeg", "--methods", "all", "--save-maps",
                                "--output-dir", out, "--score-batch", "16", "--sscam-samples", "2",
                                "--iscam-steps", "2")
    assert code == 0, err
    rgb = np.asarray(Image.open(IMAGES / "coffee.png").convert("RGB"))
    square = paper_square(rgb, 224).astype(np.float64) / 255.0
    rgb01 = square.transpose(2, 0, 1)
    x = torch.from_numpy(((square - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)[None].astype(np.float32))
    A, g, cls = _resnet_layer1_split(model, x)
    assert f"explained: {cls} " in stdout
    for method in ONE_PASS:
        np.testing.assert_allclose(np.load(out / f"c_{method}.npy"), reference_method_map(A, g, method), atol=1e-5)
    np.testing.assert_allclose(np.load(out / "c_gradcampp.npy"), reference_map(A, g, "official"), atol=1e-5)

    def prob(img):
        norm = (img.transpose(1, 2, 0) - IMAGENET_MEAN) / IMAGENET_STD
        with torch.no_grad():
            logits = model(torch.from_numpy(norm.transpose(2, 0, 1)[None].astype(np.float32)))
        return float(torch.softmax(logits.double(), 1)[0, cls])

    np.testing.assert_allclose(np.load(out / "c_scorecam.npy"), scorecam_map(A, rgb01, prob), atol=1e-5)
    # Every method of "all" has its files (CAM is not one), and the comparison shows the input and 16 panels,
    # three rows of five and one of two.
    assert not (out / "c_cam.npy").exists()
    for method in parse_methods("all"):
        for suffix in ("_heatmap.jpeg", "_overlay.jpeg", ".npy"):
            assert (out / f"c_{method}{suffix}").is_file()
    comparison = np.asarray(Image.open(out / "c.jpeg").convert("RGB"))
    assert _panel_grid(comparison) == [5, 5, 5, 2]


def _panel_grid(figure: np.ndarray) -> list[int]:
    """Panels per row of a comparison figure, found from its pixels (white gaps between panels; a last row
    of two panels in five columns is under half dark)."""
    dark = (figure < 235).any(axis=2)
    rows = _runs(dark.mean(axis=1) > 0.25)
    return [len(_runs(dark[a:b].mean(axis=0) > 0.05)) for a, b in rows]


def _runs(mask) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    return [(a, b) for a, b in zip(edges[::2], edges[1::2]) if b - a > 20]


@pytest.mark.parametrize("n,expected", [(3, [3]), (5, [5]), (6, [3, 3]), (7, [4, 3]), (10, [5, 5])])
def test_grid_stays_readable_up_to_ten_panels(n, expected):
    panels = [np.zeros((100, 80, 3), np.uint8) for _ in range(n)]
    assert _panel_grid(side_by_side(panels)) == expected


def test_class_agnostic_panels_say_so(vgg, tmp_path):
    from campp_cli.draw.figures import render
    from campp_cli.run.stages import ExplainedRow

    square = np.full((224, 224, 3), 128, np.uint8)
    expl = explain(vgg.module, vgg.layer, vgg.preprocessing(torch.rand(1, 3, 224, 224)), methods="gradcam,eigencam")
    row = ExplainedRow(None, square, int(expl.classes[0]), expl.probs[0], {m: v[0] for m, v in expl.maps.items()})
    figs = render(row, vgg.categories)
    assert set(figs) == {"", "_gradcam_heatmap", "_gradcam_overlay", "_eigencam_heatmap", "_eigencam_overlay"}
    assert _panel_grid(figs[""]) == [3]


# --------------------------------------------------------------------------- against pytorch-grad-cam and torchcam


def _pgc(klass, model, layer_module, x, cls):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with klass(model=model, target_layers=[layer_module]) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(cls)])[0]


@pytest.mark.parametrize("seed", range(2))
def test_matches_pytorch_grad_cam(seed):
    from pytorch_grad_cam import GradCAMElementWise, HiResCAM, LayerCAM, XGradCAM

    model = TinyVGG(seed, scale=1000.0)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    expl = explain(copy.deepcopy(model), TARGET, x, methods="all", image=x)
    cls = int(expl.classes[0])
    for method, klass in (("xgradcam", XGradCAM), ("hirescam", HiResCAM),
                          ("gradcam_elementwise", GradCAMElementWise), ("layercam", LayerCAM)):
        theirs = _pgc(klass, model, model.features[6], x, cls)
        np.testing.assert_allclose(_same_normalisation(expl.maps[method][0], (32, 32)), theirs, atol=1e-4,
                                   err_msg=method)


@pytest.mark.parametrize("seed", range(4))
def test_eigencam_equals_pytorch_grad_cam_up_to_the_svd_sign(seed):
    """pytorch-grad-cam keeps the SVD's arbitrary sign; campp's equals theirs or its mirror image."""
    from pytorch_grad_cam import EigenCAM

    model = TinyVGG(seed)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    ours = explain(copy.deepcopy(model), TARGET, x, methods=["eigencam"]).maps["eigencam"][0]
    theirs = _pgc(EigenCAM, model, model.features[6], x, 0)
    with torch.no_grad():
        A = model.features[:7](x).double()
    flipped = normalised(-projection(A)[0].numpy()).astype(np.float32)
    same, mirror = (np.abs(_same_normalisation(m, (32, 32)) - theirs).max() for m in (ours, flipped))
    assert min(same, mirror) < 1e-4, (same, mirror)


def test_scorecam_differs_from_pytorch_grad_cam_by_its_definition_only():
    """Theirs: align-corners upsampling, logits of the masked *normalised* input, softmax over channels."""
    from pytorch_grad_cam import ScoreCAM

    model = TinyVGG(3, scale=10.0)
    rgb = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    mean = torch.tensor(IMAGENET_MEAN).float().view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).float().view(1, 3, 1, 1)
    x = (rgb - mean) / std
    ours = explain(copy.deepcopy(model), TARGET, x, methods=["scorecam"], image=rgb,
                   preprocess=lambda v: (v - mean) / std).maps["scorecam"][0]
    cls = int(torch.argmax(model(x)))
    theirs = _pgc(ScoreCAM, model, model.features[6], x, cls)
    with torch.no_grad():
        A = model.features[:7](x)[0].numpy().astype(np.float64)
    logits = []
    for k in range(A.shape[0]):
        up = _align_corners_upsample(A[k], 32)
        mask = (up - up.min()) / (up.max() - up.min() + 1e-8)
        with torch.no_grad():
            logits.append(float(model(x * torch.from_numpy(mask).float())[0, cls]))
    w = np.exp(np.array(logits) - max(logits))
    w /= w.sum()
    their_definition = normalised(np.tensordot(w, A, axes=1))
    np.testing.assert_allclose(_same_normalisation(their_definition, (32, 32)), theirs, atol=1e-4)
    gap = np.abs(_same_normalisation(ours, (32, 32)) - theirs).max()
    print(f"\n[scorecam] campp vs pytorch-grad-cam ScoreCAM, max difference after the same normalisation: {gap:.3f}")


def _align_corners_upsample(channel: np.ndarray, size: int) -> np.ndarray:
    """Bilinear with the corner pixels' centres on the output's corners (torch's UpsamplingBilinear2d)."""
    h, w = channel.shape
    rows = np.stack([np.interp(np.linspace(0, w - 1, size), np.arange(w), r) for r in channel])
    return np.stack([np.interp(np.linspace(0, h - 1, size), np.arange(h), c) for c in rows.T]).T


def _torchcam(klass, model, x, cls, **kwargs):
    with klass(model, TARGET, **kwargs) as extractor:
        scores = model(x)
        return extractor(cls, scores)[0][0].detach().numpy()


def _min_max(m):
    m = m - m.min()
    return m / (m.max() + 1e-8)


@pytest.mark.parametrize("seed", range(2))
def test_matches_torchcam_xgradcam_and_layercam(seed):
    from torchcam.methods import LayerCAM, XGradCAM

    model = TinyVGG(seed, scale=1000.0)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    expl = explain(copy.deepcopy(model), TARGET, x, methods="xgradcam,layercam")
    cls = int(expl.classes[0])
    for method, klass in (("xgradcam", XGradCAM), ("layercam", LayerCAM)):
        np.testing.assert_allclose(_min_max(expl.maps[method][0]), _torchcam(klass, model, x, cls), atol=1e-4)


def test_torchcam_scorecam_is_a_softmax_over_channels_of_logit_gains():
    """torchcam: min-max at low resolution, upsampled, normalised input, (logit - logit of x), softmax over K."""
    from torchcam.methods import ScoreCAM

    model = TinyVGG(4, scale=10.0)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    cls = int(torch.argmax(model(x)))
    theirs = _torchcam(ScoreCAM, model, x, cls, batch_size=8)
    with torch.no_grad():
        A = model.features[:7](x)[0].numpy().astype(np.float64)
        base = float(model(x)[0, cls])
    gains = []
    for k in range(A.shape[0]):
        low = (A[k] - A[k].min()) / (A[k].max() - A[k].min() + 1e-8)
        with torch.no_grad():
            gains.append(float(model(x * torch.from_numpy(upsample_bilinear(low, 32)).float())[0, cls]) - base)
    w = np.exp(np.array(gains) - max(gains))
    w /= w.sum()
    np.testing.assert_allclose(_min_max(normalised(np.tensordot(w, A, axes=1))), theirs, atol=1e-4)


def test_torchcam_gradcampp_is_a_relu_cubed_weighting_not_eq19():
    """torchcam 0.5.0's in-place division lands on a masked copy: its weights are sum_ij relu(g)^3."""
    from reference import vgg_activations_and_grads
    from torchcam.methods import GradCAMpp

    model = TinyVGG(5, scale=1000.0)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    A, g, _, cls = vgg_activations_and_grads(model, x, None, cut=7)
    theirs = _torchcam(GradCAMpp, model, x, cls)
    cubed = normalised(np.tensordot((np.maximum(g.astype(np.float64), 0) ** 3).sum(axis=(1, 2)), A, axes=1))
    np.testing.assert_allclose(_min_max(cubed), theirs, atol=1e-4)
    paper = campp("gradcampp", A, g, variant="paper")
    assert np.abs(_min_max(paper) - theirs).max() > 1e-3  # not the paper's eq. 19


def test_torchcam_gradcampp_vs_paper_variant_on_real_photos(capsys):
    """How far torchcam's weighting (pinned above) is from eq. 19 on EfficientNet-Lite0 photos (README).

    torchcam cannot hook Lite0's final map (its module runs twice), so its
    definition is registered here as a method and computed from campp's pass.
    """
    from campp_cli.models.loading import load_classifier
    from campp_cli.run.stages import to_batch

    @register_method("relu_cubed", title="torchcam GradCAMpp")
    def relu_cubed(inp):
        return channel_sum((inp.grads.clamp(min=0) ** 3).sum(dim=(2, 3)), inp.acts)

    clf = load_classifier("efficientnet_lite0")
    gaps = {}
    try:
        for name in ("chelsea", "coffee"):
            square = geometry.center_square(decode.load_rgb(IMAGES / f"{name}.png"))
            x = clf.preprocessing(to_batch([square], clf))
            maps = explain(clf.module, clf.layer, x, variant="paper", methods="gradcampp,relu_cubed").maps
            gaps[name] = float(np.abs(_min_max(maps["gradcampp"][0]) - _min_max(maps["relu_cubed"][0])).max())
    finally:
        unregister_method("relu_cubed")
    with capsys.disabled():
        print(f"\n[torchcam GradCAMpp vs eq. 19 on Lite0] max difference after min-max: {gaps}")
    assert all(v > 0.01 for v in gaps.values())


@pytest.mark.slow
def test_scorecam_progress_is_visible_for_one_photo(run_cli, tmp_path, monkeypatch):
    """One photo normally gets no bar; with extra forward passes it does, counting them."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, _, err = run_cli("classify", *["--arch", "efficientnet_lite0"], "-f", IMAGES / "coffee.png",
                           "--methods", "gradcam,scorecam", "--score-batch", "64", "--output-dir", tmp_path)
    assert code == 0, err
    counts = [int(x) for x in __import__("re").findall(r"\((\d+) extra forward passes\)", err)]
    assert counts and counts == sorted(counts) and counts[-1] > 64  # several batches of 64, counted up
    code, _, err = run_cli("classify", *["--arch", "efficientnet_lite0"], "-f", IMAGES / "coffee.png",
                           "--output-dir", tmp_path / "plain")
    assert code == 0 and "explaining" not in err


def test_the_layer_can_be_given_as_the_module_itself():
    """explain(model, model.features[3], ...) is explain(model, "features.3", ...); a foreign module or
    another type is one usage error, never an AttributeError."""
    model = GapLinear(0)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    by_name = explain(model, "features.3", x, methods="gradcam,gradcampp").maps
    by_module = explain(model, model.features[3], x, methods="gradcam,gradcampp").maps
    for m in by_name:
        np.testing.assert_array_equal(by_name[m], by_module[m])
    with pytest.raises(UsageError, match="not a submodule of the model"):
        explain(model, torch.nn.ReLU(), x)
    with pytest.raises(UsageError, match="give a dotted module name or the module itself"):
        explain(model, 3, x)
