"""--report FILE.html: the page's data, its images, its refreshes, and the page itself in a real browser.

Browser tests drive Debian's chromium through Playwright (``executable_path``, no browser download); they
are skipped, saying why, where either is missing.  ``.ci/run`` installs both.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import IMAGES, POOLED_NET, REPO, fresh_campp, write_image
from PIL import Image

from campp_cli.outputs import report as rp
from campp_cli.outputs import report_cards as cards
from campp_cli.run.options import Result

LITE = ["--arch", "efficientnet_lite0"]
METHODS = ["gradcam", "gradcampp", "eigencam"]
CHROMIUM = os.environ.get("CAMPP_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def raw_page_data(path: Path) -> dict:
    """The JSON blob of a report page, read as a browser's script would find it."""
    text = path.read_text(encoding="utf-8")
    match = re.search(r'<script type="application/json" id="campp-data">(.*?)</script>', text, re.S)
    assert match, "no data blob"
    return json.loads(match.group(1))


def _named(names: list[str], row: list) -> dict:
    assert isinstance(row, list) and len(row) <= len(names), row
    return {k: v for k, v in zip(names, row) if v is not None}


def page_data(path: Path) -> dict:
    """The JSON blob of a report page, its records (arrays in the order of "columns") as dicts of named fields,
    each method's scores too (arrays in the order of "score_columns")."""
    data = raw_page_data(path)
    records = [_named(data["columns"], row) for row in data["records"]]
    for record in records:
        if "scores" in record:
            record["scores"] = {m: _named(data["score_columns"], s) for m, s in record["scores"].items()}
    return {**data, "records": records}


# ----------------------------------------------------------------------------- pure parts


def reference_disagreement(maps: list[np.ndarray]) -> float:
    """Mean over pairs of 1 - Pearson r, with NumPy's own correlation."""
    values = [1 - np.corrcoef(a.ravel(), b.ravel())[0, 1] for i, a in enumerate(maps) for b in maps[i + 1:]]
    return float(np.mean(values))


def test_disagreement_is_one_minus_correlation_averaged_over_pairs():
    rng = np.random.default_rng(3)
    for k in (2, 3, 5):
        maps = [rng.random((7, 7)).astype(np.float32) for _ in range(k)]
        got = cards.disagreement({f"m{i}": m for i, m in enumerate(maps)})
        assert got == pytest.approx(reference_disagreement(maps), abs=1e-6)


def test_disagreement_edge_cases():
    x = np.linspace(0, 1, 49, dtype=np.float32).reshape(7, 7)
    assert cards.disagreement({"a": x}) is None
    assert cards.disagreement({"a": x, "b": x}) == pytest.approx(0, abs=1e-9)
    assert cards.disagreement({"a": x, "b": 0.5 * x + 0.2}) == pytest.approx(0, abs=1e-6)  # scale and offset
    assert cards.disagreement({"a": x, "b": 1 - x}) == pytest.approx(2, abs=1e-6)  # opposite
    flat = np.full((7, 7), 0.3, np.float32)
    assert cards.disagreement({"a": flat, "b": flat}) == 0
    assert cards.disagreement({"a": flat, "b": x}) == 1
    # Different sizes are compared at the larger: a map and its own upsampling agree.
    import cv2

    big = cv2.resize(x, (14, 14), interpolation=cv2.INTER_LINEAR)
    assert cards.disagreement({"a": x, "b": big}) < 0.01


def test_true_class_from_folder_or_wordnet_prefix():
    names = ["cat", "Dog", "tiger cat"]
    assert cards.true_class("data/cat/1.png", names)[0] == 0
    assert cards.true_class("data/dog/1.png", names)[0] == 1  # ignoring case
    assert cards.true_class("data/tiger cat/x.jpg", names)[0] == 2
    assert cards.true_class("data/horse/1.png", names) == (None, "horse")
    wnids = (REPO / "campp_cli" / "data" / "imagenet_wnids.txt").read_text().split()
    thousand = [f"class {i}" for i in range(1000)]
    assert cards.true_class(f"val/{wnids[7]}/ILSVRC2012_val_1.JPEG", thousand)[0] == 7
    assert cards.true_class(f"flat/{wnids[42]}_10026.JPEG", thousand)[0] == 42  # the file name's prefix
    assert cards.true_class(f"flat/{wnids[42]}x.JPEG", thousand)[0] is None  # not a prefix followed by _ - .


