"""What is explained: each image's top-k classes from one pass (explain_top), the score differentiated
(--score: logit, probability, log-probability), -l true from --targets or the folders' names."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import POOLED_NET, write_image
from test_report import browser  # noqa: F401 - the browser fixture (Debian's chromium through Playwright)
from torch import nn

from campp_cli.cam import explain as explain_module
from campp_cli.cam.explain import explain, explain_top
from campp_cli.cam.guided import guided_backprop
from campp_cli.cam.targets import read_targets
from campp_cli.errors import UsageError


def gap_net(seed: int = 0, classes: int = 6) -> nn.Sequential:
    """conv -> ReLU -> conv -> ReLU -> global average pool -> linear: at layer "3", dS_j/dA = W_j / hw."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 5, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, classes)).eval()


def reference_gradcam(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Grad-CAM from the paper: w_k = mean_ij g_kij, relu(sum_k w_k A_k), divided by its maximum."""
    weights = grads.mean(axis=(2, 3))
    cam = np.maximum(np.einsum("nk,nkhw->nhw", weights, acts), 0)
    peak = cam.max(axis=(1, 2), keepdims=True)
    return cam / np.where(peak == 0, 1, peak)


def activations(model, x) -> np.ndarray:
    with torch.no_grad():
        return model[:4](x).double().numpy()


@pytest.mark.parametrize("score", ["logit", "probability", "log_probability"])
def test_each_score_is_differentiated_as_its_formula_says(score):
    model, x = gap_net(), torch.rand(3, 3, 10, 10)
    acts = activations(model, x)
    n, k, h, w = acts.shape
    weight = model[6].weight.detach().double().numpy()  # (C, K)
    logits = acts.mean(axis=(2, 3)) @ weight.T + model[6].bias.detach().double().numpy()
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    classes = np.array([0, 2, 5])
    dlogit = weight[classes] / (h * w)  # (N, K): dS_c / dA_kij, the same at every position
    mixed = (p @ weight) / (h * w)  # sum_j p_j dS_j / dA
    slope = {"logit": dlogit,
             "probability": p[np.arange(n), classes][:, None] * (dlogit - mixed),  # dp_c = p_c (dS_c - sum_j p_j dS_j)
             "log_probability": dlogit - mixed}[score]
    grads = np.broadcast_to(slope[:, :, None, None], acts.shape)
    got = explain(model, "3", x, classes.tolist(), methods="gradcam", score=score)
    np.testing.assert_allclose(got.maps["gradcam"], reference_gradcam(acts, grads), atol=1e-5)
    rgb = torch.rand(2, 3, 10, 10)  # guided backpropagation follows --score too: check its direction
    plain = guided_backprop(model, rgb, [1, 4], score="logit")
    assert guided_backprop(model, rgb, [1, 4], score=score).shape == plain.shape


def test_the_top_k_classes_from_one_pass_are_k_separate_explanations():
    model, x = gap_net(), torch.rand(4, 3, 10, 10)
    methods = "gradcam,gradcampp,xgradcam,layercam,eigencam,scorecam"
    tops = explain_top(model, "3", x, 3, methods)
    with torch.no_grad():
        order = np.argsort(-model(x).numpy(), axis=1, kind="stable")[:, :3]
    assert len(tops) == 3
    for rank, got in enumerate(tops):
        np.testing.assert_array_equal(got.classes, order[:, rank])
        alone = explain(model, "3", x, order[:, rank].tolist(), methods)
        for name in alone.maps:
            np.testing.assert_allclose(got.maps[name], alone.maps[name], atol=1e-6, err_msg=f"{name} rank {rank}")
    np.testing.assert_array_equal(tops[0].classes, explain(model, "3", x).classes)  # rank 0: the prediction


def test_top_k_without_a_batched_backward_takes_one_pass_per_class(monkeypatch):
    model, x = gap_net(), torch.rand(2, 3, 10, 10)
    want = explain_top(model, "3", x, 4, "gradcam,gradcampp")
    grad = torch.autograd.grad
    passes = []

    def no_batching_rule(fn, *args, **kwargs):
        def batched(*inputs):
            raise RuntimeError("no batching rule")
        return batched

    def counted(*args, **kwargs):
        passes.append(1)
        return grad(*args, **kwargs)

    monkeypatch.setattr(explain_module.torch.autograd, "grad", counted)
    explain_top(model, "3", x, 4, "gradcam,gradcampp")
    assert len(passes) == 1  # the four classes' gradients from one batched backward
    passes.clear()
    monkeypatch.setattr(explain_module.torch.func, "vmap", no_batching_rule)
    got = explain_top(model, "3", x, 4, "gradcam,gradcampp")
    assert len(passes) == 4  # one backward of the head per class
    for a, b in zip(got, want, strict=True):
        for name in a.maps:
            np.testing.assert_allclose(a.maps[name], b.maps[name], atol=1e-6)


def test_bad_targets_are_usage_errors():
    model, x = gap_net(classes=4), torch.rand(1, 3, 8, 8)
    with pytest.raises(UsageError, match="the model has 4 classes"):
        explain_top(model, "3", x, 5)
    with pytest.raises(UsageError, match="give the number of classes"):
        explain_top(model, "3", x, 0)
    with pytest.raises(UsageError, match="choose from logit, probability, log_probability") as e:
        explain(model, "3", x, score="softmax")
    assert e.value.param == "score"


# --- --targets FILE --------------------------------------------------------------------------------------------

def test_a_targets_file_is_read_as_csv(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.csv").write_text('path,class\n# a comment\n\na.png,3\n"b, c.png",tabby\n"d\ne.png",1\nf.png\n')
    with pytest.raises(UsageError, match="line 8: give path,class") as e:  # its line, past a quoted line break
        read_targets(tmp_path / "t.csv")
    assert e.value.param == "targets"
    (tmp_path / "t.csv").write_text('path,class\n# a comment\n\na.png,3\n"b, c.png",tabby\n./a.png,3\n')
    got = read_targets(tmp_path / "t.csv")
    assert got == {str(tmp_path / "a.png"): [(4, "3"), (6, "3")], str(tmp_path / "b, c.png"): [(5, "tabby")]}
    (tmp_path / "bad.csv").write_text("# nothing\n")
    with pytest.raises(UsageError, match="no path,class line in it"):
        read_targets(tmp_path / "bad.csv")


def test_each_images_class_is_resolved_once_the_model_is_known(tmp_path, monkeypatch):
    from campp_cli.cam.targets import true_classes

    monkeypatch.chdir(tmp_path)
    categories = ["Cardigan", "cardigan", "tabby", "tiger cat"]
    lines = {"same.png": "same.png,tabby\n./same.png,2\n", "differ.png": "differ.png,tabby\ndiffer.png,3\n",
             "case.png": "case.png,CARDIGAN\n", "nocase.png": "nocase.png,TIGER CAT\n",
             "unicode.png": "unicode.png,\u00b2\n", "range.png": "range.png,9\n"}
    (tmp_path / "t.csv").write_text("".join(lines.values()))
    got = true_classes(list(lines) + ["missing.png"], categories, read_targets(tmp_path / "t.csv"), False)
    assert got["same.png"] == 2 and got["nocase.png"] == 3
    assert got["differ.png"] == "--targets lines 3, 4 give it different classes (2, 3)"
    assert got["case.png"] == ("--targets line 5: several classes are named 'CARDIGAN' but for case (0 'Cardigan', "
                               "1 'cardigan'); give the index")
    assert got["unicode.png"] == "--targets line 7: the model has no class '\u00b2' (give an index or one of its names)"
    assert got["range.png"] == "--targets line 8: the model has no class 9 (0..3)"
    assert got["missing.png"] == "--targets has no line for this image"


@pytest.fixture()
def labelled(tmp_path, monkeypatch):
    """A model of three classes (red, green, blue) and photos in class folders, one in no class's folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text(POOLED_NET)
    (tmp_path / "labels.txt").write_text("red\ngreen\nblue\n")
    for i, folder in enumerate(["red", "green", "blue", "blue", "other"]):
        (tmp_path / "val" / folder).mkdir(parents=True, exist_ok=True)
        write_image(tmp_path / "val" / folder / f"{i}.png", 40, 30, seed=i)
    return tmp_path


MODEL = ("--model", "net.py:build", "--labels", "labels.txt", "--input-size", "32")


def test_l_true_explains_each_photo_against_its_folders_class(labelled, run_cli):
    code, out, err = run_cli("classify", "-f", "val/", "--recursive", *MODEL, "-l", "true", "--labels-from-folders",
                             "--jsonl", "r.jsonl", "--save-maps")
    assert code == 1, err  # the photo in other/ has no class: it alone fails, in one line
    rows = [json.loads(line) for line in (labelled / "r.jsonl").read_text().splitlines()]
    by_folder = {row["input"].split("/")[-2]: row for row in rows}
    assert by_folder["other"]["error"].endswith("-l true: no class named 'other' (its folder, or a WordNet id "
                                                "starting its file name)")
    for folder, index in {"red": 0, "green": 1, "blue": 2}.items():
        assert by_folder[folder]["class"] == index and by_folder[folder]["name"] == folder
    single = run_cli("classify", "-f", "val/red/0.png", *MODEL, "-l", "0", "--jsonl", "s.jsonl", "--save-maps",
                     "--output-dir", "single", "-o", "x.png")
    assert single[0] == 0, single[2]
    # the same map as -l 0 gives that photo, up to float rounding: the folder runs it in a batch with others, whose
    # convolutions may sum in another order (the README's "under 1e-6"; 8e-7 on an AMD EPYC)
    (folder_run,) = (labelled / "output").rglob("0_gradcam.npy")
    np.testing.assert_allclose(np.load(folder_run), np.load(labelled / "single" / "x_gradcam.npy"), atol=1e-5)


def test_l_true_from_a_targets_file(labelled, run_cli):
    (labelled / "t.csv").write_text("val/red/0.png,blue\nval/green/1.png,0\nval/blue/2.png,purple\n")
    code, out, err = run_cli("classify", "-f", "val/red/0.png", "-f", "val/green/1.png", "-f", "val/blue/2.png",
                             "-f", "val/blue/3.png", *MODEL, "--targets", "t.csv", "--jsonl", "r.jsonl")
    rows = {row["input"]: row for row in map(json.loads, (labelled / "r.jsonl").read_text().splitlines())}
    assert rows["val/red/0.png"]["class"] == 2 and rows["val/green/1.png"]["class"] == 0
    assert rows["val/blue/2.png"]["error"].endswith("--targets line 3: the model has no class 'purple' (give an "
                                                    "index or one of its names)")
    upper = run_cli("classify", "-f", "val/red/0.png", *MODEL, "-l", "TRUE", "--targets", "t.csv", "--output-dir", "u")
    assert upper[0] == 0, upper[2]  # the keyword in any case
    assert rows["val/blue/3.png"]["error"].endswith("--targets has no line for this image")
    assert code == 1


@pytest.mark.parametrize("args, message", [
    (("-l", "true"), "-l true: each photo's own class comes from --targets FILE or --labels-from-folders"),
    (("-l", "2", "--targets", "t.csv"), "--targets gives each photo's class: use -l true (or leave -l out)"),
    (("--score", "softmax"), "Invalid value for '--score'"),
])
def test_what_cannot_be_explained_is_refused_before_the_model_loads(labelled, run_cli, args, message):
    (labelled / "t.csv").write_text("val/red/0.png,blue\n")
    code, out, err = run_cli("classify", "-f", "val/red/0.png", *MODEL, *args)
    assert code == 2 and message in err, err


def test_the_report_marks_right_and_wrong_against_the_targets_file(labelled, run_cli):
    from test_report import page_data

    # What the model predicts for two photos; the targets agree with the first and not with the second.
    run = run_cli("classify", "-f", "val/red/0.png", "-f", "val/green/1.png", *MODEL, "--jsonl", "p.jsonl")
    assert run[0] == 0, run[2]
    predicted = {row["input"]: row["class"] for row in map(json.loads, (labelled / "p.jsonl").read_text().splitlines())}
    names = ["red", "green", "blue"]
    wrong = {"val/red/0.png": names[predicted["val/red/0.png"]],
             "val/green/1.png": names[(predicted["val/green/1.png"] + 1) % 3]}
    (labelled / "t.csv").write_text("".join(f"{path},{name}\n" for path, name in wrong.items()))
    code, out, err = run_cli("classify", "-f", "val/red/0.png", "-f", "val/green/1.png", *MODEL, "--targets", "t.csv",
                             "--report", "r.html", "--output-dir", "t")
    assert code == 0, err
    data = page_data(labelled / "r.html")
    assert data["header"]["label"] == "each image's true class (-l true)"
    records = {r["input"]: r for r in data["records"]}
    for path, name in wrong.items():
        assert records[path]["class_name"] == name and records[path]["true_class"] == name  # explained: the truth
    assert records["val/red/0.png"]["correct"] == 1 and records["val/green/1.png"]["correct"] == 0


# --- -l topK on the command line ---------------------------------------------------------------------------------

def test_l_top2_draws_a_row_per_class_and_names_each_ranks_files(labelled, run_cli):
    from PIL import Image

    photo = "val/red/0.png"
    code, out, err = run_cli("classify", "-f", photo, *MODEL, "-l", "top2", "--save-maps", "--guided",
                             "--jsonl", "r.jsonl", "--output-dir", "top", "-o", "x.png")
    assert code == 0, err
    (row,) = map(json.loads, (labelled / "r.jsonl").read_text().splitlines())
    ranks = [t["class"] for t in row["targets"]]
    assert ranks == [t["class"] for t in row["top5"][:2]] and [t["rank"] for t in row["targets"]] == [1, 2]
    assert out.count("explained: ") == 2 and "top 2, methods" in out
    for rank, cls in enumerate(ranks, 1):  # each rank's maps are what -l CLASS gives that class
        alone = run_cli("classify", "-f", photo, *MODEL, "-l", str(cls), "--save-maps", "--guided",
                        "--output-dir", f"alone{rank}", "-o", "x.png")
        assert alone[0] == 0, alone[2]
        for method in ("gradcam", "gradcampp"):
            np.testing.assert_array_equal(np.load(labelled / "top" / f"x_top{rank}_{method}.npy"),
                                          np.load(labelled / f"alone{rank}" / f"x_{method}.npy"))
            for kind in ("heatmap", "overlay"):
                assert (labelled / "top" / f"x_top{rank}_{method}_{kind}.png").is_file()
            assert (labelled / "top" / f"x_guided_top{rank}_{method}.png").is_file()
    with Image.open(labelled / "top" / "x.png") as two, Image.open(labelled / "alone1" / "x.png") as one:
        assert two.width == one.width
        row_height = two.height - 8 - one.height  # two rows and a gap, against one row: one row and its gap
        caption = one.height - row_height
        assert 0 < caption < row_height / 3
    again = run_cli("classify", "-f", photo, *MODEL, "-l", "top2", "--save-maps", "--guided", "--output-dir", "top",
                    "-o", "x.png", "--skip-existing")
    assert again[0] == 0 and "skipped" in again[1] + again[2], again


@pytest.mark.parametrize("command, args, message", [
    ("classify", ("-l", "top0"), "-l top0: give topK with K = 1..10"),
    ("classify", ("-l", "top11"), "-l top11: give topK with K = 1..10"),
    ("classify", ("-l", "topaz"), "-l 'topaz': no class of that name"),  # a class name, not a rank
    ("classify", ("--activation", "sigmoid", "--threshold", "0.2", "-l", "2"), "--threshold 0.2: picks a "
                 "multi-label model's labels; -l gives the classes already"),
    ("classify", ("-l", "top4"), "-l top4: net.py:build has 3 classes"),
    ("classify", ("-l", "top2", "--targets", "t.csv"), "--targets gives each photo's one class; -l topK explains"),
    ("evaluate", ("-l", "top2", "--sanity"), "-l top2: --sanity randomises the model for one explained class"),
])
def test_top_k_is_refused_where_it_cannot_be(labelled, run_cli, command, args, message):
    (labelled / "t.csv").write_text("val/red/0.png,blue\n")
    code, out, err = run_cli(command, "-f", "val/red/0.png", *MODEL, *args)
    assert code == 2 and message in err, err


# --- multi-label models: --activation sigmoid, --threshold ---------------------------------------------------------

def test_sigmoid_scores_are_each_labels_own():
    from campp_cli.cam.targets import target_scores

    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 0.0, 4.0]], dtype=torch.float64)
    idx = torch.tensor([[0, 2], [1, 2]])
    s = logits.numpy()[np.arange(2)[:, None], idx.numpy()]
    np.testing.assert_allclose(target_scores(logits, idx, "probability", "sigmoid").numpy(), 1 / (1 + np.exp(-s)))
    np.testing.assert_allclose(target_scores(logits, idx, "log_probability", "sigmoid").numpy(),
                               -np.log1p(np.exp(-s)))
    np.testing.assert_allclose(target_scores(logits, idx, "logit", "sigmoid").numpy(), s)


