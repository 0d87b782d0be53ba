"""Shared fixtures: a seeded random VGG16 saved once per session, never any network.

The weights are saved under torchvision's own file name in a temporary
TORCH_HOME cache, so campp's real weight-finding and loading code runs.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

# Before anything imports torch.hub: a private cache, no models/ folder, no downloads.
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="campp-tests-"))
# The random VGG16 in it is 528 MB: remove it at exit, also after failures and Ctrl-C.
atexit.register(shutil.rmtree, _SESSION_DIR, ignore_errors=True)
os.environ["TORCH_HOME"] = str(_SESSION_DIR / "torch_home")
os.environ["CAMPP_MODELS"] = str(_SESSION_DIR / "no_models_here")
os.environ["CAMPP_OFFLINE"] = "1"
# Every run in its own process unless a test says otherwise (tests/test_daemon.py): a developer's daemon stays
# out of the tests, and theirs out of it.
os.environ["CAMPP_DAEMON"] = "off"
os.environ["CAMPP_DAEMON_DIR"] = str(_SESSION_DIR / "daemon")

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "images"
VGG16_FILE = "vgg16-397923af.pth"

#: A tiny classifier of three classes as your own model's file (``--model net.py:build``): two convolutions,
#: then a global average pool and one linear layer (a head CAM applies to).
POOLED_NET = '''
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
'''


@pytest.fixture(scope="session")
def vgg_weights() -> Path:
    """A seeded random VGG16 state_dict in the temporary torch cache."""
    import torch
    import torchvision

    path = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints" / VGG16_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1234)
    torch.save(torchvision.models.vgg16().state_dict(), path)
    return path


@pytest.fixture(scope="session")
def vgg(vgg_weights):
    """The classifier as campp loads it (CPU)."""
    from campp_cli.models.loading import load_classifier

    return load_classifier("vgg16", device="cpu")


@pytest.fixture()
def run_cli(capsys):
    """Run ``campp ARGS`` in this process; return (exit code, stdout, stderr)."""
    from campp_cli.cli.main import main

    def run(*args: str):
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            main([str(a) for a in args])
        out, err = capsys.readouterr()
        return info.value.code, out, err

    return run


def write_image(path: Path, width: int, height: int, seed: int = 0, fmt: str | None = None) -> Path:
    """A smooth random colour image (compresses well, looks like something)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((width, height), Image.BILINEAR)
    img.save(path, format=fmt)
    return path


def fresh_campp(args, cwd, stdin: str = "", module: str = "torch") -> tuple[int, bool, str]:
    """``campp ARGS`` in a fresh interpreter: (exit code, whether ``module`` was imported, stderr)."""
    import subprocess

    code = ("import sys\nfrom campp_cli.cli.main import main\ntry:\n    main(sys.argv[1:])\n"
            f"except SystemExit as e:\n    print({module!r} in sys.modules, e.code)\n")
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          input=stdin)
    loaded, exit_code = proc.stdout.split()[-2:]
    return int(exit_code), loaded == "True", proc.stderr


@pytest.fixture(scope="session")
def sys_executable() -> str:
    return sys.executable


def read_terminal(master: int) -> bytes:
    """Everything written to a pseudo-terminal's other end until its child closes it."""
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)
