"""Vision transformers (torchvision's ViT-B/16 and Swin-T) and timm architectures, offline, random weights.

The references reshape the tokens by hand (no campp code): a forward hook keeps the
layer's output, ``retain_grad`` its gradient; the class token is dropped and the
196 patch tokens laid out as the 14 x 14 grid they came from.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torchvision
from conftest import IMAGES
from reference import reference_map
from test_fidelity import _same_normalisation

from campp_cli.cam.explain import explain

timm = pytest.importorskip("timm", reason="timm is not installed (pip install 'campp[timm]')")


def _with_loud_head(model: torch.nn.Module, head: torch.nn.Linear, seed: int) -> torch.nn.Module:
    """torchvision's ViT starts with a zero head (every logit 0, every gradient 0): give it a random one,
    scaled so that gradients dwarf pytorch-grad-cam's epsilon."""
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(seed)) * 30.0)
    return model.eval()


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    torch.manual_seed(11)
    model = torchvision.models.vit_b_16()
    _with_loud_head(model, model.heads.head, 11)
    path = tmp_path_factory.mktemp("vit") / "vit_b_16-random.pth"
    torch.save(model.state_dict(), path)
    return model, path


def _hand_reshaped(model, layer_module, x, cls, layout):
    """(A, g) as (C, H, W) NumPy arrays of image 0, reshaped by hand from ``layer_module``'s output."""
    kept = {}

    def hook(module, inputs, output):
        output.retain_grad()
        kept["out"] = output

    handle = layer_module.register_forward_hook(hook)
    try:
        logits = model(x.clone().requires_grad_(True))
    finally:
        handle.remove()
    logits[0, cls].backward()
    out, grad = kept["out"].detach()[0], kept["out"].grad[0]
    if layout == "tokens":  # (197, C): class token first, then 14 rows of 14 patches
        side = int(round((out.shape[0] - 1) ** 0.5))
        out, grad = (t[1:].reshape(side, side, -1) for t in (out, grad))
    # (H, W, C) -> (C, H, W)
    return out.permute(2, 0, 1).double().numpy(), grad.permute(2, 0, 1).double().numpy()


@pytest.mark.slow
def test_vit_b16_maps_match_a_hand_reshape_and_pytorch_grad_cam(vit):
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from campp_cli.models.loading import load_classifier

    model, path = vit
    clf = load_classifier("vit_b_16", weights=path)
    assert clf.layer == "encoder.layers.encoder_layer_11.ln_1"  # the last block's first norm
    rgb = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    x = clf.preprocessing(rgb)
    ours = explain(clf.module, clf.layer, x, variant="paper")
    cls = int(ours.classes[0])
    assert ours.maps["gradcam"].shape == (1, 14, 14) and ours.maps["gradcam"].max() == 1.0
    reference = copy.deepcopy(model)
    A, g = _hand_reshaped(reference, reference.encoder.layers[-1].ln_1, x, cls, "tokens")
    np.testing.assert_allclose(ours.maps["gradcam"][0], reference_map(A, g, "gradcam"), atol=1e-4)

    # Grad-CAM++'s alphas divide by 2 g^2 + sum(A) g^3, which a LayerNorm's tokens bring close to 0: float32
    # gradients (1e-7 relative error) move its maps by up to 0.02 between any two implementations. In float64
    # they must agree. (Logits scaled up so that gradients dwarf pytorch-grad-cam's epsilon of 1e-6.)
    model64, x64 = copy.deepcopy(model).double(), x.double()
    with torch.no_grad():
        model64.heads.head.weight.mul_(1e6)
    ours = explain(model64, clf.layer, x64, variant="paper")
    reference = copy.deepcopy(model64)
    A, g = _hand_reshaped(reference, reference.encoder.layers[-1].ln_1, x64, cls, "tokens")
    for name, variant in (("gradcam", "gradcam"), ("gradcampp", "paper")):
        np.testing.assert_allclose(ours.maps[name][0], reference_map(A, g, variant), atol=1e-6, err_msg=name)

    def reshape_transform(tokens):
        return tokens[:, 1:, :].reshape(tokens.size(0), 14, 14, tokens.size(2)).permute(0, 3, 1, 2)

    theirs = copy.deepcopy(model64)
    for name, klass in (("gradcam", GradCAM), ("gradcampp", GradCAMPlusPlus)):
        with klass(model=theirs, target_layers=[theirs.encoder.layers[-1].ln_1],
                   reshape_transform=reshape_transform) as cam:
            map_ = cam(input_tensor=x64, targets=[ClassifierOutputTarget(cls)])[0]
        np.testing.assert_allclose(_same_normalisation(ours.maps[name][0], (224, 224)), map_, atol=1e-4,
                                   err_msg=name)


def test_vit_runs_end_to_end_with_every_method(vit, run_cli, tmp_path):
    _, path = vit
    code, out, err = run_cli("classify", "-f", IMAGES / "chelsea.png", "--arch", "vit_b_16", "--weights", path,
                             "--methods", "gradcam,gradcampp,layercam,eigencam", "--save-maps",
                             "--output-dir", tmp_path)
    assert code == 0, err
    for method in ("gradcam", "gradcampp", "layercam", "eigencam"):
        cam = np.load(tmp_path / f"chelsea_{method}.npy")
        assert cam.shape == (14, 14) and cam.max() == pytest.approx(1.0)


