"""The README's commands work as written: every ```sh command runs in a fresh folder laid out like a clone
(or, where it needs what a test machine cannot have, is listed in SKIP with the reason and its campp
command line is at least parsed by campp's own parser), and every ```python block runs in a subprocess.

A newcomer copies these commands into a shell right after the set-up: no activated virtual environment,
no ImageNet, no network."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")

#: Commands that cannot run here, each with why (matched by the start of the command, after joining lines).
SKIP = {
    "python3 -m venv .venv": "creates the environment these tests run in",
    ".venv/bin/pip install -e '.[offline]'": "installs from the network",
    ".venv/bin/pip install -e '.[test]'": "installs from the network",
    ".venv/bin/pip install --no-deps quantus": "installs from the network",
    ".venv/bin/python -m pytest": "the test suite itself",
    ".venv/bin/pip install -e '.[ray]'": "installs from the network, on every node of a cluster",
    ".venv/bin/ray start --head": "starts a Ray cluster",
    ".venv/bin/campp classify -f ~/imagenet/val": "needs ImageNet and VGG16's weights (a download)",
    "find photos -name": "needs a folder of your photos",
    ".venv/bin/campp classify --arch efficientnet_lite0 -f val/": "needs a labelled val/ tree",
    ".venv/bin/campp classify -f /shared/val": "needs a Ray cluster and a shared filesystem",
    ".venv/bin/campp evaluate -f /shared/val": "needs a Ray cluster and a shared filesystem",
    ".venv/bin/campp evaluate --arch vgg16 -f /path/to/ILSVRC2012/val": "needs ImageNet, VGG16's weights, a GPU",
    ".venv/bin/campp classify --arch resnet18 --num-classes 10": "needs your fine-tuned weights and photos",
}


def sh_blocks(text: str = README) -> list[list[str]]:
    """The commands of every ```sh block, a command per line (backslash continuations joined); a chain
    ``a && b`` is one command per part."""
    blocks = []
    for body in re.findall(r"^[ \t]*```sh\n(.*?)^[ \t]*```", text, re.S | re.M):
        body = textwrap.dedent(body).replace("\\\n", " ")
        commands = []
        for line in body.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands += [part.strip() for part in line.split(" && ")]
        blocks.append(commands)
    return blocks


def python_blocks(text: str = README) -> list[str]:
    return [textwrap.dedent(b) for b in re.findall(r"^[ \t]*```python\n(.*?)^[ \t]*```", text, re.S | re.M)]


def skipped(command: str) -> str | None:
    return next((why for start, why in SKIP.items() if command.startswith(start)), None)


def stages(command: str) -> list[str]:
    """A command's pipeline stages; a shell loop ``for X in ...; do BODY; done`` stands for its body's."""
    loop = re.fullmatch(r"for \w+ in [^;]+; do (.+); done", command)
    return stages(loop.group(1)) if loop else command.split(" | ")


def campp_args(command: str) -> list[list[str]]:
    """The arguments of every campp call in ``command`` (a pipeline's stages too), comments dropped."""
    calls = []
    for stage in stages(command):
        words = shlex.split(stage, comments=True)
        if words and words[0] in (".venv/bin/campp", "campp"):
            calls.append(words[1:])
    return calls


COMMANDS = [c for block in sh_blocks() for c in block]


def test_the_readme_has_the_commands_this_test_reads():
    assert len(sh_blocks()) >= 8 and len(COMMANDS) >= 20
    assert len(python_blocks()) >= 3
    unused = [s for s in SKIP if not any(c.startswith(s) for c in COMMANDS)]
    assert not unused, f"SKIP lists commands the README no longer has: {unused}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_calls_the_environments_programs_by_path(command):
    """The set-up never activates the environment: a bare `campp` is not on PATH and a bare `python`
    has no torch (the issue: `python examples/shapes.py` -> No module named 'torch')."""
    for stage in stages(command):
        program = shlex.split(stage, comments=True)[0]
        assert program not in ("campp", "python", "pip", "ray"), command
        if program.startswith(".venv/bin/"):
            continue
        assert program in ("python3", "find"), f"{program}: not a program the set-up provides ({command})"


@pytest.mark.parametrize("command", [c for c in COMMANDS if campp_args(c)])
def test_every_campp_command_line_parses(command):
    """campp's own parser (click, torch-free) accepts each campp call: the subcommand, every option and
    every option's value type; runnable or not."""
    from campp_cli.cli.main import cli

    for args in campp_args(command):
        words = list(args)
        while words and words[0].startswith("--") and words[0] in ("--debug",):
            words.pop(0)
        sub = cli.commands.get(words[0])
        assert sub is not None, f"no campp subcommand {words[0]!r}: {command}"
        sub.make_context(words[0], words[1:])  # raises click's UsageError on an unknown option or bad value


def _clone_like(folder: Path) -> Path:
    """A folder laid out like a fresh clone after the set-up: the repository's files (links) and .venv."""
    for name in ("images", "examples", "campp_cli", "pyproject.toml"):
        (folder / name).symlink_to(REPO / name)
    (folder / ".venv").symlink_to(Path(sys.prefix))  # the environment these tests run in
    return folder


def _env() -> dict:
    # The environment's console script and interpreter, with this checkout's code first (an editable
    # install may point at another checkout).
    return {**os.environ, "PYTHONPATH": str(REPO), "CAMPP_OFFLINE": "1"}


@pytest.mark.slow
def test_every_runnable_sh_command_runs_as_written(tmp_path):
    """In README order, in one folder (the shapes commands use what the one before wrote), each exits 0;
    the quick start ends by naming the report's address, and that page is there."""
    folder = _clone_like(tmp_path)
    ran = []
    for command in COMMANDS:
        if skipped(command):
            continue
        proc = subprocess.run(command, shell=True, cwd=folder, env=_env(), capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"{command}\n{proc.stderr[-3000:]}"
        ran.append(command)
        if "--report output/report.html" in command:
            url = re.search(r"open (file://\S+)", proc.stderr).group(1)
            assert url == (folder / "output" / "report.html").absolute().as_uri()
            assert (folder / "output" / "report.html").stat().st_size > 1000
    assert any("examples/shapes.py" in c for c in ran) and any("--report output/report.html" in c for c in ran)
    assert len(ran) >= 8


def _run_python(code: str, folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(folder / ".venv" / "bin" / "python"), "-c", code], cwd=folder, env=_env(),
                          capture_output=True, text=True, timeout=600)


def test_the_register_method_example_runs(tmp_path):
    """The README's `register_method` example, as printed (it once lacked `import torch`)."""
    (block,) = [b for b in python_blocks() if "register_method(" in b]
    proc = _run_python(block, _clone_like(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len([b for b in python_blocks() if "register_method(" not in b])))
def test_the_other_python_examples_run(tmp_path, index):
    """"From Python" and the notebook example (Score-CAM among `list_methods()`: slow)."""
    block = [b for b in python_blocks() if "register_method(" not in b][index]
    proc = _run_python(block, _clone_like(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
