"""The methods after the first eight (CAM, EigenGrad-CAM, KPCA-CAM, ShapleyCAM, Finer-CAM, Ablation-CAM,
SS-CAM, IS-CAM), each pinned to an independent reference and compared with a peer library.

References come from tests/reference_methods.py, written from the papers' definitions (and the peers'
code where the paper leaves it open) without reading campp's code; the model is split by hand there, so
A, g and the head are not campp's hooks.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision
from reference_methods import (
    ablationcam_map,
    cam_map,
    eigengradcam_map,
    finercam_map,
    iscam_map,
    kpcacam_map,
    kpcacam_sklearn,
    normalised,
    shapleycam_map,
    sscam_map,
)
from test_fidelity import TARGET, TinyVGG, _same_normalisation

from campp_cli.cam.explain import explain, explain_top
from campp_cli.cam.methods import get_method, parse_methods
from campp_cli.cam.methods.sscam import noise
from campp_cli.errors import UsageError

nn = torch.nn


class Smooth(nn.Module):
    """Convolutions, then a head with curvature (1x1 convolution, softplus, average pool, linear): its
    gradients vary over positions and its Hessian is not zero, so no two methods collapse into one."""

    def __init__(self, seed: int, classes: int = 6):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(12, 16, 1), nn.Softplus(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(16, classes))
        self.double().eval()

    def forward(self, x):
        return self.head(self.features(x))


LAYER = "features.3"


def _split(model: Smooth, x: torch.Tensor):
    """A (K, h, w) of each image, and the head as a function of one image's A (its logits), by hand."""
    with torch.no_grad():
        acts = model.features(x)
    return [a.numpy() for a in acts], (lambda a: model.head(a)[0])


