"""Speed benchmarks: ``python benchmarks/bench.py [--device cpu] [--images 32]``; prints JSON.

Contenders are interleaved in one process (forward, campp, torchcam,
pytorch-grad-cam, forward, campp, ...) so that machine noise hits them alike;
the medians are reported.  Weights are random (speed does not depend on their
values), so nothing is downloaded.  torchcam and pytorch-grad-cam are the test
extras; a contender whose package is missing is left out.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from campp_cli.cam.explain import explain


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def contenders(model: torch.nn.Module, prepared: torch.nn.Module, layer: str, x: torch.Tensor) -> dict:
    """name -> a function computing what that tool needs for Grad-CAM and Grad-CAM++ of one batch.

    ``model`` is the network as torchvision builds it, which is what the other
    libraries are given (as their users would); ``prepared`` is the same
    network as campp loads it (channels-last; on the CPU, convolutions prepacked
    and linear layers with a sparse input gradient; see models.loading.prepare_module).
    """
    module = dict(model.named_modules())[layer]

    def forward():
        with torch.no_grad():
            model(x)

    def forward_as_loaded():
        with torch.no_grad():
            prepared(x)

    def campp():
        explain(prepared, layer, x)

    found = {"forward": forward, "forward_as_loaded": forward_as_loaded, "campp": campp}
    try:
        from torchcam.methods import GradCAM, GradCAMpp

        def torchcam_both():
            # The cheapest use of torchcam for both maps: one forward, two backward passes.
            with GradCAM(model, layer) as gc, GradCAMpp(model, layer) as gpp:
                scores = model(x)
                cls = scores.argmax(1).tolist()
                gc(cls, scores, retain_graph=True)
                gpp(cls, scores)

        def torchcam_one_by_one():
            # Its documented use, one extractor per method: a forward and a backward each.
            for klass in (GradCAM, GradCAMpp):
                with klass(model, layer) as extractor:
                    scores = model(x)
                    extractor(scores.argmax(1).tolist(), scores)

        found["torchcam_shared_forward"] = torchcam_both
        found["torchcam_one_by_one"] = torchcam_one_by_one
    except ImportError:
        pass
    try:
        from pytorch_grad_cam import GradCAM as PGradCAM
        from pytorch_grad_cam import GradCAMPlusPlus

        def pytorch_grad_cam_both():
            for klass in (PGradCAM, GradCAMPlusPlus):
                with klass(model=model, target_layers=[module]) as cam:
                    cam(input_tensor=x, targets=None)

        found["pytorch_grad_cam"] = pytorch_grad_cam_both
    except ImportError:
        pass
    return found


def bench_one_pass(model, prepared, layer, x, device, repeats: int) -> dict:
    fns = contenders(model, prepared, layer, x)
    for fn in fns.values():  # warm-up: allocator, cuDNN autotuning, lazy imports
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_timed(fn, device))
    median = {name: statistics.median(t) for name, t in times.items()}
    return {
        "seconds_median": {k: round(v, 4) for k, v in median.items()},
        "times_a_forward": {k: round(v / median["forward"], 3) for k, v in median.items()},
        "campp_speedup": {k: round(v / median["campp"], 2) for k, v in median.items()
                          if not k.startswith("forward") and k != "campp"},
    }


def _run(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}")
    return time.perf_counter() - start


def bench_cli(arch: str, weights: Path, n: int, device_flag: str, workdir: Path, repeats: int = 3) -> dict:
    """End to end: one run over n photos vs n single runs vs start-up + n bare forwards.

    The one run and the floor are timed ``repeats`` times, interleaved (medians);
    the n single runs once (they take minutes).
    """
    from PIL import Image

    rng = np.random.default_rng(0)
    photos = workdir / "photos"
    photos.mkdir()
    for i in range(n):
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize((640, 480), Image.BILINEAR).save(photos / f"{i:03d}.jpg", quality=90)
    env = dict(os.environ, CAMPP_OFFLINE="1", PYTHONWARNINGS="ignore")
    campp = [sys.executable, "-m", "campp_cli"]
    common = ["--arch", arch, "--weights", str(weights), "-gpu", device_flag, "--quiet"]
    # The floor: start Python, import torch, load the model, n bare forwards.
    floor_code = (
        "import torch\n"
        "from campp_cli.models.loading import load_classifier\n"
        f"clf = load_classifier({arch!r}, weights={str(weights)!r}, "
        f"device={'cpu' if device_flag == '-1' else 'cuda:' + device_flag!r})\n"
        "x = torch.rand(1, 3, clf.input_size, clf.input_size, device=clf.device)\n"
        "with torch.no_grad():\n"
        f"    for _ in range({n}): clf.module(clf.preprocessing(x))\n"
        "if clf.device.type == 'cuda': torch.cuda.synchronize()\n"
    )
    if hasattr(os, "sync"):
        os.sync()  # the weights just written must not be flushed to disk during a timed run
    one_runs, floors = [], []
    for k in range(repeats):  # interleaved, medians: a slow moment hits both alike
        one_runs.append(_run([*campp, "classify", "-f", str(photos), "--output-dir", str(workdir / f"batch{k}"),
                              *common], env))
        floors.append(_run([sys.executable, "-c", floor_code], env))
    one_run, floor = statistics.median(one_runs), statistics.median(floors)
    singles = sum(
        _run([*campp, "classify", "-f", str(p), "-o", f"{p.stem}.jpeg", "--output-dir", str(workdir / "single"),
              *common], env)
        for p in sorted(photos.iterdir())
    )
    return {
        "images": n,
        "one_run_s": round(one_run, 2),
        "single_runs_s": round(singles, 2),
        "startup_plus_bare_forwards_s": round(floor, 2),
        "speedup_vs_single_runs": round(singles / one_run, 2),
        "one_run_vs_floor": round(one_run / floor, 3),
    }


def bench_help(repeats: int = 5) -> dict:
    env = dict(os.environ)
    times = [_run([sys.executable, "-m", "campp_cli", "--help"], env) for _ in range(repeats)]
    return {"campp_help_s_median": round(statistics.median(times), 3)}


def bench_throughput(model, layer, device, size: int, batch_sizes: list[int], seconds: float = 5.0) -> dict:
    """Images per second of the one-pass explanation (both maps) by batch size, model work only."""
    out = {}
    for bs in batch_sizes:
        x = torch.rand(bs, 3, size, size, device=device)
        explain(model, layer, x)
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            explain(model, layer, x)
            done += bs
        _sync(device)
        out[str(bs)] = round(done / (time.perf_counter() - start), 1)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vgg16")
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--images", type=int, default=32, help="photos for the end-to-end comparison (0: skip)")
    parser.add_argument("--throughput", default="", help="comma-separated batch sizes for images/s (e.g. 1,8,32)")
    args = parser.parse_args(argv)

    from campp_cli.models.layers import default_layer
    from campp_cli.models.loading import prepare_module
    from campp_cli.models.spec import get_arch

    device = torch.device(args.device)
    spec = get_arch(args.arch)
    torch.manual_seed(0)
    model = spec.build().eval().to(device)
    prepared = prepare_module(copy.deepcopy(model), device)
    layer = default_layer(spec, model, device)
    x = spec.preprocessing(torch.rand(1, 3, spec.input_size, spec.input_size, device=device))
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"},
        "model": {"arch": args.arch, "layer": layer, "input": spec.input_size},
        "one_image_both_maps": bench_one_pass(model, prepared, layer, x, device, args.repeats),
    }
    if args.throughput:
        sizes = [int(s) for s in args.throughput.split(",")]
        report["images_per_second_by_batch"] = bench_throughput(prepared, layer, device, spec.input_size, sizes)
    report.update(bench_help())
    print(json.dumps(report, indent=2), flush=True)
    if args.images > 0:
        with tempfile.TemporaryDirectory(prefix="campp-bench-") as tmp:
            weights = Path(tmp) / f"{args.arch}.pth"
            torch.save(model.state_dict(), weights)
            flag = "-1" if device.type == "cpu" else str(device.index or 0)
            report["end_to_end"] = bench_cli(args.arch, weights, args.images, flag, Path(tmp))
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
