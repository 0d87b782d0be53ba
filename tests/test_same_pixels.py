"""Same photo, same pixels, same answer: the model's input is a function of the file and the model's
preprocessing alone, never of how the result is drawn, which command asked, or how the run is batched.

The reference framing is written here from the definition (the paper's centre square, offsets rounded down,
then torchvision's own resize of a Pillow image, antialiased, with the model's filter), not from campp.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import IMAGES
from PIL import Image
from reference import paper_square

from campp_cli.draw import geometry
from campp_cli.io.inputs import plan
from campp_cli.run import stages
from campp_cli.run.options import Options

LITE = ["--arch", "efficientnet_lite0"]
SHORT_SIDES = [224, 447, 448, 1000, 3000]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """The astronaut at short sides 224..3000 (4:3, landscape and portrait), as JPEG and PNG."""
    root = tmp_path_factory.mktemp("sizes")
    base = Image.open(IMAGES / "astronaut.png").convert("RGB")
    rng = np.random.default_rng(0)
    for k, short in enumerate(SHORT_SIDES):
        size = (short * 4 // 3, short) if k % 2 == 0 else (short, short * 4 // 3)
        img = np.asarray(base.resize(size, Image.Resampling.BICUBIC)).astype(np.int16)
        img = np.clip(img + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)  # texture at every scale
        Image.fromarray(img).save(root / f"s{short}.png", compress_level=1)
        Image.fromarray(img).save(root / f"s{short}.jpg", quality=95)
    return root


def _reference_input(path: Path, size: int, interpolation: str) -> np.ndarray:
    rgb = np.asarray(Image.open(path).convert("RGB"))
    return np.ascontiguousarray(paper_square(rgb, size, interpolation).transpose(2, 0, 1), np.float32) / 255


@pytest.mark.slow
def test_decode_gives_the_reference_input_whatever_the_display(photos):
    """Every display option, and no display at all (evaluate), give the same model input bit for bit, and
    it is the reference framing of the whole-resolution photo."""
    from campp_cli.models.preprocessing import TF_LITE_PREPROCESSING, Preprocessing

    for pre in (TF_LITE_PREPROCESSING, Preprocessing()):  # bicubic and bilinear
        for path in sorted(photos.iterdir()):
            (job,) = plan([str(path)], photos / "out", None)
            expected = _reference_input(path, 224, pre.interpolation)
            for max_side in (224, 448, 1024, 4096):
                for display in ("crop", "full"):
                    for draws in (True, False):
                        row = stages.decode(job, 224, Options(max_side=max_side, display=display), draws,
                                            preprocessing=pre)
                        assert row.model_input.dtype == np.float32
                        assert np.array_equal(row.model_input, expected), (path.name, max_side, display, draws)


def test_a_decoded_array_or_pil_image_frames_as_the_file(photos):
    from campp_cli.models.preprocessing import TF_LITE_PREPROCESSING

    path = photos / "s1000.jpg"
    from_file = stages.decode(plan([str(path)], photos / "out", None)[0], 224, Options(), True,
                              preprocessing=TF_LITE_PREPROCESSING).model_input
    rgb = np.asarray(Image.open(path).convert("RGB"))
    for photo in (rgb, Image.fromarray(rgb)):
        x, _, _ = stages.frame(photo, 224, TF_LITE_PREPROCESSING, max_side=224)
        assert np.array_equal(x, from_file)


def _jsonl(path: Path) -> dict[str, dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return {Path(d["input"]).name: d for d in lines}


@pytest.mark.slow
def test_classify_evaluate_and_the_notebook_see_the_same_input(photos, run_cli, tmp_path, monkeypatch):
    """Probabilities, top-5 and saved maps of classify are bitwise the same whatever --max-side, --display,
    --format, --alpha and --report say; --batch-size and --workers change them by float reduction order at
    most (1e-6); evaluate's Y and explain_image's probability are classify's."""
    seen: dict[tuple[str, str], np.ndarray] = {}
    notebook_name = [""]
    real = stages.explain_rows

    def spy(rows, clf, options, command, *more):
        for row in rows:
            name = Path(row.job.source).name if row.job is not None else notebook_name[0]  # explain_image: none
            seen[(tag, name)] = row.model_input.copy()
        return real(rows, clf, options, command, *more)

    monkeypatch.setattr(stages, "explain_rows", spy)
    monkeypatch.setattr("campp_cli.run.stages.explain_rows", spy)
    runs = {
        "base": [],
        "small": ["--max-side", "224"],
        "full": ["--display", "full", "--format", "png", "--alpha", "0.2", "--max-side", "4096"],
        "report": ["--report", str(tmp_path / "r.html")],
        "batch1": ["--batch-size", "1", "--workers", "1"],
    }
    results = {}
    for tag, extra in runs.items():
        out = tmp_path / tag
        code, _, err = run_cli("classify", *LITE, "-f", photos, "--output-dir", out, "--save-maps", "-q",
                               "--jsonl", out.with_suffix(".jsonl"), *extra)
        assert code == 0, err
        results[tag] = _jsonl(out.with_suffix(".jsonl"))
    names = sorted(results["base"])
    assert len(names) == 2 * len(SHORT_SIDES)
    for tag in runs:
        for name in names:
            assert np.array_equal(seen[(tag, name)], seen[("base", name)]), (tag, name)
            a, b = results[tag][name], results["base"][name]
            if tag == "batch1":
                assert a["class"] == b["class"]
                assert a["probability"] == pytest.approx(b["probability"], abs=1e-6)
                continue
            assert (a["class"], a["probability"], a["top5"]) == (b["class"], b["probability"], b["top5"]), tag
            stem = Path(name).stem
            for method in ("gradcam", "gradcampp"):
                maps = [np.load(next((tmp_path / t).glob(f"{stem}*_{method}.npy"))) for t in (tag, "base")]
                assert np.array_equal(*maps), (tag, name, method)

    tag = "evaluate"
    code, _, err = run_cli("evaluate", *LITE, "-f", photos, "--steps", "2", "--csv", tmp_path / "e.csv", "-q")
    assert code == 0, err
    for name in names:
        assert np.array_equal(seen[("evaluate", name)], seen[("base", name)]), name
    with open(tmp_path / "e.csv") as fh:
        for row in csv.DictReader(fh):
            base = results["base"][Path(row["input"]).name]
            assert int(row["class"]) == base["class"]
            assert float(row["probability"]) == pytest.approx(base["probability"], abs=1e-6)

    from campp_cli import explain_image, load_classifier

    clf = load_classifier("efficientnet_lite0", device="cpu")
    tag = "notebook"
    for name in ("s448.jpg", "s3000.png"):
        notebook_name[0] = name
        for max_side in (224, 1024):
            r = explain_image(photos / name, clf, max_side=max_side)  # a batch of one: reduction order
            assert r.class_index == results["base"][name]["class"]
            assert r.probability == pytest.approx(results["base"][name]["probability"], abs=1e-6)
            assert np.array_equal(seen[("notebook", name)], seen[("base", name)])


