"""Every method at once: ``python benchmarks/methods.py [--repeats 15] [--only PART]``; prints JSON.

1. one-pass: VGG16 at 224 (random weights: speed does not depend on their values), one
   image: campp's two-map pass against campp computing every gradient method
   (and Eigen-CAM) from the same pass, against pytorch-grad-cam and torchcam
   computing the same list the way their documentation shows (one object per
   method, each with its own forward and backward pass; torchcam's five:
   GradCAM, GradCAMpp, XGradCAM, LayerCAM, FinerCAM).  Interleaved, medians.
2. cam: CAM on ResNet-50 (random weights), one image, against torchcam's CAM,
   campp's forward pass alone and campp's two-map pass.  Interleaved, medians.
3. scorecam: Score-CAM against pytorch-grad-cam's and torchcam's ScoreCAM at the same batch size, interleaved:
   on VGG16 (random weights) and on EfficientNet-Lite0 with its real ImageNet
   weights and the photos in images/ (real weights leave many channels
   constant, which campp skips without a pass).
4. perturbation: the other perturbation methods against the peers that have them, on
   EfficientNet-Lite0 (real weights) and one photo, at the same batch size, interleaved
   (--perturbation-repeats rounds of campp's method then the peer's; medians):
   Ablation-CAM against pytorch-grad-cam's AblationCAM, SS-CAM and IS-CAM
   against torchcam's SSCAM and ISCAM with the same number of samples.
5. smoothing: VGG16 (random weights), one image, Grad-CAM and Grad-CAM++:
   each of --eigen-smooth, --aug-smooth and --noise-samples 8 against the plain
   pass, pytorch-grad-cam's eigen_smooth and aug_smooth against campp's, and
   torchcam's SmoothGradCAMpp (8 samples) against campp's Grad-CAM++ with
   --noise-samples 8.  Interleaved, medians.
6. fullgrad: FullGrad on VGG16 and ResNet-50 (random weights), one image: campp's FullGrad
   alone and with Grad-CAM and Grad-CAM++ from the same pass, against its floor
   (one forward and one backward of the class score to the input, plain torch),
   campp's two-map pass and pytorch-grad-cam's FullGrad.
7. fusion: several layers (--layer a,b,c) on VGG16 (random weights), one image: Grad-CAM
   and Grad-CAM++ at features.29 against the same two fused over features.15,
   features.22 and features.29, against pytorch-grad-cam's GradCAM and
   GradCAMPlusPlus with those three target layers; LayerCAM over the three
   against torchcam's LayerCAM with its fuse_cams.
8. grids: the principal-component maps' cost at larger grids (random activations of
   256 channels, one image): Eigen-CAM and KPCA-CAM from campp's maps, against
   the full torch.linalg.eigh of the same Gram matrix that campp used before it
   computed only the top eigenpair, and pytorch-grad-cam's KPCA_CAM projection
   (scikit-learn's KernelPCA) on the same activations.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from campp_cli.cam.explain import explain
from campp_cli.cam.methods import get_method, parse_methods
from campp_cli.draw import geometry
from campp_cli.io import decode
from campp_cli.models.loading import load_classifier, prepare_module
from campp_cli.models.spec import get_arch
from campp_cli.run.stages import to_batch

REPO = Path(__file__).resolve().parents[1]
#: Every method of "all" that the shared pass serves (no extra forward passes; FullGrad, whose backward goes
#: on through the whole model, has its own part).
ONE_PASS = [m for m in parse_methods("all") if get_method(m).needs != "forward passes"
            and "biases" not in get_method(m).uses]
#: Those of them that need no more of the head than the two-map pass does: ShapleyCAM's H A is a second
#: backward of the head, Finer-CAM's target one more gradient column.
FIRST_ORDER = [m for m in ONE_PASS if m not in ("shapleycam", "finercam")]


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _medians(fns: dict, repeats: int) -> dict:
    """Each function's median time over ``repeats`` interleaved rounds, after one warm-up call of each."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


@contextlib.contextmanager
def _quiet():
    """pytorch-grad-cam's ScoreCAM draws tqdm bars on stderr."""
    with contextlib.redirect_stderr(io.StringIO()):
        yield


