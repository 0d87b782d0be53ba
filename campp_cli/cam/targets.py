"""What is explained: which class of each image (``-l``, ``--targets``) and which score of it (``--score``).

``-l`` takes a class (an index or a name; -1: the predicted class) for every image; ``true``: each
image's own class, from a ``--targets FILE`` of ``path,class`` lines or from its folder's name
(``--labels-from-folders``); or ``topK``: each image's K most probable classes, all from one pass.  The
gradient methods differentiate the explained class's *score* (:data:`SCORES`): its logit, as the
Grad-CAM and Grad-CAM++ papers do (the default), its softmax probability or its log-probability.
Importing this module does not import torch.
"""

from __future__ import annotations

import csv
import io
import os

from ..errors import UsageError

#: The scores a gradient method may differentiate, the paper's first; each with what it is.
SCORES = {
    "logit": "the class's pre-softmax score S_c, as in the Grad-CAM and Grad-CAM++ papers",
    "probability": "its softmax probability p_c (gradients shrink where the model is sure)",
    "log_probability": "log p_c = S_c - logsumexp(S): the logit less what the other classes take",
}

#: How a model's logits become its classes' probabilities: one class per image (softmax, the paper's) or
#: independent labels (multi-label models: sigmoid).
ACTIVATIONS = {
    "softmax": "one class per image: probabilities over the classes sum to 1 (ImageNet's, the paper's)",
    "sigmoid": "multi-label: each class's probability on its own; every label above --threshold is explained",
}

#: The default --threshold of a multi-label model's labels.
DEFAULT_THRESHOLD = 0.5

#: The most classes one image has explained at once (``-l topK``, a multi-label model's labels): a figure
#: row each, and the files of every rank are checked before the run.
MAX_RANKS = 10

#: ``-l true``: each image's own class.
TRUE = "true"

#: The largest --targets file read (bytes).
MAX_TARGETS_BYTES = 256 * 2**20


def check_score(score: str) -> str:
    if score not in SCORES:
        raise UsageError(f"choose from {', '.join(SCORES)}", param="score", value=score)
    return score


def check_activation(activation: str) -> str:
    if activation not in ACTIVATIONS:
        raise UsageError(f"choose from {', '.join(ACTIVATIONS)}", param="activation", value=activation)
    return activation


def probabilities(logits, activation: str = "softmax"):
    """The classes' probabilities of (N, C) ``logits``: a softmax over them, or each label's sigmoid."""
    import torch

    check_activation(activation)
    return torch.sigmoid(logits) if activation == "sigmoid" else torch.softmax(logits, dim=1)


def target_scores(logits, idx, score: str = "logit", activation: str = "softmax"):
    """The (N, T) scores of classes ``idx`` (N, T) in ``logits`` (N, C) that the gradient methods
    differentiate (see :data:`SCORES`); each row depends on its own image only.  ``activation="sigmoid"``
    (a multi-label model): a label's probability is its sigmoid, its log-probability ``logsigmoid``."""
    import torch

    check_score(score)
    if score == "probability":
        logits = probabilities(logits, activation)
    elif score == "log_probability":
        sigmoid = check_activation(activation) == "sigmoid"
        logits = torch.nn.functional.logsigmoid(logits) if sigmoid else torch.log_softmax(logits, dim=1)
    return logits.gather(1, idx)


def labels_above(probs, threshold: float = DEFAULT_THRESHOLD) -> list[int]:
    """How many labels of each image (rows of (N, C) ``probs``) reach ``threshold``: at least one (an image
    with none is explained for its most probable label), at most :data:`MAX_RANKS` (its most probable)."""
    import numpy as np

    return [min(MAX_RANKS, max(1, int(n))) for n in (np.asarray(probs) >= threshold).sum(axis=1)]


def top_k(label) -> int | None:
    """K of ``-l topK`` (each image's K most probable classes, at most :data:`MAX_RANKS`), or None for any
    other ``-l`` (``topaz`` is a class name); ``top0``, ``top-1`` and ``top`` alone are usage errors."""
    text = str(label).strip().lower()
    if not text.startswith("top") or text[3:4].isalpha():
        return None
    k = text[3:]
    if not (k.isascii() and k.isdigit()) or not 1 <= int(k) <= MAX_RANKS:
        raise UsageError(f"give topK with K = 1..{MAX_RANKS} (top3: each image's three most probable classes; a "
                         f"class named so: its index)", param="label", value=label)
    return int(k)


def rank_label(rank: int, method: str) -> str:
    """What names rank ``rank``'s files of ``method`` under ``-l topK``: ``top2_gradcam``."""
    return f"top{rank}_{method}"