MULTI = '''
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 5, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4))
    with torch.no_grad():
        net[6].weight.mul_(0.05)
        net[6].bias.copy_(torch.tensor([3.0, 1.0, -2.0, -3.0]))
    return net
'''


def multi_label_net() -> nn.Sequential:
    """Four labels whose sigmoid probabilities are about 0.95, 0.73, 0.12 and 0.05 whatever the photo (small
    weights, a fixed bias), so that 0.5 takes two labels, 0.9 one and 0.99 none: MULTI's model."""
    namespace: dict = {}
    exec(MULTI, namespace)
    return namespace["build"]().eval()


def test_explain_labels_explains_each_label_above_the_threshold():
    from campp_cli.cam.explain import explain_labels

    model, x = multi_label_net(), torch.rand(3, 3, 10, 10)
    with torch.no_grad():
        logits = model(x).double().numpy()
    probs = 1 / (1 + np.exp(-logits))
    for threshold in (0.5, 0.9, 0.99):
        ranked, counts = explain_labels(model, "3", x, threshold, "gradcam,gradcampp")
        assert counts == [max(1, int((p >= threshold).sum())) for p in probs]
        np.testing.assert_allclose(ranked[0].probs, probs, rtol=1e-5)
        order = np.argsort(-logits, axis=1, kind="stable")
        for rank, expl in enumerate(ranked):
            np.testing.assert_array_equal(expl.classes, order[:, rank])
            alone = explain(model, "3", x, order[:, rank].tolist(), "gradcam,gradcampp", activation="sigmoid")
            for name in alone.maps:
                np.testing.assert_allclose(expl.maps[name], alone.maps[name], atol=1e-6)




