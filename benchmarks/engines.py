"""Engines side by side: ``python benchmarks/engines.py [--images 64] [--repeats 2] [--archs A,B]``.

For each model: images/s of the local engine and of the Ray engine with 1 and 2 model actors, on the same
photos (synthetic 500 x 375 JPEGs, the size of an ImageNet validation photo), writing the default figures;
and the cost of starting (and stopping) a local Ray.  The Ray runs share one Ray started beforehand, so they
count what a run on a running cluster costs (the actors' start and model load included, Ray's own start
not).  "Running" figures are the throughput once a run is going: each contender also runs twice the photos,
and the second half's cost is (time of 2N) - (time of N), the fixed start-up costs cancelling out.
Runs are interleaved (local, ray 1, ray 2, local, ...) and the median is printed.  VGG16 has random weights
(speed does not depend on them), saved to a temporary file: nothing is downloaded.  Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import classifier
from PIL import Image

from campp_cli.io.inputs import Job
from campp_cli.run.engines import local as pipeline
from campp_cli.run.engines import ray as ray_engine
from campp_cli.run.options import Options


def photos(folder: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for k in range(count):
        small = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
        path = folder / f"photo{k:03d}.jpg"
        Image.fromarray(small).resize((500, 375), Image.BILINEAR).save(path, quality=90)
        paths.append(path)
    return paths


def timed_run(engine: str, paths: list[Path], clf, out: Path, **settings) -> float:
    """Seconds of the whole run (every file written)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    jobs = [Job(p, out, p.stem, ".jpeg") for p in paths]
    run = pipeline.run if engine == "local" else ray_engine.run
    start = time.perf_counter()
    summary = run(jobs, clf, Options(), **settings)
    seconds = time.perf_counter() - start
    assert summary.done == len(paths), summary
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--archs", default="efficientnet_lite0,vgg16")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="campp-bench-engines-"))
    try:
        paths = photos(scratch, 2 * args.images)
        start = time.perf_counter()
        ray_engine.connect(None, actors=2)
        started = time.perf_counter() - start
        import ray

        start = time.perf_counter()
        ray.shutdown()
        stopped = time.perf_counter() - start
        ray_engine.connect(None, actors=2)
        report = {"images": args.images, "cpu_cores": os.cpu_count(), "torch": torch.__version__,
                  "ray": ray.__version__, "python": platform.python_version(),
                  "ray_start_seconds": round(started, 2), "ray_stop_seconds": round(stopped, 2), "models": {}}
        contenders = {"local": ("local", {}), "ray, 1 actor": ("ray", {"actors": 1}),
                      "ray, 2 actors": ("ray", {"actors": 2})}
        for arch in args.archs.split(","):
            clf = classifier(arch, scratch)
            for engine, settings in contenders.values():  # first-call costs (Ray workers) out of the figures
                timed_run(engine, paths[:8], clf, scratch / "warm", **settings)
            times: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
            for _ in range(args.repeats):
                for name, (engine, settings) in contenders.items():
                    once = timed_run(engine, paths[:args.images], clf, scratch / "out", **settings)
                    twice = timed_run(engine, paths, clf, scratch / "out", **settings)
                    times[name].append((once, twice))
            report["models"][arch] = {}
            for name, runs in times.items():
                seconds = statistics.median(t for t, _ in runs)
                rate = statistics.median(args.images / (t2 - t) for t, t2 in runs)  # the second N images' cost
                report["models"][arch][name] = {
                    "seconds": round(seconds, 2), "images_per_second": round(args.images / seconds, 2),
                    "running_images_per_second": round(rate, 2),
                    "runs": [[round(t, 2), round(t2, 2)] for t, t2 in runs]}
            base = report["models"][arch]["local"]
            for entry in report["models"][arch].values():
                entry["vs_local"] = round(entry["images_per_second"] / base["images_per_second"], 2)
                entry["running_vs_local"] = round(entry["running_images_per_second"] /
                                                  base["running_images_per_second"], 2)
            print(json.dumps({arch: report["models"][arch]}), flush=True)
        ray.shutdown()
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