def _fake_result(name: str, p: float = 0.5, card: bool = True) -> Result:
    result = Result(name, 1, "dog", p, [(1, "dog", p), (0, "cat", 1 - p)])
    if card:
        rgb = np.zeros((32, 64, 3), np.uint8)
        rgb[:, :32] = (200, 30, 30)
        jpeg = Image.fromarray(rgb)
        buf = io.BytesIO()
        jpeg.save(buf, "JPEG")
        result.extra["card"] = {"thumb": buf.getvalue(), "size": [240, 120], "photo": buf.getvalue(),
                                "heatmaps": {"gradcam": buf.getvalue()}, "disagreement": 0.25}
    return result


def _report(tmp_path, total, every=rp.DEFAULT_REPORT_EVERY, name="r.html"):
    return rp.Report(tmp_path / name, "classify", {"model": "m"}, ["gradcam"], ["cat", "dog"], total, every=every)


def test_page_data_survives_hostile_file_names(tmp_path):
    names = ["</script><script>document.title='pwned'</script>.png", "a<!--b.png", "caf\u00e9 \U0001F600.png",
             "bad\udcff.png", 'quote"and\'apostrophe&amp;.png']
    report = _report(tmp_path, len(names))
    for n in names:
        report.add(_fake_result(n))
    report.close()
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert text.count("</script>") == 2  # the data blob's and the code's, no more
    assert [r["input"] for r in page_data(tmp_path / "r.html")["records"]] == names


def test_records_assets_and_failures(tmp_path):
    report = _report(tmp_path, 3)
    report.add(_fake_result("x/one.png", 0.9))
    report.add(Result.failure("x/two.png", __import__("campp_cli.errors", fromlist=["InputError"]).InputError(
        "x/two.png: not an image")))
    report.add(Result("x/three.png", -1, "", 0.0, [], ["out/three.jpeg"], skipped=True))
    report.close()
    data = page_data(tmp_path / "r.html")
    one, two, three = data["records"]
    assert data["counts"] == {"done": 1, "failed": 1, "skipped": 1, "total": 3} and data["final"] is True
    assert one["probability"] == 0.9 and one["class_name"] == "dog" and one["top5"][0] == ["dog", 0.9]
    assert one["disagreement"] == 0.25 and one["class_index"] == 1 and one["thumb_size"] == [240, 120]
    assert two["error"] == "x/two.png: not an image" and three["skipped"]
    folder = tmp_path / "r_files" / "000"
    assert sorted(p.name for p in folder.iterdir()) == ["000000_heatmap_gradcam.jpeg", "000000_photo.jpeg",
                                                       "000000_thumb.jpeg"]
    assert Image.open(folder / "000000_thumb.jpeg").size == (64, 32)


def test_the_page_names_each_field_once_and_holds_each_card_as_an_array(tmp_path):
    """50,000 cards must not carry 50,000 copies of every field's name: the blob names the fields once
    ("columns", "top5_columns", "score_columns") and each record is an array in that order."""
    for n in (3, 60):
        report = _report(tmp_path, n, name=f"r{n}.html")
        for i in range(n):
            report.add(_fake_result(f"{i}.png", card=i % 2 == 0))
        report.close()
        data = raw_page_data(tmp_path / f"r{n}.html")
        assert data["columns"] == list(cards.COLUMNS) and data["top5_columns"] == ["class_name", "probability"]
        assert all(isinstance(row, list) and row[:3] == [f"{i}.png", 1, "dog"] for i, row in enumerate(data["records"]))
        assert all(row[-1] is not None for row in data["records"])  # absent last values are left out
        text = (tmp_path / f"r{n}.html").read_text(encoding="utf-8")
        assert text.count('"thumb_size"') == text.count('"disagreement"') == 1, n  # in "columns" only
    assert page_data(tmp_path / "r3.html")["records"][1] == {"input": "1.png", "class_index": 1, "class_name": "dog",
                                                             "probability": 0.5, "top5": [["dog", 0.5], ["cat", 0.5]]}


def _page_with(path: Path, data: dict) -> None:
    path.write_text('<html><script type="application/json" id="campp-data">' + json.dumps(data) + "</script></html>",
                    encoding="utf-8")


def test_a_page_of_an_older_format_is_no_earlier_run(tmp_path):
    """An earlier page whose records are objects with one-letter keys (campp before the records had column
    names), or whose rows are damaged: no crash, and a skipped image is a plain skipped card."""
    figure = tmp_path / "one.jpeg"
    figure.write_bytes(b"jpeg")
    stamp = cards.figure_stamp(figure)
    old = {"command": "classify", "methods": ["gradcam"], "records": [
        {"n": "x/one.png", "ci": 1, "c": "dog", "p": 0.9, "t5": [["dog", 0.9]], "wh": [240, 120], "f": stamp}]}
    damaged = {"command": "classify", "methods": ["gradcam"], "columns": list(cards.COLUMNS),
               "records": ["x/one.png", {"input": "x/one.png"}, [1, 2, 3] * 20, None]}
    for data in (old, damaged, {**old, "columns": list(cards.COLUMNS)}, {**damaged, "columns": "input"}):
        _page_with(tmp_path / "r.html", data)
        report = _report(tmp_path, 2)
        assert report._earlier == {}
        report.add(Result("x/one.png", -1, "", 0.0, [], [str(figure)], skipped=True))
        report.add(_fake_result("x/two.png"))
        report.close()
        one, two = page_data(tmp_path / "r.html")["records"]
        assert one == {"input": "x/one.png", "skipped": 1} and "image_slot" not in two
    # The page just written is of this format: a run after it finds what it found.
    report = _report(tmp_path, 1)
    assert set(report._earlier) == {("x/two.png", None)} and report._earlier[("x/two.png", None)][1] == 1