@pytest.mark.parametrize("threshold, labels", [(None, 2), ("0.9", 1), ("0.99", 1)])
def test_a_multi_label_model_on_the_command_line(tmp_path, run_cli, monkeypatch, threshold, labels):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "multi.py").write_text(MULTI)
    write_image(tmp_path / "photo.png", 40, 30)
    more = ("--threshold", threshold) if threshold else ()
    code, out, err = run_cli("classify", "-f", "photo.png", "--model", "multi.py:build", "--input-size", "32",
                             "--activation", "sigmoid", *more, "--jsonl", "r.jsonl", "--save-maps", "-o", "x.png",
                             "--report", "r.html")
    assert code == 0, err
    (row,) = map(json.loads, (tmp_path / "r.jsonl").read_text().splitlines())
    assert [t["class"] for t in row["targets"]] == list(range(labels))  # the labels in order of probability
    assert 0.9 < row["targets"][0]["probability"] < 0.97  # a sigmoid's, not a softmax's (0.69)
    for rank in range(1, 5):
        assert (tmp_path / "output" / f"x_top{rank}_gradcam.npy").is_file() == (rank <= labels)


@pytest.mark.parametrize("command, args, message", [
    ("classify", ("--threshold", "0.3"), "--threshold 0.3: is the probability a multi-label model's labels must "
                                         "reach: give --activation sigmoid too"),
    ("evaluate", ("--activation", "sigmoid", "--sanity"), "--activation sigmoid: --sanity randomises the model"),
])
def test_multi_label_options_where_they_do_not_apply(labelled, run_cli, command, args, message):
    code, out, err = run_cli(command, "-f", "val/red/0.png", *MODEL, *args)
    assert code == 2 and message in err, err