def _images(seed: int, n: int = 2, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _grad(head, A: np.ndarray, c: int) -> np.ndarray:
    a = torch.tensor(A)[None].requires_grad_(True)
    (g,) = torch.autograd.grad(head(a)[c], a)
    return g[0].numpy()


# --------------------------------------------------------------------------- one pass


@pytest.mark.parametrize("seed", range(3))
def test_methods_of_the_shared_pass_match_their_definitions(seed):
    model = Smooth(seed)
    x = _images(seed)
    expl = explain(model, LAYER, x, classes=[-1, 2], methods="eigengradcam,kpcacam,shapleycam,finercam")
    acts, head = _split(model, x)
    for i, A in enumerate(acts):
        c = int(expl.classes[i])
        g = _grad(head, A, c)
        np.testing.assert_allclose(expl.maps["eigengradcam"][i], eigengradcam_map(A, g), atol=1e-10)
        np.testing.assert_allclose(expl.maps["kpcacam"][i], kpcacam_map(A), atol=1e-10)
        np.testing.assert_allclose(expl.maps["shapleycam"][i], shapleycam_map(A, lambda a, c=c: head(a)[c]), atol=1e-10)
        np.testing.assert_allclose(expl.maps["finercam"][i], finercam_map(A, head, c), atol=1e-10)
    # The methods really differ here (a head with curvature, classes with rivals).
    gradcam = explain(model, LAYER, x, classes=[-1, 2], methods="gradcam").maps["gradcam"]
    for name in ("shapleycam", "finercam"):
        assert np.abs(expl.maps[name] - gradcam).max() > 1e-3, name


def test_kpcacam_is_scikit_learns_kernel_pca_up_to_its_sign():
    model, x = Smooth(0), _images(0, 1)
    A = _split(model, x)[0][0]
    ours = explain(model, LAYER, x, methods="kpcacam").maps["kpcacam"][0]
    theirs = kpcacam_sklearn(A)
    assert min(np.abs(ours - normalised(sign * theirs)).max() for sign in (1.0, -1.0)) < 1e-8


@pytest.mark.parametrize("order", ["eigencam,kpcacam,eigengradcam", "kpcacam,eigengradcam,eigencam"])
def test_the_principal_component_methods_of_one_pass_share_only_what_is_the_same(order):
    """Eigen-CAM and KPCA-CAM of one pass share the centred activations and their Gram matrix (computed once:
    the same tensors), EigenGrad-CAM's g * A does not: each map equals the method's map alone, whichever runs
    first, on a grid smaller than the channels (one Gram for both) and larger (Eigen-CAM's is K x K)."""
    from campp_cli.cam.methods import MethodInput
    from campp_cli.cam.methods.eigencam import centred_positions

    for model, x in ((Smooth(1), _images(1, 2, size=6)), (Smooth(2), _images(2, 2))):  # 3 x 3 and 8 x 8, 12 channels
        together = explain(model, LAYER, x, methods=order).maps
        for name in order.split(","):
            alone = explain(model, LAYER, x, methods=name).maps[name]
            np.testing.assert_array_equal(together[name], alone, err_msg=name)
    inp = MethodInput(acts=torch.rand(2, 4, 3, 3, dtype=torch.float64))
    m, gram = centred_positions(inp.acts, inp.shared, gram=True)
    again, gram_again = centred_positions(inp.acts, inp.shared, gram=True)
    assert again is m and gram_again is gram and centred_positions(inp.acts, inp.shared)[1] is None
    torch.testing.assert_close(m.sum(dim=1), torch.zeros(2, 4, dtype=torch.float64))
    torch.testing.assert_close(gram, m @ m.transpose(1, 2))


@pytest.mark.parametrize("size", [1, 2, 49, 196, 300, 1100])
def test_the_top_eigenpair_is_numpys_largest(size, monkeypatch):
    """Eigen-CAM's and KPCA-CAM's one eigenpair (LAPACK's dsyevr, from 257 on Lanczos iterations, on the
    CPU) against NumPy's full eigh, on a batch; the full-decomposition path (differentiable maps) the same;
    a non-finite Gram never reaches LAPACK."""
    import scipy.linalg
    import scipy.sparse.linalg

    from campp_cli.cam.methods import eigencam
    from campp_cli.cam.methods.eigencam import top_eigenpair

    lanczos = []
    real = scipy.sparse.linalg.eigsh
    monkeypatch.setattr(scipy.sparse.linalg, "eigsh", lambda *a, **k: lanczos.append(1) or real(*a, **k))

    gen = torch.Generator().manual_seed(size)
    m = torch.randn(3, size, size + 5, dtype=torch.float64, generator=gen)
    gram = m @ m.transpose(1, 2)
    values, vectors = np.linalg.eigh(gram.numpy())
    for found in (top_eigenpair(gram), top_eigenpair(gram.clone().requires_grad_(True))):
        value, vector = (t.detach().numpy() for t in found)
        np.testing.assert_allclose(value, values[:, -1], rtol=1e-12)
        for got, want in zip(vector, vectors[..., -1]):
            assert min(np.abs(got - s * want).max() for s in (1.0, -1.0)) < 1e-10
    assert len(lanczos) == (3 if size >= eigencam.LANCZOS_FROM else 0)  # three matrices, once each
    torch.testing.assert_close(top_eigenpair(gram)[1], top_eigenpair(gram)[1], rtol=0, atol=0)  # the same again
    monkeypatch.setattr(scipy.sparse.linalg, "eigsh", lambda *a, **k: pytest.fail("ARPACK got a non-finite matrix"))
    monkeypatch.setattr(scipy.linalg, "eigh", lambda *a, **k: pytest.fail("LAPACK got a non-finite matrix"))
    gram[1, 0, 0] = float("nan")
    try:
        top_eigenpair(gram)
    except RuntimeError:  # torch's own error for it, if it raises one
        pass


def test_finercam_settings_change_its_target_only():
    model, x = Smooth(1), _images(1)
    acts, head = _split(model, x)
    plain = explain(model, LAYER, x, methods="finercam,gradcam", finer_alpha=0.0).maps
    np.testing.assert_allclose(plain["finercam"], plain["gradcam"], atol=1e-12)  # alpha = 0: Grad-CAM
    two = explain(model, LAYER, x, methods="finercam", finer_alpha=0.5, finer_rivals=2)
    for i, A in enumerate(acts):
        c = int(two.classes[i])
        np.testing.assert_allclose(two.maps["finercam"][i], finercam_map(A, head, c, 0.5, (1, 2)), atol=1e-10)


def test_top_k_targets_each_get_their_own_shapley_and_finer_maps():
    model, x = Smooth(2), _images(2)
    ranked = explain_top(model, LAYER, x, 2, methods="shapleycam,finercam")
    acts, head = _split(model, x)
    for t, expl in enumerate(ranked):
        for i, A in enumerate(acts):
            c = int(expl.classes[i])
            assert c == int(np.argsort(-expl.logits[i], kind="stable")[t])
            np.testing.assert_allclose(expl.maps["shapleycam"][i], shapleycam_map(A, lambda a, c=c: head(a)[c]),
                                       atol=1e-10)
            np.testing.assert_allclose(expl.maps["finercam"][i], finercam_map(A, head, c), atol=1e-10)


def test_shapleycam_is_gradcam_where_the_head_has_no_curvature():
    model = TinyVGG(0)  # ReLU, max-pooling and linear layers after the layer: H A = 0
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    maps = explain(model, TARGET, x, methods="shapleycam,gradcam").maps
    np.testing.assert_allclose(maps["shapleycam"], maps["gradcam"], atol=1e-6)
    prob = explain(model, TARGET, x, methods="shapleycam,gradcam", score="probability").maps
    assert np.abs(prob["shapleycam"] - prob["gradcam"]).max() > 1e-3  # the softmax has curvature


class Curved(nn.Module):
    """A head after the layer that is piecewise linear or not, as asked: ``kind`` picks what follows A."""

    def __init__(self, kind: str):
        super().__init__()
        torch.manual_seed(1)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.norm = nn.BatchNorm2d(6)
        self.kind = kind
        self.fc = nn.Linear(6, 4)
        self.eval()

    def forward(self, x):
        a = self.features(x)
        if self.kind == "square":  # a product of two A-dependent factors (plus A: not homogeneous, where
            a = a + a * a           # H A = (degree - 1) g would give Grad-CAM's map again)
        elif self.kind == "divided":  # a division by something of A
            a = a / (1.0 + a.mean())
        elif self.kind in ("norm", "training norm"):
            a = self.norm(a)
        elif self.kind == "relu6":
            a = nn.functional.relu6(2.0 * a - 0.5)
        return self.fc(a.amax(dim=(2, 3)))


@pytest.mark.parametrize("kind,linear", [("relu6", True), ("norm", True), ("square", False), ("divided", False),
                                         ("training norm", False)])
def test_shapleycam_skips_its_second_backward_only_where_the_head_is_piecewise_linear(kind, linear, monkeypatch):
    """Where every operation after the layer is (piecewise) linear, H A = 0 and campp skips the second
    backward; its map is then the one the second backward gives, and elsewhere that backward runs."""
    import campp_cli.cam.explain as explaining

    model = Curved(kind)
    if kind == "training norm":
        model.norm.train()
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    features = "features.1"
    seen = []
    real = explaining._hessian_products
    monkeypatch.setattr(explaining, "_hessian_products", lambda *a: seen.append(1) or real(*a))
    ours = explain(copy.deepcopy(model), features, x, methods="shapleycam").maps["shapleycam"]
    assert bool(seen) is not linear
    monkeypatch.setattr(explaining, "piecewise_linear", lambda *a: False)  # the second backward, always
    forced = explain(copy.deepcopy(model), features, x, methods="shapleycam").maps["shapleycam"]
    np.testing.assert_allclose(ours, forced, atol=1e-6)
    if kind == "square":
        gradcam = explain(copy.deepcopy(model), features, x, methods="gradcam").maps["gradcam"]
        assert np.abs(ours - gradcam).max() > 1e-3  # the curvature is there, and ShapleyCAM shows it


# --------------------------------------------------------------------------- CAM


class GapLinear(nn.Module):
    def __init__(self, seed: int, scale: float = 1.0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(12, 16, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, 5)
        self.scale = scale
        self.eval()

    def forward(self, x):
        return self.scale * self.fc(self.features(x).mean(dim=(2, 3)))


@pytest.mark.parametrize("seed", range(2))
def test_cam_is_the_heads_class_weights(seed):
    model = GapLinear(seed)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    expl = explain(model, LAYER, x, classes=[-1, 1], methods="cam,gradcam")
    with torch.no_grad():
        acts = model.features(x).double().numpy()
    weight = model.fc.weight.detach().double().numpy()
    for i in range(2):
        np.testing.assert_allclose(expl.maps["cam"][i], cam_map(acts[i], weight, int(expl.classes[i])), atol=1e-6)
    np.testing.assert_allclose(expl.maps["cam"], expl.maps["gradcam"], atol=1e-6)  # g = W_c / hw


@pytest.mark.parametrize("seed", range(2))
def test_cam_is_torchcams_cam_up_to_its_normalisation(seed):
    """torchcam 0.5.0's CAM: the same sum of the fc weights times the channels; it min-max normalises that sum
    (no ReLU), where campp keeps its positive part over its maximum, as for every method."""
    from torchcam.methods import CAM as TorchcamCAM

    model = GapLinear(seed)
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(10 + seed))
    ours = explain(model, LAYER, x, methods="cam")
    with TorchcamCAM(model, LAYER, fc_layer="fc") as extractor:
        scores = model(x)
        (raw,) = extractor(ours.classes.tolist(), scores, normalized=False)
        (scaled,) = extractor(ours.classes.tolist(), scores)
    raw = raw.detach().double()
    positive = raw.clamp(min=0)
    np.testing.assert_allclose(ours.maps["cam"], (positive / positive.amax(dim=(1, 2), keepdim=True)).numpy(),
                               atol=1e-6)
    low, high = raw.amin(dim=(1, 2), keepdim=True), raw.amax(dim=(1, 2), keepdim=True)
    np.testing.assert_allclose(scaled.detach().numpy(), ((raw - low) / (high - low)).numpy(), atol=1e-5)


@pytest.mark.parametrize("model,layer", [(TinyVGG(0), TARGET), (GapLinear(0, scale=2.0), LAYER),
                                         (GapLinear(0), "features.1")])
def test_cam_is_refused_in_one_line_without_a_gap_linear_head(model, layer):
    """VGG's three-layer head; a pool and a linear layer whose logits are then scaled; an earlier layer."""
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with pytest.raises(UsageError, match="not a global average pool and one linear layer") as info:
        explain(model, layer, x, methods="cam")
    assert info.value.param == "methods" and "\n" not in str(info.value) and "gradcam" in str(info.value)


def test_all_leaves_cam_out_and_says_so(run_cli):
    assert "cam" not in parse_methods("all") and not get_method("cam").in_all
    every = [m for m in parse_methods("all")]
    assert parse_methods("all,cam") == (*every, "cam")  # "all" among names: every method at its place
    assert parse_methods("cam,all,gradcam") == ("cam", *every)
    with pytest.raises(UsageError) as info:  # a name beside "all" is still checked
        parse_methods("all,bogus")
    assert info.value.param == "methods" and "bogus" in str(info.value)
    code, out, _ = run_cli("methods")
    assert code == 0
    assert [line for line in out.splitlines() if line.startswith("cam ")][0].count("not in all") == 1


def test_cam_through_the_cli_refuses_a_layer_before_the_pool(run_cli, tmp_path):
    torch.manual_seed(3)
    weights = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().eval().state_dict(), weights)
    common = ("classify", "--arch", "resnet18", "--weights", weights, "-f", "images/coffee.png", "-o", "c.jpeg",
              "--methods", "cam,gradcam", "--output-dir", tmp_path / "o", "--save-maps")
    code, _, err = run_cli(*common, "--layer", "layer3")
    error = err.strip().splitlines()[-1]
    assert code == 2 and err.count("error") == 1 and error.startswith("campp: error: --methods: cam: "), err
    code, _, err = run_cli(*common, "--layer", "layer4")
    assert code == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "o" / "c_cam.npy"), np.load(tmp_path / "o" / "c_gradcam.npy"),
                               atol=1e-5)


