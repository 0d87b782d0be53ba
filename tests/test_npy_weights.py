"""The paper's vgg16.npy layout: load, convert, refuse pickles that run code; --guided outputs."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
import torchvision
from conftest import IMAGES
from PIL import Image
from reference import reference_map, vgg_activations_and_grads

CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])
CONV = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
        "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"]


def export_tf_layout(model) -> dict:
    """A torchvision VGG16 in the layout of the paper's vgg16.npy (the inverse of campp's import)."""
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    layers = {}
    for name, conv in zip(CONV, convs):
        # OIHW -> HWIO
        layers[name] = [conv.weight.detach().numpy().transpose(2, 3, 1, 0).copy(), conv.bias.detach().numpy().copy()]
    fc6, fc7, fc8 = (m for m in model.classifier if isinstance(m, torch.nn.Linear))
    w6 = fc6.weight.detach().numpy()  # (4096, 25088), columns (c, h, w)
    w6 = w6.reshape(4096, 512, 7, 7).transpose(2, 3, 1, 0).reshape(25088, 4096)  # rows (h, w, c)
    layers["fc6"] = [w6.copy(), fc6.bias.detach().numpy().copy()]
    layers["fc7"] = [fc7.weight.detach().numpy().T.copy(), fc7.bias.detach().numpy().copy()]
    layers["fc8"] = [fc8.weight.detach().numpy().T.copy(), fc8.bias.detach().numpy().copy()]
    return layers


@pytest.fixture(scope="module")
def npy_model(tmp_path_factory):
    torch.manual_seed(99)
    model = torchvision.models.vgg16().eval()
    path = tmp_path_factory.mktemp("npy") / "vgg16.npy"
    np.save(path, export_tf_layout(model), allow_pickle=True)
    return model, path


def caffe_input(rgb01: np.ndarray) -> torch.Tensor:
    """RGB [0,1] HWC -> x255, BGR, minus the mean; (1, 3, H, W)."""
    bgr = rgb01[..., ::-1] * 255.0 - CAFFE_MEAN_BGR
    return torch.from_numpy(bgr.transpose(2, 0, 1)[None].astype(np.float32))


def test_npy_gives_the_torch_models_logits_and_maps(npy_model):
    from campp_cli.cam.explain import explain
    from campp_cli.models.loading import load_classifier

    model, path = npy_model
    clf = load_classifier("vgg16", weights=path)
    assert clf.preprocessing.bgr and clf.preprocessing.scale == 255.0
    rgb01 = np.random.default_rng(5).random((224, 224, 3))
    ours = explain(clf.module, clf.layer, clf.preprocessing(torch.from_numpy(rgb01.transpose(2, 0, 1)[None]).float()))
    A, g, logits, cls = vgg_activations_and_grads(model, caffe_input(rgb01))
    np.testing.assert_allclose(ours.logits[0], logits, rtol=1e-4, atol=1e-4)
    assert ours.classes[0] == cls
    np.testing.assert_allclose(ours.maps["gradcam"][0], reference_map(A, g, "gradcam"), atol=1e-5)
    np.testing.assert_allclose(ours.maps["gradcampp"][0], reference_map(A, g, "official"), atol=1e-5)


@pytest.mark.slow
def test_convert_writes_a_plain_state_dict_with_the_same_results(npy_model, run_cli, tmp_path):
    model, path = npy_model
    target = tmp_path / "vgg16_caffe.pth"
    code, out, err = run_cli("convert", path, target)
    assert code == 0, err
    payload = torch.load(target, weights_only=True)  # no pickle needed any more
    assert payload["preprocessing"]["bgr"] is True
    for suffix, weights in (("npy", path), ("pth", target)):
        code, out, err = run_cli("classify", "-f", IMAGES / "coffee.png", "--weights", weights, "--save-maps",
                                 "-o", f"{suffix}.jpeg", "--output-dir", tmp_path)
        assert code == 0, err
    for method in ("gradcam", "gradcampp"):
        np.testing.assert_array_equal(np.load(tmp_path / f"npy_{method}.npy"), np.load(tmp_path / f"pth_{method}.npy"))


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_npy_that_would_run_code_is_refused(run_cli, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "vgg16.npy"
    np.save(evil, np.array({"conv1_1": _RunsCode(marker)}, dtype=object), allow_pickle=True)
    code, out, err = run_cli("classify", "-f", IMAGES / "coffee.png", "--weights", evil, "--output-dir", tmp_path)
    assert code == 1
    assert "refused" in err and "system" in err
    assert len(err.strip().splitlines()) == 1
    assert not marker.exists()


def test_pth_that_would_run_code_is_refused(run_cli, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as fh:
        pickle.dump({"features.0.weight": _RunsCode(marker)}, fh)
    code, out, err = run_cli("classify", "-f", IMAGES / "coffee.png", "--weights", evil, "--output-dir", tmp_path)
    assert code == 1 and "Traceback" not in err
    assert not marker.exists()


def test_npy_with_wrong_layout_is_named(run_cli, tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, {"conv1_1": [np.zeros((3, 3, 3, 64), np.float32), np.zeros(64, np.float32)]}, allow_pickle=True)
    code, out, err = run_cli("classify", "-f", IMAGES / "coffee.png", "--weights", bad, "--output-dir", tmp_path)
    assert code == 1 and "conv1_2" in err


def test_guided_outputs_and_plain_path_unchanged(vgg, run_cli, tmp_path):
    code, out, err = run_cli("classify", "-f", IMAGES / "chelsea.png", "--guided", "--save-maps",
                             "-o", "g.jpeg", "--output-dir", tmp_path / "g")
    assert code == 0, err
    for name in ("g_guided_gradcam.jpeg", "g_guided_gradcampp.jpeg"):
        with Image.open(tmp_path / "g" / name) as im:
            assert im.format == "JPEG" and im.size == (300, 300)
    code, out, err = run_cli("classify", "-f", IMAGES / "chelsea.png", "--save-maps", "-o", "p.jpeg",
                             "--output-dir", tmp_path / "p")
    assert code == 0, err
    assert not list((tmp_path / "p").glob("*guided*"))
    for method in ("gradcam", "gradcampp"):
        np.testing.assert_array_equal(np.load(tmp_path / "g" / f"g_{method}.npy"),
                                      np.load(tmp_path / "p" / f"p_{method}.npy"))
    assert all(not m._forward_hooks and not m._backward_hooks for m in vgg.module.modules())
    assert [m.inplace for m in vgg.module.modules() if isinstance(m, torch.nn.ReLU)] == \
        [True] * sum(isinstance(m, torch.nn.ReLU) for m in vgg.module.modules())
