"""Your own model: --model FILE.py:FUNCTION, its preprocessing (--input-size, --mean, --std, --resize),
what campp convert stores, load_classifier(model=...), and every way these can go wrong."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import IMAGES, fresh_campp, write_image
from torch import nn

from campp_cli.errors import ModelError, UsageError
from campp_cli.models.preprocessing import PRESETS, Overrides, Preprocessing, parse_overrides

NET = '''
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def features():
    return nn.Sequential(nn.Conv2d(3, 8, 3))


def number():
    return 42


def broken():
    return {}["missing"]
'''


@pytest.fixture()
def own(tmp_path):
    """A folder with net.py, labels.txt (4 classes), weights.pth and a photo."""
    (tmp_path / "net.py").write_text(NET)
    (tmp_path / "labels.txt").write_text("red\ngreen\nblue\ngrey\n")
    namespace: dict = {}
    exec(NET, namespace)
    torch.save(namespace["build"]().state_dict(), tmp_path / "weights.pth")
    write_image(tmp_path / "photo.png", 90, 60)
    return tmp_path


# --- the command line ---------------------------------------------------------------------------------------

def test_a_model_of_your_own_from_a_file(own, run_cli, monkeypatch):
    monkeypatch.chdir(own)
    code, out, err = run_cli("classify", "-f", "photo.png", "--model", "net.py:build", "--weights", "weights.pth",
                             "--labels", "labels.txt", "--input-size", "48", "--save-maps", "--jsonl", "r.jsonl")
    assert code == 0, err
    assert "net.py:build on cpu, layer 3 (ReLU), weights weights.pth" in err  # the last conv block's ReLU
    line = json.loads((own / "r.jsonl").read_text())
    assert line["name"] in ["red", "green", "blue", "grey"]
    assert len(line["top5"]) == 4
    assert np.load(own / "output" / "photo_gradcampp.npy").shape == (48, 48)  # no pooling: the input's grid


def test_a_model_from_a_package_module(own, run_cli, monkeypatch):
    monkeypatch.chdir(own)
    code, out, err = run_cli("classify", "-f", "photo.png", "--model", "net:build", "--input-size", "32")
    assert code == 0, err
    assert "class 0" in out or "class 1" in out or "class 2" in out or "class 3" in out  # numbered classes


@pytest.mark.parametrize("ref, code, message", [
    ("nothere.py:build", 2, "--model nothere.py:build: nothere.py: no such file"),
    ("net.py:buld", 2, "net.py has no function 'buld'; did you mean build?"),
    ("net.py", 2, "give FILE.py:FUNCTION or package.module:FUNCTION"),
    ("net.py:number", 2, "the function returned a int, not a torch.nn.Module"),
    ("net.py:broken", 1, "the function raised KeyError: 'missing' ("),
    ("net.py:features", 1, "its output is (1, 8, 222, 222), not (N, classes)"),
    ("nomodule:build", 2, "no module 'nomodule'"),
])
def test_bad_models_are_one_line(own, run_cli, monkeypatch, ref, code, message):
    monkeypatch.chdir(own)
    got, out, err = run_cli("classify", "-f", "photo.png", "--model", ref)
    assert got == code, err
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_an_error_inside_the_users_file_names_file_and_line(own, run_cli, monkeypatch):
    (own / "bad.py").write_text("import torch\n\nx = 1 / 0\n\ndef build():\n    pass\n")
    monkeypatch.chdir(own)
    code, out, err = run_cli("classify", "-f", "photo.png", "--model", "bad.py:build")
    assert code == 1
    assert "importing bad.py failed: ZeroDivisionError: division by zero (" in err and "bad.py, line 3)" in err
    assert len(err.strip().splitlines()) == 1
    # --debug: the user's own traceback
    from campp_cli.cli.main import main

    with pytest.raises(ModelError) as info:
        main(["--debug", "classify", "-f", "photo.png", "--model", "bad.py:build"])
    assert isinstance(info.value.__cause__, ZeroDivisionError)


@pytest.mark.parametrize("args, code, message", [
    (["--labels", "three.txt"], 2, "--labels: 3 names, but net.py:build has 4 outputs"),
    (["--weights", "other.pth"], 1, "these weights do not fit net.py:build: missing 0.weight"),
    (["--num-classes", "4", "--weights", "weights.pth"], 2, "builds its own head"),
    (["--arch", "resnet18"], 2, "give --arch or --model, not both"),
])
def test_model_mismatches(own, run_cli, monkeypatch, args, code, message):
    (own / "three.txt").write_text("a\nb\nc\n")
    torch.save({"w": torch.zeros(2)}, own / "other.pth")
    monkeypatch.chdir(own)
    got, out, err = run_cli("classify", "-f", "photo.png", "--model", "net.py:build", *args)
    assert got == code, err
    assert message in err


@pytest.mark.parametrize("args, message", [
    (["--mean", "0.5,0.5"], "--mean 0.5,0.5: give three numbers R,G,B, not 2"),
    (["--mean", "imagenett"], "give three numbers R,G,B (e.g. 0.485,0.456,0.406) or a preset: imagenet"),
    (["--std", "0.2,0,0.2"], "--std 0.2,0,0.2: a standard deviation of 0 would divide by zero"),
    (["--std", "1,1,nan"], "the numbers must be finite"),
    (["--input-size", "4"], "--input-size 4: give a side between 8 and 8192"),
    (["--resize", "stretch"], "Invalid value for '--resize'"),
])
def test_bad_preprocessing_is_a_usage_error_before_torch(tmp_path, args, message):
    code, loaded, err = fresh_campp(["classify", "-f", IMAGES / "chelsea.png", "--model", "x.py:build", *args],
                                    tmp_path)
    assert code == 2, err
    assert message in err
    assert not loaded


# --- preprocessing ----------------------------------------------------------------------------------------------

def test_presets_and_overrides():
    assert parse_overrides(mean="Inception").apply(Preprocessing()).mean == (0.5, 0.5, 0.5)
    caffe = parse_overrides(mean="caffe", input_size=300, resize="pad").apply(Preprocessing(size=64))
    assert caffe.bgr and caffe.scale == 255.0 and caffe.std == (1.0, 1.0, 1.0)
    assert caffe.size == 300 and caffe.resize == "pad"
    mine = parse_overrides(std="0.5, 0.25, 0.125").apply(PRESETS["none"])
    assert mine.mean == (0.0, 0.0, 0.0) and mine.std == (0.5, 0.25, 0.125)
    assert not parse_overrides() and parse_overrides(resize="crop")
    # the maths, written out: Caffe is BGR, 0..255, minus the BGR mean
    rgb = torch.rand(2, 3, 4, 4)
    expected = rgb.flip(1) * 255 - torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)
    torch.testing.assert_close(PRESETS["caffe"](rgb), expected)


def _halves(height: int, width: int) -> np.ndarray:
    img = np.zeros((height, width, 3), np.uint8)
    img[:, : width // 2, 0] = 255  # left half red
    img[:, width // 2:, 2] = 255  # right half blue
    return img


def test_the_three_ways_to_make_a_square():
    from campp_cli.draw.geometry import frame_photo
    from campp_cli.io.decode import photo_of

    img = _halves(20, 40)
    to_square = lambda mode, side: np.asarray(frame_photo(photo_of(img), side, mode))  # noqa: E731
    crop = to_square("crop", 20)
    assert crop.shape == (20, 20, 3) and (crop == img[:, 10:30]).all()
    pad = to_square("pad", 40)
    assert pad.shape == (40, 40, 3)
    assert (pad[:10] == 0).all() and (pad[30:] == 0).all() and (pad[10:30] == img).all()
    squash = to_square("squash", 20)
    assert squash.shape == (20, 20, 3)
    assert (squash[:, :9, 0] == 255).all() and (squash[:, 11:, 2] == 255).all()  # both halves, each half wide


@pytest.mark.parametrize("resize", ["crop", "squash", "pad"])
def test_boxes_follow_the_resize_mode(resize):
    """A white box drawn on the photo lands, after framing and resizing, where to_input_frame says."""
    from campp_cli.commands.boxes import Box, to_input_frame
    from campp_cli.draw.geometry import frame_photo
    from campp_cli.io.decode import photo_of

    img = np.zeros((100, 160, 3), np.uint8)
    box = Box("thing", 70, 20, 130, 60)
    img[20:60, 70:130] = 255
    square = np.asarray(frame_photo(photo_of(img), 64, resize, "area"))
    ys, xs = np.nonzero(square[:, :, 0] > 127)
    x0, y0, x1, y1 = to_input_frame(box, 160, 100, 64, resize)
    assert abs(xs.min() - x0) <= 1 and abs(xs.max() + 1 - x1) <= 1
    assert abs(ys.min() - y0) <= 1 and abs(ys.max() + 1 - y1) <= 1


def test_the_resize_mode_reaches_the_model(own, run_cli, monkeypatch):
    """--resize pad on a wide photo: the model sees black bands above and below."""
    from PIL import Image

    Image.fromarray(_halves(50, 100)).save(own / "wide.png")
    seen = []

    from campp_cli.run import stages

    real = stages.decode

    def spy(*args, **kwargs):
        row = real(*args, **kwargs)
        seen.append(row.model_input)
        return row

    monkeypatch.setattr(stages, "decode", spy)
    monkeypatch.setattr("campp_cli.run.stages.decode", spy)
    monkeypatch.chdir(own)
    code, out, err = run_cli("classify", "-f", "wide.png", "--model", "net.py:build", "--input-size", "32",
                             "--resize", "pad", "-q")
    assert code == 0, err
    (x,) = seen
    assert x.shape == (3, 32, 32)
    assert x[:, :7].max() == 0 and x[:, 25:].max() == 0  # the bands
    assert x[0, 10:22, :14].min() > 0.9 and x[2, 10:22, 18:].min() > 0.9  # red left, blue right


# --- what convert stores, and the library ---------------------------------------------------------------------

def test_convert_stores_the_preprocessing(own, run_cli, monkeypatch):
    monkeypatch.chdir(own)
    code, out, err = run_cli("convert", "weights.pth", "mine.pth", "--model", "net.py:build", "--input-size", "40",
                             "--mean", "none", "--resize", "squash")
    assert code == 0, err
    from campp_cli.models.loading import load_classifier

    clf = load_classifier(model="net.py:build", weights="mine.pth")
    assert clf.input_size == 40 and clf.preprocessing.resize == "squash"
    assert clf.preprocessing.mean == (0.0, 0.0, 0.0) and clf.preprocessing.std == (1.0, 1.0, 1.0)
    # the same run, from the stored preprocessing or from the options
    stored = run_cli("classify", "-f", "photo.png", "--model", "net.py:build", "--weights", "mine.pth",
                     "--jsonl", "a.jsonl", "-o", "a.jpeg")
    given = run_cli("classify", "-f", "photo.png", "--model", "net.py:build", "--weights", "weights.pth",
                    "--input-size", "40", "--mean", "0,0,0", "--std", "1,1,1", "--resize", "squash",
                    "--jsonl", "b.jsonl", "-o", "b.jpeg")
    assert stored[0] == given[0] == 0
    a, b = (json.loads((own / f).read_text()) for f in ("a.jsonl", "b.jsonl"))
    assert a["probability"] == pytest.approx(b["probability"], abs=1e-6) and a["class"] == b["class"]
    # an option still wins over what the file stores
    over = load_classifier(model="net.py:build", weights="mine.pth", preprocessing=Overrides(size=24))
    assert over.input_size == 24 and over.preprocessing.resize == "squash"


def test_load_classifier_takes_a_module():
    from campp_cli import explain, load_classifier

    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
    clf = load_classifier(model=net, labels=["a", "b", "c"], preprocessing=Preprocessing(size=20, resize="pad"),
                          layer=net[1])
    assert clf.categories == ["a", "b", "c"] and clf.input_size == 20 and clf.layer == "1"
    assert clf.preprocessing.resize == "pad"
    x = torch.rand(2, 3, 20, 20)
    expl = explain(clf.module, clf.layer, clf.preprocessing(x))
    assert expl.maps["gradcampp"].shape == (2, 18, 18)
    with pytest.raises(UsageError, match="^labels: 2 names, but Sequential has 3 outputs"):
        load_classifier(model=net, labels=["a", "b"])
    with pytest.raises(UsageError, match="std and scale must not be 0"):
        load_classifier(model=net, preprocessing=Preprocessing(std=(1.0, 0.0, 1.0)))
    with pytest.raises(ModelError, match="not \\(N, classes\\)"):
        load_classifier(model=nn.Conv2d(3, 2, 1))
