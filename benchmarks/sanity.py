"""The sanity check (``evaluate --sanity``) against its floor: ``python benchmarks/sanity.py [--images 5]``.

The floor is the passes the check cannot do without: for every step of both modes, campp's explaining pass
(the default methods, one forward and one backward) and one guided backpropagation, timed alone on the
intact model (a randomised model costs the same) and multiplied by the number of steps.  campp's figure is
``commands.sanity.check`` on the same images: the randomised copies, those passes and the similarity
measures (Spearman, SSIM, HOG) of every map at the input resolution.  ``measures_seconds`` is
the measures alone for one step (every map at once), times the steps.  The offline models keep their own
weights; VGG16 has random weights (nothing is downloaded).  Prints JSON.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from common import report_archs

from campp_cli.cam.explain import explain
from campp_cli.cam.guided import guided_backprop
from campp_cli.commands import sanity


def measure(clf, args) -> dict:
    s = clf.input_size
    rgb01 = torch.from_numpy(np.random.default_rng(0).random((args.images, 3, s, s), dtype=np.float32))
    x = clf.preprocessing(rgb01)

    def passes():
        expl = explain(clf.module, clf.layer, x, image=rgb01, preprocess=clf.preprocessing)
        return expl, guided_backprop(clf.module, rgb01, expl.classes, clf.preprocessing)

    expl, guided = passes()  # first-call costs out of the figures
    intact = sanity.flat_maps(expl.maps, guided, s)
    steps = len(sanity.steps(clf.module)) * len(sanity.MODES)
    floors = []

    def time_floor() -> None:  # before and after the runs, as the machine's speed may drift
        for _ in range(args.repeats):
            start = time.perf_counter()
            passes()
            floors.append((time.perf_counter() - start) * steps)

    time_floor()
    stack = np.stack([v[i] for v in intact.values() for i in range(args.images)])
    reference = sanity.Features(stack)
    start = time.perf_counter()
    sanity.compare(reference, sanity.Features(stack))
    measures = (time.perf_counter() - start) * steps  # one step's measures, times the steps
    runs = []
    for _ in range(args.runs):
        start = time.perf_counter()
        sanity.check(clf, rgb01, intact, expl.classes, list(expl.maps), {})
        runs.append(time.perf_counter() - start)
    time_floor()
    run = statistics.median(runs)
    floor = statistics.median(floors)
    return {"steps": steps, "maps_per_image": len(intact), "floor_seconds": round(floor, 2),
            "measures_seconds": round(measures, 2), "campp_seconds": round(run, 2),
            "vs_floor": round(run / floor, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="efficientnet_lite0")
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10, help="timings of the floor's passes")
    parser.add_argument("--runs", type=int, default=2, help="timings of the whole check")
    args = parser.parse_args()
    report_archs(measure, args, images=args.images)

if __name__ == "__main__":
    main()
