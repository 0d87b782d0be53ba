"""A lean cold start: models built without the random initialisation their weights replace, weights
mapped rather than copied, only the imports a call needs; the same results as the ordinary way."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import IMAGES, fresh_campp
from torch import nn

from campp_cli.cam.explain import explain
from campp_cli.errors import UsageError
from campp_cli.models import labels, loading
from campp_cli.models.preprocessing import Preprocessing
from campp_cli.models.spec import SOURCES, ArchSpec, get_arch, register_source


def _reload(monkeypatch, lean: bool, *args, **kwargs):
    loading._CACHE.clear()
    if not lean:
        monkeypatch.setattr(loading, "_empty_module", lambda spec: None)  # the ordinary build and copying load
    try:
        return loading.load_classifier(*args, **kwargs)
    finally:
        monkeypatch.undo()
        loading._CACHE.clear()


def _explained(clf, seed: int = 0):
    x = torch.randn(2, 3, clf.input_size, clf.input_size, generator=torch.Generator().manual_seed(seed))
    return explain(clf.module, clf.layer, x, methods="gradcam,gradcampp")


@pytest.mark.parametrize("arch", ["vgg16", "efficientnet_lite0"])
def test_lean_loading_gives_the_same_results_bitwise(vgg_weights, monkeypatch, arch):
    old = _reload(monkeypatch, False, arch, device="cpu")
    new = _reload(monkeypatch, True, arch, device="cpu")
    assert new.layer == old.layer and new.categories == old.categories
    a, b = _explained(old), _explained(new)
    assert np.array_equal(a.logits, b.logits) and np.array_equal(a.probs, b.probs)
    for method in a.maps:
        assert np.array_equal(a.maps[method], b.maps[method]), method
    ours, theirs = new.module.state_dict(), old.module.state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) and ours[k].dtype == theirs[k].dtype for k in ours)


def test_the_model_is_built_without_values_and_holds_the_mapped_tensors(vgg_weights, monkeypatch):
    seen = {}
    assign, read = loading._assign_weights, loading.read_weights

    def spy_assign(module, state):
        seen["devices"] = {t.device.type for t in [*module.parameters(), *module.buffers()]}
        return assign(module, state)

    def spy_read(path, expected_bytes=None):
        state, meta = read(path, expected_bytes)
        seen["state"] = state
        return state, meta

    monkeypatch.setattr(loading, "_assign_weights", spy_assign)
    monkeypatch.setattr(loading, "read_weights", spy_read)
    loading._CACHE.clear()
    try:
        clf = loading.load_classifier("vgg16", device="cpu")
    finally:
        loading._CACHE.clear()
    assert seen["devices"] == {"meta"}  # no random initialisation ran on real tensors
    weight = clf.module.classifier[0].weight  # 400 MB of the 528: used where it lies in the file
    assert weight.data_ptr() == seen["state"]["classifier.0.weight"].data_ptr()
    assert all(t.device.type == "cpu" for t in [*clf.module.parameters(), *clf.module.buffers()])


def test_no_initialisation_runs_for_a_model_about_to_be_loaded(vgg_weights, monkeypatch):
    """The initialisers run on shapes only (meta tensors), never filling real memory."""
    filled = []
    real = torch.nn.init.normal_

    def spy(tensor, *args, **kwargs):
        filled.append(tensor.device.type)
        return real(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.nn.init, "normal_", spy)  # VGG16's Linear layers
    loading._CACHE.clear()
    try:
        loading.load_classifier("vgg16", device="cpu")
    finally:
        loading._CACHE.clear()
    assert filled and set(filled) == {"meta"}


class _Buffered(nn.Module):
    """A builder that needs values (``tolist``), a non-persistent buffer, a forward that needs values."""

    def __init__(self, compute_at_build: bool, data_dependent: bool):
        super().__init__()
        if compute_at_build:
            widths = torch.tensor([4, 6]).tolist()  # fails on meta
        else:
            widths = [4, 6]
        self.features = nn.Sequential(nn.Conv2d(3, widths[0], 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(widths[0], widths[1], 3, padding=1), nn.ReLU())
        self.register_buffer("scale", torch.full((1,), 2.0), persistent=False)
        self.head = nn.Linear(widths[1], 3)
        self.data_dependent = data_dependent

    def forward(self, x):
        if self.data_dependent and float(x.abs().sum()) < 0:  # needs values: fails on meta
            x = -x
        y = self.features(x * self.scale)
        return self.head(y.mean(dim=(2, 3)))


@pytest.mark.parametrize("compute_at_build,data_dependent", [(False, False), (True, False), (False, True)])
def test_builders_that_need_values_still_load(tmp_path, monkeypatch, compute_at_build, data_dependent):
    torch.manual_seed(3)
    reference = _Buffered(False, False).eval()
    path = tmp_path / "w.pth"
    torch.save(reference.state_dict(), path)
    spec = ArchSpec(name="test:buffered", builder=lambda: _Buffered(compute_at_build, data_dependent),
                    categories=("a", "b", "c"), preprocessing=Preprocessing(), input_size=16, weights_filename="")
    register_source("test", lambda name: spec)
    loading._CACHE.clear()
    try:
        clf = loading.load_classifier("test:buffered", weights=path, device="cpu", layer="features.3")
        with pytest.raises(UsageError, match="no such feature map"):
            loading.load_classifier("test:buffered", weights=path, device="cpu", layer="features.9")
    finally:
        SOURCES.unregister("test")
        get_arch.cache_clear()
        loading._CACHE.clear()
    assert all(t.device.type == "cpu" for t in [*clf.module.parameters(), *clf.module.buffers()])
    assert float(clf.module.scale) == 2.0  # the non-persistent buffer has its value
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(clf.module(x), reference(x), atol=1e-6)


def test_weights_of_another_dtype_load_as_the_architecture_declares(tmp_path):
    torch.manual_seed(4)
    reference = _Buffered(False, False).eval()
    path = tmp_path / "w64.pth"
    torch.save({k: v.double() for k, v in reference.state_dict().items()}, path)
    spec = ArchSpec(name="test:buffered", builder=lambda: _Buffered(False, False), categories=("a", "b", "c"),
                    preprocessing=Preprocessing(), input_size=16, weights_filename="")
    register_source("dtype", lambda name: spec)
    loading._CACHE.clear()
    try:
        clf = loading.load_classifier("dtype:x", weights=path, device="cpu", layer="features.3")
    finally:
        SOURCES.unregister("dtype")
        get_arch.cache_clear()
        loading._CACHE.clear()
    assert {p.dtype for p in clf.module.parameters()} == {torch.float32}


def test_imagenet_names_are_torchvision_s():
    import torchvision

    assert labels.imagenet_categories() == tuple(torchvision.models.VGG16_Weights.IMAGENET1K_V1.meta["categories"])


def test_efficientnet_lite_never_imports_torchvision(tmp_path):
    code, loaded, err = fresh_campp(["classify", "--arch", "efficientnet_lite0", "-f", IMAGES / "chelsea.png",
                                     "--output-dir", tmp_path / "o", "-gpu", "-1", "-q"], tmp_path,
                                    module="torchvision")
    assert code == 0, err
    assert not loaded
    assert (tmp_path / "o" / "chelsea.jpeg").is_file()


def test_one_photo_in_one_pass_is_not_prepacked(run_cli, tmp_path, monkeypatch):
    """oneDNN's copy of the convolutions' weights costs more than it saves on one pass: made for a batch run,
    or for a photo that takes several passes (Score-CAM), never for one photo in one pass."""
    packed = []
    real = loading.pack_convolutions
    monkeypatch.setattr(loading, "pack_convolutions", lambda module: packed.append(1) or real(module))
    lite = ("--arch", "efficientnet_lite0", "-gpu", "-1", "-q")
    cases = [((IMAGES / "chelsea.png",), [], 0), ((IMAGES / "chelsea.png",), ["--guided"], 0),
             ((IMAGES / "chelsea.png", IMAGES / "coffee.png"), ["-o", "{stem}.jpeg"], 1)]
    for i, (photos, extra, expected) in enumerate(cases):
        packed.clear()
        loading._CACHE.clear()
        args = [a for p in photos for a in ("-f", p)]
        code, _, err = run_cli("classify", *lite, *args, *extra, "--output-dir", tmp_path / str(i))
        assert code == 0, err
        assert len(packed) == expected, (photos, extra)
    loading._CACHE.clear()
