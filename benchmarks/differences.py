"""How campp's maps differ from pytorch-grad-cam's and torchcam's on a real model: ``python benchmarks/differences.py``.

EfficientNet-Lite0 with its ImageNet weights, the cat and espresso photos in
images/, the final feature map (behind an Identity both libraries can hook),
the predicted class.  Every map is compared after the same normalisation
(pytorch-grad-cam's: min-max at low resolution, bilinear resize, min-max;
torchcam's: min-max at low resolution).  Every method that a peer has:
pytorch-grad-cam 1.5.7's eight first ones, EigenGradCAM, KPCA_CAM (both
also against campp's map of the opposite sign, as their sign is the SVD's or
scikit-learn's), ShapleyCAM, FinerCAM (alpha 1, campp's default), AblationCAM
and FullGrad; torchcam 0.5.0's GradCAMpp, XGradCAM, LayerCAM, ScoreCAM, CAM,
FinerCAM (gamma 0.6, against campp's --finer-alpha 0.6), SSCAM and ISCAM (2
samples each, as campp's here: their defaults take 35 and 10 times Score-CAM's
passes).  Prints the largest absolute difference per method and photo as JSON
(``"opposite_sign"``: against campp's map of the other sign); the README
explains each cause.  About 15 minutes on 2 cores.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json

import cv2
import numpy as np
import torch
from methods import REPO, _Tapped

from campp_cli.cam.explain import explain
from campp_cli.draw import geometry
from campp_cli.io import decode
from campp_cli.models.loading import load_classifier
from campp_cli.run.stages import to_batch


def _min_max(m: np.ndarray) -> np.ndarray:
    m = m - m.min()
    return m / (m.max() + 1e-7)


def _pgc_norm(low: np.ndarray, size: int) -> np.ndarray:
    return _min_max(cv2.resize(np.float32(_min_max(low)), (size, size)))


def _opposite_sign(model, layer: str, x, cls: int, method: str) -> np.ndarray:
    """campp's EigenGrad-CAM or KPCA-CAM combination with the other sign, relu'd and divided by its maximum."""
    from campp_cli.cam.methods.eigencam import projection as eigen
    from campp_cli.cam.methods.kpcacam import projection as kernel
    from campp_cli.cam.taps import FeatureTap

    with FeatureTap(model, layer) as tap:
        logits = model(x)
        acts = tap.activation
    (g,) = torch.autograd.grad(logits[0, cls], acts)
    combination = eigen(g.double() * acts.double()) if method == "eigengradcam" else kernel(acts.double())
    flipped = torch.relu(-combination)[0].detach().numpy()
    return flipped / max(flipped.max(), 1e-300)


def main() -> None:
    from pytorch_grad_cam import (
        KPCA_CAM,
        AblationCAM,
        EigenCAM,
        EigenGradCAM,
        FinerCAM,
        FullGrad,
        GradCAM,
        GradCAMElementWise,
        GradCAMPlusPlus,
        HiResCAM,
        LayerCAM,
        ScoreCAM,
        ShapleyCAM,
        XGradCAM,
    )
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torchcam.methods import CAM as TCAM
    from torchcam.methods import ISCAM as TISCAM
    from torchcam.methods import SSCAM as TSSCAM
    from torchcam.methods import FinerCAM as TFinerCAM
    from torchcam.methods import GradCAMpp as TGradCAMpp
    from torchcam.methods import LayerCAM as TLayerCAM
    from torchcam.methods import ScoreCAM as TScoreCAM
    from torchcam.methods import XGradCAM as TXGradCAM

    clf = load_classifier("efficientnet_lite0")
    model = _Tapped(copy.deepcopy(clf.module).to(memory_format=torch.contiguous_format)).eval()
    pgc = {"gradcam": GradCAM, "gradcampp": GradCAMPlusPlus, "xgradcam": XGradCAM, "hirescam": HiResCAM,
           "gradcam_elementwise": GradCAMElementWise, "layercam": LayerCAM, "eigencam": EigenCAM,
           "scorecam": ScoreCAM, "eigengradcam": EigenGradCAM, "kpcacam": KPCA_CAM, "shapleycam": ShapleyCAM,
           "finercam": lambda model, target_layers: FinerCAM(model, target_layers, base_method=GradCAM),
           "ablationcam": lambda model, target_layers: AblationCAM(model, target_layers, batch_size=32),
           "fullgrad": FullGrad}
    samples = {"num_samples": 2, "batch_size": 32}
    tc = {"gradcampp": TGradCAMpp, "xgradcam": TXGradCAM, "layercam": TLayerCAM, "scorecam": TScoreCAM,
          "cam": lambda model, layer: TCAM(model, layer, fc_layer="net._fc"),
          "finercam": lambda model, layer: TFinerCAM(model, layer, gamma=0.6),
          "sscam": lambda model, layer: TSSCAM(model, layer, **samples),
          "iscam": lambda model, layer: TISCAM(model, layer, **samples)}
    report: dict = {"pytorch_grad_cam": {}, "torchcam": {}}
    for name in ("chelsea", "coffee"):
        square = geometry.center_square(decode.load_rgb(REPO / "images" / f"{name}.png"))
        rgb = to_batch([square], clf)
        x = clf.preprocessing(rgb)
        ours = explain(clf.module, clf.layer, x, methods="all,cam", variant="paper", image=rgb,
                       preprocess=clf.preprocessing, sscam_samples=2, iscam_steps=2)
        cls = int(ours.classes[0])
        finer_06 = explain(clf.module, clf.layer, x, methods="finercam", finer_alpha=0.6).maps["finercam"]
        for method, klass in pgc.items():
            call = {"alpha": 1.0, "target_idx": cls} if method == "finercam" else \
                {"targets": [ClassifierOutputTarget(cls)]}
            layers = [] if method == "fullgrad" else [model.tap]
            with contextlib.redirect_stderr(io.StringIO()), klass(model=model, target_layers=layers) as cam:
                theirs = cam(input_tensor=x, **call)[0]
            gap = np.abs(_pgc_norm(ours.maps[method][0], 224) - theirs).max()
            found = report["pytorch_grad_cam"].setdefault(method, {})
            found[name] = round(float(gap), 4)
            if method in ("eigengradcam", "kpcacam"):
                flipped = _opposite_sign(clf.module, clf.layer, x, cls, method)
                found[f"{name}_opposite_sign"] = round(float(np.abs(_pgc_norm(flipped, 224) - theirs).max()), 4)
        for method, klass in tc.items():
            torch.manual_seed(0)
            with contextlib.redirect_stderr(io.StringIO()), klass(model, "tap") as extractor:
                scores = model(x)
                theirs = extractor(cls, scores)[0][0].detach().numpy()
            mine = finer_06[0] if method == "finercam" else ours.maps[method][0]
            gap = np.abs(_min_max(mine) - theirs).max()
            report["torchcam"].setdefault(method, {})[name] = round(float(gap), 4)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
