"""Issue 24: inputs that grew without bound, names that could not be made, values echoed whole.

Every hostile input here is built small: a test must never need the gigabytes the defect it pins used.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import IMAGES, fresh_campp

from campp_cli import inputs, labels
from campp_cli.errors import UsageError

CHELSEA = IMAGES / "chelsea.png"


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[:2000]
    assert "Traceback" not in err and "internal error" not in err
    return lines[0]


# --------------------------------------------------------------------------- -o templates (12)


@pytest.mark.parametrize("template", ["{stem:d}", "{stem:%}", "{stem:{stem}}", "{stem:x>1500000000}.jpeg",
                                      "{stem:x>300}.jpeg", "{stem!r}.jpeg", "{stem!s:>3}.png"])
def test_template_format_specs_and_conversions_are_usage_errors(tmp_path, template):
    code, torch_loaded, err = fresh_campp(["classify", "-f", CHELSEA, "-f", CHELSEA.with_name("espresso.jpg"),
                                           "-o", template, "--output-dir", tmp_path / "o"], tmp_path)
    assert code == 2 and not torch_loaded, err
    assert "-o" in one_line(err) and "format spec" in err


def test_template_literal_text_too_long_for_a_file_name(run_cli, tmp_path):
    code, _, err = run_cli("classify", "-f", CHELSEA, "-f", IMAGES / "espresso.jpg",
                           "-o", "{stem}" + "x" * 230 + ".jpeg",
                           "--output-dir", tmp_path / "o")
    assert code == 2 and "at most 255 bytes" in one_line(err)


# --------------------------------------------------------------------------- naming is near-linear (13)


def test_same_named_inputs_are_named_in_linear_work(tmp_path, monkeypatch):
    """8,000 files all named x.png in different folders: each gets its name in a bounded number of tries
    (before: every one retried x, x_2, x_3, ... from the start, 32 million tries)."""
    n = 8000
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"d{i}/x.png\n" for i in range(n)))  # need not exist to be named
    calls = [0]
    real = inputs.output_stem

    def counted(*args, **kwargs):
        calls[0] += 1
        if calls[0] > 3 * n:
            raise AssertionError(f"naming {n} inputs took more than {3 * n} tries")
        return real(*args, **kwargs)

    monkeypatch.setattr(inputs, "output_stem", counted)
    jobs = inputs.plan([f"@{listing}"], tmp_path / "out", None, keys=["", "_gradcam_heatmap"])
    assert [j.stem for j in jobs[:3]] == ["x", "x_2", "x_3"] and jobs[-1].stem == f"x_{n}"
    assert len({j.stem for j in jobs}) == n


def test_counters_still_skip_names_taken_by_other_inputs(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("a/x.png\nb/x.png\nc/x_2.png\nd/x.png\ne/x_3.png\n")
    jobs = inputs.plan([f"@{listing}"], tmp_path / "out", None)
    assert [j.stem for j in jobs] == ["x", "x_2", "x_2_2", "x_3", "x_3_2"]


# --------------------------------------------------------------------------- bounded reads (11)


def test_labels_from_an_endless_stream_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(labels, "MAX_LABELS_BYTES", 1 << 20)
    with pytest.raises(UsageError, match=r"--labels /dev/zero: larger than 1 MB"):
        labels.read_labels("/dev/zero")


def test_list_from_an_endless_stream_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(inputs, "MAX_LIST_BYTES", 1 << 20)
    with pytest.raises(UsageError, match=r"-f @/dev/zero: the list is larger than 1 MB"):
        inputs.plan(["@/dev/zero"], tmp_path / "out", None)


def test_list_line_longer_than_a_path_is_refused_without_echoing_it(run_cli, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{CHELSEA}\n" + "y" * 5_000_000 + "\n")
    code, _, err = run_cli("classify", "-f", f"@{listing}", "--output-dir", tmp_path / "o")
    assert code == 2 and "line 2 is longer than 4096 bytes" in one_line(err) and len(err) < 1000


def test_deeply_nested_json_labels_are_one_usage_error(run_cli, tmp_path):
    path = tmp_path / "labels.json"
    path.write_text("[" * 5000 + "]" * 5000)
    code, _, err = run_cli("classify", "-f", CHELSEA, "--labels", path, "--output-dir", tmp_path / "o")
    assert code == 2 and "--labels" in one_line(err) and "nested too deep" in err


# --------------------------------------------------------------------------- names too long (16)


LONG = "n" * 300


@pytest.mark.parametrize("option", ["-f", "--jsonl", "--report", "--output-dir", "--weights", "--labels",
                                    "--boxes"])
def test_a_name_over_255_bytes_is_a_usage_error_naming_the_option(tmp_path, option):
    value = {"-f": f"{LONG}.png", "--jsonl": f"{LONG}.jsonl", "--report": f"{LONG}.html", "--weights": f"{LONG}.pth",
             "--labels": f"{LONG}.txt"}.get(option, f"sub/{LONG}")
    command = "evaluate" if option == "--boxes" else "classify"
    args = [command, "-f", CHELSEA] if option != "-f" else [command]
    args += [option, value] + (["--output-dir", tmp_path / "o"] if option not in ("--output-dir", "--boxes") else [])
    code, torch_loaded, err = fresh_campp(args, tmp_path)
    assert code == 2 and not torch_loaded, err
    assert one_line(err).startswith(f"campp: error: {option}: the name") and "at most 255 bytes" in err


def test_a_long_name_inside_a_list_is_a_usage_error(run_cli, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{CHELSEA}\nsub/{LONG}.png\n")
    code, _, err = run_cli("classify", "-f", f"@{listing}", "--output-dir", tmp_path / "o")
    assert code == 2 and "at most 255 bytes" in one_line(err)


# --------------------------------------------------------------------------- echoed values (18)


def test_clip_keeps_both_ends_of_a_long_value():
    from campp_cli.errors import clip

    text = "a" * 5000 + "END"
    shown = clip(text)
    assert len(shown) <= 201 and shown.startswith("aaa") and shown.endswith("END") and "…" in shown
    assert clip("short") == "short"


@pytest.mark.parametrize("control", ["\u202e", "\u2066", "\u200f", "\u2028", "\x1b"])
def test_bidirectional_and_line_controls_are_escaped_in_printed_lines(control):
    from campp_cli.cli import printable

    line = printable(f"cat{control}gnp.exe.png: 281 tabby")
    assert control not in line and ("\\u" in line or "\\x" in line)


# --------------------------------------------------------------------------- title fitting (14)


def test_a_huge_class_name_is_fitted_in_few_measurements(monkeypatch):
    """A 20,000-character class name: the title is fitted in O(log n) measurements of bounded text (before:
    one measurement of the whole remaining text per two characters dropped, 580 s for one photo)."""
    from PIL import ImageDraw

    from campp_cli import images

    measured = []
    real = ImageDraw.ImageDraw.textlength

    def counted(self, text, *args, **kwargs):
        measured.append(len(text))
        if len(measured) > 100:
            raise AssertionError("more than 100 measurements to fit one title")
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "textlength", counted)
    name = "".join(chr(ord("a") + k % 26) for k in range(20_000))
    rgb = np.zeros((224, 224, 3), np.uint8)
    out = images.titled(rgb, ["Grad-CAM++", f"{name} (70.0%)"])
    assert out.shape[1] == 224 and len(measured) <= 40 and max(measured) <= images.MAX_TITLE_CHARS

    from PIL import Image

    draw = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    face = images.font(max(12, 224 // 22))
    fitted = images._fit(draw, name, face, 216)
    assert fitted.endswith("…") and fitted[:-1] == name[:len(fitted) - 1]
    assert real(draw, fitted, font=face) <= 216 < real(draw, name[:len(fitted)] + "…", font=face)
    assert images._fit(draw, "tabby cat", face, 216) == "tabby cat"


# --------------------------------------------------------------------------- --boxes files (15)


def test_an_annotation_file_over_the_cap_is_refused_from_its_size(tmp_path):
    from campp_cli import boxes

    obj = ("<object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>30</xmax><ymax>40</ymax></bndbox>"
           "</object>")
    path = tmp_path / "big.xml"
    path.write_text("<annotation>" + obj * ((1 << 20) // len(obj) + 10) + "</annotation>")  # just over 1 MB
    annotation = boxes.read_voc(path)
    assert annotation.boxes == [] and "larger than 1 MB" in annotation.problem


def test_a_fifo_named_like_an_annotation_is_refused_not_waited_on(tmp_path):
    import threading

    from campp_cli import boxes

    fifo = tmp_path / "img.xml"
    os.mkfifo(fifo)
    found = {}
    reader = threading.Thread(target=lambda: found.update(boxes.load_folder(tmp_path)), daemon=True)
    reader.start()
    reader.join(60)  # a guard against the hang, not a timing: the refusal takes no time at all
    if reader.is_alive():
        with open(fifo, "wb"):  # release the reader stuck in open()
            pass
        pytest.fail("reading --boxes waited on a FIFO named img.xml")
    assert found["img"].problem == f"{fifo}: not a regular file"
