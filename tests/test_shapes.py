"""A real model of the project's own: examples/shapes.py trained here (seeded, under half a minute on two
cores), then explained through ``campp classify --model examples/shapes.py:build``.

Its accuracy and each method's pointing-game hit rate (the map's maximum on the object) are measured
from what the command wrote (JSONL and .npy maps), against the boxes the photos were drawn with.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "shapes.py"
METHODS = ["gradcam", "gradcampp", "xgradcam", "hirescam", "layercam", "eigencam"]


def _example():
    spec = importlib.util.spec_from_file_location("shapes_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_trained_model_of_our_own_is_explained_where_the_object_is(tmp_path, run_cli, monkeypatch):
    shapes = _example()
    model = shapes.train(seed=0)
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    (tmp_path / "labels.txt").write_text("\n".join(shapes.CLASSES) + "\n")
    truth = shapes.write_test_set(tmp_path, 60, seed=1)
    monkeypatch.chdir(tmp_path)
    # The preprocessing stored once with the weights (64 px, no normalisation), then only the model.
    code, out, err = run_cli("convert", "weights.pth", "shapes.pth", "--model", f"{EXAMPLE}:build",
                             "--input-size", str(shapes.SIZE), "--mean", "none")
    assert code == 0, err
    code, out, err = run_cli("classify", "-f", "test", "--model", f"{EXAMPLE}:build", "--weights", "shapes.pth",
                             "--labels", "labels.txt", "--methods", ",".join(METHODS), "--save-maps",
                             "--jsonl", "results.jsonl", "--output-dir", "out", "-q")
    assert code == 0, err
    rows = {Path(r["input"]).name: r for r in map(json.loads, Path("results.jsonl").read_text().splitlines())}
    assert len(rows) == len(truth)
    accuracy = np.mean([rows[name]["name"] == shapes.CLASSES[cls] for name, cls, _ in truth])
    hits = {}
    for method in METHODS:
        inside = []
        for name, _, (x0, y0, x1, y1) in truth:
            cam = np.load(Path("out") / f"{Path(name).stem}_{method}.npy")
            row, col = np.unravel_index(np.argmax(cam), cam.shape)
            cell = shapes.SIZE / cam.shape[0]  # the map's cell in photo pixels (the photo is the input)
            cx, cy = (col + 0.5) * cell, (row + 0.5) * cell
            inside.append(x0 <= cx <= x1 and y0 <= cy <= y1)
        hits[method] = float(np.mean(inside))
    print(f"\nshapes: accuracy {accuracy:.3f}; pointing-game hit rate " +
          ", ".join(f"{m} {h:.3f}" for m, h in hits.items()))
    assert accuracy >= 0.9
    assert hits["gradcampp"] >= 0.9 and hits["gradcam"] >= 0.9
    # Run after run: training twice (seeded) gives the same weights, and evaluating twice the same scores.
    again = shapes.train(seed=0)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name
    documents = []
    for k in range(2):
        code, out, err = run_cli("evaluate", "-f", "test", "--model", f"{EXAMPLE}:build", "--weights", "shapes.pth",
                                 "--labels", "labels.txt", "--boxes", "boxes", "--csv", f"e{k}.csv", "-q")
        assert code == 0, err
        documents.append(Path(f"e{k}.csv").read_bytes())
    assert documents[0] == documents[1] and b"loc_0.5" in documents[0]
