"""What the benchmarks share: a classifier as campp loads it, without any download."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from campp_cli.models.loading import load_classifier


def classifier(arch: str, scratch: Path):
    """``arch`` as campp loads it; VGG16 with seeded random weights saved under ``scratch`` (speed does not
    depend on the weights' values), the offline models with their own."""
    if arch == "vgg16":
        import torchvision

        torch.manual_seed(0)
        path = scratch / "vgg16-random.pth"
        torch.save(torchvision.models.vgg16().state_dict(), path)
        return load_classifier("vgg16", weights=path)
    return load_classifier(arch, download=False)


def timings(f, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``f``, after a first call (first-call costs out of the figures)."""
    import time

    f()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        f()
        out.append(time.perf_counter() - start)
    return out


def report_archs(measure, args, **settings) -> dict:
    """``measure(classifier, args)`` for each of ``args.archs`` (comma-separated), each model's figures
    printed as a JSON line as soon as they are made, then the whole report (the machine, ``settings`` and
    every model's figures) as indented JSON."""
    report = {"cpu_cores": os.cpu_count(), "torch": torch.__version__, **settings, "models": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for arch in args.archs.split(","):
            report["models"][arch] = measure(classifier(arch, Path(scratch)), args)
            print(json.dumps({arch: report["models"][arch]}), flush=True)
    print(json.dumps(report, indent=2))
    return report
