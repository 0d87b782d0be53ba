"""What a reader of the figures needs: a colour bar, a caption (model, layer, variant), "explained" vs
"predicted" titles when -l differs, --alpha; and the command line's feel: -q is errors only, per-image
lines above the progress bar on a terminal, an offline example first in --help."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_image
from PIL import Image

from campp_cli import images
from campp_cli.stages import ExplainedRow, render

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


def test_titles_say_explained_and_predicted_when_they_differ():
    same = render(_row(0), ["tabby", "tiger cat", "lynx"])[""]
    other = render(_row(1), ["tabby", "tiger cat", "lynx"])[""]
    band = slice(0, 60)
    expected = images.titled(images.with_colour_bar(_row(1).display, blank=True),
                             ["explained: tiger cat (20.0%)", "predicted: tabby (70.0%)"])
    assert (other[band, : expected.shape[1]] == expected[band]).all()
    input_panel = images.titled(images.with_colour_bar(_row(0).display, blank=True), ["Input", "tabby (70.0%)"])
    assert (same[band, : input_panel.shape[1]] == input_panel[band]).all()


def test_alpha_weights_the_heatmap_in_the_overlay():
    row = _row(0)
    for alpha in (0.0, 0.25, 1.0):
        figures = render(row, ["a", "b", "c"], alpha=alpha)
        heat, over = figures["_gradcam_heatmap"].astype(float), figures["_gradcam_overlay"].astype(float)
        expected = alpha * heat + (1 - alpha) * row.display.astype(float)
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
    assert (tiny / "output" / "output.jpeg").is_file()
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
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=120) == 0
    os.close(master)
    text = b"".join(chunks).decode("utf-8", "replace")
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
