"""A classifier with classes of its own: --num-classes, --labels, and -l as an index or a class name."""

from __future__ import annotations

import json

import pytest
from conftest import IMAGES

from campp_cli.errors import UsageError
from campp_cli.models.labels import read_labels, resolve_label

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# --- the labels file --------------------------------------------------------------------------------------

def test_labels_one_a_line_or_a_json_list(tmp_path):
    lines = tmp_path / "l.txt"
    lines.write_bytes(("\ufeff" + "\n".join(NAMES) + "\n\n").encode())  # a BOM and trailing empty lines
    assert read_labels(lines) == NAMES
    listed = tmp_path / "l.json"
    listed.write_text(json.dumps(NAMES))
    assert read_labels(listed) == NAMES


@pytest.mark.parametrize("text, why", [
    ("", "no class names"),
    ("\n\n", "no class names"),
    ("[1, 2]", "JSON list of strings"),
    ('["a", "b"', "not a JSON list"),
])
def test_bad_labels_files_are_usage_errors(tmp_path, text, why):
    path = tmp_path / "l.txt"
    path.write_text(text)
    with pytest.raises(UsageError, match=why):
        read_labels(path)
    with pytest.raises(UsageError, match="cannot read"):
        read_labels(tmp_path / "missing.txt")


# --- -l -----------------------------------------------------------------------------------------------------

def test_a_label_is_an_index_or_a_name():
    assert resolve_label("-1", NAMES) == -1
    assert resolve_label("3", NAMES) == 3
    assert resolve_label("frog", NAMES) == 6
    assert resolve_label("  Frog ", NAMES) == 6  # case-insensitive when no exact match
    assert resolve_label("7", ["0", "7", "x"]) == 1  # a class named "7" is that class


@pytest.mark.parametrize("value, message", [
    ("10", "out of range; the model has classes 0..9"),
    ("dgo", "no class of that name; closest: 'dog'"),
    ("zebra", "no class of that name"),
])
def test_unknown_labels_name_the_closest(value, message):
    with pytest.raises(UsageError, match=message):
        resolve_label(value, NAMES)


def test_suggestions_prefer_names_that_contain_the_word():
    """-l cat on ImageNet offered 'crate', 'oxcart', 'castle' (edit distance); the cats come first now."""
    import torchvision

    imagenet = list(torchvision.models.VGG16_Weights.IMAGENET1K_V1.meta["categories"])
    with pytest.raises(UsageError) as info:
        resolve_label("cat", imagenet)
    offered = info.value.message.split("closest: ", 1)[1]
    assert offered.startswith("'tiger cat', 'Persian cat', 'Siamese cat', 'Egyptian cat'"), offered
    assert "crate" not in offered and "castle" not in offered
    with pytest.raises(UsageError, match="closest: 'espresso maker', 'espresso', "):
        resolve_label("Espress", imagenet)  # part of a word, case-insensitive, before edit distance


def test_an_ambiguous_name_lists_the_candidates():
    cats = ["Cat", "CAT", "dog"]
    assert resolve_label("Cat", cats) == 0  # exact wins
    with pytest.raises(UsageError, match=r"several classes have that name \(0 'Cat', 1 'CAT'\)"):
        resolve_label("cat", cats)


# --- through the CLI ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ten_classes(tmp_path_factory):
    """A ResNet-18 with a 10-class head (seeded), its weights and a labels file."""
    import torch
    import torchvision

    folder = tmp_path_factory.mktemp("ten")
    torch.manual_seed(7)
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), folder / "mine.pth")
    (folder / "labels.txt").write_text("\n".join(NAMES) + "\n")
    return folder


def test_a_fine_tuned_resnet_with_its_own_classes(run_cli, ten_classes, tmp_path):
    jsonl = tmp_path / "r.jsonl"
    code, out, err = run_cli("classify", "--arch", "resnet18", "--num-classes", "10", "--weights",
                             ten_classes / "mine.pth", "--labels", ten_classes / "labels.txt", "-l", "Bird",
                             "-f", IMAGES / "coffee.png", "-f", IMAGES / "rocket.jpg", "--output-dir", tmp_path,
                             "--jsonl", jsonl)
    assert code == 0, err
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [(d["class"], d["name"]) for d in lines] == [(2, "bird"), (2, "bird")]
    assert all(t["name"] in NAMES for d in lines for t in d["top5"])
    code, out, err = run_cli("classify", "--arch", "resnet18", "--num-classes", "10", "--weights",
                             ten_classes / "mine.pth", "-f", IMAGES / "coffee.png", "--output-dir", tmp_path / "b",
                             "-l", "9")
    assert code == 0, err
    assert "explained: 9 class 9 " in out  # no labels: numbered classes


def test_own_class_mistakes_are_one_line(run_cli, ten_classes, tmp_path):
    weights, labels = ten_classes / "mine.pth", ten_classes / "labels.txt"
    cases = [
        (["--num-classes", "10", "--weights", weights, "--labels", labels, "-l", "bir"], 2,
         "campp: error: -l 'bir': no class of that name; closest: 'bird'"),
        (["--num-classes", "10"], 2, "campp: error: --num-classes 10: give the weights of that head with --weights"),
        (["--labels", labels, "--weights", weights], 2,
         "campp: error: --labels: 10 names, but resnet18 has 1000 outputs (a head of your own? give --num-classes)"),
        (["--weights", weights], 1, "(a head of 10 classes? add --num-classes 10)"),
    ]
    for args, exit_code, message in cases:
        code, out, err = run_cli("classify", "--arch", "resnet18", "-f", IMAGES / "coffee.png", "--output-dir",
                                 tmp_path, *args)
        assert code == exit_code, (args, err)
        assert len(err.strip().splitlines()) == 1 and message in err, err
