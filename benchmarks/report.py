"""How fast a big --report opens: N cards in headless Chromium, and the page's size.

    python benchmarks/report.py --cards 10000 50000 [--repeat 5] [--chromium /usr/bin/chromium]

Each report is written by campp's own :class:`campp_cli.outputs.report.Report` from results shaped as a classify
run with three methods and --labels-from-folders gives them (real JPEG thumbnails of the committed photos,
top-5, disagreement, true class).  Measured: the HTML file's size, the size of its image folder per image,
and the time from navigation to the page's script having drawn its first cards (``data-ready``) and to the
``load`` event, median of ``--repeat`` fresh pages.  Needs Playwright and a chromium.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from campp_cli.draw import geometry, panels  # noqa: E402
from campp_cli.io import decode  # noqa: E402
from campp_cli.outputs.report import Report  # noqa: E402
from campp_cli.outputs.report_cards import card_assets  # noqa: E402
from campp_cli.run.options import Result  # noqa: E402

METHODS = ["gradcam", "gradcampp", "eigencam"]
CLASSES = [f"class {i}" for i in range(1000)]


def cards_from_photos(side: int = 224) -> list[dict]:
    """Card images as a run would make them, from the committed photos and made-up maps."""
    rng = np.random.default_rng(0)
    cards = []
    for path in sorted((REPO / "images").glob("*.*g")):
        square = geometry.display_square(decode.open_photo(path), "crop", side)
        maps = {m: rng.random((7, 7)).astype(np.float32) for m in METHODS}
        heat = {f"_{m}_heatmap": panels.colorize(geometry.upsample(c, side)) for m, c in maps.items()}
        shown = [square] + [panels.with_colour_bar(panels.overlay(square, h)) for h in heat.values()]
        cards.append(card_assets(square, {"": panels.side_by_side(shown), **heat}, maps))
    return cards


def write_report(folder: Path, n: int, cards: list[dict]) -> Path:
    path = folder / f"report_{n}.html"
    rng = np.random.default_rng(n)
    report = Report(path, "classify", {"model": "benchmark", "argv": f"campp classify ... ({n} cards)"},
                    METHODS, CLASSES, n, every=10**9)
    t0 = time.perf_counter()
    for i in range(n):
        c = int(rng.integers(1000))
        probs = np.sort(rng.dirichlet(np.ones(5)))[::-1]
        result = Result(f"val/class {c}/img_{i:06d}.JPEG", c, CLASSES[c], float(probs[0]),
                        [(c + k, CLASSES[(c + k) % 1000], float(p)) for k, p in enumerate(probs)])
        result.extra["card"] = dict(cards[i % len(cards)])
        report.add(result)
    report.close()
    print(f"{n} cards: written in {time.perf_counter() - t0:.1f} s", flush=True)
    return path


def measure(browser, path: Path, repeat: int) -> tuple[float, float]:
    ready, loaded, errors = [], [], []
    for _ in range(repeat):
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(path.as_uri(), wait_until="load")
        page.wait_for_selector("html[data-ready='1']")
        t = page.evaluate("""() => {
            const nav = performance.getEntriesByType('navigation')[0];
            return [performance.getEntriesByName('campp-ready')[0].startTime, nav.loadEventEnd];
        }""")
        if errors:
            raise SystemExit(f"page errors: {errors}")
        ready.append(t[0])
        loaded.append(t[1])
        page.close()
    return statistics.median(ready), statistics.median(loaded)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cards", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    cards = cards_from_photos()
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        print(f"chromium {browser.version}, {args.repeat} loads each, median")
        for n in args.cards:
            path = write_report(Path(tmp), n, cards)
            assets = sum(f.stat().st_size for f in path.with_name(path.stem + "_files").rglob("*.jpeg"))
            ready, loaded = measure(browser, path, args.repeat)
            print(f"{n:>7} cards: page {path.stat().st_size / 1e6:.2f} MB ({path.stat().st_size / n:.0f} B a "
                  f"card), images {assets / n / 1e3:.1f} kB a card (thumbnail "
                  f"{np.mean([len(c['thumb']) for c in cards]) / 1e3:.1f} kB); first cards drawn at {ready:.0f} ms, "
                  f"load event at {loaded:.0f} ms", flush=True)
        browser.close()


if __name__ == "__main__":
    main()