# --------------------------------------------------------------------------- perturbation methods


def _prob(model: nn.Module):
    def prob(images: np.ndarray, c: int) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(model(torch.from_numpy(images)), dim=1)[:, c].numpy()
    return prob


@pytest.mark.parametrize("seed", range(2))
def test_ablationcam_matches_its_definition(seed):
    model, x = Smooth(seed), _images(seed)
    calls = []
    hook = model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        expl = explain(model, LAYER, x, methods="ablationcam", score_batch=5)
    finally:
        hook.remove()
    acts, head = _split(model, x)
    live = sum(int((np.abs(A).reshape(A.shape[0], -1).max(axis=1) > 0).sum()) for A in acts)
    assert sum(calls) == len(x) + len(x) + live  # the pass, y_c once per image, one per live channel
    assert max(calls) <= 5
    for i, A in enumerate(acts):
        c = int(expl.classes[i])
        np.testing.assert_allclose(expl.maps["ablationcam"][i],
                                   ablationcam_map(A, lambda a, c=c: head(torch.from_numpy(a)[None])[c].item(), c),
                                   atol=1e-10)


def test_ablationcam_skips_channels_that_are_zero_everywhere():
    model, x = Smooth(0), _images(0, 1)
    with torch.no_grad():
        model.features[2].bias[:5] = -1e3  # five channels dead after the ReLU
    acts, head = _split(model, x)
    assert (np.abs(acts[0][:5]).max() == 0) and acts[0][5:].reshape(7, -1).max(axis=1).min() > 0
    calls = []
    hook = model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        expl = explain(model, LAYER, x, methods="ablationcam")
    finally:
        hook.remove()
    assert sum(calls) == 1 + 1 + 7
    c = int(expl.classes[0])
    np.testing.assert_allclose(expl.maps["ablationcam"][0],
                               ablationcam_map(acts[0], lambda a, c=c: head(torch.from_numpy(a)[None])[c].item(), c),
                               atol=1e-10)