def test_the_same_command_twice_gives_the_same_files(photos, run_cli, tmp_path):
    """Run after run: the same --jsonl lines, maps, figures, evaluate CSV and JSON (timings aside)."""
    outs = []
    for k in range(2):
        out = tmp_path / f"run{k}"
        out.mkdir()
        code, _, err = run_cli("classify", *LITE, "-f", photos / "s447.png", "-f", photos / "s1000.jpg",
                               "--output-dir", out, "--save-maps", "-q", "--jsonl", out / "r.jsonl")
        assert code == 0, err
        code, _, err = run_cli("evaluate", *LITE, "-f", photos / "s447.png", "-f", photos / "s1000.jpg", "--steps", "2",
                               "--csv", out / "e.csv", "--json", out / "e.json", "-q")
        assert code == 0, err
        outs.append(out)
    files = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*") if p.is_file())
    assert len(files) > 10
    for rel in files:
        a, b = (o / rel for o in outs)
        if rel.name in ("r.jsonl", "e.csv"):
            assert a.read_text().replace(str(outs[0]), "") == b.read_text().replace(str(outs[1]), ""), rel
        elif rel.name == "e.json":
            ja, jb = (json.loads(p.read_text()) for p in (a, b))
            for d in (ja, jb):
                d.pop("seconds", None)
                d.pop("images_per_second", None)
            assert ja == jb
        else:
            assert a.read_bytes() == b.read_bytes(), rel


def test_pad_and_squash_frame_the_photo_once(photos):
    """squash resamples the whole photo once to the input; pad letterboxes it (resized to fit, centred on
    black), and boxes map into the input as the pixels do."""
    from campp_cli.commands.boxes import Box, to_input_frame

    img = np.zeros((300, 500, 3), np.uint8)
    img[100:200, 300:400] = 255
    photo = Image.fromarray(img)
    for mode in ("squash", "pad"):
        x = geometry.model_input(photo, 100, mode, "bilinear")
        ys, xs = np.nonzero(x[0] > 0.5)
        x0, y0, x1, y1 = to_input_frame(Box("w", 300, 100, 400, 200), 500, 300, 100, mode)
        assert abs(xs.min() - x0) <= 1 and abs(xs.max() + 1 - x1) <= 1, mode
        assert abs(ys.min() - y0) <= 1 and abs(ys.max() + 1 - y1) <= 1, mode
    pad = geometry.model_input(photo, 100, "pad", "bilinear")
    assert (pad[:, :20] == 0).all() and (pad[:, 80:] == 0).all()  # 500x300 -> 100x60 at rows 20..79
    squash = geometry.model_input(photo, 100, "squash", "bilinear")
    expected = np.asarray(photo.resize((100, 100), Image.Resampling.BILINEAR)).transpose(2, 0, 1) / 255
    assert np.abs(squash - expected).max() < 1e-6
