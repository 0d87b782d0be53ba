"""The README's pictures are what the current code makes: each classify figure in docs/ is remade by the
same command tools/screenshots.py runs, and must have the same size (a renderer change that moves a panel,
a bar or a caption shows up here; remake them with ``python tools/screenshots.py``)."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import REPO
from PIL import Image


def _screenshots():
    spec = importlib.util.spec_from_file_location("screenshots", REPO / "tools" / "screenshots.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("name", ["chelsea_efficientnet_lite0.jpeg", "coffee_efficientnet_lite0.jpeg",
                                  "two_espresso_efficientnet_lite0.jpeg",
                                  "coffee_all_methods_efficientnet_lite0.jpeg",
                                  "astronaut_space_shuttle_efficientnet_lite0.jpeg",
                                  "chelsea_top3_efficientnet_lite0.jpeg"])
def test_docs_figures_are_what_the_script_makes(name, tmp_path):
    tool = _screenshots()
    assert set(tool.FIGURES) >= {name}
    made = tool.figure(name, tmp_path)
    with Image.open(made) as fresh, Image.open(REPO / "docs" / name) as committed:
        assert fresh.size == committed.size, f"docs/{name} is stale: run python tools/screenshots.py"
