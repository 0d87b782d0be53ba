"""A shell loop of one-photo calls with a warm daemon, against one folder run and the loop without it.

Makes ``--photos`` 640x480 JPEGs from ``images/`` (crops, flips, re-encoded) in a temporary folder, starts a
daemon in a private folder of its own (``CAMPP_DAEMON_DIR``), and times, interleaved round by round, as
whole processes:

- ``folder``: one ``campp classify -f FOLDER/ -q --no-daemon`` of every photo;
- ``daemon loop``: one ``campp classify -f PHOTO -q`` per photo, each handed to the warm daemon;
- ``cold calls``: ``--cold`` one-photo calls without the daemon (``--no-daemon``), each paying for Python,
  torch and the model (the loop of them is their median times the photos: running all would take minutes).

Medians of ``--repeats`` rounds are printed, then the figures as JSON on the last line.

    python benchmarks/daemon.py --repeats 3
    python benchmarks/daemon.py --arch vgg16 --weights W.pth --photos 16
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_photos(folder: Path, count: int) -> list[Path]:
    from PIL import Image, ImageOps

    sources = sorted(p for p in (REPO / "images").iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    folder.mkdir(parents=True)
    photos = []
    for k in range(count):
        with Image.open(sources[k % len(sources)]) as im:
            im = im.convert("RGB")
            w, h = im.size
            box = (k * 7 % max(1, w // 8), k * 5 % max(1, h // 8), w - k * 3 % max(1, w // 8), h)
            im = im.crop(box).resize((640, 480))
            if k % 2:
                im = ImageOps.mirror(im)
            path = folder / f"photo{k:03d}.jpg"
            im.save(path, quality=90 - k % 10)
            photos.append(path)
    return photos


def campp_command() -> list[str]:
    script = Path(sys.executable).parent / "campp"
    return [str(script)] if script.exists() else [sys.executable, "-m", "campp_cli"]


def timed(args: list, env: dict, cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run([*campp_command(), *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): campp {' '.join(map(str, args))}\n{proc.stderr}")
    return elapsed


def bare_python() -> float:
    """One start of this Python (with its site packages, as the console script starts), doing nothing."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - start


def served(env: dict) -> int:
    """Calls the daemon has run so far (from ``campp daemon status``)."""
    status = subprocess.run([*campp_command(), "daemon", "status"], env=env, capture_output=True, text=True)
    line = next((line for line in status.stdout.splitlines() if line.startswith("served ")), "served -1")
    return int(line.split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument("--weights", default=None, help="a weights file (for vgg16: seeded random ones will do)")
    parser.add_argument("--photos", type=int, default=32)
    parser.add_argument("--cold", type=int, default=4, help="one-photo calls without the daemon, per round")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="campp-daemon-bench-"))
    daemon_dir = Path(tempfile.mkdtemp(prefix="cb", dir="/tmp")) / "d"
    env = {**os.environ, "CAMPP_DAEMON_DIR": str(daemon_dir), "CAMPP_DAEMON": "on"}
    model = ["--arch", args.arch] + (["--weights", args.weights] if args.weights else [])
    try:
        photos = make_photos(work / "photos", args.photos)
        subprocess.run([*campp_command(), "daemon", "start", "--idle", "30m"], env=env, check=True,
                       capture_output=True)
        timed(["classify", *model, "-f", photos[0], "-q", "--output-dir", work / "warm"], env, work)  # loads it
        rounds: dict[str, list[float]] = {"folder": [], "daemon loop": [], "daemon call": [], "cold call": []}
        for r in range(args.repeats):
            for out in ("a", "b", "c"):
                shutil.rmtree(work / out, ignore_errors=True)
            rounds["folder"].append(timed(["classify", *model, "-f", work / "photos", "-q", "--no-daemon",
                                           "--output-dir", work / "a"], env, work))
            calls = [timed(["classify", *model, "-f", p, "-q", "--output-dir", work / "b"], env, work)
                     for p in photos]
            if served(env) != (r + 1) * len(photos) + 1:
                raise SystemExit("a call did not go through the daemon (was campp's code edited meanwhile?)")
            rounds["daemon loop"].append(sum(calls))
            rounds["daemon call"].append(statistics.median(calls))
            cold = [timed(["classify", *model, "-f", p, "-q", "--no-daemon", "--output-dir", work / "c"], env, work)
                    for p in photos[:args.cold]]
            rounds["cold call"].append(statistics.median(cold))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in rounds.items()), flush=True)
        med = {k: statistics.median(v) for k, v in rounds.items()}
        med["cold loop (estimated)"] = med["cold call"] * args.photos
        print(f"\n{args.arch}, {args.photos} photos of 640x480, medians of {args.repeats} interleaved rounds:")
        floor = statistics.median(bare_python() for _ in range(9))
        print(f"  one folder run           {med['folder']:7.2f} s")
        print(f"  'python -c pass' x {args.photos}   {floor * args.photos:7.2f} s  (starting Python: {floor:.3f} s a "
              f"call, what any call costs)")
        print(f"  loop through the daemon  {med['daemon loop']:7.2f} s  ({med['daemon loop'] / med['folder']:.2f}x "
              f"the folder run; {med['daemon call']:.3f} s a call)")
        print(f"  loop without it          {med['cold loop (estimated)']:7.2f} s  ({med['cold call']:.2f} s a call "
              f"x {args.photos}; {med['cold loop (estimated)'] / med['daemon loop']:.1f}x the daemon loop)")
        print(json.dumps({"arch": args.arch, "photos": args.photos, "repeats": args.repeats, "python start": floor,
                          **med}))
    finally:
        subprocess.run([*campp_command(), "daemon", "stop"], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(daemon_dir.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
