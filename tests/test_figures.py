"""What a reader of the figures needs: a colour bar, a caption (model, layer, variant), "explained" vs
"predicted" titles when -l differs, --alpha; and the command line's feel: -q is errors only, per-image
lines above the progress bar on a terminal, an offline example first in --help."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import read_terminal, write_image
from PIL import Image

from campp_cli.draw import geometry, panels
from campp_cli.draw.figures import render
from campp_cli.run.stages import ExplainedRow

TINY = '''
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 3))
'''


def _row(class_index: int, probs=(0.7, 0.2, 0.1)) -> ExplainedRow:
    rng = np.random.default_rng(0)
    square = np.full((224, 224, 3), 128, np.uint8)
    maps = {"gradcam": rng.random((7, 7)).astype(np.float32), "eigencam": rng.random((7, 7)).astype(np.float32)}
    return ExplainedRow(None, square, class_index, np.array(probs, np.float32), maps)


def _non_white_rows(column: np.ndarray) -> np.ndarray:
    return np.flatnonzero((column < 240).any(axis=1))


def test_method_panels_carry_a_colour_bar():
    figure = render(_row(0), ["a", "b", "c"])[""]
    column = figure[:, -3]  # inside the last panel's bar, at the figure's right edge
    rows = _non_white_rows(column)
    assert len(rows) >= 200  # as tall as the image
    top, bottom = column[rows[0] + 2].astype(int), column[rows[-1] - 2].astype(int)
    assert top[0] > 100 and top[2] < 60  # red: the map's 1
    assert bottom[2] > 100 and bottom[0] < 60  # blue: the map's 0
    # from red through yellow and cyan to blue: the red share falls as the bar goes down
    red_share = column[rows, 0].astype(float) - column[rows, 2].astype(float)
    assert red_share[: len(rows) // 4].mean() > 0 > red_share[-len(rows) // 4:].mean()


def test_a_caption_strip_names_model_layer_and_variant():
    plain = render(_row(0), ["a", "b", "c"])[""]
    captioned = render(_row(0), ["a", "b", "c"], caption="model vgg16 | layer features.29, Grad-CAM++ official")[""]
    assert captioned.shape[1] == plain.shape[1] and 14 <= captioned.shape[0] - plain.shape[0] <= 40
    assert (captioned[: plain.shape[0]] == plain).all()
    strip = captioned[plain.shape[0]:]
    text = (strip < 200).any(axis=2)
    assert text.sum() > 100  # letters...
    cols = np.flatnonzero(text.any(axis=0))
    assert cols[0] < 10 and cols[-1] > 0.3 * strip.shape[1]  # ...a line of them from the left


def test_the_caption_names_the_layer_as_campp_layers_lists_it_with_its_type():
    """The shapes model's layer read "layer 10": now "layer 10 (ReLU)", the name `campp layers` lists."""
    from types import SimpleNamespace

    import torch

    from campp_cli.draw.figures import figure_caption
    from campp_cli.run.options import Options

    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1))
    clf = SimpleNamespace(arch="net.py:build", layer="1", module=module)
    assert figure_caption(clf, Options(methods=["gradcam"])) == "model net.py:build | layer 1 (ReLU)"
    clf.layer = "1@0"
    assert "layer 1@0 (ReLU)" in figure_caption(clf, Options(methods=["gradcam"]))


def test_titles_say_explained_and_predicted_when_they_differ():
    same = render(_row(0), ["tabby", "tiger cat", "lynx"])[""]
    other = render(_row(1), ["tabby", "tiger cat", "lynx"])[""]
    band = slice(0, 60)
    expected = panels.titled(panels.with_colour_bar(_row(1).photo, blank=True),
                             ["explained: tiger cat (20.0%)", "predicted: tabby (70.0%)"])
    assert (other[band, : expected.shape[1]] == expected[band]).all()
    input_panel = panels.titled(panels.with_colour_bar(_row(0).photo, blank=True), ["Input", "tabby (70.0%)"])
    assert (same[band, : input_panel.shape[1]] == input_panel[band]).all()


def test_a_tiny_probability_keeps_its_significant_digits_in_the_titles():
    """-l on an unlikely class: 2e-5 was titled "(0.0%)"; now "(0.0020%)"."""
    row = _row(1, probs=(0.99998, 0.00002, 0.0))
    figure = render(row, ["tabby", "tiger cat", "lynx"])[""]
    expected = panels.titled(panels.with_colour_bar(row.photo, blank=True),
                             ["explained: tiger cat (0.0020%)", "predicted: tabby (100.0%)"])
    band = slice(0, 60)
    assert (figure[band, : expected.shape[1]] == expected[band]).all()


