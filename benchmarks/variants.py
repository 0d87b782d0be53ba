"""How far the two Grad-CAM++ variants (``official``, ``paper``) are apart, per layer.

    python benchmarks/variants.py

For each photo in images/ (and, for scale, 20 crops of them), the largest absolute difference between the
two variants' maps (low resolution, each normalised to [0, 1] as campp saves them), at EfficientNet-Lite0's
default layer (``_swish@1``, after which only global pooling and one linear layer follow), at
``_blocks.11`` (five blocks earlier), and at the default layer of timm's ``vit_small_patch16_224`` with
seeded random weights (no ImageNet ViT weights are available offline).  Prints the largest and the median
over photos per layer; JSON on the last line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from campp_cli import explain  # noqa: E402
from campp_cli.io import decode  # noqa: E402
from campp_cli.models.loading import load_classifier  # noqa: E402
from campp_cli.run.stages import to_batch  # noqa: E402


def photos() -> list[Image.Image]:
    out = [decode.open_photo(p) for p in sorted((REPO / "images").glob("*.*")) if p.suffix in (".png", ".jpg")]
    rng = np.random.default_rng(0)
    for k in range(20):
        src = out[k % 5]
        w, h = src.size
        cw, ch = int(rng.integers(w // 2, w + 1)), int(rng.integers(h // 2, h + 1))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        out.append(src.crop((x, y, x + cw, y + ch)))
    return out


def differences(clf, layer: str, batch: list[Image.Image]) -> np.ndarray:
    x = clf.preprocessing(to_batch(batch, clf))
    maps = {v: explain(clf.module, layer, x, variant=v, methods="gradcampp").maps["gradcampp"]
            for v in ("official", "paper")}
    return np.abs(maps["official"] - maps["paper"]).reshape(len(batch), -1).max(axis=1)


def main() -> None:
    batch = photos()
    lite = load_classifier("efficientnet_lite0", device="cpu", download=False)
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch16_224", pretrained=False).eval()
    path = Path(torch.hub.get_dir()) / "campp-bench-vit-small.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(vit.state_dict(), path)
    vit_clf = load_classifier("timm:vit_small_patch16_224", weights=path, device="cpu")
    report = {}
    for name, clf, layer in (("efficientnet_lite0 _swish@1 (last)", lite, lite.layer),
                             ("efficientnet_lite0 _blocks.11", lite, "_blocks.11"),
                             (f"vit_small_patch16_224 (random) {vit_clf.layer}", vit_clf, vit_clf.layer)):
        d = np.concatenate([differences(clf, layer, batch[i:i + 8]) for i in range(0, len(batch), 8)])
        report[name] = {"photos": len(d), "max": round(float(d.max()), 4), "median": round(float(np.median(d)), 4),
                        "images_only_max": round(float(d[:5].max()), 4)}
        print(f"{name}: largest difference {d.max():.4f}, median {np.median(d):.4f} over {len(d)} photos "
              f"(the five in images/: largest {d[:5].max():.4f})")
    path.unlink()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