def one_pass_contenders(model, prepared, layer: str, x: torch.Tensor) -> dict:
    module = dict(model.named_modules())[layer]
    found = {
        "campp_two_maps": lambda: explain(prepared, layer, x),
        "campp_every_one_pass_method": lambda: explain(prepared, layer, x, methods=ONE_PASS),
        "campp_first_order_methods": lambda: explain(prepared, layer, x, methods=FIRST_ORDER),
    }
    from pytorch_grad_cam import (
        KPCA_CAM,
        EigenCAM,
        EigenGradCAM,
        FinerCAM,
        GradCAM,
        GradCAMElementWise,
        GradCAMPlusPlus,
        HiResCAM,
        LayerCAM,
        ShapleyCAM,
        XGradCAM,
    )

    def pgc():
        for klass in (GradCAM, GradCAMPlusPlus, XGradCAM, HiResCAM, GradCAMElementWise, LayerCAM, EigenCAM,
                      EigenGradCAM, KPCA_CAM, ShapleyCAM):
            with klass(model=model, target_layers=[module]) as cam:
                cam(input_tensor=x, targets=None)
        with FinerCAM(model=model, target_layers=[module]) as cam:
            cam(input_tensor=x)

    from torchcam.methods import FinerCAM as TFinerCAM
    from torchcam.methods import GradCAM as TGradCAM
    from torchcam.methods import GradCAMpp
    from torchcam.methods import LayerCAM as TLayerCAM
    from torchcam.methods import XGradCAM as TXGradCAM

    def torchcam():
        for klass in (TGradCAM, GradCAMpp, TXGradCAM, TLayerCAM, TFinerCAM):
            with klass(model, layer) as extractor:
                scores = model(x)
                extractor(scores.argmax(1).tolist(), scores)

    def campp_torchcam_list():
        explain(prepared, layer, x, methods="gradcam,gradcampp,xgradcam,layercam,finercam")

    found["pytorch_grad_cam_same_methods"] = pgc
    found["torchcam_5_methods"] = torchcam
    found["campp_torchcam_5_methods"] = campp_torchcam_list
    return found


def bench_one_pass(repeats: int) -> dict:
    spec = get_arch("vgg16")
    torch.manual_seed(0)
    model = spec.build().eval()
    prepared = prepare_module(copy.deepcopy(model), "cpu")
    x = spec.preprocessing(torch.rand(1, 3, 224, 224))
    fns = one_pass_contenders(model, prepared, "features.29", x)
    med = _medians(fns, repeats)
    return {
        "seconds_median": {k: round(v, 4) for k, v in med.items()},
        "every_method_vs_two_maps": round(med["campp_every_one_pass_method"] / med["campp_two_maps"], 3),
        "first_order_methods_vs_two_maps": round(med["campp_first_order_methods"] / med["campp_two_maps"], 3),
        "methods": ONE_PASS,
        "pytorch_grad_cam_same_methods_vs_campp": round(med["pytorch_grad_cam_same_methods"]
                                                        / med["campp_every_one_pass_method"], 2),
        "torchcam_same_5_vs_campp": round(med["torchcam_5_methods"] / med["campp_torchcam_5_methods"], 2),
    }


