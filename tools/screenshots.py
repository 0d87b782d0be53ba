"""The README's pictures, made from real runs of the current code.

    python tools/screenshots.py [--chromium /usr/bin/chromium] [--figures-only]

0. the figures ``campp classify`` writes (EfficientNet-Lite0, offline): ``docs/chelsea_efficientnet_lite0.jpeg``,
   ``docs/coffee_efficientnet_lite0.jpeg``, ``docs/coffee_all_methods_efficientnet_lite0.jpeg``,
   ``docs/two_espresso_efficientnet_lite0.jpeg`` (the canvas of ``tests/test_archs.py``'s ``two_instances``) and
   the mean curves of ``campp evaluate --plot``: ``docs/evaluate_efficientnet_lite0.png`` (no browser needed;
   ``--figures-only`` stops here);

1. ``campp classify`` over the committed photos laid out in class folders (``--labels-from-folders``), with
   EfficientNet-Lite0 (offline), then the report and its lightbox in headless Chromium: ``docs/report.jpeg``,
   ``docs/report_lightbox.jpeg``;
2. ``campp evaluate --boxes`` with ``--report``: ``docs/report_evaluate.jpeg``;
3. a notebook cell calling ``explain_image``, executed by a real Jupyter kernel and converted by nbconvert
   to HTML, in the same browser: ``docs/notebook.jpeg``.

Needs the ``test`` extra, nbconvert, Playwright and a chromium.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
CAMPP = [sys.executable, "-m", "campp_cli"]
TREE = {"coffee.png": "espresso", "chelsea.png": "tabby", "camera.png": "tripod", "rocket.jpg": "missile",
        "astronaut.png": "space shuttle"}


def run(args: list, cwd: Path) -> None:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(map(str, args))}: {proc.stderr}")


def open_page(browser, path: Path, width: int, height: int):
    page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=1)
    page.goto(path.as_uri())
    page.wait_for_selector("html[data-ready='1']")
    page.wait_for_function("Array.from(document.images).every(i => i.complete)")
    return page


def notebook_html(tmp: Path) -> Path:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "from campp_cli import explain_image, load_classifier\n"
        "clf = load_classifier('efficientnet_lite0')\n"
        "explain_image('images/coffee.png', clf, methods='gradcam,gradcampp,layercam')")]
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    source = tmp / "notebook.ipynb"
    nbformat.write(nb, source)
    subprocess.run([sys.executable, "-m", "nbconvert", "--to", "html", str(source), "--output-dir", str(tmp)],
                   check=True, capture_output=True)
    return tmp / "notebook.html"


#: The classify figures the README shows: file in docs/ -> campp classify's arguments (EfficientNet-Lite0); the
#: espresso canvas is made by :func:`two_espresso`.
FIGURES = {
    "chelsea_efficientnet_lite0.jpeg": ["-f", REPO / "images" / "chelsea.png"],
    "coffee_efficientnet_lite0.jpeg": ["-f", REPO / "images" / "coffee.png"],
    "coffee_all_methods_efficientnet_lite0.jpeg": ["-f", REPO / "images" / "coffee.png", "--methods", "all",
                                                   "--sscam-samples", "2", "--iscam-steps", "2",
                                                   "--max-side", "300"],
    "two_espresso_efficientnet_lite0.jpeg": ["-f", "two_espresso.png", "-l", "967"],
    "astronaut_space_shuttle_efficientnet_lite0.jpeg": ["-f", REPO / "images" / "astronaut.png", "-l",
                                                        "space shuttle", "--max-side", "400"],
    "chelsea_top3_efficientnet_lite0.jpeg": ["-f", REPO / "images" / "chelsea.png", "-l", "top3", "--max-side",
                                             "300"],
}


def two_espresso(folder: Path) -> Path:
    """The canvas of tests/test_archs.py's two_instances: the espresso at 190 and 100 px on white."""
    from PIL import Image

    sys.path.insert(0, str(REPO / "tests"))
    from test_archs import two_instances

    from campp_cli.draw import geometry
    from campp_cli.io import decode

    obj = geometry.center_square(decode.load_rgb(REPO / "images" / "coffee.png"))
    Image.fromarray(two_instances(obj, 190, 100, False)[0]).save(folder / "two_espresso.png")
    return folder / "two_espresso.png"


def figure(name: str, folder: Path) -> Path:
    """One of :data:`FIGURES`, made in ``folder`` by a real ``campp classify`` run."""
    if name.startswith("two_espresso"):
        two_espresso(folder)
    run([*CAMPP, "classify", "--arch", "efficientnet_lite0", *FIGURES[name], "--output-dir", folder / "figures",
         "-o", name, "-q"], folder)
    return folder / "figures" / name


def figures(tmp: Path) -> list[Path]:
    """The comparison figures of classify and the curves of evaluate that the README shows, into docs/."""
    out = []
    for name in FIGURES:
        shutil.copy(figure(name, tmp), DOCS / name)
        out.append(DOCS / name)
    run([*CAMPP, "evaluate", "--arch", "efficientnet_lite0", "-f", REPO / "images", "--boxes",
         REPO / "images" / "boxes", "--plot", DOCS / "evaluate_efficientnet_lite0.png", "-q"], tmp)
    return out + [DOCS / "evaluate_efficientnet_lite0.png"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--figures-only", action="store_true", help="only step 0 (no browser)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        for path in figures(Path(name)):
            print(path)
    if args.figures_only:
        return
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as name, sync_playwright() as p:
        tmp = Path(name)
        for photo, cls in TREE.items():
            (tmp / "photos" / cls).mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / "images" / photo, tmp / "photos" / cls / photo)
        lite = ["--arch", "efficientnet_lite0"]
        run([*CAMPP, "classify", *lite, "-f", "photos", "--recursive", "--methods",
             "gradcam,gradcampp,layercam,eigencam", "--output-dir", "out", "--max-side", "320",
             "--report", "report.html",
             "--labels-from-folders", "-q"], tmp)
        run([*CAMPP, "evaluate", *lite, "-f", REPO / "images", "--boxes", REPO / "images" / "boxes", "--report",
             "evaluate.html", "-q"], tmp)
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])

        page = open_page(browser, tmp / "report.html", 1280, 820)
        page.screenshot(path=DOCS / "report.jpeg", type="jpeg", quality=85)
        page.click(".card.bad")
        page.wait_for_function("Array.from(document.querySelectorAll('#lb-panels img')).every(i => i.complete)")
        page.screenshot(path=DOCS / "report_lightbox.jpeg", type="jpeg", quality=85)
        page.close()

        page = open_page(browser, tmp / "evaluate.html", 1280, 1200)
        page.evaluate("document.getElementById('summary').scrollIntoView()")
        page.screenshot(path=DOCS / "report_evaluate.jpeg", type="jpeg", quality=85)
        page.close()

        nb = notebook_html(tmp)
        page = browser.new_page(viewport={"width": 1100, "height": 760})
        page.goto(nb.as_uri())
        page.wait_for_function("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        page.locator(".jp-Cell").first.screenshot(path=DOCS / "notebook.jpeg", type="jpeg", quality=85)
        page.close()
        browser.close()
    for name in ("report.jpeg", "report_lightbox.jpeg", "report_evaluate.jpeg", "notebook.jpeg"):
        print(DOCS / name)


if __name__ == "__main__":
    main()