@pytest.mark.parametrize("seed", range(2))
def test_sscam_and_iscam_match_their_definitions(seed):
    model, x = Smooth(seed), _images(seed)
    expl = explain(model, LAYER, x, methods="sscam,iscam", image=x, sscam_samples=3, sscam_sigma=0.5,
                   sscam_seed=seed, iscam_steps=4, score_batch=7)
    acts, _ = _split(model, x)
    deltas = noise(3, (16, 16), 0.5, seed).double().numpy()  # the noise is an input of the definition
    prob = _prob(model)
    for i, A in enumerate(acts):
        c = int(expl.classes[i])
        rgb01 = x[i].numpy()
        np.testing.assert_allclose(expl.maps["sscam"][i], sscam_map(A, rgb01, lambda b, c=c: prob(b, c), deltas),
                                   atol=1e-10)
        np.testing.assert_allclose(expl.maps["iscam"][i], iscam_map(A, rgb01, lambda b, c=c: prob(b, c), 4), atol=1e-10)


def test_sscam_noise_is_seeded_and_batch_invariant():
    model, x = Smooth(3), _images(3, 3)
    settings = dict(methods="sscam", sscam_samples=4, sscam_sigma=1.0)
    together = explain(model, LAYER, x, image=x, **settings).maps["sscam"]
    alone = np.concatenate([explain(model, LAYER, x[i:i + 1], image=x[i:i + 1], **settings).maps["sscam"]
                            for i in range(3)])
    np.testing.assert_allclose(together, alone, atol=1e-12)
    other = explain(model, LAYER, x, image=x, sscam_seed=1, **settings).maps["sscam"]
    assert np.abs(other - together).max() > 1e-6  # the seed is the noise's


