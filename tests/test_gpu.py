"""CUDA: the same maps as the CPU's, from the library and the command line (issue 27's correctness part).

Every test here needs a CUDA device and is skipped, with the reason, where there is none: they run on the
GPU machine (`.venv/bin/python -m pytest -m gpu`), never on CI's CPU-only one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import IMAGES
from test_fidelity import TARGET, TinyVGG

from campp_cli.cam.explain import explain
from campp_cli.cam.guided import guided_backprop
from campp_cli.cam.methods import list_methods

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU machine)")]

#: Maps are in [0, 1]; float32 on two devices, reduction orders aside.
TOLERANCE = 1e-4


def _maps(model, layer, x, device, **settings):
    model = model.to(device)
    expl = explain(model, layer, x.to(device), methods=list_methods(), image=x.to(device), **settings)
    return expl.maps, expl.classes


@pytest.mark.parametrize("variant", ["official", "paper"])
@pytest.mark.parametrize("seed", [0, 1])
def test_every_method_on_cuda_equals_the_cpu(seed, variant):
    torch.manual_seed(seed)
    x = torch.rand(4, 3, 32, 32)
    cpu, cpu_classes = _maps(TinyVGG(seed), TARGET, x, "cpu", variant=variant, score_batch=8)
    torch.backends.cudnn.allow_tf32 = False
    cuda, cuda_classes = _maps(TinyVGG(seed), TARGET, x, "cuda", variant=variant, score_batch=8)
    assert np.array_equal(cpu_classes, cuda_classes)
    for method in cpu:
        np.testing.assert_allclose(cuda[method], cpu[method], atol=TOLERANCE, err_msg=method)


def test_a_real_gap_network_on_cuda_equals_the_cpu():
    from PIL import Image

    from campp_cli.models.loading import load_classifier
    from campp_cli.run.stages import to_batch

    photos = [Image.open(p).convert("RGB") for p in sorted(IMAGES.glob("*.png"))]
    results = {}
    for device in ("cpu", "cuda"):
        clf = load_classifier("efficientnet_lite0", device=device)
        rgb01 = to_batch(photos, clf)
        expl = explain(clf.module, clf.layer, clf.preprocessing(rgb01), methods="gradcam,gradcampp,layercam")
        results[device] = expl
    assert torch.backends.cudnn.allow_tf32 is False  # campp's default on CUDA: faithful float32 maps
    for method, cpu in results["cpu"].maps.items():
        np.testing.assert_allclose(results["cuda"].maps[method], cpu, atol=TOLERANCE, err_msg=method)
    np.testing.assert_allclose(results["cuda"].probs, results["cpu"].probs, atol=1e-5)


def test_batch_size_does_not_change_cuda_maps():
    torch.manual_seed(2)
    x = torch.rand(6, 3, 32, 32)
    whole, _ = _maps(TinyVGG(2), TARGET, x, "cuda")
    parts = [_maps(TinyVGG(2), TARGET, x[i:i + 2], "cuda")[0] for i in range(0, 6, 2)]
    for method in whole:
        np.testing.assert_allclose(np.concatenate([p[method] for p in parts]), whole[method], atol=TOLERANCE)


def test_guided_maps_on_cuda_equal_the_cpu():
    torch.manual_seed(3)
    x = torch.rand(2, 3, 32, 32)
    cpu = guided_backprop(TinyVGG(3), x, np.array([1, 2]))
    cuda = guided_backprop(TinyVGG(3).cuda(), x.cuda(), np.array([1, 2]))
    np.testing.assert_allclose(cuda, cpu, atol=TOLERANCE * max(1.0, float(np.abs(cpu).max())))


def test_gpu_0_through_the_command_line(run_cli, tmp_path):
    code, out, err = run_cli("classify", "--arch", "efficientnet_lite0", "-f", IMAGES / "chelsea.png",
                             "-gpu", "0", "--output-dir", tmp_path)
    assert code == 0, err
    assert "on cuda:0" in err and (tmp_path / "chelsea.jpeg").is_file()


def test_a_gpu_that_does_not_exist_is_refused_with_the_devices(run_cli, tmp_path):
    missing = torch.cuda.device_count()
    code, _, err = run_cli("classify", "--arch", "efficientnet_lite0", "-f", IMAGES / "chelsea.png",
                           "-gpu", str(missing), "--output-dir", tmp_path)
    assert code == 2 and f"-gpu {missing}: no such CUDA device" in err and "0 (" in err


def test_evaluate_on_cuda_scores_as_the_cpu(run_cli, tmp_path):
    import json

    scores = {}
    for gpu in ("-1", "0"):
        path = tmp_path / f"{gpu}.json"
        code, _, err = run_cli("evaluate", "--arch", "efficientnet_lite0", "-f", IMAGES, "-gpu", gpu,
                               "--steps", "4", "--json", path)
        assert code == 0, err
        scores[gpu] = json.loads(path.read_text())["methods"]
    for method, cpu in scores["-1"].items():
        for key in ("average_drop", "increase_in_confidence", "deletion_auc", "insertion_auc"):
            assert scores["0"][method][key] == pytest.approx(cpu[key], abs=1e-2), (method, key)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_on_cuda_is_close_to_float32_and_faster_never_broken(precision):
    """--precision on CUDA (autocast there): finite float32 maps in [0, 1], the same classes, and the maps of
    the real EfficientNet-Lite0 on the photos of images/ within 0.1 of fp32's (the README's figures come
    from benchmarks/gpu.py's maps step)."""
    from PIL import Image

    from campp_cli.models.loading import load_classifier
    from campp_cli.run.stages import to_batch

    photos = [Image.open(p).convert("RGB") for p in sorted(IMAGES.glob("*.png"))]
    found = {}
    for name in ("fp32", precision):
        clf = load_classifier("efficientnet_lite0", device="cuda", precision=name)
        x = clf.preprocessing(to_batch(photos, clf))
        found[name] = explain(clf.module, clf.layer, x, methods="gradcam,gradcampp,eigencam")
    half, full = found[precision], found["fp32"]
    assert np.array_equal(half.classes, full.classes) and half.logits.dtype == np.float32
    for method, maps in half.maps.items():
        assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1, method
        assert np.abs(maps - full.maps[method]).max() < 0.1, method
