"""PNG encoding of one photo's figure set: zlib levels and strategies, time and size (and JPEG's for scale).

Makes the five figures of ``images/chelsea.png`` with EfficientNet-Lite0 (``campp classify --format png``),
reads them back (lossless), then encodes the set with each setting, interleaved, ``--repeats`` times;
prints medians per set, then the figures as JSON on the last line.

    python benchmarks/png.py --repeats 15
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

import cv2
import numpy as np

from campp_cli.draw.encode import encode_jpeg

REPO = Path(__file__).resolve().parents[1]

SETTINGS = {
    "level 0 (stored)": [cv2.IMWRITE_PNG_COMPRESSION, 0],
    "level 1": [cv2.IMWRITE_PNG_COMPRESSION, 1],
    "level 1, RLE": [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE],
    "level 1, Huffman only": [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY,
                              cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY],
    "level 2": [cv2.IMWRITE_PNG_COMPRESSION, 2],
    **({
        "level 1, RLE, filter up": [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY,
                                    cv2.IMWRITE_PNG_STRATEGY_RLE, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP],
        "level 1, RLE, filter sub": [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY,
                                     cv2.IMWRITE_PNG_STRATEGY_RLE, cv2.IMWRITE_PNG_FILTER,
                                     cv2.IMWRITE_PNG_FILTER_SUB],
        "level 1, filter up (campp)": [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER,
                                       cv2.IMWRITE_PNG_FILTER_UP],
        "level 1, filter sub": [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB],
    } if hasattr(cv2, "IMWRITE_PNG_FILTER") else {}),
    "level 3 (before)": [cv2.IMWRITE_PNG_COMPRESSION, 3],
    "level 6": [cv2.IMWRITE_PNG_COMPRESSION, 6],
}


def figures(folder: Path) -> list[np.ndarray]:
    env = dict(os.environ, CAMPP_OFFLINE="1")
    subprocess.run([sys.executable, "-m", "campp_cli", "classify", "--arch", "efficientnet_lite0", "-f",
                    str(REPO / "images" / "chelsea.png"), "--format", "png", "--output-dir", str(folder),
                    "-gpu", "-1", "-q"], check=True, env=env)
    return [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(folder.glob("*.png"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bgr = figures(Path(tmp))
    pixels = sum(a.shape[0] * a.shape[1] for a in bgr)
    encoders = {name: (lambda a, p=params: cv2.imencode(".png", a, p)[1].tobytes()) for name, p_ in
                SETTINGS.items() for params in [p_]}
    encoders["jpeg 92 (Pillow)"] = lambda a: encode_jpeg(np.ascontiguousarray(a[..., ::-1]))
    times = {k: [] for k in encoders}
    sizes = {}
    for _ in range(args.repeats):
        for name, encode in encoders.items():
            start = time.perf_counter()
            out = [encode(a) for a in bgr]
            times[name].append(time.perf_counter() - start)
            sizes[name] = sum(len(b) for b in out)
    for name, params in SETTINGS.items():  # lossless: every setting decodes to the same pixels
        for a in bgr:
            back = cv2.imdecode(np.frombuffer(cv2.imencode(".png", a, params)[1], np.uint8), cv2.IMREAD_UNCHANGED)
            assert np.array_equal(back, a), name
    results = {}
    for name in encoders:
        ms = statistics.median(times[name]) * 1000
        results[name] = {"ms_per_set": round(ms, 1), "bytes_per_set": sizes[name]}
        print(f"{name:24s} {ms:7.1f} ms  {sizes[name] / 1e6:6.2f} MB per set of {len(bgr)} "
              f"({pixels / 1e6:.2f} Mpx)")
    print(json.dumps({"figures": len(bgr), "megapixels": round(pixels / 1e6, 3), "repeats": args.repeats,
                      "results": results}))


if __name__ == "__main__":
    main()
