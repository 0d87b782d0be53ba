"""Differentiable maps (``explain(..., differentiable=True)``) against a training step:
``python benchmarks/differentiable.py [--archs efficientnet_lite0] [--images 8]``.

Four figures per model, the best of ``--repeats`` after a first call: a bare forward pass (no autograd);
campp's explaining pass (Grad-CAM and Grad-CAM++, parameters frozen); a training step's forward and
backward of the explained logits into every weight; and the differentiable explanation plus the backward
of a loss on its maps into every weight (the gradient of the logits is itself differentiated).  The offline
models keep their own weights; VGG16 has random ones (nothing is downloaded).  Prints JSON.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from common import report_archs, timings

from campp_cli.cam.explain import explain

METHODS = "gradcam,gradcampp"


def best(f, repeats: int) -> float:
    return min(timings(f, repeats))


def measure(clf, args) -> dict:
    model, s = clf.module, clf.input_size
    rgb01 = torch.from_numpy(np.random.default_rng(0).random((args.images, 3, s, s), dtype=np.float32))
    x = clf.preprocessing(rgb01)
    classes = torch.zeros(args.images, dtype=torch.long)

    def forward():
        with torch.no_grad():
            model(x)

    def explaining():
        explain(model, clf.layer, x, classes, METHODS)

    def training_step():
        model.zero_grad(set_to_none=True)
        model(x).gather(1, classes[:, None]).sum().backward()

    def differentiable():
        model.zero_grad(set_to_none=True)
        expl = explain(model, clf.layer, x, classes, METHODS, differentiable=True)
        sum(m.sum() for m in expl.maps.values()).backward()

    figures = {"forward_seconds": best(forward, args.repeats), "explain_seconds": best(explaining, args.repeats)}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(True)
    try:
        figures["training_step_seconds"] = best(training_step, args.repeats)
        figures["differentiable_seconds"] = best(differentiable, args.repeats)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.zero_grad(set_to_none=True)
    figures = {k: round(v, 3) for k, v in figures.items()}
    figures["differentiable_vs_training_step"] = round(
        figures["differentiable_seconds"] / figures["training_step_seconds"], 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="efficientnet_lite0")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    report_archs(measure, args, images=args.images, methods=METHODS, threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
