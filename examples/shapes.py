"""A classifier of your own, trained in under a minute on two CPU cores, then explained with campp.

Photos of one shape (circle, square or triangle) at a random place on a
textured background: the class is the shape, and where the object is, is
known, so an explanation can be checked (does the map's maximum fall on it?).

    python examples/shapes.py shapes/       # train; write weights, labels, test photos and their boxes
    campp convert shapes/weights.pth shapes/shapes.pth --model examples/shapes.py:build --input-size 64 --mean none
    campp classify -f shapes/test/ --model examples/shapes.py:build --weights shapes/shapes.pth \\
        --labels shapes/labels.txt --output-dir shapes/out
    campp evaluate -f shapes/test/ --model examples/shapes.py:build --weights shapes/shapes.pth \\
        --labels shapes/labels.txt --boxes shapes/boxes

``build`` is what ``--model examples/shapes.py:build`` calls: any function
that returns a ``torch.nn.Module`` works the same way.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

CLASSES = ["circle", "square", "triangle"]
SIZE = 64  # input side; the model eats RGB in [0, 1], no normalisation (campp: --input-size 64 --mean none)


def build() -> nn.Module:
    """The model: three conv blocks (16x16 feature map at 64 px), then a small non-linear head."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, len(CLASSES)),
    )


def draw(rng: np.random.Generator) -> tuple[np.ndarray, int, tuple[int, int, int, int]]:
    """One photo: (RGB uint8 SIZE x SIZE, class, box x0, y0, x1, y1 of the object)."""
    coarse = rng.integers(60, 200, size=(4, 4, 3)).astype(np.uint8)
    background = cv2.resize(coarse, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    background += rng.integers(-30, 31, size=(SIZE, SIZE, 3), dtype=np.int16)  # texture
    img = np.clip(background, 0, 255).astype(np.uint8)
    cls = int(rng.integers(len(CLASSES)))
    side = int(rng.integers(14, 23))
    x0 = int(rng.integers(1, SIZE - side - 1))
    y0 = int(rng.integers(1, SIZE - side - 1))
    colour = tuple(int(c) for c in rng.choice([0, 255], size=3))
    if colour in ((0, 0, 0), (255, 255, 255)):
        colour = (255, 0, 0) if rng.random() < 0.5 else (0, 0, 255)
    if CLASSES[cls] == "circle":
        cv2.circle(img, (x0 + side // 2, y0 + side // 2), side // 2, colour, -1)
    elif CLASSES[cls] == "square":
        cv2.rectangle(img, (x0, y0), (x0 + side - 1, y0 + side - 1), colour, -1)
    else:
        points = np.array([[x0 + side // 2, y0], [x0, y0 + side - 1], [x0 + side - 1, y0 + side - 1]], np.int32)
        cv2.fillPoly(img, [points], colour)
    return img, cls, (x0, y0, x0 + side, y0 + side)


def dataset(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list]:
    rng = np.random.default_rng(seed)
    photos, labels, boxes = zip(*(draw(rng) for _ in range(n)))
    x = torch.from_numpy(np.stack(photos)).permute(0, 3, 1, 2).float() / 255.0
    return x, torch.tensor(labels), list(boxes)


def train(seed: int = 0, n: int = 3000, epochs: int = 4) -> nn.Module:
    """Adam with a one-cycle learning rate on ``n`` fresh photos, seeded; returns the model in eval mode."""
    torch.manual_seed(seed)
    x, y, _ = dataset(n, seed)
    model = build()
    optimiser = torch.optim.Adam(model.parameters())
    batches = (n + 63) // 64
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=1e-2, total_steps=epochs * batches)
    for _ in range(epochs):
        order = torch.randperm(n)
        for start in range(0, n, 64):
            idx = order[start:start + 64]
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimiser.step()
            schedule.step()
    return model.eval()


def write_test_set(folder: Path, n: int, seed: int) -> list[tuple[str, int, tuple[int, int, int, int]]]:
    """PNG photos in folder/test and Pascal VOC boxes in folder/boxes; returns (file name, class, box)."""
    (folder / "test").mkdir(parents=True, exist_ok=True)
    (folder / "boxes").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = []
    for i in range(n):
        img, cls, (x0, y0, x1, y1) = draw(rng)
        name = f"shape_{i:03d}"
        cv2.imwrite(str(folder / "test" / f"{name}.png"), img[:, :, ::-1])
        (folder / "boxes" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.png</filename><size><width>{SIZE}</width><height>{SIZE}</height>"
            f"<depth>3</depth></size><object><name>{CLASSES[cls]}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object></annotation>\n")
        written.append((f"{name}.png", cls, (x0, y0, x1, y1)))
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-images", type=int, default=60)
    args = parser.parse_args(argv)
    args.folder.mkdir(parents=True, exist_ok=True)
    model = train(args.seed)
    torch.save(model.state_dict(), args.folder / "weights.pth")
    (args.folder / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    written = write_test_set(args.folder, args.test_images, args.seed + 1)
    print(f"wrote {args.folder}/weights.pth, labels.txt, {len(written)} test photos in test/ and their boxes in "
          f"boxes/", file=sys.stderr)


if __name__ == "__main__":
    main()
