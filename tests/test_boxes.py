"""Localisation against bounding boxes: VOC XML, the crop's frame, Loc (eq. 26), pointing games, the CLI."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from conftest import IMAGES

from campp_cli.commands import boxes

VOC = """<annotation><filename>{stem}</filename><size><width>{w}</width><height>{h}</height></size>
{objects}</annotation>"""
OBJ = ("<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax>"
       "</bndbox></object>")


def voc(path, objects, w=500, h=375):
    text = VOC.format(stem=path.stem, w=w, h=h,
                      objects="".join(OBJ.format(name=n, x0=a, y0=b, x1=c, y1=d) for n, a, b, c, d in objects))
    path.write_text(text)
    return path


# --- the scores on hand-built maps ----------------------------------------------------------------------

def test_a_map_inside_its_box_scores_one_and_outside_zero():
    size = 32
    box = (8.0, 8.0, 16.0, 16.0)
    inside = np.zeros((size, size))
    inside[8:16, 8:16] = 1.0
    s = boxes.score(inside, [box], (0.0, 0.25, 0.5))
    assert s["loc"] == {"0": 1.0, "0.25": 1.0, "0.5": 1.0}
    assert s["energy"] == 1.0 and s["pointing_hit"]
    outside = np.zeros((2 * size, 2 * size))
    outside[40:44, 40:44] = 1.0  # its maximum (40.5, 40.5) is 24.5 px from the box in x and y
    s = boxes.score(outside, [box], (0.0, 0.5))
    assert s["loc"] == {"0": 0.0, "0.5": 0.0}
    assert s["energy"] == 0.0 and not s["pointing_hit"]


def test_loc_counts_external_pixels_in_the_denominator():
    """Half the positive pixels inside a 4x4 box (area 16), 16 outside: Loc = 16 / (16 + 16) = 0.5."""
    cam = np.zeros((16, 16))
    cam[0:4, 0:8] = 1.0  # the box is columns 0..3: 16 pixels inside, 16 outside
    assert boxes.score(cam, [(0, 0, 4, 4)], (0.5,))["loc"]["0.5"] == pytest.approx(16 / 32)
    # graded map: only pixels above delta after min-max count
    cam = np.tile(np.linspace(0, 1, 16), (16, 1))  # columns 0..15 rising
    mask_cols = 8  # box over the right half
    loc = boxes.score(cam, [(8, 0, 16, 16)], (0.5,))["loc"]["0.5"]
    positive = np.linspace(0, 1, 16) > 0.5
    assert loc == pytest.approx(16 * positive[mask_cols:].sum() / (16 * 8 + 16 * positive[:mask_cols].sum()))


def test_pointing_game_tolerance_is_fifteen_pixels():
    cam = np.zeros((64, 64))
    cam[10, 40] = 1.0  # centre (40.5, 10.5)
    assert boxes.pointing_hit(cam, [(0, 0, 26, 64)])  # 14.5 px from the box's right edge
    assert not boxes.pointing_hit(cam, [(0, 0, 25, 64)])  # 15.5 px
    assert boxes.pointing_hit(cam, [(0, 0, 25, 64)], tolerance=16)


def test_energy_is_the_share_of_the_map_inside():
    cam = np.zeros((10, 10))
    cam[0, 0], cam[9, 9] = 3.0, 1.0
    assert boxes.energy(cam, boxes.union_mask([(0, 0, 5, 5)], 10)) == pytest.approx(0.75)


# --- the frame ----------------------------------------------------------------------------------------------

def test_boxes_follow_the_centre_crop_and_resize():
    """A 300x200 photo: the central 200x200 square (columns 50..250) is resized to 224."""
    scale = 224 / 200
    whole = boxes.Box("x", 60, 20, 160, 120)
    assert boxes.to_input_frame(whole, 300, 200, 224) == pytest.approx((10 * scale, 20 * scale, 110 * scale,
                                                                       120 * scale))
    cut = boxes.Box("x", 0, 0, 100, 200)  # the crop removes columns 0..50
    assert boxes.to_input_frame(cut, 300, 200, 224) == pytest.approx((0, 0, 50 * scale, 224))
    assert boxes.to_input_frame(boxes.Box("x", 10, 10, 40, 190), 300, 200, 224) is None  # all in the cut part
    assert boxes.to_input_frame(boxes.Box("x", 260, 0, 300, 50), 300, 200, 224) is None


def test_union_mask_counts_pixel_centres_once():
    mask = boxes.union_mask([(0, 0, 2, 2), (1, 1, 3, 3)], 4)
    assert mask.sum() == 4 + 4 - 1


# --- the files ---------------------------------------------------------------------------------------------

def test_voc_files_imagenet_and_pascal_style(tmp_path):
    a = boxes.read_voc(voc(tmp_path / "ILSVRC2012_val_00000001.xml", [("n01751748", 111, 109, 354, 316)]))
    assert a.problem is None and len(a.boxes) == 1
    b = a.boxes[0]
    assert (b.name, b.x0, b.y0, b.x1, b.y1) == ("n01751748", 110, 108, 354, 316)  # VOC: 1-based, inclusive
    cats = [f"class {k}" for k in range(1000)]
    assert boxes.class_of("n01751748", cats) == 65  # sea snake, ImageNet's 66th synset
    assert boxes.class_of("n01440764", cats) == 0
    voc_names = ["aeroplane", "bicycle", "Bird"]
    assert boxes.class_of("bird", voc_names) == 2 and boxes.class_of("Bird", voc_names) == 2
    assert boxes.class_of("horse", voc_names) is None
    assert boxes.class_of("n01751748", voc_names) is None  # a WordNet id means nothing to a 3-class model


@pytest.mark.parametrize("text, why", [
    ("<annotation><object>", "not a readable annotation"),
    ("<notvoc/>", "not a Pascal VOC annotation"),
    ("<annotation><object><name>cat</name></object></annotation>", "no valid <bndbox>"),
    ("<annotation><object><name>cat</name><bndbox><xmin>9</xmin><ymin>1</ymin><xmax>3</xmax><ymax>4</ymax>"
     "</bndbox></object></annotation>", "empty or inverted"),
    ("<annotation><object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>3</xmax><ymax>4</ymax>"
     "</bndbox></object></annotation>", "no <name>"),
])
def test_malformed_files_say_why_in_one_line(tmp_path, text, why):
    path = tmp_path / "bad.xml"
    path.write_text(text)
    a = boxes.read_voc(path)
    assert a.problem.startswith(str(path)) and why in a.problem and "\n" not in a.problem


# --- through the CLI -----------------------------------------------------------------------------------------

def test_evaluate_with_boxes_json_equals_what_the_csv_gives(run_cli, tmp_path):
    js, cs = tmp_path / "e.json", tmp_path / "e.csv"
    code, out, err = run_cli("evaluate", "--arch", "efficientnet_lite0", "-f", IMAGES, "--steps", "2",
                             "--boxes", IMAGES / "boxes", "--json", js, "--csv", cs, "--methods", "gradcam,layercam")
    assert code == 0, err
    assert "Pointing game" in out and "campp: boxes: 4 boxed, 1 no annotation" in err
    doc = json.loads(js.read_text())
    rows = list(csv.DictReader(cs.open()))
    for method in ("gradcam", "layercam"):
        stats = doc["methods"][method]
        mine = [r for r in rows if r["method"] == method and r["boxes"] == "boxed"]
        assert stats["n_boxed"] == len(mine) == 4
        for d in ("0", "0.25", "0.5"):
            assert stats["loc"][d] == pytest.approx(np.mean([float(r[f"loc_{d}"]) for r in mine]), abs=1e-5)
            lo, hi = stats["loc_ci95"][d]
            assert lo <= stats["loc"][d] <= hi
        assert stats["pointing_game"] == pytest.approx(np.mean([int(r["pointing_hit"]) for r in mine]))
        assert stats["energy_pointing_game"] == pytest.approx(np.mean([float(r["energy_pointing"]) for r in mine]),
                                                              abs=1e-5)
        assert len(stats["pointing_game_ci95"]) == len(stats["energy_pointing_game_ci95"]) == 2
    assert doc["boxes"]["images"] == {"boxed": 4, "no annotation": 1}


def test_bad_annotations_are_reported_once_and_the_images_still_evaluated(run_cli, tmp_path):
    folder = tmp_path / "boxes"
    shutil.copytree(IMAGES / "boxes", folder)
    (folder / "coffee.xml").write_text("<annotation><object>")  # malformed
    voc(folder / "rocket.xml", [("flying saucer", 1, 1, 10, 10)], 640, 427)  # no such class
    code, out, err = run_cli("evaluate", "--arch", "efficientnet_lite0", "-f", IMAGES, "--steps", "2",
                             "--boxes", folder, "-q")
    assert code == 0
    lines = err.strip().splitlines()
    assert len([l for l in lines if "coffee.xml" in l]) == 1
    assert len([l for l in lines if "'flying saucer' is no class" in l]) == 1
    assert [l for l in lines if "no annotation" in l] == [
        f"campp: warning: {IMAGES / 'astronaut.png'}: no annotation in --boxes {folder} (localisation skipped)"]
    assert all(l.startswith("campp: warning: ") for l in lines) and len(lines) == 3
    assert "Grad-CAM" in out  # every image was evaluated for the other metrics


def test_boxes_outside_the_crop_are_reported(run_cli, tmp_path):
    folder = tmp_path / "boxes"
    folder.mkdir()
    voc(folder / "rocket.xml", [("n03773504", 1, 1, 80, 400)], 640, 427)  # the crop keeps columns 106..532
    code, out, err = run_cli("evaluate", "--arch", "efficientnet_lite0", "-f", IMAGES / "rocket.jpg", "--steps",
                             "2", "--boxes", folder, "-q")
    assert code == 0
    assert err.strip() == (f"campp: warning: {IMAGES / 'rocket.jpg'}: its boxes of 'missile' lie outside the "
                           f"centre crop the model sees (localisation skipped)")


@pytest.mark.parametrize("args, why", [
    (["--boxes", "missing-folder"], "--boxes missing-folder: not a folder"),
    (["--boxes", ".", "--delta", "0,1.5"], "--delta 0,1.5: give numbers in [0, 1)"),
])
def test_box_option_errors_are_usage_errors(run_cli, tmp_path, monkeypatch, args, why):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("evaluate", "-f", IMAGES / "coffee.png", *args)
    assert code == 2 and err.strip().startswith(f"campp: error: {why}")


def test_pointing_game_and_energy_match_quantus():
    """Quantus 0.6.0's PointingGame is campp's pointing game with no tolerance (the map's maximum inside the
    boxes; campp allows 15 px, as Zhang et al. do), and its RelevanceMassAccuracy is campp's energy pointing
    game on a non-negative map (campp counts negative values as 0)."""
    quantus = pytest.importorskip("quantus")
    from campp_cli.commands import boxes as boxes_

    rng = np.random.default_rng(0)
    maps, masks, hits, energies = [], [], [], []
    for _ in range(40):
        cam = rng.random((64, 64)) ** 4
        x0, y0 = rng.uniform(0, 40, size=2) + 0.3
        box = (x0, y0, x0 + rng.uniform(5, 24), y0 + rng.uniform(5, 24))
        mask = boxes_.union_mask([box], 64)
        maps.append(cam)
        masks.append(mask)
        hits.append(boxes_.pointing_hit(cam, [box], tolerance=0))
        energies.append(boxes_.energy(cam, mask))
    a, s = np.array(maps)[:, None], np.array(masks)[:, None].astype(float)
    theirs_hit = quantus.PointingGame(disable_warnings=True).evaluate_batch(a_batch=a.copy(), s_batch=s.copy())
    theirs_mass = quantus.RelevanceMassAccuracy(disable_warnings=True).evaluate_batch(a_batch=a.copy(),
                                                                                      s_batch=s.copy())
    assert list(map(bool, theirs_hit)) == hits and 0 < sum(hits) < 40
    np.testing.assert_allclose(theirs_mass, energies, atol=1e-12)