class _Tapped(torch.nn.Module):
    """EfficientNet-Lite with its final feature map behind an Identity pytorch-grad-cam can hook (the
    model-level ReLU6 it would otherwise hook runs twice per pass)."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.tap = torch.nn.Identity()

    def forward(self, x):
        h = self.tap(self.net.extract_features(x))
        return self.net._fc(torch.flatten(self.net._avg_pooling(h), 1))


def _pgc_scorecam(model, module, x, batch: int):
    from pytorch_grad_cam import ScoreCAM

    with _quiet(), ScoreCAM(model=model, target_layers=[module]) as cam:
        cam.batch_size = batch
        return cam(input_tensor=x, targets=None)


def _torchcam_scorecam(model, layer: str, x, batch: int):
    from torchcam.methods import ScoreCAM

    with _quiet(), ScoreCAM(model, layer, batch_size=batch) as extractor:
        with torch.no_grad():
            scores = model(x)
        return extractor(scores.argmax(1).tolist(), scores)


def bench_scorecam(repeats: int, batch: int) -> dict:
    out = {}
    # VGG16, random weights.
    spec = get_arch("vgg16")
    torch.manual_seed(0)
    model = spec.build().eval()
    prepared = prepare_module(copy.deepcopy(model), "cpu")
    rgb = torch.rand(1, 3, 224, 224)
    x = spec.preprocessing(rgb)
    passes = []
    campp_t, pgc_t, tc_t = [], [], []
    for _ in range(repeats):
        passes.clear()
        campp_t.append(_timed(lambda: explain(prepared, "features.29", x, methods=["scorecam"], image=rgb,
                                              preprocess=spec.preprocessing, score_batch=batch,
                                              progress=passes.append)))
        pgc_t.append(_timed(lambda: _pgc_scorecam(model, model.features[29], x, batch)))
        tc_t.append(_timed(lambda: _torchcam_scorecam(model, "features.29", x, batch)))
    fastest = min(statistics.median(pgc_t), statistics.median(tc_t))
    out["vgg16_random"] = {"campp_s": round(statistics.median(campp_t), 2), "campp_passes": sum(passes),
                           "pytorch_grad_cam_s": round(statistics.median(pgc_t), 2), "pytorch_grad_cam_passes": 512,
                           "torchcam_s": round(statistics.median(tc_t), 2), "torchcam_passes": 512,
                           "speedup_over_the_fastest_peer": round(fastest / statistics.median(campp_t), 2)}
    # EfficientNet-Lite0, real weights, the photos in images/.
    clf = load_classifier("efficientnet_lite0")
    plain = _Tapped(copy.deepcopy(clf.module).to(memory_format=torch.contiguous_format)).eval()
    rows = {}
    for path in sorted((REPO / "images").glob("*.*g")):
        square = geometry.center_square(decode.load_rgb(path))
        rgb = to_batch([square], clf)
        x = clf.preprocessing(rgb)
        passes.clear()
        c_t, p_t, t_t = [], [], []
        for _ in range(repeats):
            passes.clear()
            c_t.append(_timed(lambda x=x, rgb=rgb: explain(clf.module, clf.layer, x, methods=["scorecam"], image=rgb,
                                                           preprocess=clf.preprocessing, score_batch=batch,
                                                           progress=passes.append)))
            p_t.append(_timed(lambda x=x: _pgc_scorecam(plain, plain.tap, x, batch)))
            t_t.append(_timed(lambda x=x: _torchcam_scorecam(plain, "tap", x, batch)))
        fastest = min(statistics.median(p_t), statistics.median(t_t))
        rows[path.name] = {"campp_s": round(statistics.median(c_t), 2), "campp_passes": sum(passes),
                           "pytorch_grad_cam_s": round(statistics.median(p_t), 2), "pytorch_grad_cam_passes": 1280,
                           "torchcam_s": round(statistics.median(t_t), 2), "torchcam_passes": 1280,
                           "speedup_over_the_fastest_peer": round(fastest / statistics.median(c_t), 2)}
    out["efficientnet_lite0_real"] = rows
    return out


def bench_perturbation(batch: int, samples: int, repeats: int, photo: str = "coffee.png") -> dict:
    """Ablation-CAM, SS-CAM and IS-CAM against the peers' same methods, interleaved: each round runs campp's
    method, then the peer's, ``repeats`` rounds (minutes a round); medians."""
    from pytorch_grad_cam import AblationCAM
    from torchcam.methods import ISCAM, SSCAM

    clf = load_classifier("efficientnet_lite0")
    plain = _Tapped(copy.deepcopy(clf.module).to(memory_format=torch.contiguous_format)).eval()
    square = geometry.center_square(decode.load_rgb(REPO / "images" / photo))
    rgb = to_batch([square], clf)
    x = clf.preprocessing(rgb)
    out = {"photo": photo, "batch": batch, "samples": samples, "repeats": repeats}

    def ablation():
        with _quiet(), AblationCAM(model=plain, target_layers=[plain.tap], batch_size=batch) as cam:
            cam(input_tensor=x, targets=None)

    def torchcam(klass, **kwargs):
        with klass(plain, "tap", batch_size=batch, **kwargs) as extractor:
            scores = plain(x)
            extractor(scores.argmax(1).tolist(), scores)

    settings = {"ablationcam": {}, "sscam": {"sscam_samples": samples}, "iscam": {"iscam_steps": samples}}
    peers = {"ablationcam": ("pytorch_grad_cam_AblationCAM", ablation, 1280),
             "sscam": ("torchcam_SSCAM", lambda: torchcam(SSCAM, num_samples=samples), 1280 * samples),
             "iscam": ("torchcam_ISCAM", lambda: torchcam(ISCAM, num_samples=samples), 1280 * samples)}
    for name, extra in settings.items():
        peer, fn, peer_passes = peers[name]
        passes, ours, theirs = [], [], []
        for _ in range(repeats):
            passes.clear()
            ours.append(_timed(lambda name=name, extra=extra, passes=passes: explain(
                clf.module, clf.layer, x, methods=[name], image=rgb, preprocess=clf.preprocessing,
                score_batch=batch, progress=passes.append, **extra)))
            theirs.append(_timed(fn))
        mine, peer_s = statistics.median(ours), statistics.median(theirs)
        out[name] = {"campp_s": round(mine, 2), "campp_passes": sum(passes), peer + "_s": round(peer_s, 2),
                     peer + "_passes": peer_passes, "speedup": round(peer_s / mine, 2)}
    return out


