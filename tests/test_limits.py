"""Issue 24: inputs that grew without bound, names that could not be made, values echoed whole.

Every hostile input here is built small: a test must never need the gigabytes the defect it pins used.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import IMAGES, fresh_campp

from campp_cli.errors import UsageError, WeightsError
from campp_cli.io import inputs, names
from campp_cli.models import labels

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
    real = names.output_stem

    def counted(*args, **kwargs):
        calls[0] += 1
        if calls[0] > 3 * n:
            raise AssertionError(f"naming {n} inputs took more than {3 * n} tries")
        return real(*args, **kwargs)

    monkeypatch.setattr(names, "output_stem", counted)
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
    with pytest.raises(UsageError, match=r"^labels /dev/zero: larger than 1 MB"):
        labels.read_labels("/dev/zero")


def test_list_from_an_endless_stream_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(inputs, "MAX_LIST_BYTES", 1 << 20)
    with pytest.raises(UsageError, match=r"^files @/dev/zero: the list is larger than 1 MB"):
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
    from campp_cli.cli.console import printable

    line = printable(f"cat{control}gnp.exe.png: 281 tabby")
    assert control not in line and ("\\u" in line or "\\x" in line)


# --------------------------------------------------------------------------- title fitting (14)


def test_a_huge_class_name_is_fitted_in_few_measurements(monkeypatch):
    """A 20,000-character class name: the title is fitted in O(log n) measurements of bounded text (before:
    one measurement of the whole remaining text per two characters dropped, 580 s for one photo)."""
    from PIL import ImageDraw

    from campp_cli.draw import panels

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
    out = panels.titled(rgb, ["Grad-CAM++", f"{name} (70.0%)"])
    assert out.shape[1] == 224 and len(measured) <= 40 and max(measured) <= panels.MAX_TITLE_CHARS

    from PIL import Image

    draw = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    face = panels.font(max(12, 224 // 22))
    fitted = panels._fit(draw, name, face, 216)
    assert fitted.endswith("…") and fitted[:-1] == name[:len(fitted) - 1]
    assert real(draw, fitted, font=face) <= 216 < real(draw, name[:len(fitted)] + "…", font=face)
    assert panels._fit(draw, "tabby cat", face, 216) == "tabby cat"


# --------------------------------------------------------------------------- --boxes files (15)


def test_an_annotation_file_over_the_cap_is_refused_from_its_size(tmp_path):
    from campp_cli.commands import boxes

    obj = ("<object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>30</xmax><ymax>40</ymax></bndbox>"
           "</object>")
    path = tmp_path / "big.xml"
    path.write_text("<annotation>" + obj * ((1 << 20) // len(obj) + 10) + "</annotation>")  # just over 1 MB
    annotation = boxes.read_voc(path)
    assert annotation.boxes == [] and "larger than 1 MB" in annotation.problem


def test_a_fifo_named_like_an_annotation_is_refused_not_waited_on(tmp_path):
    import threading

    from campp_cli.commands import boxes

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


# --------------------------------------------------------------------------- weights that inflate (10)


def _zip_with_big_pickle(path: Path, extra_mb: int) -> Path:
    """A real state_dict checkpoint whose data.pkl is padded with ``extra_mb`` MB of zeros, deflated (the
    file stays small; the padding is never unpickled, since pickle stops at its STOP)."""
    import torch

    buf = io.BytesIO()
    torch.save({"w": torch.ones(3)}, buf)
    source = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename.endswith("data.pkl"):
                with out.open(info.filename, "w", force_zip64=True) as fh:
                    fh.write(data)
                    for _ in range(extra_mb):
                        fh.write(bytes(1 << 20))
            else:
                out.writestr(info.filename, data)
    return path


def test_a_pth_whose_pickle_inflates_past_the_cap_is_refused_before_reading(tmp_path):
    from campp_cli.models.weights import read_checkpoint

    path = _zip_with_big_pickle(tmp_path / "w.pth", 70)
    assert path.stat().st_size < 1 << 20
    with pytest.raises(WeightsError, match=r"refused: its member .*data\.pkl inflates to 7\d MB"):
        read_checkpoint(path, expected_bytes=10**9)  # however big the architecture
    with pytest.raises(WeightsError, match=r"refused: .*data\.pkl"):
        read_checkpoint(path)  # also when the architecture is not known (campp convert)


def test_every_zip_member_counts_against_what_the_architecture_needs(tmp_path, monkeypatch):
    from campp_cli.models import weights

    monkeypatch.setattr(weights, "MAX_PICKLE_BYTES", 1 << 30, raising=False)  # only the total is checked here
    path = _zip_with_big_pickle(tmp_path / "w.pth", 70)
    with pytest.raises(WeightsError, match="refused: its tensors take 7\\d MB once read"):
        weights.read_checkpoint(path, expected_bytes=1000)


def test_a_legacy_pth_larger_than_the_architecture_needs_is_refused_from_its_size(tmp_path):
    """A legacy (not zip) .pth is read whole: refuse it from its size (a sparse file here: no disk used)."""
    import torch

    from campp_cli.models.weights import read_checkpoint

    path = tmp_path / "legacy.pth"
    torch.save({"w": torch.ones(3)}, path, _use_new_zipfile_serialization=False)
    assert read_checkpoint(path, expected_bytes=1000)[0]["w"].tolist() == [1, 1, 1]  # small: read
    with open(path, "r+b") as fh:
        fh.truncate(200 << 20)  # junk after the pickle, which torch reads past without a word
    with pytest.raises(WeightsError, match=r"refused: 210 MB, far more than"):
        read_checkpoint(path, expected_bytes=1000)


_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]


class _Claim:
    """Pickles as NumPy pickles an array, with the shape, dtype and data given (which need not agree)."""

    def __init__(self, shape, dtype, data, direct=False):
        self.shape, self.dtype, self.data, self.direct = shape, dtype, data, direct

    def __reduce__(self):
        if self.direct:  # numpy.ndarray(shape, dtype) called by the pickle itself
            return (np.ndarray, (self.shape, np.dtype(self.dtype)))
        return (_RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, self.shape, np.dtype(self.dtype), False, self.data))


def _hostile_npy(path: Path, claim: _Claim) -> Path:
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": ()})
        pickle.dump({"conv1_1": [claim, _Claim((1,), "f4", b"\0" * 4)]}, fh, protocol=4)
    return path


_READ_NPY = """
import sys, tracemalloc
from campp_cli.errors import WeightsError
from campp_cli.models.npy import read_npy_dict
tracemalloc.start()
try:
    read_npy_dict(sys.argv[1])
    print("read")