def test_sigma_zero_sscam_and_one_step_iscam_are_scorecam():
    model, x = Smooth(4), _images(4)
    maps = explain(model, LAYER, x, methods="scorecam,sscam,iscam", image=x, sscam_samples=2, sscam_sigma=0.0,
                   iscam_steps=1).maps
    np.testing.assert_allclose(maps["sscam"], maps["scorecam"], atol=1e-12)
    np.testing.assert_allclose(maps["iscam"], maps["scorecam"], atol=1e-12)


# --------------------------------------------------------------------------- peers


def _pgc(cam, x, **call):
    """A pytorch-grad-cam object's map of x, its hooks released."""
    try:
        return cam(input_tensor=x, **call)[0]
    finally:
        holder = cam.base_cam if hasattr(cam, "base_cam") else cam
        holder.activations_and_grads.gradients = []
        holder.activations_and_grads.activations = []
        holder.activations_and_grads.release()


@pytest.mark.parametrize("seed", range(2))
def test_matches_pytorch_grad_cam(seed):
    from pytorch_grad_cam import KPCA_CAM, AblationCAM, EigenGradCAM, FinerCAM, GradCAM, ShapleyCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = Smooth(seed).float()
    x = _images(seed, 1, 32).float()
    expl = explain(copy.deepcopy(model), LAYER, x, methods="eigengradcam,kpcacam,shapleycam,finercam,ablationcam",
                   image=x)
    c = int(expl.classes[0])
    layer = model.features[3]
    target = [ClassifierOutputTarget(c)]
    size = (32, 32)
    same = {
        "shapleycam": _pgc(ShapleyCAM(model, [layer]), x, targets=target),
        "ablationcam": _pgc(AblationCAM(model, [layer], batch_size=8), x, targets=target),
        "finercam": _pgc(FinerCAM(model, [layer], base_method=GradCAM), x, alpha=1.0, target_idx=c),
    }
    for name, theirs in same.items():
        np.testing.assert_allclose(_same_normalisation(expl.maps[name][0], size), theirs, atol=2e-4, err_msg=name)
    for name, klass in (("eigengradcam", EigenGradCAM), ("kpcacam", KPCA_CAM)):
        theirs = _pgc(klass(model, [layer]), x, targets=target)
        ours = _same_normalisation(expl.maps[name][0], size)
        # campp's sign or its mirror: where pytorch-grad-cam's sign is the other one, its relu keeps the
        # other lobe, which campp's map of the opposite sign shows
        assert np.abs(ours - theirs).max() < 2e-4 or _flip_matches(expl, name, theirs, model, x, size), name


def _flip_matches(expl, name, theirs, model, x, size) -> bool:
    """Whether pytorch-grad-cam's map is campp's combination with the opposite sign."""
    from campp_cli.cam.methods.eigencam import projection as eigen
    from campp_cli.cam.methods.kpcacam import projection as kernel
    from campp_cli.cam.taps import FeatureTap

    with FeatureTap(model, LAYER) as tap:
        logits = model(x)
        acts = tap.activation
    (g,) = torch.autograd.grad(logits[0, int(expl.classes[0])], acts)
    combination = eigen(g.double() * acts.double()) if name == "eigengradcam" else kernel(acts.double())
    flipped = torch.relu(-combination)[0].detach().numpy()
    flipped = flipped / max(flipped.max(), 1e-300)
    return np.abs(_same_normalisation(flipped, size) - theirs).max() < 2e-4


def _torchcam(klass, model, x, cls, **kwargs):
    with klass(model, TARGET, **kwargs) as extractor:
        return extractor(cls, model(x))[0][0].detach().numpy()


