"""evaluate's metric passes against their floor: ``python benchmarks/evaluate.py [--images 4] [--methods 8]``.

The floor is "number of forward passes x one bare forward pass at the same batch size": the prepared model
(as campp loads it) run under ``torch.inference_mode`` on batches of ``--eval-batch`` images, timed per
image.  campp's metric phase (``metrics.score_all``: building every perturbed image, the passes, the
softmax) is timed on the same images with one map per method (their content does not change the cost).
VGG16 has random weights (saved to a temporary file), nothing is downloaded.  Prints JSON.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from common import report_archs

from campp_cli.commands import metrics


def measure(clf, args) -> dict:
    s = clf.input_size
    rng = np.random.default_rng(0)
    rgb01 = torch.from_numpy(rng.random((args.images, 3, s, s), dtype=np.float32))
    maps = {f"m{k}": rng.random((args.images, 7, 7)).astype(np.float32) for k in range(args.methods)}
    classes = np.arange(args.images)
    y = np.full(args.images, 0.5)
    road = None
    if args.road:
        from campp_cli.commands.road import DEFAULT_FRACTIONS, noise_in_rgb

        road = metrics.RoadSettings(DEFAULT_FRACTIONS, tuple(noise_in_rgb(clf.preprocessing)))
    frames = args.images * metrics.passes_per_image(args.methods, args.steps, len(road.fractions) if road else 0)
    batch = torch.from_numpy(rng.random((args.eval_batch, 3, s, s), dtype=np.float32))

    def bare():
        with torch.inference_mode():
            clf.module(clf.preprocessing(batch))

    bare()  # first-call costs out of the figures
    floors, runs = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(3):
            bare()
        floors.append((time.perf_counter() - start) / (3 * args.eval_batch) * frames)
        start = time.perf_counter()
        metrics.score_all(clf.module, clf.preprocessing, rgb01, maps, classes, args.steps, y, args.eval_batch,
                          road=road)
        runs.append(time.perf_counter() - start)
    floor, run = statistics.median(floors), statistics.median(runs)
    return {"forward_passes": frames, "floor_seconds": round(floor, 2), "campp_seconds": round(run, 2),
            "vs_floor": round(run / floor, 3), "passes_per_second": round(frames / run, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="efficientnet_lite0,vgg16")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--methods", type=int, default=8, help="maps per image (campp has 8 methods)")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--eval-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--road", action="store_true",
                        help="with ROAD's 18 imputed images per image and method (their sparse solves included)")
    args = parser.parse_args()
    report_archs(measure, args, images=args.images, methods=args.methods, steps=args.steps,
                 eval_batch=args.eval_batch, road=args.road)

if __name__ == "__main__":
    main()
