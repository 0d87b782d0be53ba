"""Models as users have them: a forward that returns a dict, Hugging Face ModelOutput, tuple, namedtuple or
dataclass (--output-key), in-place ReLUs anywhere, explain() inside the caller's no_grad or inference_mode,
half-precision and channels-last models, and maps that stay differentiable to the weights."""

from __future__ import annotations

import collections
import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import write_image
from torch import nn

from campp_cli.cam.explain import explain
from campp_cli.cam.guided import guided_backprop
from campp_cli.cam.outputs import LogitsOutput, logits_of, parse_key
from campp_cli.errors import ModelError, UsageError
from campp_cli.models.loading import load_classifier

GRADIENT_METHODS = "gradcam,gradcampp,xgradcam,hirescam,gradcam_elementwise,layercam,eigencam"


def small_net(inplace: bool = False, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=inplace), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(inplace=inplace), nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(inplace=inplace),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5)).eval()


class Wrapped(nn.Module):
    """``small_net`` whose forward returns its logits inside ``pack(logits, features)``."""

    def __init__(self, pack):
        super().__init__()
        self.net, self.pack = small_net(), pack

    def forward(self, x):
        return self.pack(self.net(x), x.mean(dim=(2, 3)))


Pair = collections.namedtuple("Pair", "scores features")


@dataclasses.dataclass
class Output:
    loss: torch.Tensor | None
    scores: torch.Tensor


PACKS = {  # pack, the --output-key that finds the logits (None: the default does)
    "dict with logits": (lambda lo, f: {"features": f, "logits": lo}, None),
    "dict, another name": (lambda lo, f: {"features": f, "scores": lo}, "scores"),
    "tuple, logits first": (lambda lo, f: (lo, f), None),
    "tuple, logits second": (lambda lo, f: (f, lo), 1),
    "namedtuple by name": (lambda lo, f: Pair(lo, f), "scores"),
    "namedtuple, first": (lambda lo, f: Pair(lo, f), None),
    "dataclass": (lambda lo, f: Output(None, lo), "scores"),
}


@pytest.mark.parametrize("kind", PACKS)
def test_every_kind_of_output_explains_as_its_logits(kind):
    pack, key = PACKS[kind]
    model, x = Wrapped(pack).eval(), torch.rand(2, 3, 12, 12)
    reference = explain(model.net, "4", x, methods=GRADIENT_METHODS)  # the same network, returning a tensor
    got = explain(model, "net.4", x, methods=GRADIENT_METHODS, output_key=key)
    np.testing.assert_array_equal(got.logits, reference.logits)
    for name in reference.maps:
        np.testing.assert_array_equal(got.maps[name], reference.maps[name])
    rgb = torch.rand(2, 3, 12, 12)
    np.testing.assert_array_equal(guided_backprop(model, rgb, None, output_key=key),
                                  guided_backprop(model.net, rgb, None))


def test_a_hugging_face_model_output():
    transformers = pytest.importorskip("transformers")
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3,
                                       layer_type="basic", id2label={0: "cat", 1: "dog", 2: "fox"})
    torch.manual_seed(0)
    model = transformers.ResNetForImageClassification(config).eval()
    x = torch.rand(2, 3, 32, 32)
    out = model(x)
    assert isinstance(out, transformers.utils.ModelOutput)
    got = explain(model, "resnet.encoder.stages.1", x)  # the default key: logits
    np.testing.assert_array_equal(got.logits, out.logits.detach().numpy())
    clf = load_classifier(model=model, device="cpu")  # the loaded module returns the logits themselves
    assert clf.categories == ["cat", "dog", "fox"]  # from config.id2label
    torch.testing.assert_close(clf.module(x), out.logits.detach(), atol=1e-5, rtol=1e-5)  # channels-last convs


