"""`campp classify` end to end on a seeded random VGG16 (the real loading code, no network)."""

from __future__ import annotations

import collections
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import IMAGES, fresh_campp, write_image
from PIL import Image
from reference import paper_preprocess, reference_map, vgg_activations_and_grads

LITE0 = ("--arch", "efficientnet_lite0")

SUFFIXES = ["", "_gradcam_heatmap", "_gradcampp_heatmap", "_gradcam_overlay", "_gradcampp_overlay"]


def panel_columns(comparison: np.ndarray) -> list[tuple[int, int]]:
    """Column ranges of the non-white panels, found from the pixels (not from campp's layout code)."""
    body = comparison[comparison.shape[0] // 2:]  # below the titles
    non_white = (body < 235).any(axis=2).mean(axis=0) > 0.05
    runs, start = [], None
    for x, on in enumerate(non_white):
        if on and start is None:
            start = x
        if not on and start is not None:
            runs.append((start, x))
            start = None
    if start is not None:
        runs.append((start, len(non_white)))
    return [r for r in runs if r[1] - r[0] > 20]


def test_five_jpegs_of_the_right_size(vgg_weights, run_cli, tmp_path):
    code, out, err = run_cli("classify", "-f", IMAGES / "chelsea.png", "-o", "cat.jpeg",
                             "--output-dir", tmp_path, "-gpu", "-1")
    assert code == 0, err
    assert "cpu" in err
    for suffix in SUFFIXES:
        path = tmp_path / f"cat{suffix}.jpeg"
        assert path.is_file(), path
        with Image.open(path) as im:
            assert im.format == "JPEG"
            im.load()
            if suffix:
                # chelsea.png is 451x300: panels are the 300x300 centre crop.
                assert im.size == (300, 300)
    comparison = np.asarray(Image.open(tmp_path / "cat.jpeg").convert("RGB"))
    assert comparison.shape[1] >= 3 * 300
    panels = panel_columns(comparison)
    assert len(panels) == 3
    assert all(abs((b - a) - 300) <= 2 for a, b in panels)
    # Top-5 on stdout with names and probabilities, and the explained class.
    lines = [l for l in out.splitlines() if l.strip()[:2] in {f"{i}." for i in range(1, 6)}]
    assert len(lines) == 5
    probs = [float(l.split()[-1]) for l in lines]
    assert probs == sorted(probs, reverse=True)
    assert "explained:" in out
    assert not list(tmp_path.glob("*.part"))


def test_save_maps_match_an_independent_computation(vgg, vgg_weights, run_cli, tmp_path):
    code, out, err = run_cli("classify", "-f", IMAGES / "chelsea.png", "-o", "m.jpeg",
                             "--output-dir", tmp_path, "--save-maps", "-gpu", "-1")
    assert code == 0, err
    model = torch.nn.Sequential()  # a fresh model from the same file, not campp's instance
    import torchvision

    model = torchvision.models.vgg16()
    model.load_state_dict(torch.load(vgg_weights, weights_only=True))
    model.eval()
    rgb = np.asarray(Image.open(IMAGES / "chelsea.png").convert("RGB"))
    A, g, logits, cls = vgg_activations_and_grads(model, paper_preprocess(rgb))
    assert f"explained: {cls} " in out
    for method, ref_name in (("gradcam", "gradcam"), ("gradcampp", "official")):
        saved = np.load(tmp_path / f"m_{method}.npy")
        assert saved.dtype == np.float32 and saved.shape == (14, 14)
        np.testing.assert_allclose(saved, reference_map(A, g, ref_name), atol=1e-5)


def test_label_selects_the_explained_class(vgg, run_cli, tmp_path):
    code, out, err = run_cli("classify", "-f", IMAGES / "coffee.png", "-l", "7", "--output-dir", tmp_path,
                             "--save-maps")
    assert code == 0, err
    assert "explained: 7 " in out
    assert (tmp_path / "coffee.jpeg").is_file()  # named after the photo
    assert not (tmp_path / "output.jpeg").exists()


@pytest.mark.parametrize("value,needle", [("1000", "1000"), ("abc", "abc"), ("-2", "-2")])
def test_bad_label_is_a_one_line_usage_error(run_cli, tmp_path, value, needle):
    code, out, err = run_cli("classify", "--arch", "efficientnet_lite0", "-f", IMAGES / "chelsea.png", "-l", value,
                             "--output-dir", tmp_path)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert needle in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())


def test_bad_label_exits_2_without_importing_torch(tmp_path):
    """The real entry point, in a fresh interpreter: fast argument errors."""
    for args in (["--help"], ["classify", "--help"], ["--version"],
                 ["classify", "-f", "x.jpg", "-l", "-2"], ["classify", "-f", "x.jpg", "-l", "-7"]):
        exit_code, torch_loaded, err = fresh_campp(args, tmp_path)
        assert not torch_loaded, args
        assert exit_code == (2 if "-l" in args else 0), (args, err)
        assert "Traceback" not in err


