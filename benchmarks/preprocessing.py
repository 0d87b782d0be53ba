"""How far campp's model input is from what the model's own ecosystem feeds it, on the same photos.

    python benchmarks/preprocessing.py [--generated 300]

EfficientNet-Lite0 with its real ImageNet weights (the one real model available offline) sees each photo
(the five in images/ and ``--generated`` crops of them at varied sizes, aspect ratios, flips and JPEG
qualities) prepared five ways:

* ``campp``: campp's own framing (``campp_cli.draw.geometry.model_input``: the paper's central square, then one
  antialiased Pillow resample with the model's filter, bicubic for Lite0) and normalisation;
* ``campp 0.1``: the previous release's (central square, OpenCV's INTER_AREA; the display-dependent reduced
  decoding left out, so this is its best case);
* ``timm``: timm's own eval transform for ``tf_efficientnet_lite0``
  (``resolve_data_config`` + ``create_transform``: resize the short side to 224 / crop_pct, bicubic,
  centre crop 224, mean and std 0.5);
* ``torchvision``: torchvision's ``ImageClassification`` framing (resize the short side to 256, bilinear,
  antialiased, centre crop 224) with Lite0's normalisation;
* ``square+tv``: the paper's central square resized by torchvision's tensor path (``antialias=True``,
  bicubic) — campp's framing through another library's resampler.

Prints, for each pair against ``campp``: top-1 agreement and the largest and median (over photos) of the
largest absolute difference of any class's probability.  JSON on the last line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from campp_cli.draw import geometry  # noqa: E402
from campp_cli.io import decode  # noqa: E402
from campp_cli.models.loading import load_classifier  # noqa: E402


def generated_photos(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """Crops of the photos in images/ at short sides 100..2000 px, aspect 0.5..2, flipped or not, saved as
    JPEG (quality 70..98) or PNG."""
    rng = np.random.default_rng(seed)
    sources = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((REPO / "images").glob("*.*"))
               if p.suffix.lower() in (".png", ".jpg")]
    out = []
    for k in range(n):
        src = sources[k % len(sources)]
        h, w = src.shape[:2]
        ch, cw = int(rng.integers(h // 2, h + 1)), int(rng.integers(w // 2, w + 1))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = src[y:y + ch, x:x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        short = int(rng.integers(100, 2001))
        aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
        size = (short, round(short * aspect)) if aspect >= 1 else (round(short / aspect), short)
        photo = Image.fromarray(np.ascontiguousarray(crop)).resize(size, Image.Resampling.BICUBIC)
        path = folder / f"g{k:04d}.{'png' if k % 4 == 0 else 'jpg'}"
        photo.save(path, **({} if path.suffix == ".png" else {"quality": int(rng.integers(70, 99))}))
        out.append(path)
    return out


def pipelines(clf):
    import timm
    from timm.data import create_transform, resolve_data_config
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    pre = clf.preprocessing
    timm_tf = create_transform(**resolve_data_config({}, model=timm.create_model("tf_efficientnet_lite0",
                                                                                 pretrained=False)))

    def campp(photo: Image.Image) -> torch.Tensor:
        return pre(torch.from_numpy(geometry.model_input(photo, 224, pre.resize, pre.interpolation))[None])[0]

    def campp_old(photo: Image.Image) -> torch.Tensor:
        rgb = np.asarray(photo)
        square = geometry.center_square(rgb)
        interp = cv2.INTER_AREA if square.shape[0] > 224 else cv2.INTER_LINEAR
        small = cv2.resize(square, (224, 224), interpolation=interp)
        return pre(torch.from_numpy(small.transpose(2, 0, 1).astype(np.float32) / 255)[None])[0]

    def torchvision_style(photo: Image.Image) -> torch.Tensor:
        small = F.center_crop(F.resize(photo, 256, interpolation=InterpolationMode.BILINEAR, antialias=True), 224)
        return pre(F.to_tensor(small)[None])[0]

    def square_tensor(photo: Image.Image) -> torch.Tensor:
        square = torch.from_numpy(np.ascontiguousarray(geometry.center_square(np.asarray(photo)).transpose(2, 0, 1)))
        small = F.resize(square.float()[None], [224, 224], interpolation=InterpolationMode.BICUBIC, antialias=True)
        return pre(small.clamp(0, 255).round() / 255)[0]

    return {"campp": campp, "campp 0.1": campp_old, "timm": timm_tf, "torchvision": torchvision_style,
            "square+tv": square_tensor}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--generated", type=int, default=300)
    args = parser.parse_args()
    clf = load_classifier("efficientnet_lite0", device="cpu", download=False)
    with tempfile.TemporaryDirectory() as tmp:
        paths = sorted((REPO / "images").glob("*.p*g")) + sorted((REPO / "images").glob("*.jpg"))
        paths += generated_photos(Path(tmp), args.generated)
        ways = pipelines(clf)
        probs = {name: [] for name in ways}
        for path in paths:
            photo = decode.open_photo(path)
            batch = torch.stack([fn(photo) for fn in ways.values()])
            with torch.inference_mode():
                p = torch.softmax(clf.module(batch.to(memory_format=torch.channels_last)), 1).numpy()
            for k, name in enumerate(ways):
                probs[name].append(p[k])
    base = np.stack(probs["campp"])
    report = {"photos": len(paths)}
    for name in ways:
        if name == "campp":
            continue
        other = np.stack(probs[name])
        diff = np.abs(other - base).max(axis=1)
        agree = float((other.argmax(1) == base.argmax(1)).mean() * 100)
        report[name] = {"top1_agreement_percent": round(agree, 1), "max_abs_prob_diff": round(float(diff.max()), 4),
                        "median_max_abs_prob_diff": round(float(np.median(diff)), 4)}
        print(f"{name:12s} vs campp: top-1 agreement {agree:5.1f} %, largest probability difference "
              f"{diff.max():.4f} (median over photos {np.median(diff):.4f})")
    # the ecosystems against each other, for scale
    for a, b in (("timm", "torchvision"), ("timm", "campp 0.1")):
        pa, pb = np.stack(probs[a]), np.stack(probs[b])
        diff = np.abs(pa - pb).max(axis=1)
        agree = float((pa.argmax(1) == pb.argmax(1)).mean() * 100)
        report[f"{a} vs {b}"] = {"top1_agreement_percent": round(agree, 1),
                                 "max_abs_prob_diff": round(float(diff.max()), 4),
                                 "median_max_abs_prob_diff": round(float(np.median(diff)), 4)}
        print(f"{a} vs {b}: top-1 agreement {agree:5.1f} %, largest difference {diff.max():.4f} "
              f"(median {np.median(diff):.4f})")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