def test_the_colour_bar_has_its_scale_written_beside_it():
    """Ticks and values: "max" beside the red top, "0" beside the blue bottom (dark pixels in the gap
    between the panel and the bar, at both ends, none in the middle)."""
    image = np.full((300, 300, 3), 255, np.uint8)
    plain_width = panels.with_colour_bar(image, blank=True).shape[1]
    drawn = panels.with_colour_bar(image)
    assert drawn.shape == (300, plain_width, 3)
    bar_w = max(6, 300 // 40)
    gap = drawn[:, 300:plain_width - bar_w]
    dark_rows = np.flatnonzero((gap < 150).all(axis=2).any(axis=1))
    assert dark_rows.size and dark_rows[0] < 5 and dark_rows[-1] > 294  # a tick and a label at each end
    assert not ((gap[60:240] < 150).all(axis=2)).any()  # nothing between them
    top = (gap[:30] < 150).all(axis=2).sum()
    bottom = (gap[-30:] < 150).all(axis=2).sum()
    assert top > bottom > 0  # "max" has more ink than "0"


def test_alpha_weights_the_heatmap_in_the_overlay():
    row = _row(0)
    for alpha in (0.0, 0.25, 1.0):
        figures = render(row, ["a", "b", "c"], alpha=alpha)
        heat, over = figures["_gradcam_heatmap"].astype(float), figures["_gradcam_overlay"].astype(float)
        expected = alpha * heat + (1 - alpha) * row.photo.astype(float)
        assert np.abs(over - expected).max() <= 1.0


# --- the command line -----------------------------------------------------------------------------------------

@pytest.fixture()
def tiny(tmp_path):
    (tmp_path / "tiny.py").write_text(TINY)
    (tmp_path / "photos").mkdir()
    for i in range(3):
        write_image(tmp_path / "photos" / f"p{i}.png", 64, 48, i)
    return tmp_path


def test_quiet_is_errors_only_for_one_photo_too(tiny, run_cli, monkeypatch):
    monkeypatch.chdir(tiny)
    code, out, err = run_cli("classify", "-f", "photos/p0.png", "--model", "tiny.py:build", "-q", "--alpha", "0.3")
    assert code == 0 and out == "" and err == ""
    assert (tiny / "output" / "p0.jpeg").is_file()
    code, out, err = run_cli("classify", "-f", "photos/missing.png", "--model", "tiny.py:build", "-q")
    assert code != 0 and err.count("\n") == 1 and out == ""


def test_per_image_lines_print_above_the_bar_on_a_terminal(tiny):
    """stdout and stderr on one terminal (a pseudo-terminal here): every per-image line is there."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "campp_cli", "classify", "-f", "photos", "--model",
                             "tiny.py:build"], cwd=tiny, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                            env={**os.environ, "COLUMNS": "120"})
    os.close(slave)
    data = read_terminal(master)
    assert proc.wait(timeout=120) == 0
    os.close(master)
    text = data.decode("utf-8", "replace")
    for i in range(3):
        assert f"photos/p{i}.png: " in text and f"-> output/p{i}.jpeg" in text
    assert "3 done, 0 skipped, 0 failed" in text


def test_help_names_an_offline_model_first(run_cli):
    code, out, err = run_cli("--help")
    examples = out[out.index("Examples:"):]
    first = examples.splitlines()[1]
    assert "--arch efficientnet_lite0" in first and "offline" in first


def test_a_comparison_written_by_classify_has_the_caption(tiny, run_cli, monkeypatch):
    monkeypatch.chdir(tiny)
    code, out, err = run_cli("classify", "-f", "photos/p0.png", "--model", "tiny.py:build", "-o", "c.jpeg")
    assert code == 0, err
    figure = np.asarray(Image.open(tiny / "output" / "c.jpeg").convert("RGB"))
    bottom = figure[-12:]
    assert ((bottom < 160).any(axis=2)).sum() > 30  # the caption's text under the panels


# ----------------------------------------------------------------------------- --display full

PHOTO = "rocket.jpg"  # 640 x 427: the model's central square leaves a strip on each side


def _photo_at(width: int, height: int) -> np.ndarray:
    from conftest import IMAGES

    with Image.open(IMAGES / PHOTO) as im:
        return np.asarray(im.convert("RGB").resize((width, height), Image.BOX), dtype=np.float64)


def test_display_full_shows_the_whole_photo_with_the_maps_on_the_square_the_model_saw(run_cli, tmp_path):
    from conftest import IMAGES

    lite = ["--arch", "efficientnet_lite0", "-f", IMAGES / PHOTO, "--output-dir", tmp_path, "--max-side", "300",
            "-q"]
    assert run_cli("classify", *lite, "--display", "full", "-o", "full.jpeg")[0] == 0
    assert run_cli("classify", *lite, "-o", "crop.jpeg")[0] == 0
    full = np.asarray(Image.open(tmp_path / "full_gradcam_heatmap.jpeg"), dtype=np.float64)
    crop = np.asarray(Image.open(tmp_path / "crop_gradcam_heatmap.jpeg"), dtype=np.float64)
    height, width = full.shape[:2]
    assert width == 300 and abs(height - 300 * 427 / 640) <= 1  # the photo's shape, its long side at --max-side
    side = height  # the central square: the photo's short side
    left = (width - side) // 2
    photo = _photo_at(width, height)
    # Outside the square: the photo, dimmed; inside: the same heatmap as --display crop draws.
    for strip in (np.s_[:, : left - 2], np.s_[:, left + side + 2:]):
        assert np.abs(full[strip] - photo[strip] * geometry.DIM).mean() < 6
    inside = full[:, left + 2: left + side - 2]
    expected = np.asarray(Image.fromarray(crop.astype(np.uint8)).resize((side, side), Image.BILINEAR),
                          dtype=np.float64)[:, 2: side - 2]
    assert np.abs(inside - expected).mean() < 6
    assert np.abs(inside - photo[:, left + 2: left + side - 2] * geometry.DIM).mean() > 30  # not dimmed photo
    comparison = Image.open(tmp_path / "full.jpeg")
    assert comparison.width > 2 * width  # three panels of the whole photo


def test_display_full_with_pad_puts_the_maps_on_the_whole_photo(run_cli, tmp_path):
    from conftest import IMAGES

    assert run_cli("classify", "--arch", "efficientnet_lite0", "-f", IMAGES / PHOTO, "--output-dir", tmp_path,
                   "--max-side", "300", "-q", "--display", "full", "--resize", "pad")[0] == 0
    full = np.asarray(Image.open(tmp_path / "rocket_gradcam_heatmap.jpeg"), dtype=np.float64)
    photo = _photo_at(full.shape[1], full.shape[0])
    # The model saw all of it: no part of the figure is the dimmed photo.
    assert np.abs(full[:, :40] - photo[:, :40] * geometry.DIM).mean() > 30
    assert np.abs(full[:, -40:] - photo[:, -40:] * geometry.DIM).mean() > 30


def test_display_is_checked_before_torch(tmp_path):
    from conftest import fresh_campp

    code, torch_loaded, err = fresh_campp(["classify", "-f", "x.png", "--display", "whole"], tmp_path)
    assert code == 2 and "--display" in err and not torch_loaded


# ----------------------------------------------------------------------------- --format


def test_format_png_writes_every_figure_losslessly(run_cli, tmp_path):
    import cv2
    from conftest import IMAGES

    args = ["classify", "--arch", "efficientnet_lite0", "-f", IMAGES / "coffee.png", "--output-dir", tmp_path,
            "--max-side", "224", "-q", "--save-maps"]
    assert run_cli(*args, "--format", "png")[0] == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["coffee.png", "coffee_gradcam_heatmap.png", "coffee_gradcam_overlay.png",
                            "coffee_gradcampp_heatmap.png", "coffee_gradcampp_overlay.png", "coffee_gradcam.npy",
                            "coffee_gradcampp.npy"])
    for name in names:
        if name.endswith(".png"):
            assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Lossless: the heatmap is exactly JET of the saved map, upsampled bilinearly (written here with OpenCV).
    cam = np.load(tmp_path / "coffee_gradcam.npy")
    up = np.clip(cv2.resize(cam, (224, 224), interpolation=cv2.INTER_LINEAR), 0, 1)
    jet = cv2.applyColorMap(np.round(up * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "coffee_gradcam_heatmap.png")), jet)
    # -o NAME.png alone says PNG too; a JPEG name with --format png is refused before any work.
    assert run_cli(*args, "-o", "named.png")[0] == 0 and (tmp_path / "named_gradcampp_overlay.png").is_file()
    code, _, err = run_cli(*args, "-o", "named.jpeg", "--format", "png")
    assert code == 2 and "--format is png" in err


def test_format_png_for_a_folder_and_resuming_it(run_cli, tmp_path):
    from conftest import IMAGES

    args = ["classify", "--arch", "efficientnet_lite0", "-f", IMAGES, "--output-dir", tmp_path / "out",
            "--max-side", "64", "--format", "png", "--jsonl", tmp_path / "r.jsonl"]
    assert run_cli(*args)[0] == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(written) == 5 * 5 and all(n.endswith(".png") for n in written)
    assert "coffee.png" in written and "coffee_gradcam_overlay.png" in written
    truncated = tmp_path / "out" / "coffee_gradcam_heatmap.png"
    truncated.write_bytes(truncated.read_bytes()[:-20])  # a killed writer's file: no IEND
    assert run_cli(*args, "--skip-existing")[0] == 0
    import json

    lines = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert sorted(Path(line["input"]).name for line in lines if not line.get("skipped")) == ["coffee.png"]
    assert Image.open(truncated).size == (64, 64)


def test_every_format_has_an_encoder():
    """Every figure format --format offers is a registered file format whose encoder gives the bytes of that
    format (a file of it is whole by its own check)."""
    import io

    from campp_cli.io.formats import FILE_FORMATS
    from campp_cli.settings import FORMATS

    assert {f.name for f in FILE_FORMATS if f.figure} == set(FORMATS)
    rgb = np.zeros((8, 8, 3), np.uint8)
    for fmt in FILE_FORMATS:
        data = fmt.encode(rgb if fmt.figure else rgb[..., 0].astype(np.float32))
        assert fmt.whole(io.BytesIO(data), len(data)) and not fmt.whole(io.BytesIO(data[:-4]), len(data) - 4)