def test_a_missing_input_is_a_usage_error_before_the_model_loads(tmp_path):
    """A mistyped -f: exit 2 naming it, torch never imported (it used to load the model first); a missing
    file among real ones still fails alone, later (test_batch)."""
    for args in (["classify", "-f", "chelsa.png"], ["evaluate", "-f", "chelsa.png"],
                 ["classify", "-f", "nothing/here.png", "-f", "gone.jpg", "--arch", "efficientnet_lite0"]):
        exit_code, torch_loaded, err = fresh_campp(args, tmp_path)
        assert exit_code == 2 and not torch_loaded, (args, err)
        assert err.strip().splitlines() == [f"campp: error: -f {args[2]}: no such file"], err


def test_console_script_runs(tmp_path):
    """`campp --help` through the installed entry point."""
    exe = os.path.join(os.path.dirname(sys.executable), "campp")
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "classify" in proc.stdout


def test_missing_weights_offline_is_one_message(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_cache"))
    monkeypatch.setenv("CAMPP_MODELS", str(tmp_path / "models"))
    code, out, err = run_cli("classify", "-f", IMAGES / "chelsea.png", "--output-dir", tmp_path / "o")
    assert code == 1
    assert len(err.strip().splitlines()) == 1
    assert "vgg16-397923af.pth" in err and str(tmp_path / "models") in err and "--weights" in err
    assert "Traceback" not in err
    # The paper's command on a laptop: the message offers the offline model and the exact download.
    assert "--arch efficientnet_lite0" in err
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in err


def test_following_the_missing_weights_advice_works(vgg_weights, run_cli, tmp_path, monkeypatch):
    """The file the message says to download, put where it says (a link to the test's random weights
    standing in for curl), is the one the next run loads."""
    import re
    import shlex

    import campp_cli.models.loading

    # this test's model stays out of the other tests' way
    monkeypatch.setattr(campp_cli.models.loading, "_CACHE", collections.OrderedDict())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_cache"))
    monkeypatch.setenv("CAMPP_MODELS", "models")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("classify", "-f", IMAGES / "chelsea.png", "--output-dir", "o")
    assert code == 1, err
    command = shlex.split(re.search(r"e\.g\. (curl .*?) \(or", err).group(1))
    assert command[:4] == ["curl", "-L", "--create-dirs", "-o"] and command[5].startswith("https://")
    target = command[4]
    os.makedirs(os.path.dirname(target))
    os.symlink(vgg_weights, target)
    code, _, err = run_cli("classify", "-f", IMAGES / "chelsea.png", "--output-dir", "o")
    assert code == 0, err
    assert os.path.samefile(re.search(r"weights (\S+)", err).group(1), target)


def test_failed_download_is_one_message(run_cli, tmp_path, monkeypatch):
    """With downloads allowed, an offline machine still gets the message, not a traceback."""
    import urllib.error

    import campp_cli.models.weights as weights

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(weights.torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_cache"))
    monkeypatch.delenv("CAMPP_OFFLINE")
    code, out, err = run_cli("classify", "-f", IMAGES / "chelsea.png", "--output-dir", tmp_path / "o")
    assert code == 1
    assert "download" in err and "name resolution" in err and "looked for" in err
    assert len(err.strip().splitlines()) == 1


def test_weights_option_and_models_folder(vgg_weights, run_cli, tmp_path, monkeypatch):
    """--weights wins; then a file in models/ under torchvision's name; then the cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_cache"))
    code, _, err = run_cli("classify", "-f", IMAGES / "chelsea.png", "--weights", vgg_weights,
                           "--output-dir", tmp_path / "a")
    assert code == 0, err
    assert str(vgg_weights) in err
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    os.symlink(vgg_weights, models_dir / "vgg16-397923af.pth")
    monkeypatch.setenv("CAMPP_MODELS", str(models_dir))
    code, _, err = run_cli("classify", "-f", IMAGES / "chelsea.png", "--output-dir", tmp_path / "b")
    assert code == 0, err
    assert str(models_dir) in err


def test_missing_gpu_lists_what_exists(run_cli, tmp_path, monkeypatch):
    """With CUDA, an index that does not exist is a usage error naming the devices (one simulated here)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: "Simulated GPU")
    code, out, err = run_cli("classify", *LITE0, "-f", IMAGES / "chelsea.png", "-gpu", "7", "--output-dir", tmp_path)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1
    assert "-gpu 7" in err and "0 (Simulated GPU)" in err and "-1 is the CPU" in err
    assert not list(tmp_path.iterdir())


def test_one_photo_without_o_is_named_after_it(run_cli, tmp_path, monkeypatch):
    """A shell loop without -o overwrites nothing: each photo's figures carry its name; -o keeps the paper's."""
    monkeypatch.chdir(tmp_path)
    for photo in ("rocket.jpg", "chelsea.png"):
        code, _, err = run_cli("classify", *LITE0, "-f", IMAGES / photo, "-gpu", "-1", "-q")
        assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "output").iterdir())
    assert names == sorted(f"{stem}{key}.jpeg" for stem in ("rocket", "chelsea")
                           for key in ("", "_gradcam_heatmap", "_gradcam_overlay", "_gradcampp_heatmap",
                                       "_gradcampp_overlay"))
    code, _, err = run_cli("classify", *LITE0, "-f", IMAGES / "chelsea.png", "-gpu", "-1", "-q", "-o", "output.jpeg")
    assert code == 0, err
    assert (tmp_path / "output" / "output.jpeg").is_file()