def bench_smoothing(repeats: int) -> dict:
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from torchcam.methods import SmoothGradCAMpp

    spec = get_arch("vgg16")
    torch.manual_seed(0)
    model = spec.build().eval()
    prepared = prepare_module(copy.deepcopy(model), "cpu")
    rgb = torch.rand(1, 3, 224, 224)
    x = spec.preprocessing(rgb)
    module = model.features[29]

    def ours(**kw):
        return lambda: explain(prepared, "features.29", x, image=rgb, preprocess=spec.preprocessing, **kw)

    def theirs(**kw):
        def run():
            for klass in (GradCAM, GradCAMPlusPlus):
                with _quiet(), klass(model=model, target_layers=[module]) as cam:
                    cam(input_tensor=x, targets=None, **kw)
        return run

    def smoothgradcampp():
        # torchcam's SmoothGradCAMpp: Grad-CAM++ alone, its 8 noisy copies one forward and backward each
        # (std 0.3 of the normalised input, its default; campp's noise is 0.15 of the image's range).
        with SmoothGradCAMpp(model, "features.29", num_samples=8) as extractor:
            scores = model(x)
            extractor(scores.argmax(1).tolist(), scores)

    fns = {"campp_plain": ours(), "campp_eigen_smooth": ours(eigen_smooth=True),
           "campp_aug_smooth": ours(aug_smooth=True), "campp_noise_8": ours(noise_samples=8),
           "campp_gradcampp_noise_8": ours(noise_samples=8, methods="gradcampp"),
           "pytorch_grad_cam_plain": theirs(), "pytorch_grad_cam_eigen_smooth": theirs(eigen_smooth=True),
           "pytorch_grad_cam_aug_smooth": theirs(aug_smooth=True), "torchcam_smoothgradcampp_8": smoothgradcampp}
    med = _medians(fns, repeats)
    return {"seconds_median": {k: round(v, 4) for k, v in med.items()},
            "vs_plain": {k: round(med[k] / med["campp_plain"], 2) for k in fns if k.startswith("campp_")},
            "pytorch_grad_cam_vs_campp": {k: round(med["pytorch_grad_cam_" + k] / med["campp_" + k], 2)
                                          for k in ("plain", "eigen_smooth", "aug_smooth")},
            "torchcam_smoothgradcampp_vs_campp_gradcampp_noise_8": round(
                med["torchcam_smoothgradcampp_8"] / med["campp_gradcampp_noise_8"], 2)}


