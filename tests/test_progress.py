"""Progress during long runs: the bar moves with Score-CAM's batches of passes on a terminal (a real
pseudo-terminal here), and a long run on a pipe prints a progress line every few seconds."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest
from conftest import IMAGES, REPO, read_terminal

SCORECAM_ONE_PHOTO = ["-m", "campp_cli", "classify", "--arch", "efficientnet_lite0", "-f", str(IMAGES / "coffee.png"),
                      "--methods", "gradcam,scorecam", "--score-batch", "96"]


def _env(**extra) -> dict:
    env = {**os.environ, "COLUMNS": "120", "PYTHONPATH": str(REPO), **extra}
    env.pop("CAMPP_PROGRESS_INTERVAL", None)
    env.update(extra)
    return env


@pytest.mark.slow
def test_scorecam_moves_the_bar_on_a_terminal_with_an_eta(tmp_path):
    """One photo, Score-CAM: the bar is redrawn for every batch of passes, its count goes up, and an ETA is
    shown while passes remain (the issue: drawn once, at the end, after 39 s)."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, *SCORECAM_ONE_PHOTO, "--output-dir", str(tmp_path)], cwd=tmp_path,
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=_env())
    os.close(slave)
    text = read_terminal(master).decode("utf-8", "replace")
    assert proc.wait(timeout=300) == 0, text
    os.close(master)
    draws = [d for d in text.split("\r\x1b[K") if d.startswith("explaining")]
    counts = [int(m.group(1)) if m else 0
              for m in (re.search(r"\((\d+) extra forward passes\)", d) for d in draws)]
    moving = [c for c in counts if c]
    assert len(set(moving)) >= 3, draws  # at least three batches of 96 passes, each drawn
    assert moving == sorted(moving)
    assert any("ETA " in d for d in draws if "0/1" in d), draws  # an ETA before the photo is done
    assert "1/1" in draws[-1] and "[" + "#" * 20 + "]" in draws[-1]


@pytest.mark.slow
def test_a_long_run_on_a_pipe_prints_progress_lines(tmp_path):
    """stderr a pipe: with the interval lowered to 0 every batch of passes prints a line; with the default
    interval (10 s) a short run prints none."""
    proc = subprocess.run([sys.executable, *SCORECAM_ONE_PHOTO, "--output-dir", str(tmp_path / "a")],
                          cwd=tmp_path, capture_output=True, text=True, env=_env(CAMPP_PROGRESS_INTERVAL="0"),
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.startswith("campp: progress: ")]
    assert len(lines) >= 3, proc.stderr
    passes = [int(re.search(r"(\d+) extra forward passes", x).group(1)) for x in lines if "extra" in x]
    assert len(set(passes)) >= 3 and passes == sorted(passes)
    assert any("left" in x for x in lines) and "\r" not in proc.stderr and "\x1b" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "campp_cli", "classify", "--arch", "efficientnet_lite0",
                           "-f", str(IMAGES / "coffee.png"), "-f", str(IMAGES / "chelsea.png"),
                           "--output-dir", str(tmp_path / "b")],
                          cwd=tmp_path, capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "campp: progress" not in proc.stderr


def test_progress_counts_planned_passes_into_the_eta(monkeypatch):
    """Without the CLI: the share of work done counts passes once they are planned, and the pipe's lines
    follow the interval (env var)."""
    from campp_cli.cli import progress

    monkeypatch.setenv("CAMPP_PROGRESS_INTERVAL", "0")
    out = io.StringIO()
    p = progress.Progress(2, out, tty=False)
    assert p.every == 0
    p.planned(100, 2)  # two images, 100 passes in all, none run yet
    assert p.fraction() == 0
    p(50)
    assert 0.45 < p.fraction() < 0.5  # 50 of 2 images x (1 + 50 passes each) units
    p(50)
    p.update(1)
    p.update(1)
    assert p.fraction() == 1
    lines = out.getvalue().splitlines()
    assert len(lines) == 5 and all(x.startswith("campp: progress: ") for x in lines)
    monkeypatch.setenv("CAMPP_PROGRESS_INTERVAL", "not a number")
    assert progress.Progress(1, out, tty=False).every == progress.INTERVAL