def test_what_is_not_there_is_one_clear_line():
    logits, feats = torch.zeros(1, 3), torch.zeros(1, 2)
    with pytest.raises(UsageError, match="no 'logits' entry: give the one holding the logits, one of: a, b") as e:
        logits_of({"a": logits, "b": feats})
    assert e.value.param == "output_key"
    with pytest.raises(UsageError, match="has no entry 'c'; it has: a, b"):
        logits_of({"a": logits, "b": feats}, "c")
    with pytest.raises(UsageError, match="tuple output has no entry 2; it has: 0, 1"):
        logits_of((logits, feats), 2)
    with pytest.raises(UsageError, match="entry 'loss' is a NoneType, not a tensor of logits; its entries: loss, "
                                         "scores"):
        logits_of(Output(None, logits), "loss")
    with pytest.raises(ModelError, match="the model returns a str"):
        logits_of("logits")
    assert logits_of({"only": logits}) is logits  # a single entry needs no key
    assert logits_of(logits, "ignored") is logits  # a tensor is the logits
    assert parse_key("3") == 3 and parse_key("scores") == "scores"
    with pytest.raises(UsageError):
        parse_key(" ")


def test_the_hook_is_removed_and_the_model_returns_what_it_did():
    model, x = Wrapped(PACKS["dict with logits"][0]).eval(), torch.rand(1, 3, 8, 8)
    with LogitsOutput(model):
        assert isinstance(model(x), torch.Tensor)
    assert isinstance(model(x), dict)
    explain(model, "net.4", x)
    assert isinstance(model(x), dict) and not model._forward_hooks


NET = '''
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, padding=1),
                        nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    class Dict(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return {"scores": self.net(x), "pooled": x.mean(dim=(2, 3))}

    return Dict()


def fixed():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 2))
'''


def test_the_command_line_asks_for_the_key_then_uses_it(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text(NET)
    write_image(tmp_path / "photo.png", 60, 40)
    code, out, err = run_cli("classify", "-f", "photo.png", "--model", "net.py:build", "--input-size", "32")
    assert code == 2
    assert err.strip().splitlines()[-1] == ("campp: error: --output-key: the model returns a dict with no 'logits' "
                                            "entry: give the one holding the logits, one of: scores, pooled")
    code, out, err = run_cli("classify", "-f", "photo.png", "--model", "net.py:build", "--input-size", "32",
                             "--output-key", "scores", "--layer", "net.2", "--jsonl", "r.jsonl", "-o", "out.png")
    assert code == 0, err
    row = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[0])
    assert row["class"] in range(4) and row["outputs"]
    code, out, err = run_cli("layers", "--model", "net.py:build", "--output-key", "scores", "--size", "32")
    assert code == 0 and "net.2" in out, err
    code, out, err = run_cli("layers", "--model", "net.py:fixed", "--size", "16")
    assert code == 1 and "(its input size? give --size)" in err, err  # layers' own flag


# --- in-place rectifiers, the caller's grad mode, dtypes and layouts ------------------------------------------

@pytest.mark.parametrize("layer", ["0", "1", "2", "3", "4", "5"])
def test_in_place_relus_anywhere_give_the_maps_of_out_of_place_ones(layer):
    x = torch.rand(2, 3, 12, 12)
    inplace, plain = small_net(inplace=True), small_net(inplace=False)
    got = explain(inplace, layer, x, methods=GRADIENT_METHODS)
    want = explain(plain, layer, x, methods=GRADIENT_METHODS)
    for name in want.maps:
        np.testing.assert_allclose(got.maps[name], want.maps[name], atol=1e-6, err_msg=name)
    assert all(m.inplace for m in inplace if isinstance(m, nn.ReLU))  # flags untouched
    np.testing.assert_allclose(guided_backprop(inplace, x, None), guided_backprop(plain, x, None), atol=1e-7)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_explain_inside_the_callers_no_grad_or_inference_mode(mode):
    model = small_net(inplace=True)
    x = torch.rand(2, 3, 12, 12)
    want = explain(model, "2", x, methods=GRADIENT_METHODS)
    with mode():
        inner = torch.rand(2, 3, 12, 12) * 0 + x  # made inside: an inference tensor under inference_mode
        got = explain(model, "2", inner, methods=GRADIENT_METHODS)
        guided = guided_backprop(model, inner, None)
    for name in want.maps:
        np.testing.assert_array_equal(got.maps[name], want.maps[name])
    np.testing.assert_array_equal(guided, guided_backprop(model, x, None))