def test_the_report_has_a_card_per_class_explained_and_a_rank_filter(labelled, run_cli):
    from test_report import page_data

    code, out, err = run_cli("classify", "-f", "val/red/0.png", "-f", "val/green/1.png", *MODEL, "-l", "top2",
                             "--report", "r.html", "--jsonl", "r.jsonl")
    assert code == 0, err
    rows = [json.loads(line) for line in (labelled / "r.jsonl").read_text().splitlines()]
    data = page_data(labelled / "r.html")
    assert data["counts"]["done"] == 2 and data["header"]["label"] == "each image's 2 most probable classes (-l top2)"
    cards = [(r["input"], r["rank"], r["class_name"], r["probability"]) for r in data["records"]]
    want = [(row["input"], t["rank"], t["name"], round(t["probability"], 6)) for row in rows for t in row["targets"]]
    assert cards == want
    heat = labelled / "r_files" / "000"
    for slot in range(4):  # each card its own heatmaps: those of its class (rank 2's differ from rank 1's)
        assert (heat / f"{slot:06d}_heatmap_gradcam.jpeg").is_file()
    assert (heat / "000000_heatmap_gradcam.jpeg").read_bytes() != (heat / "000001_heatmap_gradcam.jpeg").read_bytes()


def test_browser_rank_filter(labelled, run_cli, browser):  # noqa: F811 - the fixture
    from test_report import open_report, shown_names

    code, out, err = run_cli("classify", "-f", "val/red/0.png", "-f", "val/green/1.png", *MODEL, "-l", "top3",
                             "--report", "r.html")
    assert code == 0, err
    page, errors = open_report(browser, labelled / "r.html")
    assert len(shown_names(page)) == 6 and page.is_visible("#rank-filter")
    page.select_option("#rank", "2")
    assert shown_names(page) == ["0.png", "1.png"]
    assert all(t.startswith("top 2") for t in page.eval_on_selector_all(".card .cls", "els => els.map(e => "
                                                                                     "e.textContent)"))
    assert "2 of 6 cards" in page.inner_text("#count")
    assert errors == []
    page.close()