def _softmax_of_gains(model, x, cls, masks_of_sample, samples: int) -> np.ndarray:
    """torchcam's score methods: the channel weights are a softmax over K of the mean over samples of
    (logit of x times the sample's mask) minus (logit of x); masks_of_sample(i) -> (K, S, S)."""
    with torch.no_grad():
        base = float(model(x)[0, cls])
        gains = np.zeros(samples and masks_of_sample(0).shape[0])
        for i in range(samples):
            masks = torch.as_tensor(masks_of_sample(i), dtype=torch.float32)
            gains += (model(x * masks[:, None]).double()[:, cls].numpy() - base) / samples
    w = np.exp(gains - gains.max())
    return w / w.sum()


def _torchcam_masks(A: np.ndarray, size: int) -> np.ndarray:
    """torchcam's masks: each channel min-max normalised at the layer's resolution, then upsampled."""
    from reference import upsample_bilinear

    return np.stack([upsample_bilinear((a - a.min()) / (a.max() - a.min() + 1e-8), size) for a in A])


def test_torchcam_iscam_is_a_softmax_over_channels_of_integrated_logit_gains():
    """torchcam's ISCAM: the same cumulative masks as campp's IS-CAM, (sum_{j<=i} j/N) M_k, but scored by
    logit gains and a softmax over channels (as its Score-CAM), where campp averages probabilities."""
    from reference import normalised
    from torchcam.methods import ISCAM

    model = TinyVGG(5, scale=10.0)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    cls = int(torch.argmax(model(x)))
    theirs = _torchcam(ISCAM, model, x, cls, batch_size=8, num_samples=4)
    with torch.no_grad():
        A = model.features[:7](x)[0].numpy().astype(np.float64)
    masks = _torchcam_masks(A, 32)
    factors = np.cumsum(np.arange(1, 5) / 4)
    w = _softmax_of_gains(model, x, cls, lambda i: factors[i] * masks, 4)
    expected = normalised(np.tensordot(w, A, axes=1))
    np.testing.assert_allclose(theirs, (expected - expected.min()) / (expected.max() - expected.min() + 1e-8),
                               atol=1e-4)


def test_torchcam_sscam_adds_independent_noise_per_channel_and_takes_a_softmax_of_logit_gains():
    """torchcam's SSCAM: N(0, std^2) noise drawn per channel on its masks (campp draws one set of samples
    for every channel), scored by logit gains and a softmax over channels."""
    from reference import normalised
    from torchcam.methods import SSCAM

    model = TinyVGG(6, scale=10.0)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    cls = int(torch.argmax(model(x)))
    torch.manual_seed(123)
    theirs = _torchcam(SSCAM, model, x, cls, batch_size=8, num_samples=3, std=0.3)
    with torch.no_grad():
        A = model.features[:7](x)[0].numpy().astype(np.float64)
    masks = _torchcam_masks(A, 32)
    torch.manual_seed(123)
    draws = [torch.distributions.normal.Normal(0, 0.3).sample((1, *masks.shape))[0].numpy() for _ in range(3)]
    w = _softmax_of_gains(model, x, cls, lambda i: masks + draws[i], 3)
    expected = normalised(np.tensordot(w, A, axes=1))
    np.testing.assert_allclose(theirs, (expected - expected.min()) / (expected.max() - expected.min() + 1e-8),
                               atol=1e-4)


# --------------------------------------------------------------------------- smoothing


@pytest.mark.parametrize("seed", range(2))
def test_eigen_smooth_is_the_principal_component_of_each_methods_terms(seed):
    from reference import eigencam_combination

    model, x = Smooth(seed), _images(seed)
    expl = explain(model, LAYER, x, methods="gradcam,layercam,hirescam,eigencam,kpcacam", eigen_smooth=True)
    plain = explain(model, LAYER, x, methods="eigencam,kpcacam").maps
    acts, head = _split(model, x)
    for i, A in enumerate(acts):
        g = _grad(head, A, int(expl.classes[i]))
        weights = g.reshape(g.shape[0], -1).mean(axis=1)
        for name, terms in (("gradcam", weights[:, None, None] * A), ("layercam", np.maximum(g, 0) * A),
                            ("hirescam", g * A)):
            np.testing.assert_allclose(expl.maps[name][i], normalised(eigencam_combination(terms)), atol=1e-10,
                                       err_msg=name)
    for name in ("eigencam", "kpcacam"):  # principal components already: unchanged
        np.testing.assert_allclose(expl.maps[name], plain[name], atol=1e-12)


