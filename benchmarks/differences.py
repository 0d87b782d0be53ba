"""How campp's maps differ from pytorch-grad-cam's and torchcam's on a real model: ``python benchmarks/differences.py``.

EfficientNet-Lite0 with its ImageNet weights, the cat and espresso photos in
images/, the final feature map (behind an Identity both libraries can hook),
the predicted class.  Every map is compared after the same normalisation
(pytorch-grad-cam's: min-max at low resolution, bilinear resize, min-max;
torchcam's: min-max at low resolution).  Prints the largest absolute
difference per method and photo as JSON; the README explains each cause.
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


def main() -> None:
    from pytorch_grad_cam import (
        EigenCAM,
        GradCAM,
        GradCAMElementWise,
        GradCAMPlusPlus,
        HiResCAM,
        LayerCAM,
        ScoreCAM,
        XGradCAM,
    )
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torchcam.methods import GradCAMpp as TGradCAMpp
    from torchcam.methods import LayerCAM as TLayerCAM
    from torchcam.methods import ScoreCAM as TScoreCAM
    from torchcam.methods import XGradCAM as TXGradCAM

    clf = load_classifier("efficientnet_lite0")
    model = _Tapped(copy.deepcopy(clf.module).to(memory_format=torch.contiguous_format)).eval()
    pgc = {"gradcam": GradCAM, "gradcampp": GradCAMPlusPlus, "xgradcam": XGradCAM, "hirescam": HiResCAM,
           "gradcam_elementwise": GradCAMElementWise, "layercam": LayerCAM, "eigencam": EigenCAM,
           "scorecam": ScoreCAM}
    tc = {"gradcampp": TGradCAMpp, "xgradcam": TXGradCAM, "layercam": TLayerCAM, "scorecam": TScoreCAM}
    report: dict = {"pytorch_grad_cam": {}, "torchcam": {}}
    for name in ("chelsea", "coffee"):
        square = geometry.center_square(decode.load_rgb(REPO / "images" / f"{name}.png"))
        rgb = to_batch([square], clf)
        x = clf.preprocessing(rgb)
        ours = explain(clf.module, clf.layer, x, methods="all", variant="paper", image=rgb,
                       preprocess=clf.preprocessing)
        cls = int(ours.classes[0])
        for method, klass in pgc.items():
            with contextlib.redirect_stderr(io.StringIO()), klass(model=model, target_layers=[model.tap]) as cam:
                theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(cls)])[0]
            gap = np.abs(_pgc_norm(ours.maps[method][0], 224) - theirs).max()
            report["pytorch_grad_cam"].setdefault(method, {})[name] = round(float(gap), 4)
        for method, klass in tc.items():
            with klass(model, "tap") as extractor:
                scores = model(x)
                theirs = extractor(cls, scores)[0][0].detach().numpy()
            gap = np.abs(_min_max(ours.maps[method][0]) - theirs).max()
            report["torchcam"].setdefault(method, {})[name] = round(float(gap), 4)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