def bench_cam(repeats: int) -> dict:
    """CAM on ResNet-50 (random weights), one image: campp's CAM (a forward pass, no backward) against
    torchcam's CAM, campp's forward pass alone (its floor) and campp's two-map pass."""
    from torchcam.methods import CAM

    spec = get_arch("resnet50")
    torch.manual_seed(0)
    model = spec.build().eval()
    prepared = prepare_module(copy.deepcopy(model), "cpu")
    x = spec.preprocessing(torch.rand(1, 3, 224, 224))

    def floor():
        with torch.no_grad():
            prepared(x)

    def torchcam():
        with CAM(model, "layer4", "fc") as extractor:
            with torch.no_grad():
                scores = model(x)
            extractor(scores.argmax(1).tolist(), scores)

    fns = {"campp_cam": lambda: explain(prepared, "layer4", x, methods="cam"), "campp_forward_only": floor,
           "campp_two_maps": lambda: explain(prepared, "layer4", x), "torchcam_cam": torchcam}
    med = _medians(fns, repeats)
    return {"seconds_median": {k: round(v, 4) for k, v in med.items()},
            "cam_vs_its_floor": round(med["campp_cam"] / med["campp_forward_only"], 3),
            "cam_vs_two_maps": round(med["campp_cam"] / med["campp_two_maps"], 3),
            "torchcam_vs_campp": round(med["torchcam_cam"] / med["campp_cam"], 2)}


def fullgrad_contenders(model, prepared, layer: str, x: torch.Tensor) -> dict:
    from pytorch_grad_cam import FullGrad

    def floor():
        xs = x.clone().requires_grad_(True)
        logits = model(xs)
        torch.autograd.grad(logits[0, logits[0].argmax()], xs)

    def pgc():
        with _quiet():
            cam = FullGrad(model, [])
            try:
                cam(input_tensor=x.clone(), targets=None)
            finally:
                cam.activations_and_grads.release()

    # This order: with campp's FullGrad-alone run just before it, the run of three maps measured 1.3x its
    # time when run alone (the allocator's state after the other tools' large arrays, not the maps' work)
    return {"pytorch_grad_cam_fullgrad": pgc,
            "campp_fullgrad_gradcam_gradcampp": lambda: explain(prepared, layer, x,
                                                                methods="gradcam,gradcampp,fullgrad"),
            "campp_fullgrad": lambda: explain(prepared, layer, x, methods="fullgrad"),
            "campp_two_maps": lambda: explain(prepared, layer, x),
            "forward_backward_to_input": floor}


def bench_fullgrad(repeats: int) -> dict:
    out = {}
    for arch, layer in (("vgg16", "features.29"), ("resnet50", "layer4")):
        spec = get_arch(arch)
        torch.manual_seed(0)
        model = spec.build().eval()
        prepared = prepare_module(copy.deepcopy(model), "cpu")
        fns = fullgrad_contenders(model, prepared, layer, spec.preprocessing(torch.rand(1, 3, 224, 224)))
        med = _medians(fns, repeats)
        out[arch] = {
            "seconds_median": {k: round(v, 4) for k, v in med.items()},
            "fullgrad_vs_its_floor": round(med["campp_fullgrad"] / med["forward_backward_to_input"], 3),
            "fullgrad_vs_two_maps": round(med["campp_fullgrad"] / med["campp_two_maps"], 3),
            "three_maps_vs_fullgrad": round(med["campp_fullgrad_gradcam_gradcampp"] / med["campp_fullgrad"], 3),
            "pytorch_grad_cam_vs_campp": round(med["pytorch_grad_cam_fullgrad"] / med["campp_fullgrad"], 2),
        }
    return out


FUSED = ("features.15", "features.22", "features.29")


def fusion_contenders(model, prepared, x: torch.Tensor) -> dict:
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from torchcam.methods import LayerCAM

    modules = dict(model.named_modules())
    both = ",".join(FUSED)

    def pgc():
        for klass in (GradCAM, GradCAMPlusPlus):
            with klass(model=model, target_layers=[modules[name] for name in FUSED]) as cam:
                cam(input_tensor=x, targets=None)

    def torchcam():
        with LayerCAM(model, list(FUSED)) as extractor:
            scores = model(x)
            LayerCAM.fuse_cams(extractor(scores.argmax(1).tolist(), scores))

    return {"campp_two_maps_one_layer": lambda: explain(prepared, FUSED[-1], x),
            "campp_two_maps_shallowest_layer": lambda: explain(prepared, FUSED[0], x),
            "campp_two_maps_three_layers": lambda: explain(prepared, both, x),
            "pytorch_grad_cam_two_maps_three_layers": pgc,
            "campp_layercam_three_layers": lambda: explain(prepared, both, x, methods="layercam"),
            "torchcam_layercam_three_layers": torchcam}