def test_page_is_rewritten_during_the_run_and_marked_final_at_the_end(tmp_path):
    report = _report(tmp_path, 7, every=2)
    page = tmp_path / "r.html"
    report.add(_fake_result("0.png"))
    assert not page.exists()
    report.add(_fake_result("1.png"))
    data = page_data(page)
    assert len(data["records"]) == 2 and data["final"] is False
    for i in range(2, 7):
        report.add(_fake_result(f"{i}.png"))
    assert len(page_data(page)["records"]) == 6  # the 7th waits for the next refresh, or close()
    report.close()
    assert len(page_data(page)["records"]) == 7 and page_data(page)["final"] is True


def test_refreshes_grow_apart_so_a_long_run_writes_the_page_few_times(tmp_path, monkeypatch):
    report = _report(tmp_path, 3000, every=1)
    writes = []
    monkeypatch.setattr(report, "write", lambda *a, **k: (writes.append(len(report.records)),
                                                          setattr(report, "_written_at", len(report.records))))
    for i in range(3000):
        report.add(_fake_result(f"{i}.png", card=False))
    gaps = np.diff([0] + writes)
    assert len(writes) < 120  # not 3,000
    assert all(g <= max(1, w // 10) + 1 for g, w in zip(gaps, [0] + writes))  # never more than a tenth behind


def test_report_usage_errors_come_before_torch(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    cases = [
        (["--report", "out.txt"], "give an .html file name"),
        (["--labels-from-folders"], "--labels-from-folders marks right and wrong predictions"),
        (["--report", "missing/r.html"], "does not exist"),
        (["--report", "a.png"], "would overwrite the input"),
        (["--report", "bad\udcff.html"], "valid UTF-8"),
    ]
    for command in ("classify", "evaluate"):
        for extra, message in cases:
            code, torch_loaded, err = fresh_campp([command, "-f", "a.png", *extra], tmp_path)
            assert code == 2 and message in err, (command, extra, err)
            assert not torch_loaded


# ----------------------------------------------------------------------------- real runs

WNIDS = (REPO / "campp_cli" / "data" / "imagenet_wnids.txt").read_text().split()
# photo -> (where it goes in the tree, the true class the report should read from that place)
TREE = {
    "coffee.png": ("espresso/coffee.png", "espresso"),  # Lite0: espresso, right
    "chelsea.png": ("tabby/chelsea.png", "tabby"),  # Lite0: Egyptian cat, wrong
    "camera.png": (f"{WNIDS[872]}/camera.png", "tripod"),  # a WordNet-id folder (ImageNet's val/ layout)
    "rocket.jpg": (f"misc/{WNIDS[657]}_rocket.jpg", "missile"),  # a WordNet id starting the file name
    "astronaut.png": ("misc/astronaut.png", None),  # no class: unmarked, one warning
}


def build_tree(root: Path) -> Path:
    for photo, (place, _) in TREE.items():
        (root / place).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(IMAGES / photo, root / place)
    (root / "misc" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return root


def _run(args):
    from campp_cli.cli.main import main

    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    return info.value.code


@pytest.fixture(scope="module")
def classify_run(tmp_path_factory):
    """A classify run over the tree with --report, --labels-from-folders and --jsonl (the independent record)."""
    base = tmp_path_factory.mktemp("report_classify")
    tree = build_tree(base / "photos")
    code = _run(["classify", *LITE, "-f", tree, "--recursive", "--methods", ",".join(METHODS), "--output-dir",
                 base / "out", "--max-side", "160", "--jsonl", base / "run.jsonl", "--report", base / "report.html",
                 "--labels-from-folders"])
    lines = [json.loads(line) for line in (base / "run.jsonl").read_text().splitlines()]
    return base, code, lines


def test_classify_report_of_a_real_run(classify_run, capsys):
    base, code, lines = classify_run
    assert code == 1  # one broken image
    data = page_data(base / "report.html")
    records = {Path(r["input"]).name: r for r in data["records"]}
    assert data["final"] and data["counts"] == {"done": 5, "failed": 1, "skipped": 0, "total": 6}
    assert data["methods"] == METHODS and data["header"]["model"] == "efficientnet_lite0"
    assert data["header"]["argv"].startswith("campp classify --arch efficientnet_lite0")
    for line in lines:
        name = Path(line["input"]).name
        record = records[name]
        if "error" in line:
            assert record["error"] == line["error"]
            continue
        assert record["class_name"] == line["name"] and record["class_index"] == line["class"]
        assert record["probability"] == pytest.approx(line["probability"], abs=1e-6)
        assert [n for n, _ in record["top5"]] == [t["name"] for t in line["top5"]]
        truth = dict(TREE.values()).get(next(p for p, _ in TREE.values() if Path(p).name == name))
        if truth is None:
            assert "correct" not in record and "true_class" not in record
        else:
            assert record["true_class"] == truth and record["correct"] == int(line["top5"][0]["name"] == truth)
        i = data["records"].index(record)
        for kind, method in [("thumb", None), ("photo", None), *[("heatmap", m) for m in METHODS]]:
            with Image.open(base / "report_files" / rp.asset_name(i, kind, method)) as im:
                im.load()
                if kind == "thumb":
                    assert im.height == cards.THUMB_HEIGHT
                else:
                    assert im.size == (160, 160)  # the panel size, as --max-side says
    assert sum(r.get("correct", 0) for r in data["records"]) >= 2
    assert any(r.get("correct") == 0 for r in data["records"])


def _slot_files(base: Path, data: dict, record: dict) -> list[Path]:
    slot = record.get("image_slot", data["records"].index(record))
    return [base / "r_files" / rp.asset_name(slot, kind, method)
            for kind, method in [("thumb", None), ("photo", None), *[("heatmap", m) for m in data["methods"]]]]


def test_a_resumed_run_shows_what_the_earlier_run_found(tmp_path):
    """Issue 24, 19: --skip-existing --report after a run keeps every skipped card's class, probability and
    pictures, even when the records' order changes; a figure rewritten since is no longer vouched for."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        write_image(photos / f"p{i}.png", 48, 40, seed=i)
    args = ["classify", *LITE, "-f", photos, "--output-dir", tmp_path / "o", "--report", tmp_path / "r.html",
            "--skip-existing", "-q"]
    assert _run(args) == 0
    data = page_data(tmp_path / "r.html")
    first = {r["input"]: r for r in data["records"]}
    p1 = str(photos / "p1.png")
    p1_images = [f.read_bytes() for f in _slot_files(tmp_path, data, first[p1])]
    # Now p1 is skipped (reported first, at index 0: p0's), p0 redone, and a new photo comes in.
    (tmp_path / "o" / "p0.jpeg").unlink()
    write_image(photos / "a.png", 48, 40, seed=7)
    assert _run(args) == 0
    data = page_data(tmp_path / "r.html")
    assert data["counts"] == {"done": 2, "failed": 0, "skipped": 1, "total": 3}
    records = {r["input"]: r for r in data["records"]}
    kept = records[p1]
    assert kept["skipped"] == 1 and data["records"].index(kept) == 0
    fields = ("class_index", "class_name", "probability", "top5", "thumb_size", "figure_stamp")
    assert [kept[k] for k in fields] == [first[p1][k] for k in fields]
    assert [f.read_bytes() for f in _slot_files(tmp_path, data, kept)] == p1_images  # not overwritten
    slots = [_slot_files(tmp_path, data, r) for r in data["records"]]
    assert all(f.is_file() for files in slots for f in files) and len({files[0] for files in slots}) == 3
    # p1's figure rewritten since (by a run without --report): the earlier results are no longer its own.
    (tmp_path / "o" / "p1.jpeg").write_bytes((tmp_path / "o" / "a.jpeg").read_bytes())
    assert _run(args) == 0
    records = {r["input"]: r for r in page_data(tmp_path / "r.html")["records"]}
    assert "class_name" in records[str(photos / "p0.png")] and "class_name" not in records[p1]
    assert records[p1]["skipped"] == 1


def test_disagreement_in_the_page_is_that_of_the_saved_maps(tmp_path):
    out = tmp_path / "out"
    assert _run(["classify", *LITE, "-f", IMAGES / "chelsea.png", "--output-dir", out, "--save-maps", "-q",
                 "--report", tmp_path / "r.html"]) == 0
    maps = [np.load(out / f"chelsea_{m}.npy") for m in ("gradcam", "gradcampp")]
    record = page_data(tmp_path / "r.html")["records"][0]
    assert record["disagreement"] == pytest.approx(reference_disagreement(maps), abs=1e-4)


def test_a_failed_single_photo_still_gets_its_report(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nothing")
    assert _run(["classify", *LITE, "-f", bad, "--output-dir", tmp_path / "out", "--report", tmp_path / "r.html"]) == 1
    data = page_data(tmp_path / "r.html")
    assert data["final"] is False and data["counts"]["failed"] == 1 and "bad.png" in data["records"][0]["error"]


@pytest.fixture(scope="module")
def evaluate_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("report_evaluate")
    code = _run(["evaluate", *LITE, "-f", IMAGES, "--boxes", IMAGES / "boxes", "--steps", "4", "--json",
                 base / "eval.json", "--csv", base / "eval.csv", "--report", base / "eval.html", "-q"])
    return base, code


def test_evaluate_and_its_report_take_every_registered_method(tmp_path, monkeypatch):
    """--methods all,cam: every method of the registry scored by evaluate, in its JSON and its report (a
    model whose head is a pooled linear layer, so that CAM applies; one sample for SS-CAM and IS-CAM)."""
    from campp_cli.cam.methods import list_methods, parse_methods

    (tmp_path / "net.py").write_text(POOLED_NET)
    write_image(tmp_path / "a.png", 40, 30, seed=1)
    write_image(tmp_path / "b.png", 30, 40, seed=2)
    monkeypatch.chdir(tmp_path)
    code = _run(["evaluate", "--model", "net.py:build", "--input-size", "32", "-f", "a.png", "-f", "b.png",
                 "--methods", "all,cam", "--sscam-samples", "1", "--iscam-steps", "1", "--steps", "2",
                 "--json", "e.json", "--report", "e.html", "-q", "-gpu", "-1"])
    assert code == 0
    every = list(parse_methods("all,cam"))  # in that order: CAM last
    assert sorted(every) == sorted(list_methods())
    document = json.loads((tmp_path / "e.json").read_text())
    assert list(document["methods"]) == every
    assert all(stats["n"] == 2 for stats in document["methods"].values())
    data = page_data(tmp_path / "e.html")
    assert data["methods"] == every and list(data["summary"]["methods"]) == every
    assert all(set(record["scores"]) == set(every) for record in data["records"])


def test_evaluate_report_holds_the_summary_and_every_images_scores(evaluate_run):
    base, code = evaluate_run
    assert code == 0
    data = page_data(base / "eval.html")
    document = json.loads((base / "eval.json").read_text())
    assert data["summary"]["methods"].keys() == document["methods"].keys()
    for m, stats in document["methods"].items():
        for key in ("average_drop", "increase_in_confidence", "deletion_auc", "insertion_auc", "pointing_game"):
            assert data["summary"]["methods"][m][key] == pytest.approx(stats[key])
    assert data["summary"]["win_percent"] == document["win_percent"]
    import csv

    rows = list(csv.DictReader((base / "eval.csv").open()))
    by_input = {r["input"]: r for r in data["records"]}
    for row in rows:
        s = by_input[row["input"]]["scores"][row["method"]]
        assert s["probability"] == pytest.approx(float(row["probability"]), abs=1e-5)
        assert s["explanation_probability"] == pytest.approx(float(row["explanation_probability"]), abs=1e-5)
        assert s["drop_percent"] == pytest.approx(float(row["drop_percent"]), abs=1e-3)
        assert s["deletion_auc"] == pytest.approx(float(row["deletion_auc"]), abs=1e-4)
        assert s["insertion_auc"] == pytest.approx(float(row["insertion_auc"]), abs=1e-4)
        assert len(s["deletion_curve"]) == len(s["insertion_curve"]) == 5  # steps + 1 points
        if row["boxes"] == "boxed":
            assert s["pointing_hit"] == int(row["pointing_hit"])
            assert s["energy_pointing"] == pytest.approx(float(row["energy_pointing"]), abs=1e-4)
    for m in document["methods"]:  # mean curves: the mean of the images' curves
        curves = np.array([r["scores"][m]["deletion_curve"] for r in data["records"]])
        assert data["curves"][m]["deletion_curve"] == pytest.approx(curves.mean(axis=0).tolist(), abs=1e-4)


@pytest.mark.slow
def test_a_killed_run_leaves_the_report_of_what_was_done(tmp_path):
    tree = tmp_path / "photos"
    tree.mkdir()
    for photo in TREE:
        shutil.copy(IMAGES / photo, tree / photo)
    env = dict(os.environ, CAMPP_TEST_KILL_AT_RENAME="14")  # each image: 5 renames for its set, 1 for the page
    proc = subprocess.run([sys.executable, "-m", "campp_cli", "classify", *LITE, "-f", str(tree), "--output-dir",
                           str(tmp_path / "out"), "--max-side", "64", "--batch-size", "1", "--workers", "1",
                           "--report", str(tmp_path / "r.html"), "--report-every", "1", "-q"],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    data = page_data(tmp_path / "r.html")
    assert data["final"] is False and 1 <= len(data["records"]) < len(TREE)
    for i, record in enumerate(data["records"]):
        assert (tmp_path / "r_files" / rp.asset_name(i, "thumb")).is_file(), record["input"]


# ----------------------------------------------------------------------------- in a real browser


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (Debian: apt install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def open_report(browser, path: Path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.resolve().as_uri())
    page.wait_for_selector("html[data-ready='1']")
    page.wait_for_function("Array.from(document.images).every(i => i.complete)")
    return page, errors


def shown_names(page) -> list[str]:
    return page.eval_on_selector_all(".card .name", "els => els.map(e => e.textContent)")


def test_browser_page_loads_cleanly_with_every_thumbnail(browser, classify_run):
    base, _, lines = classify_run
    page, errors = open_report(browser, base / "report.html")
    widths = page.eval_on_selector_all(".card img", "imgs => imgs.map(i => i.naturalWidth)")
    assert len(widths) == 5 and all(w > 0 for w in widths)  # every done image; the failed one has no thumbnail
    assert len(shown_names(page)) == len(lines)
    assert errors == []
    page.close()


def test_browser_sort_by_probability(browser, classify_run):
    base, _, lines = classify_run
    page, errors = open_report(browser, base / "report.html")
    page.select_option("#sort", "p-desc")
    shown = [float(p) for p in page.eval_on_selector_all(".card .p[data-p]", "els => els.map(e => e.dataset.p)")]
    expected = sorted((line["probability"] for line in lines if "error" not in line), reverse=True)
    assert shown == pytest.approx(expected, abs=1e-6)
    page.select_option("#sort", "p-asc")
    shown = [float(p) for p in page.eval_on_selector_all(".card .p[data-p]", "els => els.map(e => e.dataset.p)")]
    assert shown == pytest.approx(expected[::-1], abs=1e-6)
    records = [r for r in page_data(base / "report.html")["records"] if "disagreement" in r]
    page.select_option("#sort", "disagree")
    by_disagreement = sorted(records, key=lambda r: -r["disagreement"])
    assert shown_names(page)[:len(records)] == [Path(r["input"]).name for r in by_disagreement] and records
    page.select_option("#sort", "name")
    assert shown_names(page) == sorted(shown_names(page), key=str.lower)
    assert errors == []
    page.close()


def test_browser_class_and_correctness_filters(browser, classify_run):
    base, _, lines = classify_run
    page, errors = open_report(browser, base / "report.html")
    done = [line for line in lines if "error" not in line]
    truth = {Path(place).name: t for place, t in TREE.values()}
    page.fill("#class", "espresso")
    assert shown_names(page) == ["coffee.png"]
    page.fill("#class", "cat")  # searchable: a part of a name (Egyptian cat, tiger cat...)
    expected = [Path(line["input"]).name for line in done if "cat" in line["name"].lower()
                or "cat" in (truth.get(Path(line["input"]).name) or "")]
    assert sorted(shown_names(page)) == sorted(expected) and expected
    page.fill("#class", "")
    page.select_option("#show", "incorrect")
    wrong = [Path(line["input"]).name for line in done
             if truth.get(Path(line["input"]).name) not in (None, line["top5"][0]["name"])]
    assert sorted(shown_names(page)) == sorted(wrong) == ["chelsea.png"]
    page.select_option("#show", "correct")
    right = [Path(line["input"]).name for line in done
             if truth.get(Path(line["input"]).name) == line["top5"][0]["name"]]
    assert sorted(shown_names(page)) == sorted(right) and len(right) >= 2
    page.select_option("#show", "failed")
    assert shown_names(page) == ["broken.png"]
    assert "broken.png" in page.inner_text(".card.err .reason")
    assert "broken.png" in page.inner_text("#failed")  # listed with its reason above the grid too
    assert errors == []
    page.close()


def _panel_pixels(page, selector) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(page.locator(selector).screenshot())).convert("RGB"), dtype=np.float64)


def test_browser_lightbox_every_method_and_the_opacity_slider(browser, classify_run, tmp_path):
    base, _, _ = classify_run
    page, errors = open_report(browser, base / "report.html")
    page.fill("#class", "espresso")
    page.click(".card")
    assert page.is_visible("#lightbox")
    page.wait_for_function("Array.from(document.querySelectorAll('#lb-panels img')).every(i => i.complete)")
    methods = page.eval_on_selector_all("#lb-panels figure.method", "fs => fs.map(f => f.dataset.method)")
    assert methods == METHODS
    heat = page.eval_on_selector_all("#lb-panels img.heat", "imgs => imgs.map(i => i.naturalWidth)")
    assert len(heat) == len(METHODS) and all(w > 0 for w in heat)

    def set_opacity(v):
        page.eval_on_selector("#opacity", f"e => {{ e.value = '{v}'; e.dispatchEvent(new Event('input')); }}")
        page.wait_for_timeout(50)

    photo = _panel_pixels(page, "#lb-panels figure >> nth=0 >> .layers")
    set_opacity(0)
    bare = _panel_pixels(page, "#lb-panels figure.method >> nth=0 >> .layers")
    set_opacity(1)
    heatmap = _panel_pixels(page, "#lb-panels figure.method >> nth=0 >> .layers")
    set_opacity(0.5)
    half = _panel_pixels(page, "#lb-panels figure.method >> nth=0 >> .layers")
    assert np.abs(bare - photo).mean() < 1  # opacity 0: the photo alone
    assert np.abs(heatmap - photo).mean() > 20  # opacity 1: the heatmap alone
    assert np.abs(half - (photo + heatmap) / 2).mean() < 3  # the blend the overlays are made of
    page.click("#heat-only")
    assert page.eval_on_selector("#lb-panels img.heat", "i => i.style.opacity") == "1"
    page.keyboard.press("Escape")
    assert not page.is_visible("#lightbox")
    assert errors == []
    page.close()


def test_browser_evaluate_report(browser, evaluate_run):
    base, _ = evaluate_run
    page, errors = open_report(browser, base / "eval.html")
    document = json.loads((base / "eval.json").read_text())
    methods = list(document["methods"])
    assert page.eval_on_selector_all("#metrics tr", "rows => rows.length") == len(methods) + 1
    assert page.eval_on_selector_all("#localisation tr", "rows => rows.length") == len(methods) + 1
    wins = page.eval_on_selector_all("#wins tr", "rows => rows.map(r => r.innerText)")
    assert len(wins) == len(methods) + 1
    assert f"{document['win_percent'][methods[0]][methods[1]]:.1f}" in wins[1]
    assert page.eval_on_selector_all("#summary polyline", "p => p.length") == 2 * len(methods)
    page.click(".card >> nth=0")
    assert page.eval_on_selector_all("#image-scores tr", "rows => rows.length") == len(methods) + 1
    assert page.eval_on_selector_all("#lb-scores polyline", "p => p.length") == 2 * len(methods)
    assert errors == []
    page.close()


def test_browser_big_report_draws_cards_as_the_reader_scrolls(browser, tmp_path):
    """50,000 cards: the page draws a first screenful and more as the reader scrolls."""
    report = _report(tmp_path, 50_000, every=10**9)
    for i in range(50_000):
        report.records.append({"input": f"img/{i}.png", "class_index": 1, "class_name": "dog",
                               "probability": (i % 997) / 997, "top5": [["dog", 0.5]]})
    report.close()
    page, errors = open_report(browser, tmp_path / "r.html")
    first = page.eval_on_selector_all(".card", "c => c.length")
    assert 0 < first <= 5000
    assert page.inner_text("#count") == "50000 of 50000 images"
    page.select_option("#sort", "p-desc")
    top = page.eval_on_selector(".card .p[data-p]", "e => Number(e.dataset.p)")
    assert top == pytest.approx(996 / 997)
    page.mouse.wheel(0, 20000)
    page.wait_for_timeout(300)
    assert page.eval_on_selector_all(".card", "c => c.length") > first
    assert errors == []
    page.close()


# ----------------------------------------------------------------------------- a quote in the report's name

#: The page's script run by Node.js with the few DOM calls it makes stubbed: the HTML it builds for the
#: grid and for the lightbox of card argv[3].
_NODE_HARNESS = r"""
const fs = require("fs");
const html = fs.readFileSync(process.argv[2], "utf8");
const data = html.match(/<script type="application\/json" id="campp-data">([\s\S]*?)<\/script>/)[1];
const code = html.match(/<script>([\s\S]*?)<\/script>/)[1];
const els = {};
function el(id) {
  if (!els[id]) els[id] = {id, innerHTML: "", textContent: id === "campp-data" ? data : "", value: "", hidden: true,
    style: {}, dataset: {}, listeners: {}, disabled: false, addEventListener(t, f) { this.listeners[t] = f; },
    insertAdjacentHTML(where, h) { this.innerHTML += h; }, getBoundingClientRect() { return {top: 1e9}; },
    focus() {}};
  return els[id];
}
global.document = {getElementById: el, querySelector: () => ({}), querySelectorAll: () => [],
  addEventListener() {}, body: {style: {}}, documentElement: {dataset: {}}};
global.window = {innerHeight: 900};
global.IntersectionObserver = class { observe() {} };
global.requestAnimationFrame = () => {};
el("sort").value = "order"; el("show").value = "all"; el("class").value = ""; el("opacity").value = "0.5";
eval(code);
el("grid").listeners.click({target: {closest: () => ({dataset: {i: process.argv[3]}})}});
console.log(JSON.stringify({grid: el("grid").innerHTML, panels: el("lb-panels").innerHTML}));
"""


def _attributes(markup: str, tag: str, name: str) -> list[str]:
    """The values of attribute ``name`` of every ``tag`` in ``markup``, as a browser parses them."""
    from html.parser import HTMLParser

    found: list[str] = []

    class Parser(HTMLParser):
        def handle_starttag(self, t, attrs):
            if t == tag:
                found.extend(v for k, v in attrs if k == name)

    Parser().feed(markup)
    return found


def _quoted_report(tmp_path) -> Path:
    folder = tmp_path / "it's here"
    folder.mkdir()
    report = rp.Report(folder / "bob's run (1).html", "classify", {"model": "m"}, ["gradcam"], ["cat", "dog"], 2)
    report.add(_fake_result("photos/o'hara's cat.png"))
    report.add(_fake_result("photos/dog.png"))
    report.close()
    return folder / "bob's run (1).html"


def test_every_image_address_the_page_builds_survives_a_quote_in_the_report_name(tmp_path):
    """``bob's run.html``: every src the page builds names a file that is there (before: each src was cut
    at the quote, and no image showed)."""
    from urllib.parse import unquote

    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("Node.js is not installed (the browser test below checks the same in chromium)")
    page = _quoted_report(tmp_path)
    harness = tmp_path / "harness.js"
    harness.write_text(_NODE_HARNESS)
    proc = subprocess.run([node, str(harness), str(page), "0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    built = json.loads(proc.stdout)
    thumbs = _attributes(built["grid"], "img", "src")
    panels = _attributes(built["panels"], "img", "src")
    assert len(thumbs) == 2 and len(panels) == 3  # the photo, and the photo under the one method's heatmap
    for src in thumbs + panels:
        assert (page.parent / unquote(src)).is_file(), src
    assert sorted(set(Path(unquote(s)).name for s in panels)) == ["000000_heatmap_gradcam.jpeg", "000000_photo.jpeg"]
    titles = _attributes(built["grid"], "span", "title")
    assert "photos/o'hara's cat.png" in titles and "photos/dog.png" in titles


def test_browser_thumbnails_and_panels_show_with_a_quote_in_the_report_name(browser, tmp_path):
    page_path = _quoted_report(tmp_path)
    page, errors = open_report(browser, page_path)
    widths = page.eval_on_selector_all(".card img", "imgs => imgs.map(i => i.naturalWidth)")
    assert len(widths) == 2 and all(w > 0 for w in widths)
    page.click(".card[data-i='0']")
    page.wait_for_function("Array.from(document.querySelectorAll('#lb-panels img')).every(i => i.complete)")
    panels = page.eval_on_selector_all("#lb-panels img", "imgs => imgs.map(i => i.naturalWidth)")
    assert len(panels) == 3 and all(w > 0 for w in panels)
    assert errors == []
    page.close()


def test_a_model_name_that_is_not_utf8_still_gets_its_page(tmp_path):
    """``--model`` from a file whose name is not valid UTF-8: the page's title escapes it (before:
    UnicodeEncodeError, and no page)."""
    report = rp.Report(tmp_path / "r.html", "classify", {"model": "net\udcff.py:build"}, ["gradcam"], ["a", "b"], 1)
    report.add(_fake_result("x.png"))
    report.close()
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "net\\udcff.py:build" in text and page_data(tmp_path / "r.html")["header"]["model"] == "net\udcff.py:build"


@pytest.mark.slow
def test_browser_evaluate_report_with_road_and_the_sanity_check(browser, tmp_path):
    """The complexity-and-ROAD table, the ROAD curves and the sanity check's three charts (Figure 2's
    cascading curves, SSIM, independent) are drawn, without a script error."""
    code = _run(["evaluate", *LITE, "-f", IMAGES / "chelsea.png", "--steps", "2", "--road-fractions", "0.5,0.9",
                 "--sanity", "--report", tmp_path / "e.html", "-q"])
    assert code == 0
    page, errors = open_report(browser, tmp_path / "e.html")
    assert page.eval_on_selector_all("#complexity tr", "rows => rows.length") == 3
    assert "ROAD MoRF" in page.inner_text("#complexity")
    maps = 5  # Grad-CAM, Grad-CAM++, guided backpropagation and both guided maps
    assert page.eval_on_selector_all("#summary polyline", "p => p.length") == 2 * 2 + 2 * 2 + 3 * maps
    assert "Sanity check" in page.inner_text("#summary")
    assert errors == []
    page.close()
