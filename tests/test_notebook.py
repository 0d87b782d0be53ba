"""explain_image: one call from a notebook, shown inline (checked in a real kernel through nbclient)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from conftest import IMAGES
from PIL import Image
from torch import nn

from campp_cli import explain_image, load_classifier
from campp_cli.errors import UsageError

CLASSES = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def clf():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 3))
    return load_classifier(model=net, labels=CLASSES)


def test_a_path_a_pil_image_and_an_array_give_the_same_result(clf):
    from_path = explain_image(IMAGES / "chelsea.png", clf, methods="gradcam,gradcampp,layercam")
    pil = Image.open(IMAGES / "chelsea.png")
    from_pil = explain_image(pil, clf, methods="gradcam,gradcampp,layercam")
    from_array = explain_image(np.asarray(pil.convert("RGB")).astype(np.float32) / 255.0, clf,
                               methods="gradcam,gradcampp,layercam")
    for other in (from_pil, from_array):
        assert other.class_index == from_path.class_index
        for method in ("gradcam", "gradcampp", "layercam"):
            np.testing.assert_allclose(other.maps[method], from_path.maps[method], atol=1e-5)
    assert from_path.class_name in CLASSES and len(from_path.top5) == 3
    assert from_path.figure().size[0] > 4 * from_path.overlay("layercam").size[0] > 0
    assert from_path.heatmap("gradcam").size == from_path.overlay("gradcam").size


def test_the_notebook_views(clf, tmp_path):
    result = explain_image(IMAGES / "coffee.png", clf, label="blue")
    assert result.class_name == "blue"
    png = result._repr_png_()
    assert Image.open(io.BytesIO(png)).size == result.figure().size
    page = result._repr_html_()
    data = page.split('src="data:image/png;base64,')[1].split('"')[0]
    assert base64.b64decode(data) == png
    assert "<b>blue</b>" in page and "top-5" in page
    written = result.save(tmp_path, "coffee")
    assert sorted(p.rsplit("/", 1)[-1] for p in written) == sorted(
        ["coffee.jpeg"] + [f"coffee_{m}_{k}.jpeg" for m in ("gradcam", "gradcampp") for k in ("heatmap", "overlay")])


@pytest.mark.parametrize("image, message", [
    (np.zeros((4, 4, 5)), "an array of shape \\(H, W, 3\\) is needed"),
    (np.full((8, 8, 3), 2.0), "values in \\[0, 1\\]"),
    ([1, 2, 3], "give a file path, a PIL image or a NumPy array, not list"),
])
def test_bad_images_are_one_clear_error(clf, image, message):
    with pytest.raises(UsageError, match=message):
        explain_image(image, clf)
    with pytest.raises(UsageError, match="was not computed"):
        explain_image(IMAGES / "coffee.png", clf, methods="gradcam").overlay("scorecam")


@pytest.mark.slow
def test_a_real_notebook_shows_the_figure(tmp_path):
    nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed")
    pytest.importorskip("ipykernel", reason="ipykernel is not installed")
    code = (
        "import torch\nfrom torch import nn\nfrom campp_cli import explain_image, load_classifier\n"
        "torch.manual_seed(0)\n"
        "net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),"
        " nn.Linear(8, 3))\n"
        f"clf = load_classifier(model=net, labels={json.dumps(CLASSES)})\n"
        f"explain_image({str(IMAGES / 'chelsea.png')!r}, clf)"
    )
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3").execute()
    (output,) = [o for o in notebook.cells[0].outputs if o.output_type == "execute_result"]
    assert '<img src="data:image/png;base64,' in output.data["text/html"]
    assert "image/png" in output.data
    figure = Image.open(io.BytesIO(base64.b64decode(output.data["image/png"])))
    assert figure.size[0] > 3 * figure.size[1] / 2  # the input and two method panels side by side


def test_save_takes_a_plain_name_and_never_replaces_the_image(clf, tmp_path):
    """Issue 24, 20: the CLI's rules for -o hold for save()'s name."""
    photos = tmp_path / "photos"
    photos.mkdir()
    cat = photos / "cat.jpeg"
    Image.open(IMAGES / "chelsea.png").convert("RGB").save(cat, "JPEG")
    before = cat.read_bytes()
    result = explain_image(cat, clf)
    for name in ("../../escaped", "sub/cat", "..", "a..b"):
        with pytest.raises(UsageError, match="name"):
            result.save(tmp_path / "out" / "sub", name=name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]  # nothing written, no folder made
    with pytest.raises(UsageError, match="would overwrite the input"):
        result.save(photos, "cat")
    assert cat.read_bytes() == before and sorted(p.name for p in photos.iterdir()) == ["cat.jpeg"]
    assert [p.rsplit("/", 1)[-1] for p in result.save(photos, "cat.png", format="png")][0] == "cat.png"
