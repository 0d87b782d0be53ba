"""Each image's top-k classes explained from one pass (``explain_top``) against k separate explanations:
``python benchmarks/targets.py [--archs efficientnet_lite0,vgg16] [--images 8] [--k 3]``.

Three figures per model, the median of ``--repeats`` after a first call: ``explain_top(k)`` (one forward
pass, the k gradients from one batched backward pass to the layer), ``k`` calls of ``explain`` with each
rank's classes (k forward and k backward passes: what a user without it runs), and one ``explain`` (the
floor: the predicted class alone).  The default methods (Grad-CAM and Grad-CAM++).  The offline models keep
their own weights; VGG16 has random ones (nothing is downloaded).  Prints JSON.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch
from common import report_archs, timings

from campp_cli.cam.explain import explain, explain_top


def median_time(f, repeats: int) -> float:
    return statistics.median(timings(f, repeats))


def measure(clf, args) -> dict:
    s = clf.input_size
    rgb01 = torch.from_numpy(np.random.default_rng(0).random((args.images, 3, s, s), dtype=np.float32))
    x = clf.preprocessing(rgb01)
    with torch.no_grad():
        ranks = torch.sort(-clf.module(x), dim=1, stable=True).indices[:, :args.k]

    def top():
        explain_top(clf.module, clf.layer, x, args.k)

    def separate():
        for r in range(args.k):
            explain(clf.module, clf.layer, x, ranks[:, r].tolist())

    def one():
        explain(clf.module, clf.layer, x)

    figures = {"top_k_seconds": median_time(top, args.repeats),
               "k_separate_seconds": median_time(separate, args.repeats),
               "one_class_seconds": median_time(one, args.repeats)}
    figures = {k: round(v, 3) for k, v in figures.items()}
    figures["separate_vs_top_k"] = round(figures["k_separate_seconds"] / figures["top_k_seconds"], 2)
    figures["top_k_vs_one_class"] = round(figures["top_k_seconds"] / figures["one_class_seconds"], 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="efficientnet_lite0,vgg16")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    report_archs(measure, args, images=args.images, k=args.k, threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
