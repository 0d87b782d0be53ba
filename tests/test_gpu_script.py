"""benchmarks/gpu.sh, the GPU issue's one prepared device run, checked where there is no GPU: SMOKE=1 runs
every step small on the CPU; each step must end well and leave its figures, one JSON line each."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
def test_the_device_script_runs_every_step_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "SMOKE": "1", "PYTHON": sys.executable, "PHOTO_DIR": str(tmp_path / "photos")}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    steps = (out / "steps.txt").read_text().splitlines()
    assert [line.split()[0] for line in steps] == ["env", "tests", "pass", "photos", "folder", "render", "scaling"]
    assert all(" rc=0 " in line for line in steps), steps
    assert len(list(out.iterdir())) <= 8  # what the device tool brings back
    rows = {name: [json.loads(line) for line in (out / f"{name}.txt").read_text().splitlines()
                   if line.startswith("{")] for name in ("pass", "photos", "folder", "render", "scaling")}
    timed = [r for r in rows["pass"] if r["step"] == "pass"]
    assert [(r["precision"], r["arch"], r["batch"]) for r in timed] == [
        (p, a, b) for p in ("fp32", "bf16") for a in ("resnet18", "efficientnet_lite0") for b in (2, 4)]
    assert all(r["forward_images_s"] > 0 and r["explain_images_s"] > 0 for r in timed)
    maps = [r for r in rows["pass"] if r["step"] == "maps"]
    assert [(r["arch"], r["precision"]) for r in maps] == [("resnet18", "bf16"), ("efficientnet_lite0", "bf16")]
    assert all(set(r["largest_difference"]) == {"gradcam", "gradcampp"} for r in maps)
    (render,) = rows["render"]
    assert render["cpu_figures_s"] > 0 and render["device_figures_s"] > 0 and render["heat_pixels_differing"] < 1e-3
    assert rows["photos"][0]["count"] == 24 and len(list((tmp_path / "photos").glob("*.jpeg"))) == 24
    assert [r["batch"] for r in rows["folder"]] == [2, 4] and all(r["photos"] == 24 for r in rows["folder"])
    assert [r["threads"] for r in rows["scaling"]] == [1, 2] and all(r["photos"] == 12 for r in rows["scaling"])
    # the last run (the scaling step's) wrote every figure of each of its photos
    assert len(list((tmp_path / "photos.run" / "figures").glob("*.jpeg"))) == 12 * 5
