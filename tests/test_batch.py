"""Many images in one run: inputs, names, resuming, JSON lines, bad images, batch-size invariance, flat memory."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import IMAGES, REPO, write_image

from campp_cli.io.inputs import plan

LITE = ["--arch", "efficientnet_lite0"]


@pytest.fixture()
def photos(tmp_path) -> Path:
    """A small tree: two cat.jpg in different folders, a.png beside a.jpg, a nested folder, a non-image."""
    root = tmp_path / "photos"
    (root / "x").mkdir(parents=True)
    (root / "y" / "deep").mkdir(parents=True)
    write_image(root / "x" / "cat.jpg", 80, 60, seed=1)
    write_image(root / "y" / "cat.jpg", 60, 80, seed=2)
    write_image(root / "a.png", 50, 50, seed=3)
    write_image(root / "a.jpg", 50, 50, seed=4)
    write_image(root / "y" / "deep" / "d.webp", 40, 40, seed=5)
    (root / "notes.txt").write_text("not an image")
    return root


def test_folder_is_mirrored_and_names_never_collide(photos, run_cli, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = run_cli("classify", *LITE, "-f", photos, "--recursive", "--output-dir", out)
    assert code == 0, err
    figures = {str(p.relative_to(out)) for p in out.rglob("*.jpeg") if not p.stem.endswith(("heatmap", "overlay"))}
    assert figures == {"x/cat.jpeg", "y/cat.jpeg", "a_png.jpeg", "a_jpg.jpeg", "y/deep/d.jpeg"}
    assert len(list(out.rglob("*.jpeg"))) == 25  # five files each
    assert "5 done, 0 skipped, 0 failed" in err
    assert len([l for l in stdout.splitlines() if " -> " in l]) == 5


def test_folder_without_recursive_takes_its_own_files(photos, run_cli, tmp_path):
    code, _, err = run_cli("classify", *LITE, "-f", photos, "--output-dir", tmp_path / "o")
    assert code == 0, err
    assert "2 done" in err  # a.png and a.jpg


def test_repeated_files_globs_and_lists(photos, run_cli, tmp_path, monkeypatch):
    out = tmp_path / "out"
    listing = tmp_path / "list.txt"
    listing.write_text(f"# my list\n{photos / 'a.png'}\n\n{photos / 'y' / 'deep' / 'd.webp'}\n")
    code, _, err = run_cli("classify", *LITE, "-f", str(photos / "*" / "cat.jpg"), "-f", f"@{listing}",
                           "-f", photos / "a.png", "-o", "{stem}_cam.jpeg", "--output-dir", out)
    assert code == 0, err
    names = sorted(p.name for p in out.iterdir() if p.name.endswith("_cam.jpeg"))
    assert names == ["a_cam.jpeg", "cat_2_cam.jpeg", "cat_cam.jpeg", "d_cam.jpeg"]  # a.png given twice: once
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{photos / 'a.jpg'}\n"))
    code, _, err = run_cli("classify", *LITE, "-f", "@-", "--output-dir", tmp_path / "stdin")
    assert code == 0, err
    assert (tmp_path / "stdin" / "a.jpeg").is_file()


def test_plan_disambiguates_without_a_model(tmp_path):
    for d in ("p", "q"):
        (tmp_path / d).mkdir()
        write_image(tmp_path / d / "x.png", 8, 8)
    jobs = plan([str(tmp_path / "p" / "x.png"), str(tmp_path / "q" / "x.png"), str(tmp_path / "p" / "x.png")],
                tmp_path / "out", None)
    assert [j.stem for j in jobs] == ["x", "x_2"]
    jobs = plan([str(tmp_path / "p")], tmp_path / "out", None)
    assert jobs[0].out_dir == tmp_path / "out"  # folder contents land at the top of the output folder


@pytest.mark.parametrize("template", ["fixed.jpeg", "{name}.jpeg", "{stem}/x.jpeg", "{stem}.gif"])
def test_several_inputs_need_a_template(photos, run_cli, tmp_path, template):
    code, _, err = run_cli("classify", *LITE, "-f", photos, "-o", template, "--output-dir", tmp_path / "o")
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_one_bad_image_does_not_stop_the_run(photos, run_cli, tmp_path):
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    log = tmp_path / "run.jsonl"
    code, _, err = run_cli("classify", *LITE, "-f", photos, "--output-dir", tmp_path / "o", "--jsonl", log)
    assert code == 1
    assert f"{photos / 'broken.png'}: " in err and "2 done, 0 skipped, 1 failed" in err
    assert (tmp_path / "o" / "a_png.jpeg").is_file() and (tmp_path / "o" / "a_jpg.jpeg").is_file()
    lines = [json.loads(l) for l in log.read_text().splitlines()]
    assert len(lines) == 3
    bad = [l for l in lines if "error" in l]
    assert len(bad) == 1 and bad[0]["input"] == str(photos / "broken.png")
    good = [l for l in lines if "error" not in l]
    for entry in good:
        assert set(entry) >= {"input", "class", "name", "probability", "top5", "outputs"}
        assert len(entry["top5"]) == 5 and entry["top5"][0]["probability"] >= entry["top5"][4]["probability"]
        assert all(Path(p).is_file() for p in entry["outputs"])
        assert entry["class"] == entry["top5"][0]["class"]


def test_skip_existing_resumes(photos, run_cli, tmp_path):
    out = tmp_path / "o"
    args = ["classify", *LITE, "-f", photos, "--recursive", "--output-dir", out, "--skip-existing"]
    code, _, err = run_cli(*args)
    assert code == 0 and "5 done, 0 skipped" in err
    before = (out / "x" / "cat.jpeg").stat().st_mtime_ns
    (out / "a_png_gradcampp_overlay.jpeg").unlink()  # as if killed before this image finished
    code, _, err = run_cli(*args)
    assert code == 0 and "1 done, 4 skipped" in err, err
    assert (out / "a_png_gradcampp_overlay.jpeg").is_file()
    assert (out / "x" / "cat.jpeg").stat().st_mtime_ns == before


def test_results_do_not_depend_on_batch_size(photos, tmp_path):
    from campp_cli.models.loading import load_classifier
    from campp_cli.run.engines.local import run
    from campp_cli.run.options import Options

    clf = load_classifier("efficientnet_lite0")
    maps = {}
    for bs in (1, 3, 8):
        out = tmp_path / f"bs{bs}"
        jobs = plan([str(photos)], out, None, recursive=True)
        results = []
        summary = run(jobs, clf, Options(batch_size=bs, save_maps=True), results.append)
        assert summary.done == 5
        maps[bs] = {r.input: (r.class_index, np.load(Path(r.outputs[-1]))) for r in results}
    for bs in (3, 8):
        for name, (cls, cam) in maps[1].items():
            assert maps[bs][name][0] == cls
            np.testing.assert_allclose(maps[bs][name][1], cam, atol=1e-5)


def test_batch_size_zero_is_a_usage_error(run_cli, tmp_path):
    code, _, err = run_cli("classify", "-f", IMAGES / "coffee.png", "--batch-size", "0", "--output-dir", tmp_path)
    assert code == 2 and "--batch-size" in err


def test_quiet_prints_nothing_on_success(photos, run_cli, tmp_path):
    code, _, err = run_cli("classify", *LITE, "-f", photos, "--output-dir", tmp_path / "o", "--quiet")
    assert code == 0 and err == ""


def test_progress_bar_only_on_a_terminal(photos, run_cli, tmp_path, monkeypatch):
    code, _, err = run_cli("classify", *LITE, "-f", photos, "--output-dir", tmp_path / "o")
    assert code == 0 and "explaining" not in err
    assert sum(line.startswith("campp: 2 done") for line in err.splitlines()) == 1, err
    # stderr a terminal (stdout not): a bar counting to the end, then the one summary line.
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, _, err = run_cli("classify", *LITE, "-f", photos, "--output-dir", tmp_path / "t")
    assert code == 0 and "explaining" in err and "2/2" in err, err
    assert sum(line.startswith("campp: 2 done") for line in err.splitlines()) == 1, err


MEMORY_PROBE = textwrap.dedent("""
    import resource, sys
    from pathlib import Path
    import torch
    from campp_cli.run.engines.local import run
    from campp_cli.run.options import Options
    from campp_cli.models.loading import Classifier
    from campp_cli.models.preprocessing import Preprocessing
    from campp_cli.io.inputs import Job

    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 1000))
    clf = Classifier("tiny", net.eval(), "1", Preprocessing(), [str(i) for i in range(1000)],
                     torch.device("cpu"), input_size=64)
    files = sorted(src.iterdir())
    # 500 images in ONE run: the 50 files ten times over, each time into another folder.
    jobs = [Job(f, out / str(k), f.stem, ".jpeg") for k in range(10) for f in files]
    peaks = []
    def on_result(result):
        assert result.error is None, result.error
        peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    run(jobs, clf, Options(batch_size=8), on_result)
    print(peaks[49], peaks[-1], len(peaks))