def test_channels_last_and_half_precision_models():
    x = torch.rand(2, 3, 16, 16)
    want = explain(small_net(), "4", x, methods=GRADIENT_METHODS)
    last = small_net().to(memory_format=torch.channels_last)
    got = explain(last, "4", x.to(memory_format=torch.channels_last), methods=GRADIENT_METHODS)
    for name in want.maps:
        np.testing.assert_allclose(got.maps[name], want.maps[name], atol=1e-5, err_msg=name)
    half = small_net().half()
    got = explain(half, "4", x, methods="gradcam,gradcampp,layercam")  # x is cast to the model's dtype
    assert got.maps["gradcam"].dtype == np.float32
    for name in got.maps:  # float16 passes: the maps agree to float16's resolution
        np.testing.assert_allclose(got.maps[name], want.maps[name], atol=2e-2, err_msg=name)


# --- differentiable maps --------------------------------------------------------------------------------------

def smooth_net() -> nn.Sequential:
    """float64 and smooth (Softplus), so central differences of a loss on its maps are exact to ~1e-9."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Softplus(), nn.Conv2d(4, 4, 3, padding=1), nn.Softplus(),
                         nn.Conv2d(4, 5, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()).double().eval()


def test_a_loss_on_the_maps_backpropagates_to_the_weights_as_finite_differences_say():
    model = smooth_net()
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    methods = "gradcam,gradcampp,xgradcam,layercam,eigencam"

    def loss() -> torch.Tensor:
        e = explain(model, "2", x, [1, 3], methods=methods, differentiable=True)
        return sum(((m - 0.5) ** 2).sum() for m in e.maps.values())

    value = loss()
    value.backward()
    plain = explain(model, "2", x, [1, 3], methods=methods)  # the same maps, as arrays
    e = explain(model, "2", x, [1, 3], methods=methods, differentiable=True)
    for name, m in e.maps.items():
        assert isinstance(m, torch.Tensor) and m.requires_grad
        np.testing.assert_allclose(m.detach().numpy(), plain.maps[name], atol=1e-12)
    rng = np.random.default_rng(0)
    for param in (model[0].weight, model[2].bias):
        grad = param.grad.clone()
        for index in [tuple(int(rng.integers(s)) for s in param.shape) for _ in range(4)]:
            step = 1e-6
            with torch.no_grad():
                param[index] += step
                up = loss().item()
                param[index] -= 2 * step
                down = loss().item()
                param[index] += step
            assert grad[index].item() == pytest.approx((up - down) / (2 * step), rel=1e-5, abs=1e-8)


def test_differentiable_maps_refuse_what_cannot_carry_gradients():
    model, x = smooth_net(), torch.rand(1, 3, 6, 6, dtype=torch.float64)
    with pytest.raises(UsageError, match="scorecam: maps from extra forward passes are not differentiable") as e:
        explain(model, "2", x, methods="gradcam,scorecam", differentiable=True)
    assert e.value.param == "differentiable"
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(UsageError, match="no parameter of the model \\(nor the input\\) requires grad"):
        explain(model, "2", x, differentiable=True)


def test_a_frozen_backbone_under_a_trainable_head_still_has_differentiable_maps():
    """The maps depend on the head's weights through the gradient g, even where nothing before the layer
    learns (fine-tuning a head): the head's gradient is the central difference of the loss."""
    model, x = smooth_net(), torch.rand(2, 3, 6, 6, dtype=torch.float64)
    for p in model[:3].parameters():
        p.requires_grad_(False)
    head = model[4].weight

    def loss():
        e = explain(model, "2", x, [0, 2], methods="gradcam,gradcampp", differentiable=True)
        return sum(((m - 0.3) ** 2).sum() for m in e.maps.values())

    loss().backward()
    for index in [(0, 1, 0, 0), (2, 3, 0, 0)]:
        with torch.no_grad():
            head[index] += 1e-6
            up = loss().item()
            head[index] -= 2e-6
            down = loss().item()
            head[index] += 1e-6
        assert head.grad[index].item() == pytest.approx((up - down) / 2e-6, rel=1e-5, abs=1e-8)
    assert all(p.grad is None for p in model[:3].parameters())