def test_evaluate_top_k_scores_each_class_as_evaluating_it_alone_does(labelled, run_cli):
    import csv

    from test_report import page_data

    photos = ("-f", "val/red/0.png", "-f", "val/green/1.png")
    code, out, err = run_cli("evaluate", *photos, *MODEL, "-l", "top2", "--csv", "top.csv", "--json", "top.json",
                             "--report", "r.html", "--steps", "4")
    assert code == 0, err
    rows = list(csv.DictReader((labelled / "top.csv").open()))
    assert [r["rank"] for r in rows] == ["1", "1", "2", "2"] * 2  # two methods, two classes, two photos
    document = json.loads((labelled / "top.json").read_text())
    assert document["images"] == 2 and document["explained_classes"] == 4 and document["methods"]["gradcam"]["n"] == 4
    fields = ("probability", "explanation_probability", "drop_percent", "deletion_auc", "insertion_auc", "gini")
    for photo in ("val/red/0.png", "val/green/1.png"):
        for rank in ("1", "2"):
            mine = [r for r in rows if r["input"] == photo and r["rank"] == rank]
            alone = run_cli("evaluate", "-f", photo, *MODEL, "-l", mine[0]["class"], "--csv", "alone.csv",
                            "--steps", "4")
            assert alone[0] == 0, alone[2]
            want = list(csv.DictReader((labelled / "alone.csv").open()))
            for a, b in zip(mine, want, strict=True):
                assert (a["method"], a["name"]) == (b["method"], b["name"])
                for f in fields:
                    assert float(a[f]) == pytest.approx(float(b[f]), abs=1e-5), (photo, rank, f)
    cards = page_data(labelled / "r.html")["records"]
    assert [(c["input"], c["rank"]) for c in cards] == [("val/red/0.png", 1), ("val/red/0.png", 2),
                                                        ("val/green/1.png", 1), ("val/green/1.png", 2)]
    by_card = {(c["input"], str(c["rank"])): c["scores"]["gradcam"]["deletion_auc"] for c in cards}
    for r in rows:
        if r["method"] == "gradcam":
            assert by_card[(r["input"], r["rank"])] == pytest.approx(float(r["deletion_auc"]), abs=1e-3)  # as shown


