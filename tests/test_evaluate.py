"""campp evaluate: every metric pinned on tiny models where its value is known in closed form."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import IMAGES
from PIL import Image

from campp_cli.commands import metrics


class MeanModel(torch.nn.Module):
    """Two classes whose softmax probabilities are exactly m and 1 - m, m = the mean pixel value."""

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3)).clamp(1e-6, 1 - 1e-6)
        return torch.stack([torch.log(m), torch.log(1 - m)], dim=1)


def identity(x):
    return x


def halves(a: float, b: float, size: int = 8) -> torch.Tensor:
    """One image: left half a, right half b."""
    img = torch.full((1, 3, size, size), b)
    img[..., : size // 2] = a
    return img


LEFT_FIRST = np.array([[[1.0, 0.0], [1.0, 0.0]]])  # a 2x2 map: the left half matters more
RIGHT_FIRST = LEFT_FIRST[:, :, ::-1].copy()


def test_probabilities_of_the_mean_model():
    p = metrics.class_probability(MeanModel(), identity, halves(0.8, 0.2), torch.tensor([0]))
    assert p[0] == pytest.approx(0.5, abs=1e-6)


def test_average_drop_and_increase_in_confidence_closed_form():
    v = 0.6
    img = torch.full((1, 3, 8, 8), v)
    half_map = np.full((1, 2, 2), 0.5)
    s = metrics.score_batch(MeanModel(), identity, img, half_map, np.array([0]), steps=4)[0]
    assert s.y == pytest.approx(v, abs=1e-6) and s.o == pytest.approx(v / 2, abs=1e-6)
    assert s.drop == pytest.approx(50.0, abs=1e-4)
    # Class 1 has probability 1 - m: dimming the image raises it.
    s1 = metrics.score_batch(MeanModel(), identity, img, half_map, np.array([1]), steps=4)[0]
    assert s1.o == pytest.approx(1 - v / 2, abs=1e-6) and s1.drop == 0.0
    assert metrics.average_drop([s.y, s1.y], [s.o, s1.o]) == pytest.approx(25.0, abs=1e-4)
    assert metrics.increase_in_confidence([s.y, s1.y], [s.o, s1.o]) == 50.0


@pytest.mark.parametrize("steps", [2, 4, 8, 16])
def test_deletion_and_insertion_auc_closed_form(steps):
    """Left half a, right half b, map favouring one half, baselines black.

    Deletion, left first: AUC = a/8 + 3b/8; right first: 3a/8 + b/8.
    Insertion from black, left first: 3a/8 + b/8.
    """
    a, b = 0.8, 0.2
    img = halves(a, b)
    zeros = torch.zeros_like
    left = metrics.score_batch(MeanModel(), identity, img, LEFT_FIRST, np.array([0]), steps,
                               deletion_baseline=zeros, insertion_baseline=zeros)[0]
    right = metrics.score_batch(MeanModel(), identity, img, RIGHT_FIRST, np.array([0]), steps,
                                deletion_baseline=zeros, insertion_baseline=zeros)[0]
    assert left.deletion_auc == pytest.approx(a / 8 + 3 * b / 8, abs=1e-5)
    assert right.deletion_auc == pytest.approx(3 * a / 8 + b / 8, abs=1e-5)
    assert left.insertion_auc == pytest.approx(3 * a / 8 + b / 8, abs=1e-5)
    assert left.deletion[0] == pytest.approx(0.5, abs=1e-6) and left.deletion[-1] == pytest.approx(0, abs=1e-5)
    assert len(left.deletion) == steps + 1


def test_auc_is_the_trapezoid_rule():
    assert metrics.auc(np.array([1.0, 1.0, 1.0])) == pytest.approx(1.0)
    assert metrics.auc(np.array([0.0, 1.0])) == pytest.approx(0.5)
    assert metrics.auc(np.array([1.0, 0.0, 0.0, 0.0, 0.0])) == pytest.approx(0.125)


def test_blurred_baseline_keeps_a_flat_image_flat_and_blurs_an_edge():
    flat = torch.full((1, 3, 224, 224), 0.3)
    assert torch.allclose(metrics.blurred(flat), flat, atol=1e-6)
    edge = halves(1.0, 0.0, size=224)
    out = metrics.blurred(edge)
    assert 0.1 < float(out[0, 0, 100, 111]) < 0.9  # the edge is smeared
    assert float(out[0, 0, 100, 10]) == pytest.approx(1.0, abs=1e-4)


def test_win_percent_closed_form_with_ties():
    """Paper Sec. 4.1 (iii): X wins an image when its drop in confidence is lower; a tie is half a win each."""
    y = np.array([0.8, 0.5, 0.4, 0.9, 0.6])
    o_x = np.array([0.4, 0.5, 0.5, 0.3, 0.1])  # drops 0.5, 0, 0 (O > Y), 2/3, 5/6
    o_z = np.array([0.6, 0.1, 0.4, 0.3, 0.1])  # drops 0.25, 0.8, 0, 2/3, 5/6
    drop = {k: np.maximum(0, y - o) / y for k, o in (("x", o_x), ("z", o_z))}
    wins = metrics.win_percent(drop)
    # x loses image 0, wins image 1, ties images 2, 3, 4: (1 + 3 / 2) / 5
    assert wins["x"]["z"] == pytest.approx(50.0)
    assert wins["z"]["x"] == pytest.approx(50.0)
    drop["w"] = np.zeros(5)  # never drops: wins wherever the other drops, ties where it does not
    wins = metrics.win_percent(drop)
    assert wins["w"]["x"] == pytest.approx(100 * (3 + 2 * 0.5) / 5)
    assert wins["w"]["z"] == pytest.approx(100 * (4 + 1 * 0.5) / 5)
    for a in wins:
        assert a not in wins[a]
        for b in wins[a]:
            assert wins[a][b] + wins[b][a] == pytest.approx(100.0)


def _reference_curves(model, image, cam, cls, steps, start, end):
    """RISE's curve for one image, one frame at a time: step k shows ``end`` at the k/steps most important
    pixels of the bilinearly upsampled map (ties: lower index first) and ``start`` elsewhere."""
    import cv2

    size = image.shape[-1]
    up = np.clip(cv2.resize(cam.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR), 0, 1)
    order = np.argsort(-up.ravel(), kind="stable")
    curve = []
    for k in range(steps + 1):
        mask = np.zeros(size * size, np.float32)
        mask[order[:round(k * size * size / steps)]] = 1
        mask = torch.from_numpy(mask.reshape(1, size, size))
        frame = start * (1 - mask) + end * mask
        with torch.no_grad():
            curve.append(torch.softmax(model(frame[None]), 1)[0, cls].item())
    return np.array(curve), up


def test_batched_scores_equal_one_frame_at_a_time_and_count_their_passes():
    """score_all batches frames across images, steps and methods; every number equals a plain loop, whatever
    the batch size, and the model sees exactly passes_per_image frames per image, never more than asked."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(16, 5)).eval()
    rng = np.random.default_rng(1)
    images = torch.from_numpy(rng.random((3, 3, 12, 12)).astype(np.float32))
    maps = {"a": rng.random((3, 3, 3)).astype(np.float32), "b": rng.random((3, 3, 3)).astype(np.float32)}
    classes = np.array([0, 3, 4])
    with torch.no_grad():
        y = torch.softmax(model(images), 1)[torch.arange(3), torch.as_tensor(classes)].numpy()
    steps = 5
    seen: list[int] = []
    hook = model[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    results = {}
    try:
        for b in (1, 7, 1000):
            seen.clear()
            results[b] = metrics.score_all(model, identity, images, maps, classes, steps, y, eval_batch=b)
            # black and blurred images, then per method O and steps 1..steps-1 of deletion and insertion
            assert sum(seen) == 3 * metrics.passes_per_image(2, steps) == 3 * (2 + 2 * (1 + 2 * (steps - 1)))
            assert max(seen) == min(b, sum(seen))
    finally:
        hook.remove()
    blurred = metrics.blurred(images)
    for m in maps:
        for i in range(3):
            deletion, up = _reference_curves(model, images[i], maps[m][i], classes[i], steps, images[i],
                                             torch.zeros_like(images[i]))
            insertion, _ = _reference_curves(model, images[i], maps[m][i], classes[i], steps, blurred[i], images[i])
            with torch.no_grad():
                o = torch.softmax(model((images[i] * torch.from_numpy(up))[None]), 1)[0, classes[i]].item()
            for b, scored in results.items():
                s = scored[m][i]
                np.testing.assert_allclose(s.deletion, deletion, atol=1e-5, err_msg=f"{m} {i} batch {b}")
                np.testing.assert_allclose(s.insertion, insertion, atol=1e-5, err_msg=f"{m} {i} batch {b}")
                assert s.o == pytest.approx(o, abs=1e-5) and s.y == pytest.approx(y[i])


def test_bootstrap_interval_brackets_the_statistic():
    values = np.arange(20, dtype=float)
    lo, hi = metrics.bootstrap_ci(values, np.mean)
    assert lo < values.mean() < hi
    assert metrics.bootstrap_ci(np.array([3.0]), np.mean) == (3.0, 3.0)


def test_evaluate_command_end_to_end(run_cli, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("chelsea.png", "coffee.png"):
        (folder / name).write_bytes((IMAGES / name).read_bytes())
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    js, cs, png = tmp_path / "e.json", tmp_path / "e.csv", tmp_path / "e.png"
    code, out, err = run_cli("evaluate", "--arch", "efficientnet_lite0", "-f", folder, "--steps", "4",
                             "--json", js, "--csv", cs, "--plot", png)
    assert code == 1  # one image failed
    assert "broken.jpg" in err and "2 done, 0 skipped, 1 failed" in err
    table = [l for l in out.split("\n\n")[0].splitlines() if l.startswith(("Grad-CAM ", "Grad-CAM++"))]
    assert len(table) == 2
    assert "Gini sparseness" in out.split("Win %")[0]  # the complexity table follows the first
    doc = json.loads(js.read_text())
    assert set(doc["methods"]) == {"gradcam", "gradcampp"}
    assert doc["images"] == 2 and doc["failed"] == 1 and doc["model"] == "efficientnet_lite0"
    rows = list(csv.DictReader(cs.open()))
    assert len(rows) == 4
    for method, stats in doc["methods"].items():
        assert stats["n"] == 2
        mine = [r for r in rows if r["method"] == method]
        y = np.array([float(r["probability"]) for r in mine])
        o = np.array([float(r["explanation_probability"]) for r in mine])
        assert stats["average_drop"] == pytest.approx(100 * np.mean(np.maximum(0, y - o) / y), abs=1e-3)
        assert stats["increase_in_confidence"] == pytest.approx(100 * np.mean(o > y))
        assert stats["deletion_auc"] == pytest.approx(np.mean([float(r["deletion_auc"]) for r in mine]), abs=1e-5)
        assert 0 <= stats["insertion_auc"] <= 1 and 0 <= stats["deletion_auc"] <= 1
        lo, hi = stats["average_drop_ci95"]
        assert lo <= stats["average_drop"] <= hi
    drops = {m: [max(0.0, float(r["probability"]) - float(r["explanation_probability"])) / float(r["probability"])
                 for r in rows if r["method"] == m] for m in ("gradcam", "gradcampp")}
    a, b = drops["gradcam"], drops["gradcampp"]
    expected = 100 * sum(1.0 if p < q else 0.5 if p == q else 0.0 for p, q in zip(a, b)) / len(a)
    assert doc["win_percent"]["gradcam"]["gradcampp"] == pytest.approx(expected)
    assert doc["win_percent"]["gradcampp"]["gradcam"] == pytest.approx(100 - expected)
    assert "Win % (row beats column)" in out
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1]


def test_results_are_reported_before_the_next_batch_is_scored(monkeypatch):
    """The progress bar (and its ETA) moves with every batch: a batch's results are out before the next
    batch goes through the model."""
    from campp_cli.commands.evaluate import EvaluateCommand
    from campp_cli.io.inputs import Job
    from campp_cli.models.loading import load_classifier

    events = []
    from campp_cli.run import stages
    from campp_cli.run.engines.local import run
    from campp_cli.run.options import Options

    real = stages.explain_rows

    def explain_rows(rows, *args):
        events.append("explain")
        return real(rows, *args)

    monkeypatch.setattr(stages, "explain_rows", explain_rows)
    clf = load_classifier("efficientnet_lite0")
    jobs = [Job(p, IMAGES, p.stem, ".jpeg") for p in sorted(IMAGES.glob("*.png"))]  # 4 photos
    summary = run(jobs, clf, Options(batch_size=2), lambda r: events.append("result"),
                  command=EvaluateCommand(steps=2))
    assert summary.done == 4
    assert events == ["explain", "result", "result", "explain", "result", "result"]