def test_differentiable_maps_through_attention():
    """A vision transformer's fused attention kernels have no double backward: campp runs its own pass with
    PyTorch's plain attention, so a loss on the maps backpropagates."""
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                            num_classes=4).eval()
    torch.nn.init.normal_(vit.heads.head.weight)  # torchvision starts the head at zero: no gradient at all
    expl = explain(vit, "encoder.layers.encoder_layer_1.ln_1", torch.rand(2, 3, 32, 32), [0, 1],
                   methods="gradcam,layercam", differentiable=True)
    (expl.maps["layercam"][:, :2] - expl.maps["gradcam"][:, 2:]).sum().backward()  # was: no double backward
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in vit.encoder.parameters())


def test_a_half_precision_model_in_every_pass(tmp_path):
    half = small_net().half()
    x = torch.rand(2, 3, 16, 16)
    want = explain(small_net(), "4", x, methods="scorecam", image=x, preprocess=lambda t: t)
    got = explain(half, "4", x, methods="scorecam", image=x, preprocess=lambda t: t)  # its passes cast too
    np.testing.assert_allclose(got.maps["scorecam"], want.maps["scorecam"], atol=3e-2)
    np.testing.assert_allclose(guided_backprop(half, x, [0, 1]), guided_backprop(small_net(), x, [0, 1]),
                               atol=1e-2, rtol=5e-2)
    from campp_cli.models.preprocessing import Preprocessing

    clf = load_classifier(model=small_net().half(), preprocessing=Preprocessing(size=16, mean=(0, 0, 0),
                                                                                 std=(1, 1, 1)))
    assert len(clf.categories) == 5


def test_a_model_made_under_inference_mode_is_one_clear_line():
    with torch.inference_mode():
        model = small_net()
    with pytest.raises(UsageError, match="the model's parameters were made under torch.inference_mode") as e:
        explain(model, "2", torch.rand(1, 3, 8, 8))
    assert e.value.param == "model"
    plain = small_net()
    flags = [p.requires_grad for p in plain.parameters()]
    with pytest.raises(UsageError):
        explain(plain, "no.such.layer", torch.rand(1, 3, 8, 8))
    assert [p.requires_grad for p in plain.parameters()] == flags


def test_what_the_errors_name():
    y = torch.zeros(1, 3)
    with pytest.raises(UsageError, match="the model's dict entry 'out' is a tuple"):
        logits_of({"out": (y, y)})
    with pytest.raises(UsageError, match="has no entry '\\u00b2'"):
        logits_of({"a": y, "b": y}, parse_key("\u00b2"))
    from campp_cli.cam.explain import explain_top

    assert len(explain_top(small_net(), "4", torch.rand(1, 3, 8, 8), np.int64(2))) == 2


def test_differentiable_maps_of_a_loaded_model_equal_those_of_the_plain_module():
    """load_classifier swaps in CPU fast paths (packed convolutions, sparse linear backward); they step aside
    when the weights require grad, so the weights' gradients are the plain module's."""
    plain, x = small_net(), torch.rand(2, 3, 16, 16)
    loaded = load_classifier(model=small_net(), device="cpu", layer="2").module

    def grads(model):
        model.zero_grad()
        expl = explain(model, "2", x, [0, 4], methods="gradcam,gradcampp,layercam", differentiable=True)
        sum((m ** 2).sum() for m in expl.maps.values()).backward()
        return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]

    got, want = grads(loaded), grads(plain)
    assert sum(int(g.abs().sum() > 0) for g in want) >= 5  # every weight but the head's bias, which g ignores
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
