"""ROAD, campp against pytorch-grad-cam on the same maps: ``python benchmarks/road.py [--images 4] [--methods 2]``.

Both remove each map's most and least relevant 10 %, 20 %, ... 90 % of the pixels (MoRF and LeRF), fill
them by noisy linear imputation (a sparse solve per image, map, order and fraction) and read the model's
softmax probability of the class on every imputed image.  campp's figure is ROAD's share of
``metrics.score_all`` (the run with ``road`` less the same run without it: its imputations on threads
beside the model's batches); pytorch-grad-cam 1.5.7's is its ``ROADMostRelevantFirst`` and
``ROADLeastRelevantFirst`` called per fraction on the same images and upsampled maps (its imputer solves
each system with SciPy's ``spsolve`` and runs the model on the batch).  ``solves_seconds`` is campp's
imputations alone on one thread, ``passes_seconds`` ROAD's forward passes alone (bare, batched as campp
batches them): together the work ROAD cannot do without.  The offline models keep their own weights;
VGG16 has random weights (nothing is downloaded).  Prints JSON.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from common import report_archs

from campp_cli.commands import metrics, road


def measure(clf, args) -> dict:
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    s, n = clf.input_size, args.images
    rng = np.random.default_rng(0)
    rgb01 = torch.from_numpy(rng.random((n, 3, s, s), dtype=np.float32))
    maps = {f"m{k}": rng.random((n, 7, 7)).astype(np.float32) for k in range(args.methods)}
    classes, y = np.arange(n), np.full(n, 0.5)
    settings = metrics.RoadSettings(road.DEFAULT_FRACTIONS, tuple(road.noise_in_rgb(clf.preprocessing)))

    def campp(with_road: bool):
        return lambda: metrics.score_all(clf.module, clf.preprocessing, rgb01, maps, classes, 2, y, args.eval_batch,
                                         road=settings if with_road else None)

    ups = {m: metrics.upsample_maps(v, s) for m, v in maps.items()}
    removals = road.removal_counts(settings.fractions, s * s)

    def solves():
        for m in maps:
            for i in range(n):
                ranks = np.argsort(np.argsort(-ups[m][i].ravel(), kind="stable"), kind="stable").reshape(s, s)
                for count in removals:
                    for order in ("morf", "lerf"):
                        road.impute(rgb01[i].numpy(), road.removed_mask(ranks, count, order), settings.noise)

    frames = 2 * len(settings.fractions) * n * args.methods
    batch = torch.from_numpy(rng.random((args.eval_batch, 3, s, s), dtype=np.float32))

    def passes():
        with torch.inference_mode():
            for _ in range(0, frames, args.eval_batch):
                clf.module(clf.preprocessing(batch))

    x = clf.preprocessing(rgb01)
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes]

    def pytorch_grad_cam():
        for m in maps:
            for share in settings.fractions:
                q = 100 * (1 - share)  # their percentile keeps the pixels below it
                for metric in (ROADMostRelevantFirst(q), ROADLeastRelevantFirst(q)):
                    metric(x, ups[m], targets, clf.module)

    def timed(f) -> float:
        start = time.perf_counter()
        f()
        return time.perf_counter() - start

    campp(True)()  # first-call costs out of the figures
    with_road, without, theirs = [], [], []
    for _ in range(args.repeats):  # interleaved, as the machine's speed drifts
        with_road.append(timed(campp(True)))
        without.append(timed(campp(False)))
        theirs.append(timed(pytorch_grad_cam))
    ours = statistics.median(with_road) - statistics.median(without)
    alone = timed(solves)
    bare = timed(passes)
    return {"imputed_images": frames, "campp_road_seconds": round(ours, 2),
            "solves_seconds": round(alone, 2), "passes_seconds": round(bare, 2),
            "pytorch_grad_cam_seconds": round(statistics.median(theirs), 2),
            "pytorch_grad_cam_vs_campp": round(statistics.median(theirs) / ours, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="efficientnet_lite0")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--methods", type=int, default=2)
    parser.add_argument("--eval-batch", type=int, default=8, help="as campp on a CPU")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    report_archs(measure, args, images=args.images, methods=args.methods, eval_batch=args.eval_batch)


if __name__ == "__main__":
    main()
