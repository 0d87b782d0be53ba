"""Hostile and broken input: a clear line and the right exit code, nothing half-written, nothing executed."""

from __future__ import annotations

import io
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import IMAGES, write_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from campp_cli.commands.classify import classify_file
from campp_cli.errors import InputError, OutputError
from campp_cli.io import decode, durable, tempfiles
from campp_cli.models.loading import Classifier
from campp_cli.models.preprocessing import Preprocessing

OUTPUT_SUFFIXES = ["", "_gradcam_heatmap", "_gradcampp_heatmap", "_gradcam_overlay", "_gradcampp_overlay"]


# --------------------------------------------------------------------------- files that must work


def _photo(width=64, height=48) -> Image.Image:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.BILINEAR)


def make_grayscale(p):
    _photo().convert("L").save(p, "PNG")


def make_palette(p):
    _photo().convert("P", palette=Image.ADAPTIVE).save(p, "PNG")


def make_palette_transparent(p):
    img = _photo().convert("P", palette=Image.ADAPTIVE)
    img.info["transparency"] = 0
    img.save(p, "PNG", transparency=0)


def make_rgba(p):
    img = _photo().convert("RGBA")
    img.putalpha(0)  # fully transparent: must come out white
    img.save(p, "PNG")


def make_la(p):
    img = _photo().convert("LA")
    img.putalpha(0)
    img.save(p, "PNG")


def make_cmyk_jpeg(p):
    _photo().convert("CMYK").save(p, "JPEG")


def make_png16(p):
    arr = np.tile(np.linspace(0, 65535, 64, dtype=np.uint16), (48, 1))
    Image.fromarray(arr).save(p, "PNG")


def make_exif_rotated(p):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    _photo(64, 48).save(p, "JPEG", exif=exif.tobytes())


