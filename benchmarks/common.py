"""What the benchmarks share: a classifier as campp loads it, without any download."""

from __future__ import annotations

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