""")


@pytest.mark.slow
def test_memory_stays_flat(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(50):
        write_image(src / f"{i:03d}.png", 640, 480, seed=i)
    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(src), str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    after_50, after_500, count = proc.stdout.split()
    after_50, after_500 = float(after_50), float(after_500)
    assert count == "500"
    print(f"peak RSS after 50 images: {after_50:.0f} MB, after 500: {after_500:.0f} MB")
    assert after_500 <= 1.05 * after_50
    assert len(list((tmp_path / "out").rglob("*.jpeg"))) == 500 * 5


def test_results_keep_input_order_around_bad_images(run_cli, tmp_path):
    """Failed decodes are queued among the finished images, never reported ahead of them."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(7):
        if i in (1, 2, 5):
            (folder / f"{i}.png").write_bytes(b"not an image at all")
        else:
            write_image(folder / f"{i}.png", 40, 40, seed=i)
    log = tmp_path / "run.jsonl"
    code, _, err = run_cli("classify", *LITE, "-f", folder, "--batch-size", "2", "--output-dir", tmp_path / "o",
                           "--jsonl", log)
    assert code == 1 and "4 done, 0 skipped, 3 failed" in err
    lines = [json.loads(l) for l in log.read_text().splitlines()]
    assert [Path(l["input"]).name for l in lines] == [f"{i}.png" for i in range(7)]
    assert [("error" in l) for l in lines] == [i in (1, 2, 5) for i in range(7)]