def test_swin_t_channels_last_blocks(tmp_path, run_cli):
    from campp_cli.models.loading import load_classifier

    torch.manual_seed(3)
    model = torchvision.models.swin_t().eval()
    path = tmp_path / "swin.pth"
    torch.save(model.state_dict(), path)
    clf = load_classifier("swin_t", weights=path)
    assert clf.layer == "features.7.1.norm1"
    x = clf.preprocessing(torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(4)))
    ours = explain(clf.module, clf.layer, x)
    cls = int(ours.classes[0])
    A, g = _hand_reshaped(model, model.features[7][1].norm1, x, cls, "nhwc")
    assert A.shape == (768, 7, 7)
    np.testing.assert_allclose(ours.maps["gradcam"][0], reference_map(A, g, "gradcam"), atol=1e-4)
    code, out, err = run_cli("classify", "-f", IMAGES / "coffee.png", "--arch", "swin_t", "--weights", path,
                             "--save-maps", "--output-dir", tmp_path / "out")
    assert code == 0, err
    assert np.load(tmp_path / "out" / "coffee_gradcampp.npy").shape == (7, 7)


def test_layers_lists_tokens_as_grids(run_cli):
    code, out, err = run_cli("layers", "--arch", "vit_b_16")
    assert code == 0, err
    (marked,) = [line for line in out.splitlines() if line.startswith("*")]
    assert "encoder.layers.encoder_layer_11.ln_1" in marked and "768 x  14 x  14  (tokens+1)" in marked
    code, out, err = run_cli("layers", "--arch", "swin_t")
    assert "* features.7.1.norm1" in out and "(nhwc)" in out


# --- timm ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, grid, mean", [
    ("resnet18", 7, (0.485, 0.456, 0.406)),
    ("vit_tiny_patch16_224", 14, (0.5, 0.5, 0.5)),
])
def test_timm_architectures_offline(tmp_path, run_cli, monkeypatch, name, grid, mean):
    from campp_cli.models.loading import load_classifier

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(8)
    model = timm.create_model(name, pretrained=False).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(model.state_dict(), path)
    clf = load_classifier(f"timm:{name}", weights=path)
    assert clf.preprocessing.mean == pytest.approx(mean)  # timm's own config
    code, out, err = run_cli("classify", "-f", IMAGES / "chelsea.png", "--arch", f"timm:{name}", "--weights", path,
                             "--save-maps", "--jsonl", tmp_path / "r.jsonl", "--output-dir", tmp_path / "out")
    assert code == 0, err
    assert np.load(tmp_path / "out" / "chelsea_gradcampp.npy").shape == (grid, grid)
    line = json.loads((tmp_path / "r.jsonl").read_text())
    interpolation = timm.models.get_pretrained_cfg(name).interpolation
    x = clf.preprocessing(torch.from_numpy(_chelsea_input(224, interpolation)))
    with torch.no_grad():
        expected = torch.softmax(model(x), 1)[0]
    assert line["probability"] == pytest.approx(float(expected[line["class"]]), rel=1e-4)
    assert clf.preprocessing.interpolation == interpolation


def _chelsea_input(size: int, interpolation: str) -> np.ndarray:
    """The photo framed as timm's configuration asks: centre square, resized with its interpolation by
    torchvision's resize of a PIL image (what timm's transforms call), [0, 1]."""
    from PIL import Image
    from reference import paper_square

    rgb = np.asarray(Image.open(IMAGES / "chelsea.png").convert("RGB"))
    return (paper_square(rgb, size, interpolation).transpose(2, 0, 1)[None] / 255.0).astype(np.float32)


def test_timm_weights_from_its_own_cache(tmp_path, monkeypatch):
    """No --weights: the file timm would have downloaded, found in the Hugging Face cache, read offline."""
    import huggingface_hub.constants
    from safetensors.torch import save_file

    from campp_cli.models.loading import load_classifier
    from campp_cli.models.spec import get_arch

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    torch.manual_seed(9)
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, snapshot / "model.safetensors")
    get_arch.cache_clear()
    clf = load_classifier("timm:resnet18")
    assert clf.weights_source == str(snapshot / "model.safetensors")
    torch.testing.assert_close(clf.module.fc.weight.detach(), state["fc.weight"])
    (snapshot / "model.safetensors").unlink()
    with pytest.raises(Exception, match="no timm:resnet18 weights found") as info:
        load_classifier("timm:resnet18", layer="layer3")
    # Where campp looked (both places, by path) and how to put the weights there; no promise of a download.
    message = str(info.value)
    assert str(repo) in message and "timm_resnet18.pth" in message and "does not download" in message
    assert "huggingface-cli download timm/resnet18.a1_in1k" in message and "pretrained=True" in message
    assert "network access to fill the cache" not in message


def test_timm_names_are_checked(run_cli, tmp_path):
    code, out, err = run_cli("classify", "-f", IMAGES / "chelsea.png", "--arch", "timm:resnet19")
    assert code == 2
    assert "timm has no such architecture; did you mean" in err and "resnet18" in err
    code, out, err = run_cli("classify", "-f", IMAGES / "chelsea.png", "--arch", "keras:resnet50")
    assert code == 2 and "no model source 'keras'; sources: timm" in err