def output_labels(methods, top: int | None) -> list[str]:
    """What names each method's files: the methods, or under ``-l topK`` each rank's (``top1_gradcam``,
    ``top1_gradcampp``, ``top2_gradcam``...)."""
    if top is None:
        return list(methods)
    return [rank_label(r, m) for r in range(1, top + 1) for m in methods]


def is_multi_label(activation: str, label) -> bool:
    """Whether a run explains a multi-label model's labels above its threshold: a sigmoid model, ``-l -1``."""
    return activation == "sigmoid" and str(label).strip() == "-1"


def is_true(label) -> bool:
    """Whether ``-l`` asks for each image's own class."""
    return str(label).strip().lower() == TRUE


def read_targets(path: str | os.PathLike) -> dict[str, list[tuple[int, str]]]:
    """``--targets FILE``: ``{absolute image path: [(line number, class text), ...]}`` from lines
    ``path,class`` (CSV: quote a path holding a comma; a class is an index or a name).  Paths are relative to
    the working folder, as ``-f``'s are; empty lines and lines starting with ``#`` are skipped, and so is a
    first line ``path,class``.  A malformed line is a usage error naming its line; an image given on several
    lines must get one class from them (see :func:`true_classes`)."""
    from ..io.inputs import read_capped

    text = read_capped(path, MAX_TARGETS_BYTES, "targets", path, unreadable="cannot read it ({reason})",
                       too_large="larger than {mb} MB; is it a targets file?",
                       not_text="not UTF-8 text ({reason} at byte {start})")
    out: dict[str, list[tuple[int, str]]] = {}
    reader = csv.reader(io.StringIO(text))
    number = 1  # the line a record starts on (a quoted path may hold a line break)
    for row in reader:
        start, number = number, reader.line_num + 1
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if start == 1 and [c.strip().lower() for c in row] == ["path", "class"]:
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise UsageError(f"line {start}: give path,class (quote a path that holds a comma)", param="targets",
                             value=path)
        out.setdefault(os.path.abspath(row[0].strip()), []).append((start, row[1].strip()))
    if not out:
        raise UsageError("no path,class line in it", param="targets", value=path)
    return out


def class_index(text: str, categories: list[str]) -> int | str:
    """A target's class as an index: a number in range, a WordNet id (1000-class models) or a class name
    (exactly, then ignoring case where that names one class); else why it is none."""
    from ..commands.boxes import class_of

    value = text.strip()
    if value.isascii() and value.isdigit() and value not in categories:
        if int(value) < len(categories):
            return int(value)
        return f"the model has no class {value} (0..{len(categories) - 1})"
    if value not in categories:
        hits = [k for k, c in enumerate(categories) if c.lower() == value.lower()]
        if len(hits) > 1:
            listed = ", ".join(f"{k} {categories[k]!r}" for k in hits[:5])
            return f"several classes are named {value!r} but for case ({listed}); give the index"
    found = class_of(value, categories)
    return found if found is not None else \
        f"the model has no class {value!r} (give an index or one of its names)"


def true_classes(sources, categories: list[str], targets: dict | None, folders: bool) -> dict[str, "int | str"]:
    """Each image's own class for ``-l true``: ``{str(source): class index, or why it has none}``, from
    ``targets`` (:func:`read_targets`) or, with ``folders``, its folder's name (``--labels-from-folders``)."""
    out: dict[str, int | str] = {}
    for source in sources:
        key = str(source)
        if targets is not None:
            lines = targets.get(os.path.abspath(key))
            if lines is None:
                out[key] = "--targets has no line for this image"
                continue
            found = {line: class_index(text, categories) for line, text in lines}
            bad = [(line, why) for line, why in found.items() if isinstance(why, str)]
            classes = sorted({c for c in found.values() if isinstance(c, int)})
            if bad:
                out[key] = f"--targets line {bad[0][0]}: {bad[0][1]}"
            elif len(classes) > 1:
                out[key] = (f"--targets lines {', '.join(map(str, found))} give it different classes "
                            f"({', '.join(map(str, classes))})")
            else:
                out[key] = classes[0]
        else:
            from ..outputs.report_cards import true_class

            index, name = true_class(source, categories) if folders else (None, "")
            out[key] = index if index is not None else \
                f"-l true: no class named {name!r} (its folder, or a WordNet id starting its file name)"
    return out


def describe_label(label, categories: list[str]) -> str:
    """``-l`` in words, for the report's header and the run's first line."""
    if is_true(label):
        return "each image's true class (-l true)"
    if top_k(label) is not None:
        return f"each image's {top_k(label)} most probable classes (-l {str(label).strip().lower()})"
    if int(label) == -1:
        return "the predicted class"
    return f"{label} {categories[int(label)]} (-l)"