def make_animated_gif(p):
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(p, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def make_1x1(p):
    Image.new("RGB", (1, 1), (10, 200, 30)).save(p, "PNG")


def make_strip(p):
    _photo(4000, 3).save(p, "PNG")


def make_webp(p):
    _photo().save(p, "WEBP")


def make_tiff(p):
    _photo().save(p, "TIFF")


def make_bmp(p):
    _photo().save(p, "BMP")


GOOD = {
    "gray.png": make_grayscale,
    "palette.png": make_palette,
    "palette_transparent.png": make_palette_transparent,
    "rgba.png": make_rgba,
    "la.png": make_la,
    "cmyk.jpg": make_cmyk_jpeg,
    "deep16.png": make_png16,
    "exif_rotated.jpg": make_exif_rotated,
    "animated.gif": make_animated_gif,
    "one_pixel.png": make_1x1,
    "strip_4000x3.png": make_strip,
    "photo.webp": make_webp,
    "photo.tiff": make_tiff,
    "photo.bmp": make_bmp,
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_awkward_images_decode_to_rgb(tmp_path, name):
    path = tmp_path / name
    GOOD[name](path)
    rgb = decode.load_rgb(path)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3


def test_decoding_details(tmp_path):
    for name in ("rgba.png", "la.png", "palette_transparent.png", "exif_rotated.jpg", "deep16.png",
                 "animated.gif"):
        GOOD[name](tmp_path / name)
    assert (decode.load_rgb(tmp_path / "rgba.png") == 255).all()  # transparent -> white
    assert (decode.load_rgb(tmp_path / "la.png") == 255).all()
    assert decode.load_rgb(tmp_path / "exif_rotated.jpg").shape == (64, 48, 3)  # 64x48 stored, shown 48x64
    deep = decode.load_rgb(tmp_path / "deep16.png")
    assert deep[0, 0, 0] == 0 and deep[0, -1, 0] == 255 and 100 < deep[0, 32, 0] < 160
    gif = decode.load_rgb(tmp_path / "animated.gif")
    assert gif[..., 0].mean() > 200 and gif[..., 1].mean() < 50  # the first (red) frame


@pytest.mark.parametrize("name", ["cmyk.jpg", "exif_rotated.jpg", "animated.gif", "one_pixel.png",
                                  "strip_4000x3.png", "deep16.png", "palette_transparent.png"])
def test_awkward_images_are_explained_end_to_end(vgg, run_cli, tmp_path, name):
    GOOD[name](tmp_path / name)
    code, out, err = run_cli("classify", "-f", tmp_path / name, "-o", "x.jpeg", "--output-dir", tmp_path / "o")
    assert code == 0, err
    for suffix in OUTPUT_SUFFIXES:
        assert Image.open(tmp_path / "o" / f"x{suffix}.jpeg").format == "JPEG"


# --------------------------------------------------------------------------- files that must fail cleanly


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def make_bomb(p):
    """A 100-byte PNG that claims 40000 x 40000 pixels."""
    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                  + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


def _truncated(fmt):
    def make(p):
        buf = io.BytesIO()
        _photo(256, 256).save(buf, fmt)
        p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return make


BAD = {
    "empty.jpg": (lambda p: p.write_bytes(b""), "empty file"),
    "text.jpg": (lambda p: p.write_text("hello, I am not a photo\n" * 20), "not an image"),
    "doc.pdf.jpg": (lambda p: p.write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n"), "not an image"),
    "random.png": (lambda p: p.write_bytes(np.random.default_rng(1).bytes(4096)), "not an image"),
    "drawing.svg": (lambda p: p.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'),
                    "not an image"),
    "photo.heic": (lambda p: p.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64),
                   "not an image"),
    "truncated.jpg": (_truncated("JPEG"), "truncated"),
    "truncated.png": (_truncated("PNG"), "cannot decode"),
    "bomb.png": (make_bomb, "exceeds --max-pixels"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_broken_files_fail_with_one_line(vgg, run_cli, tmp_path, name):
    make, reason = BAD[name]
    path = tmp_path / name
    make(path)
    start = time.perf_counter()
    code, out, err = run_cli("classify", "-f", path, "--output-dir", tmp_path / "o")
    assert time.perf_counter() - start < 30  # no hang (the bomb itself is checked below)
    assert code == 1
    lines = err.strip().splitlines()
    assert str(path) in lines[-1] and reason in lines[-1] and "Traceback" not in err
    assert lines[-1].startswith("campp: error:")
    assert not list((tmp_path / "o").iterdir())


def test_bomb_is_refused_from_its_header_fast(tmp_path):
    make_bomb(tmp_path / "bomb.png")
    start = time.perf_counter()
    with pytest.raises(InputError, match="exceeds --max-pixels"):
        decode.load_rgb(tmp_path / "bomb.png")
    assert time.perf_counter() - start < 1.0


def test_max_pixels_option(vgg, run_cli, tmp_path):
    write_image(tmp_path / "a.png", 100, 100)
    code, _, err = run_cli("classify", "-f", tmp_path / "a.png", "--max-pixels", "5000", "--output-dir", tmp_path)
    assert code == 1 and "exceeds --max-pixels 5000" in err


def test_paths_that_are_not_files(vgg, run_cli, tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    cases = {tmp_path / "missing.jpg": "no such file", fifo: "not a regular file",
             empty: "no image files in this folder"}  # a folder is a batch input (of nothing here)
    for path, reason in cases.items():
        code, _, err = run_cli("classify", "-f", path, "--output-dir", tmp_path / "o")
        # nothing there at all is a usage error before the model loads; a FIFO fails when it is read
        assert code == (1 if path == fifo else 2) and reason in err and str(path) in err
    with pytest.raises(InputError, match="is a directory"):
        decode.load_rgb(tmp_path)


def test_unreadable_file(vgg, run_cli, tmp_path, monkeypatch):
    path = write_image(tmp_path / "secret.png", 32, 32)
    path.chmod(0)
    if os.geteuid() == 0:  # root reads anything: make the read itself fail
        def deny(*args, **kwargs):
            raise PermissionError(13, "Permission denied", str(path))
        monkeypatch.setattr(decode, "open", deny, raising=False)
    code, _, err = run_cli("classify", "-f", path, "--output-dir", tmp_path / "o")
    assert code == 1 and "permission denied" in err and str(path) in err


# --------------------------------------------------------------------------- bad arguments and outputs


@pytest.mark.parametrize("args,needle", [
    (["-l", "-2"], "-2"),
    (["-gpu", "-5"], "-gpu -5"),  # -gpu 9 without CUDA runs on the CPU (a warning): tests/test_classify.py
    (["-o", "../up.jpeg"], "without folders"),
    (["-o", "a\\b.jpeg"], "without folders"),
    (["-o", "x..y.jpeg"], "'..'"),
    (["--variant", "fast"], "fast"),
    (["--max-side", "0"], "0"),
    (["--nonsense"], "--nonsense"),
])
def test_bad_arguments_exit_2(run_cli, tmp_path, args, needle):
    code, out, err = run_cli("classify", "-f", IMAGES / "chelsea.png", "--output-dir", tmp_path / "o", *args)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and needle in err and "Traceback" not in err


def test_output_folder_that_cannot_be_created(vgg, run_cli, tmp_path):
    code, _, err = run_cli("classify", "-f", IMAGES / "chelsea.png", "--output-dir", "/proc/campp-cannot-be-here")
    assert code == 2 and "cannot create" in err


def test_output_folder_that_is_not_writable(vgg, run_cli, tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.geteuid() == 0:  # root writes anywhere: make the permission check say what it would for a user
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    code, _, err = run_cli("classify", "-f", IMAGES / "chelsea.png", "--output-dir", locked)
    assert code == 2 and "not writable" in err and str(locked) in err


def test_weights_truncated(vgg_weights, run_cli, tmp_path):
    cut = tmp_path / "cut.pth"
    with open(vgg_weights, "rb") as src:
        cut.write_bytes(src.read(1_000_000))
    code, _, err = run_cli("classify", "-f", IMAGES / "chelsea.png", "--weights", cut, "--output-dir", tmp_path)
    assert code == 1 and "not a readable PyTorch weights file" in err


def test_weights_missing_file_is_usage_error(run_cli, tmp_path):
    code, _, err = run_cli("classify", "-f", IMAGES / "chelsea.png", "--weights", tmp_path / "nope.pth",
                           "--output-dir", tmp_path)
    assert code == 2 and "no such file" in err


def test_weights_with_nan_are_refused(vgg, run_cli, tmp_path):
    import torchvision

    state = torchvision.models.vgg16().state_dict()
    state["classifier.6.bias"][:] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save(state, path)
    code, _, err = run_cli("classify", "-f", IMAGES / "chelsea.png", "--weights", path, "--output-dir", tmp_path / "o")
    assert code == 1 and "non-finite" in err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


# --------------------------------------------------------------------------- nothing half-written


def test_failing_writer_leaves_nothing(vgg, tmp_path, monkeypatch):
    """Disk full on the third file: no output at all, no temporary file."""
    real_write = os.write
    calls = {"n": 0}

    def write(fd, data):
        """The third file's write: half of it lands, then the disk is full."""
        calls["n"] += 1
        if calls["n"] == 3:
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(tempfiles.os, "write", write)
    with pytest.raises(OutputError, match="No space left"):
        classify_file(IMAGES / "coffee.png", vgg, tmp_path, "full.jpeg")
    assert calls["n"] >= 3
    assert list(tmp_path.iterdir()) == []


def test_interrupted_rename_leaves_only_complete_files(vgg, tmp_path, monkeypatch):
    """Killed between renames: every file present is whole, no temporary file remains."""
    real_replace = os.replace
    calls = {"n": 0}

    def replace(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # like a Ctrl-C or a kill arriving mid-way
        return real_replace(src, dst)

    monkeypatch.setattr(durable.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        classify_file(IMAGES / "coffee.png", vgg, tmp_path, "cut.jpeg")
    left = list(tmp_path.iterdir())
    assert all(not p.name.endswith(".part") for p in left)
    for p in left:
        Image.open(p).load()  # decodes completely


# --------------------------------------------------------------------------- fuzzing


def _seed_files() -> list[bytes]:
    out = []
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"):
        buf = io.BytesIO()
        _photo(24, 16).save(buf, fmt)
        out.append(buf.getvalue())
    return out


SEEDS = _seed_files()


@st.composite
def mutated_images(draw):
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[pos:pos + draw(st.integers(1, 64))]
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(mutated_images(), st.binary(max_size=512)))
def test_fuzz_decoder_never_raises_anything_else(data):
    try:
        rgb = decode.decode_rgb(data, "fuzz", max_pixels=4_000_000)
    except InputError as exc:
        assert str(exc).startswith("fuzz: ") and "\n" not in str(exc)
    else:
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3


class _TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=4, padding=1), torch.nn.ReLU())
        self.head = torch.nn.Linear(4, 1000)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def tiny_classifier():
    return Classifier(arch="tiny", module=_TinyNet().eval(), layer="features.1", preprocessing=Preprocessing(),
                      categories=[f"class {i}" for i in range(1000)], device=torch.device("cpu"), input_size=32)


@settings(max_examples=60, deadline=5000, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(data=mutated_images())
def test_fuzz_whole_classify_path(tiny_classifier, tmp_path, data):
    """Whatever the bytes: outputs, or one InputError; never a partial file; within the deadline."""
    src = tmp_path / "in.bin"
    src.write_bytes(data)
    out = tmp_path / "out"
    for old in out.glob("*") if out.exists() else []:
        old.unlink()
    from campp_cli.run.options import Options

    try:
        result = classify_file(src, tiny_classifier, out, "f.jpeg", Options(max_pixels=4_000_000, max_side=64))
    except InputError as exc:
        assert "\n" not in str(exc) and str(src) in str(exc)
        assert not out.exists() or not list(out.iterdir())
    else:
        assert len(result.outputs) == 5
        for path in result.outputs:
            Image.open(path).load()
    assert not list(Path(tmp_path).rglob("*.part"))