def test_gpu_without_cuda_warns_and_runs_on_the_cpu(run_cli, tmp_path, monkeypatch):
    """As the paper's TensorFlow code did: ``-gpu 0`` on a machine without CUDA runs on the CPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, out, err = run_cli("classify", *LITE0, "-f", IMAGES / "chelsea.png", "-gpu", "0", "--output-dir", tmp_path)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert warnings == ["campp: warning: -gpu 0: no CUDA device on this machine; running on the CPU "
                        "(-gpu -1 says so)"]
    assert "on cpu" in err
    assert (tmp_path / "chelsea.jpeg").is_file()


def test_resolve_device_without_cuda_is_an_error_for_the_library(monkeypatch):
    from campp_cli.errors import UsageError
    from campp_cli.models.devices import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match="no CUDA device"):
        resolve_device(0)


def test_big_photos_are_capped_and_tiny_ones_enlarged(vgg, run_cli, tmp_path):
    big = write_image(tmp_path / "big.png", 1800, 1300)
    code, _, err = run_cli("classify", "-f", big, "-o", "big.jpeg", "--output-dir", tmp_path / "o")
    assert code == 0, err
    assert Image.open(tmp_path / "o" / "big_gradcam_overlay.jpeg").size == (1024, 1024)
    code, _, err = run_cli("classify", "-f", big, "-o", "big.jpeg", "--output-dir", tmp_path / "p",
                           "--max-side", "640")
    assert code == 0, err
    assert Image.open(tmp_path / "p" / "big_gradcampp_heatmap.jpeg").size == (640, 640)
    tiny = write_image(tmp_path / "tiny.png", 40, 30)
    code, _, err = run_cli("classify", "-f", tiny, "-o", "tiny.jpeg", "--output-dir", tmp_path / "q")
    assert code == 0, err
    assert Image.open(tmp_path / "q" / "tiny_gradcam_heatmap.jpeg").size == (224, 224)


@pytest.mark.parametrize("name", ["../evil.jpeg", "a/b.jpeg", "x..jpeg", "out.gif", ".jpeg"])
def test_output_name_never_leaves_the_folder(run_cli, tmp_path, name):
    code, _, err = run_cli("classify", "-f", IMAGES / "chelsea.png", "-o", name, "--output-dir", tmp_path / "o")
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "evil.jpeg").exists()


def test_output_dir_that_is_a_file(run_cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli("classify", "-f", IMAGES / "chelsea.png", "--output-dir", blocker)
    assert code == 2 and "not a folder" in err


def test_library_api_from_a_notebook(vgg, tmp_path):
    """The same code without the CLI: explain a tensor, then a file."""
    import campp_cli

    x = torch.randn(2, 3, 224, 224)
    expl = campp_cli.explain(vgg.module, vgg.layer, x, classes=[3, -1])
    assert expl.maps["gradcam"].shape == (2, 14, 14)
    assert expl.classes[0] == 3 and expl.classes[1] == expl.logits[1].argmax()
    result = campp_cli.classify_file(IMAGES / "coffee.png", vgg, tmp_path, "c.jpeg")
    assert len(result.outputs) == 5 and all(os.path.isfile(p) for p in result.outputs)
    assert result.top5[0][2] >= result.top5[-1][2]


def test_every_subpackage_is_in_the_wheel():
    """pyproject finds the packages (campp_cli*): a folder of modules without an __init__.py would be left out
    of the wheel, so every folder that holds Python files must have one."""
    tomllib = pytest.importorskip("tomllib")
    from conftest import REPO
    from setuptools import find_packages

    found = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    listed = set(find_packages(str(REPO), include=found["include"]))
    on_disk = {str(p.parent.relative_to(REPO)).replace("/", ".") for p in (REPO / "campp_cli").rglob("*.py")}
    assert listed == on_disk