except WeightsError as exc:
    print(exc)
print(tracemalloc.get_traced_memory()[1])
"""


@pytest.mark.parametrize("claim, why", [
    (_Claim((2_000_000,), object, [None]), "an object array of shape (2000000,) and holds 1 items"),
    (_Claim((10**6, 10**6), object, [None]), "an object array of shape (1000000, 1000000)"),
    (_Claim((2_000_000,), "f4", b"\0" * 4), "(8000000 bytes) and holds 4 bytes"),
    (_Claim((2_000_000,), "f8", None, direct=True), "other than numpy pickles build them"),
])
def test_an_npy_pickle_claiming_a_huge_array_is_refused_before_allocating(tmp_path, sys_executable, claim, why):
    """A few hundred bytes claiming megabytes (or terabytes): refused from the array's state before NumPy
    allocates it (before: allocated, or a crash of the whole process). In a subprocess, since the
    unguarded read can crash the interpreter."""
    import subprocess

    path = _hostile_npy(tmp_path / "vgg16.npy", claim)
    assert path.stat().st_size < 2000
    proc = subprocess.run([sys_executable, "-c", _READ_NPY, str(path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    message, peak = proc.stdout.splitlines()
    assert message.startswith(f"{path}: refused: the pickle") and why in message
    assert int(peak) < 1 << 20  # nothing like the claimed size was allocated


def test_an_honest_npy_still_reads(tmp_path):
    from campp_cli.models.npy import read_npy_dict

    layers = {"conv1_1": [np.arange(6, dtype=np.float32).reshape(1, 2, 3), np.ones(3, np.float32)],
              "names": np.array(["a", "b"], dtype=object)}
    path = tmp_path / "vgg16.npy"
    np.save(path, layers, allow_pickle=True)
    got = read_npy_dict(path)
    assert type(got["conv1_1"][0]) is np.ndarray and got["conv1_1"][0].tolist() == layers["conv1_1"][0].tolist()
    assert got["names"].tolist() == ["a", "b"]


# --------------------------------------------------------------------------- models and weights (16, 17, 18)

NET = '''
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4))


class Folded(nn.Module):
    def __init__(self, rows):
        super().__init__()
        self.net, self.rows = build(), rows

    def forward(self, x):
        out = self.net(x)
        return self.rows(out)


def no_classes():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 0))


def one_row():
    return Folded(lambda out: out.sum(0, keepdim=True))


def integers():
    return Folded(lambda out: (out * 100).long())
'''


@pytest.fixture()
def own(tmp_path, monkeypatch):
    from conftest import write_image

    (tmp_path / "net.py").write_text(NET)
    write_image(tmp_path / "photo.png", 64, 48)
    write_image(tmp_path / "other.png", 64, 48, seed=1)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("function, message", [
    ("no_classes", "its output is (1, 0): no classes to explain"),
    ("one_row", "its output for a batch of 2 images is (1, 4), not (N, classes)"),
    ("integers", "its output is int64, not floating point"),
])
def test_model_outputs_that_are_no_logits_are_one_clear_line(own, run_cli, function, message):
    code, _, err = run_cli("classify", "-f", "photo.png", "-f", "other.png", "--model", f"net.py:{function}",
                           "--input-size", "32")
    assert code == 1 and message in one_line(err)


@pytest.mark.parametrize("dtype", ["bool", "int64", "uint8"])
def test_weights_that_are_not_floating_point_are_refused(own, run_cli, dtype):
    """bool or integer tensors of the right shapes loaded as 0 and 1 and explained nonsense with exit 0."""
    import torch
    from safetensors.torch import save_file

    namespace: dict = {}
    exec(NET, namespace)
    state = {k: (v > 0).to(getattr(torch, dtype)) for k, v in namespace["build"]().state_dict().items()}
    save_file(state, own / "w.safetensors")
    code, _, err = run_cli("classify", "-f", "photo.png", "--model", "net.py:build", "--weights", "w.safetensors",
                           "--input-size", "32")
    assert code == 1 and f"holds {dtype} values, not floating point" in one_line(err)
    assert not (own / "output").exists() or not any((own / "output").iterdir())


def test_the_head_hint_only_when_the_head_is_what_differs(tmp_path):
    import torch

    from campp_cli.models.weights import check_fits

    namespace: dict = {}
    exec(NET, namespace)
    module = namespace["build"]()
    body = dict(module.state_dict(), **{"0.weight": torch.zeros(8, 3, 5, 5)})
    with pytest.raises(WeightsError) as info:
        check_fits(module, body, "net", Path("w.pth"))
    assert "wrong shape 0.weight (8, 3, 5, 5) vs (8, 3, 3, 3)" in str(info.value)
    assert "--num-classes" not in str(info.value)
    head = dict(module.state_dict(), **{"4.weight": torch.zeros(10, 8), "4.bias": torch.zeros(10)})
    with pytest.raises(WeightsError, match=r"\(a head of 10 classes\? add --num-classes 10\)"):
        check_fits(module, head, "net", Path("w.pth"))


def test_a_huge_key_is_clipped_in_the_message():
    import torch

    from campp_cli.models.weights import check_fits

    namespace: dict = {}
    exec(NET, namespace)
    module = namespace["build"]()
    state = dict(module.state_dict(), **{"k" * 10_000_000: torch.zeros(1)})
    with pytest.raises(WeightsError) as info:
        check_fits(module, state, "net", Path("w.pth"))
    assert "unexpected kkk" in str(info.value) and len(str(info.value)) < 500


@pytest.mark.parametrize("std, why", [("1e-300,1,1", "beyond what float32 holds"),
                                      ("1,1e300,1", "do not fit the model's float32 input")])
def test_a_std_that_overflows_the_input_is_a_usage_error_naming_std(tmp_path, std, why):
    code, torch_loaded, err = fresh_campp(["classify", "-f", CHELSEA, "--arch", "efficientnet_lite0", "--std", std,
                                           "--output-dir", tmp_path / "o"], tmp_path)
    assert code == 2 and not torch_loaded, err
    assert one_line(err).startswith(f"campp: error: --std {std}:") and why in err