def bench_fusion(repeats: int) -> dict:
    spec = get_arch("vgg16")
    torch.manual_seed(0)
    model = spec.build().eval()
    prepared = prepare_module(copy.deepcopy(model), "cpu")
    fns = fusion_contenders(model, prepared, spec.preprocessing(torch.rand(1, 3, 224, 224)))
    med = _medians(fns, repeats)
    return {
        "layers": list(FUSED),
        "seconds_median": {k: round(v, 4) for k, v in med.items()},
        "three_layers_vs_one": round(med["campp_two_maps_three_layers"] / med["campp_two_maps_one_layer"], 3),
        "three_layers_vs_the_shallowest_alone": round(med["campp_two_maps_three_layers"]
                                                      / med["campp_two_maps_shallowest_layer"], 3),
        "pytorch_grad_cam_vs_campp": round(med["pytorch_grad_cam_two_maps_three_layers"]
                                           / med["campp_two_maps_three_layers"], 2),
        "torchcam_layercam_vs_campp": round(med["torchcam_layercam_three_layers"]
                                            / med["campp_layercam_three_layers"], 2),
    }


def bench_grids(repeats: int) -> dict:
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_kernel

    from campp_cli.cam.explain import cam_maps

    found = {}
    for side in (14, 28, 56):
        torch.manual_seed(side)
        acts = torch.rand(1, 256, side, side)
        x = acts.double().reshape(1, 256, -1).transpose(1, 2)
        x = x - x.mean(dim=1, keepdim=True)
        gram = torch.tanh(x @ x.transpose(1, 2) / 256 + 1.0)
        fns = {"campp_eigencam": lambda a=acts: cam_maps(None, a, "eigencam"),
               "campp_kpcacam": lambda a=acts: cam_maps(None, a, "kpcacam"),
               "full_eigh_of_the_kernel_matrix": lambda g=gram: torch.linalg.eigh(g),
               "pytorch_grad_cam_kpca_projection": lambda a=acts: get_2d_projection_kernel(a.numpy())}
        med = _medians(fns, repeats if side < 56 else max(1, repeats // 5))
        found[f"{side}x{side}"] = {k: round(v, 4) for k, v in med.items()}
    return {"seconds_median": found}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/methods.py", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--scorecam-repeats", type=int, default=1)
    parser.add_argument("--score-batch", type=int, default=16, help="both tools' Score-CAM batch size")
    parser.add_argument("--skip-scorecam", action="store_true")
    parser.add_argument("--skip-perturbation", action="store_true")
    parser.add_argument("--only", choices=["one-pass", "cam", "scorecam", "perturbation", "smoothing", "fullgrad",
                                           "fusion", "grids"],
                        default=None,
                        help="run one part only")
    parser.add_argument("--samples", type=int, default=4, help="SS-CAM's samples and IS-CAM's steps, both tools")
    parser.add_argument("--perturbation-repeats", type=int, default=3,
                        help="interleaved rounds of Ablation-CAM, SS-CAM and IS-CAM against their peers")
    args = parser.parse_args(argv)
    report = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                          "threads": torch.get_num_threads()}}
    parts = {"one-pass": ("one_pass_methods_vgg16", lambda: bench_one_pass(args.repeats), True),
             "cam": ("cam_resnet50", lambda: bench_cam(args.repeats), True),
             "scorecam": ("scorecam_batch_%d" % args.score_batch,
                          lambda: bench_scorecam(args.scorecam_repeats, args.score_batch), not args.skip_scorecam),
             "perturbation": ("perturbation_efficientnet_lite0",
                              lambda: bench_perturbation(args.score_batch, args.samples,
                                                         args.perturbation_repeats), not args.skip_perturbation),
             "smoothing": ("smoothing_vgg16", lambda: bench_smoothing(args.repeats), True),
             "fullgrad": ("fullgrad", lambda: bench_fullgrad(args.repeats), True),
             "fusion": ("several_layers_vgg16", lambda: bench_fusion(args.repeats), True),
             "grids": ("principal_components_at_larger_grids", lambda: bench_grids(args.repeats), True)}
    for part, (key, fn, wanted) in parts.items():
        if (args.only is None and wanted) or args.only == part:
            report[key] = fn()
            print(json.dumps(report, indent=2), flush=True)


if __name__ == "__main__":
    sys.exit(main())