def test_evaluate_a_multi_label_model_scores_each_label_by_its_sigmoid(tmp_path, run_cli, monkeypatch):
    import csv

    monkeypatch.chdir(tmp_path)
    (tmp_path / "multi.py").write_text(MULTI)
    write_image(tmp_path / "photo.png", 40, 30)
    code, out, err = run_cli("evaluate", "-f", "photo.png", "--model", "multi.py:build", "--input-size", "32",
                             "--activation", "sigmoid", "--csv", "e.csv", "--steps", "4")
    assert code == 0, err
    rows = list(csv.DictReader((tmp_path / "e.csv").open()))
    assert [(r["class"], r["rank"]) for r in rows if r["method"] == "gradcam"] == [("0", "1"), ("1", "2")]
    probs = [float(r["probability"]) for r in rows if r["method"] == "gradcam"]
    assert 0.9 < probs[0] < 0.97 and 0.65 < probs[1] < 0.8  # sigmoids (bias 3 and 1), not softmax shares
    for r in rows:  # O: the label's sigmoid on the photo masked by its map, near Y (the weights are tiny)
        assert abs(float(r["explanation_probability"]) - float(r["probability"])) < 0.05


def test_a_multi_label_run_checks_every_ranks_files_before_it_starts(tmp_path, run_cli, monkeypatch):
    """A photo named like another's rank-2 heatmap is neither overwritten nor written twice."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "multi.py").write_text(MULTI)
    (tmp_path / "col").mkdir()
    write_image(tmp_path / "col" / "x.png", 40, 30)
    (tmp_path / "out").mkdir()
    victim = write_image(tmp_path / "out" / "x_top2_gradcam_heatmap.png", 40, 30, seed=3)
    before = victim.read_bytes()
    args = ("--model", "multi.py:build", "--input-size", "32", "--activation", "sigmoid", "--format", "png")
    code, out, err = run_cli("classify", "-f", "col/x.png", "-f", str(victim), *args, "--output-dir", "out",
                             "-o", "{stem}.png")
    assert code == 2 and "overwrite" in err, err
    assert victim.read_bytes() == before
    write_image(tmp_path / "col" / "x_top2_gradcam_heatmap.png", 40, 30, seed=4)
    code, out, err = run_cli("classify", "-f", "col", *args, "--output-dir", "o2", "--jsonl", "r.jsonl")
    assert code == 0, err
    outputs = [o for row in map(json.loads, (tmp_path / "r.jsonl").read_text().splitlines()) for o in row["outputs"]]
    assert len(outputs) == len(set(outputs))  # no file is two photos' output


def test_a_second_top_k_report_keeps_each_cards_own_images(labelled, run_cli):
    from test_report import page_data

    args = ("-f", "val/red/0.png", "-f", "val/green/1.png", *MODEL, "-l", "top2", "--report", "r.html")
    for extra in ((), (), ("--skip-existing",)):
        code, out, err = run_cli("classify", *args, *extra)
        assert code == 0, err
        records = page_data(labelled / "r.html")["records"]
        assert [(r["input"], r["rank"]) for r in records] == [("val/red/0.png", 1), ("val/red/0.png", 2),
                                                              ("val/green/1.png", 1), ("val/green/1.png", 2)]
        slots = [r.get("image_slot", i) for i, r in enumerate(records)]
        assert len(set(slots)) == 4, slots  # each card its own images
        assert all(r["class_name"] for r in records)
