"""Class names: a labels file (one name a line, or a JSON list) and ``-l`` given as an index or a name.

Nothing here imports torch: the file is read and checked before the model is loaded.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
from pathlib import Path

from ..errors import UsageError, clip

#: Largest labels file read (a million names of 100 bytes).
MAX_LABELS_BYTES = 100 * 1024 * 1024


def read_labels(path: str | os.PathLike) -> list[str]:
    """The class names in ``path``, in class order: a JSON list of strings, or one name a line (a final
    empty line is no class; an empty line inside is)."""
    try:
        with open(path, "rb") as fh:  # read, never stat: a FIFO or /dev/zero has no size
            data = fh.read(MAX_LABELS_BYTES + 1)
    except OSError as exc:
        raise _labels_error(path, f"cannot read it ({exc.strerror or exc})") from None
    if len(data) > MAX_LABELS_BYTES:
        raise _labels_error(path, f"larger than {MAX_LABELS_BYTES // 2**20} MB; is it a labels file?")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _labels_error(path, f"cannot read it (not UTF-8 text: {exc.reason} at byte {exc.start})") from None
    names = _json_names(path, text) if text.lstrip().startswith("[") else _line_names(text)
    if not names:
        raise _labels_error(path, "no class names in it")
    return names


def _labels_error(path: str | os.PathLike, problem: str) -> UsageError:
    return UsageError(problem, param="labels", value=path)


def _json_names(path: str | os.PathLike, text: str) -> list[str]:
    try:
        names = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _labels_error(path, f"not a JSON list ({exc})") from None
    except RecursionError:  # [[[[...]]]] thousands deep
        raise _labels_error(path, "not a JSON list of strings (lists nested too deep)") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _labels_error(path, "give a JSON list of strings, or one name a line")
    return names


def _line_names(text: str) -> list[str]:
    names = text.splitlines()
    while names and not names[-1].strip():
        names.pop()
    return [n.strip() for n in names]


@functools.lru_cache(maxsize=None)
def imagenet_categories() -> tuple[str, ...]:
    """ImageNet's 1000 class names, as torchvision's weights name them (campp's copy: no torchvision import)."""
    text = (Path(__file__).parent.parent / "data" / "imagenet_classes.txt").read_text(encoding="utf-8")
    return tuple(text.splitlines())


def numbered(count: int) -> list[str]:
    """Names for classes that have none: "class 0", "class 1", ..."""
    return [f"class {k}" for k in range(count)]


def check_label_text(text: str) -> None:
    """What can be said of ``-l`` before the model is loaded: a negative index other than -1 is wrong."""
    try:
        index = int(str(text).strip())
    except ValueError:
        return
    if index < -1:
        raise UsageError("give a class index (0, 1, ...), a class name, or -1 for the predicted class", param="label",
                         value=text)


def resolve_label(text: str | int, categories: list[str]) -> int:
    """``-l`` as a class index: -1 (the predicted class), an index, or a class name (exact, then
    case-insensitive); anything else is a usage error naming the closest classes."""
    value = str(text).strip()
    try:
        index = int(value)
    except ValueError:
        index = None
    if index is not None and value not in categories:
        if -1 <= index < len(categories):
            return index
        raise UsageError(f"out of range; the model has classes 0..{len(categories) - 1} (or give a class name)",
                         param="label", value=value)
    if value in categories:
        hits = [k for k, c in enumerate(categories) if c == value]
    else:
        hits = [k for k, c in enumerate(categories) if c.lower() == value.lower()]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        listed = ", ".join(f"{k} {clip(categories[k])!r}" for k in hits[:5])
        raise UsageError(f"several classes have that name ({listed}); give the index", param="label",
                         value=repr(clip(value)))
    near = closest(value, categories)
    hint = f"; closest: {', '.join(repr(clip(n)) for n in near)}" if near else ""
    raise UsageError(f"no class of that name{hint}", param="label", value=repr(clip(value)))


def closest(value: str, categories: list[str], n: int = 5) -> list[str]:
    """The class names most like ``value``: those containing it as a word ('cat': 'tiger cat', 'Persian
    cat'), then as part of a word ('wildcat'), then by edit distance ('crate'); at most ``n``."""
    if not value:
        return []
    word = re.compile(rf"(?<!\w){re.escape(value)}(?!\w)", re.IGNORECASE)
    found = [c for c in categories if word.search(c)]
    found += [c for c in categories if value.lower() in c.lower() and c not in found]
    found += [c for c in difflib.get_close_matches(value, categories, n=n, cutoff=0.5) if c not in found]
    return list(dict.fromkeys(found))[:n]