def test_eigen_smooth_is_pytorch_grad_cams_up_to_its_sign():
    """pytorch-grad-cam projects the weighted activations on the SVD's first axis with whatever sign the SVD
    returns; campp's map is that projection or its mirror image."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from reference import eigencam_combination

    model = Smooth(1)
    x = _images(1, 1, 32)
    ours = explain(model, LAYER, x, methods="gradcam", eigen_smooth=True)
    c = int(ours.classes[0])
    peer = copy.deepcopy(model).float()
    theirs = _pgc(GradCAM(peer, [peer.features[3]]), x.float(), targets=[ClassifierOutputTarget(c)],
                  eigen_smooth=True)
    (A,), head = _split(model, x)
    g = _grad(head, A, c)
    p = eigencam_combination(g.reshape(g.shape[0], -1).mean(axis=1)[:, None, None] * A)
    np.testing.assert_allclose(ours.maps["gradcam"][0], normalised(p), atol=1e-10)
    errors = [np.abs(_same_normalisation(normalised(sign * p), (32, 32)) - theirs).max() for sign in (1.0, -1.0)]
    assert min(errors) < 2e-4, errors


def _by_hand(model, x, image, copies, c, method="gradcam"):
    """The smoothed map from each copy's own map (explained for the image's class c), made one by one."""
    parts = []
    for copy_, mirrored in copies:
        m = explain(model, LAYER, copy_, classes=c, methods=method, image=copy_).maps[method]
        parts.append(m[..., ::-1] if mirrored else m)
    mean = np.mean(parts, axis=0)
    return mean / mean.max(axis=(1, 2), keepdims=True)


def test_aug_smooth_averages_the_mirrored_and_brightened_photos_maps():
    model, x = Smooth(2), _images(2, 1, 16)
    expl = explain(model, LAYER, x, methods="gradcam,scorecam", image=x, aug_smooth=True)
    c = int(expl.classes[0])
    assert c == int(torch.argmax(model(x)))  # the photo's own class, not each copy's
    copies = [(factor * (torch.flip(x, dims=(-1,)) if mirrored else x), mirrored)
              for mirrored in (False, True) for factor in (0.9, 1.0, 1.1)]
    for method in ("gradcam", "scorecam"):
        np.testing.assert_allclose(expl.maps[method], _by_hand(model, x, x, copies, c, method), atol=1e-10)


def test_noise_samples_average_noisy_copies_whatever_the_batch():
    model, x = Smooth(3), _images(3, 2, 16)
    expl = explain(model, LAYER, x, methods="gradcam", image=x, noise_samples=3, noise_sigma=0.2)
    noise = torch.randn((3, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.float32).double()
    for i in range(2):
        one = x[i:i + 1]
        spread = float(one.max() - one.min()) * 0.2
        copies = [(one + spread * noise[j], False) for j in range(3)]
        np.testing.assert_allclose(expl.maps["gradcam"][i:i + 1],
                                   _by_hand(model, one, one, copies, int(expl.classes[i])), atol=1e-10)
    assert np.abs(expl.maps["gradcam"] - explain(model, LAYER, x, methods="gradcam").maps["gradcam"]).max() > 1e-3


def test_smoothing_settings_are_checked_and_reach_the_cli(run_cli):
    with pytest.raises(UsageError, match="give true or false") as bad:
        explain(Smooth(0), LAYER, _images(0, 1), methods="gradcam", eigen_smooth="yes")
    assert bad.value.param == "eigen_smooth"
    with pytest.raises(UsageError, match="not differentiable"):
        explain(Smooth(0).requires_grad_(True), LAYER, _images(0, 1), methods="gradcam", aug_smooth=True,
                differentiable=True)
    code, out, _ = run_cli("classify", "--help")
    assert code == 0
    for flag in ("--eigen-smooth", "--aug-smooth", "--noise-samples", "--noise-sigma"):
        assert flag in out, flag


def test_smoothed_runs_say_so_and_give_the_librarys_maps(run_cli, tmp_path):
    from campp_cli.cam.methods import settings_in_words

    assert settings_in_words("gradcam", {"eigen_smooth": True, "aug_smooth": True, "noise_samples": 8,
                                         "noise_sigma": 0.1}) == [("smoothed by", "eigen + aug + noise 8 x 0.1")]
    assert settings_in_words("gradcam", {"eigen_smooth": False, "aug_smooth": False, "noise_samples": 0}) == []
    torch.manual_seed(5)
    model = torchvision.models.resnet18().eval()
    weights = tmp_path / "r18.pth"
    torch.save(model.state_dict(), weights)
    code, out, err = run_cli("classify", "--arch", "resnet18", "--weights", weights, "-f", "images/coffee.png",
                             "-o", "c.jpeg", "--output-dir", tmp_path / "o", "--save-maps", "--aug-smooth",
                             "--noise-samples", "2", "--methods", "gradcam")
    assert code == 0, err
    assert "methods gradcam, smoothed by aug + noise 2 x 0.15)" in out
    from campp_cli import load_classifier
    from campp_cli.draw import geometry
    from campp_cli.io import decode
    from campp_cli.run.stages import to_batch

    clf = load_classifier("resnet18", weights=str(weights))
    rgb = to_batch([geometry.center_square(decode.load_rgb("images/coffee.png"))], clf)
    ours = explain(clf.module, clf.layer, clf.preprocessing(rgb), methods="gradcam", image=rgb,
                   preprocess=clf.preprocessing, aug_smooth=True, noise_samples=2)
    np.testing.assert_allclose(np.load(tmp_path / "o" / "c_gradcam.npy"), ours.maps["gradcam"][0], atol=1e-5)


# --------------------------------------------------------------------------- what an attack found


@pytest.mark.parametrize("score", ["logit", "log_probability"])
def test_ablationcam_keeps_a_drop_a_drop_when_the_score_is_negative(score):
    """Dividing by y_c < 0 (a class below the top, a log-probability) would flip every weight: campp divides
    by |y_c|, so the map is the same as the drop-weighted one."""
    model, x = Smooth(0), _images(0, 1)
    with torch.no_grad():
        logits = model(x)[0]
    c = int(torch.argmin(logits)) if score == "logit" else int(torch.argmax(logits))
    scores = torch.log_softmax(logits, 0) if score == "log_probability" else logits
    assert float(scores[c]) < 0
    expl = explain(model, LAYER, x, classes=c, methods="ablationcam", score=score)
    acts, head = _split(model, x)

    def y(a):
        with torch.no_grad():
            out = head(torch.from_numpy(a)[None])
        return float((torch.log_softmax(out, 0) if score == "log_probability" else out)[c])

    np.testing.assert_allclose(expl.maps["ablationcam"][0], ablationcam_map(acts[0], y, c), atol=1e-10)
    assert expl.maps["ablationcam"][0].max() == 1.0


class InPlaceAfter(nn.Module):
    """A float64 model whose layer is followed by an in-place ReLU, as ResNet's blocks are."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1),
                                      nn.ReLU(inplace=True))
        self.fc = nn.Linear(8, 4)
        self.double().eval()

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


def test_ablations_leave_the_activations_as_they_were_for_every_other_method():
    model, x = InPlaceAfter(), _images(1, 2)
    alone = explain(model, "features.1", x, methods="gradcam,eigencam").maps
    together = explain(model, "features.1", x, methods="ablationcam,gradcam,eigencam").maps
    for name in alone:
        np.testing.assert_array_equal(together[name], alone[name])


def test_finercam_of_a_one_output_model_is_gradcam():
    model = GapLinear(0)
    model.fc = nn.Linear(16, 1)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    maps = explain(model, LAYER, x, methods="finercam,gradcam", activation="sigmoid").maps
    np.testing.assert_allclose(maps["finercam"], maps["gradcam"], atol=1e-12)


def test_smoothing_keeps_to_bounded_batches_and_an_eta_per_photo():
    model, x = Smooth(2), _images(2, 3)
    sizes, planned = [], []
    hook = model.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[0]))

    class Progress:
        def __call__(self, n):
            pass

        def planned(self, passes, images):
            planned.append(images)

    try:
        explain(model, LAYER, x, methods="scorecam", image=x, aug_smooth=True, noise_samples=4, progress=Progress())
    finally:
        hook.remove()
    assert sum(planned) == pytest.approx(3)  # the three photos, not their 24 copies
    assert max(sizes) <= 32 and sum(sizes[:1]) == 3  # one pass of the photos for their classes, then copies


def test_differentiable_cam_carries_gradients_to_the_head():
    model = GapLinear(1).requires_grad_(True)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    maps = explain(model, LAYER, x, methods="cam", differentiable=True).maps
    maps["cam"].sum().backward()
    assert model.fc.weight.grad is not None and float(model.fc.weight.grad.abs().sum()) > 0


def test_a_smoothed_run_explains_x_when_the_image_comes_without_its_preprocess():
    """An image without preprocess is what the perturbation methods mask; the model's copies are still
    made of x (they were made of the image, so the maps explained pixels the model was never given)."""
    model = Smooth(9)
    image = _images(9, 2, 16)
    x = (image - 0.45) / 0.25
    plain = explain(model, LAYER, x, methods="gradcam", noise_samples=2, aug_smooth=True)
    given = explain(model, LAYER, x, methods="gradcam,scorecam", image=image, noise_samples=2, aug_smooth=True)
    np.testing.assert_array_equal(given.maps["gradcam"], plain.maps["gradcam"])
    np.testing.assert_array_equal(given.classes, plain.classes)
    assert np.isfinite(given.maps["scorecam"]).all() and given.maps["scorecam"].max() == 1
