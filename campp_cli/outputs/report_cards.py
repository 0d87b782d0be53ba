"""The report's cards: each image's card images (made where the figures are drawn, on any engine's workers),
its record, and how the records are written into the page's data blob.

A record is a dict of readable fields (:data:`COLUMNS`).  In the page a record is an array of its values in
the order of the blob's ``"columns"``, ``null`` for a value it lacks and its absent last values left out, so a
page of 50,000 cards names each field once, not 50,000 times; a top-5 entry is an array in the order of
``"top5_columns"`` and each method's evaluate scores one in the order of ``"score_columns"``.  The page's
script turns the arrays back into named fields.  Nothing here imports torch.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..draw.encode import encode_jpeg
from ..draw.geometry import resize_to, upsample
from .kinds import key

#: Height in pixels of the card thumbnails (the comparison figure shrunk).
THUMB_HEIGHT = 120
THUMB_QUALITY = 70
ASSET_QUALITY = 85
_WNID_PREFIX = re.compile(r"^(n\d{8})(?:[_\-.]|$)")

#: A record's fields, in the order of a card's array in the page (the most often absent last).
COLUMNS = (
    "input",            # the input as given (a path)
    "class_index",      # the explained class's index
    "class_name",       # and its name
    "probability",      # its probability
    "top5",             # the predicted top-5: [class_name, probability] each
    "thumb_size",       # [width, height] of its thumbnail; absent: no images of this image
    "disagreement",     # 1 - correlation of the methods' maps, averaged over pairs (disagreement())
    "figure_stamp",     # [size, modification time in ns] of its comparison figure, as this run wrote it
    "true_class",       # with --labels-from-folders: the true class's name
    "correct",          # and 1 if the top-1 is that class, else 0
    "skipped",          # 1: --skip-existing found its outputs there already
    "image_slot",       # the number its images are named by, where it is not the record's index
    "error",            # the one-line reason it failed
    "boxes_status",     # evaluate --boxes: whether and how its boxes were found
    "scores",           # evaluate: {method: its scores (SCORE_COLUMNS)}
    "rank",             # -l topK, a multi-label model: the explained class's rank (1: the most probable)
)
#: The fields of one entry of a record's top-5.
TOP5_COLUMNS = ("class_name", "probability")
#: The fields of one method's evaluate scores of one image, named as evaluate's --csv names them.
SCORE_COLUMNS = ("probability", "explanation_probability", "drop_percent", "deletion_auc", "insertion_auc",
                 "deletion_curve", "insertion_curve", "loc", "pointing_hit", "energy_pointing", "gini", "entropy",
                 "road_morf", "road_lerf", "morf_curve", "lerf_curve")
#: What a skipped image's record keeps of the record an earlier run's page has of it.
KEPT = ("class_index", "class_name", "probability", "top5", "thumb_size", "disagreement", "figure_stamp", "rank")


# ----------------------------------------------------------------------------- on the workers


def disagreement(maps: dict[str, np.ndarray]) -> float | None:
    """How much the methods' maps disagree: 1 - Pearson correlation, averaged over every pair of methods.

    0 when the maps are the same up to scale and offset, 1 when unrelated, up to 2 when opposite; with the
    default methods it is 1 - corr(Grad-CAM, Grad-CAM++).  A constant map has no correlation: against a
    constant map it counts 0, against any other 1.  None with fewer than two methods.  Maps of different
    sizes are compared at the largest.
    """
    arrays = [np.asarray(m, dtype=np.float64) for m in maps.values()]
    if len(arrays) < 2:
        return None
    side = max(max(a.shape) for a in arrays)
    flat = [(upsample(a.astype(np.float32), side) if a.shape != (side, side) else a).ravel()
            .astype(np.float64) for a in arrays]
    values = []
    for i in range(len(flat)):
        for j in range(i + 1, len(flat)):
            a, b = flat[i] - flat[i].mean(), flat[j] - flat[j].mean()
            na, nb = np.sqrt(a @ a), np.sqrt(b @ b)
            if na == 0 or nb == 0:
                values.append(0.0 if na == nb else 1.0)
            else:
                values.append(float(1.0 - np.clip(a @ b / (na * nb), -1.0, 1.0)))
    return float(np.mean(values))


def card_assets(photo: np.ndarray, figures: dict[str, np.ndarray], maps: dict[str, np.ndarray]) -> dict:
    """The report's images of one image, encoded: the thumbnail of the comparison figure, the photo (the
    square the model saw, at panel size), each method's heatmap (from ``figures``, as
    :func:`campp_cli.stages.render` draws them); and how much the methods' ``maps`` disagree."""
    comparison = figures[key("comparison")]
    h, w = comparison.shape[:2]
    tw = max(1, round(w * THUMB_HEIGHT / h))
    thumb = resize_to(comparison, tw, THUMB_HEIGHT)
    return {
        "thumb": encode_jpeg(thumb, THUMB_QUALITY),
        "size": [tw, THUMB_HEIGHT],
        "photo": encode_jpeg(photo, ASSET_QUALITY),
        "heatmaps": {m: encode_jpeg(figures[key("heatmap", m)], ASSET_QUALITY) for m in maps},
        "disagreement": disagreement(maps),
    }


# ----------------------------------------------------------------------------- true classes


def true_class(path: str | os.PathLike, categories: list[str]) -> tuple[int | None, str]:
    """(class index or None, the name it was read from) of an image, as ``--labels-from-folders`` reads it:
    the name of its folder (``val/n01440764/x.JPEG``, ``train/cat/1.png``), else a WordNet id that starts its
    file name (``n01440764_10026.JPEG``).  Names match as ``--boxes`` object names do (WordNet ids for
    1000-class models, then class names exactly, then ignoring case)."""
    from ..commands.boxes import class_of

    path = Path(path)
    folder = path.parent.name
    if folder:
        index = class_of(folder, categories)
        if index is not None:
            return index, folder
    match = _WNID_PREFIX.match(path.name)
    if match:
        index = class_of(match.group(1), categories)
        if index is not None:
            return index, match.group(1)
    return None, folder or path.name


# ----------------------------------------------------------------------------- records


def result_fields(result) -> dict:
    """The fields of a done image's record that come from its Result alone: class, probability, top-5."""
    return {"class_index": result.class_index, "class_name": result.class_name,
            "probability": round(result.probability, 6),
            "top5": [[name, round(p, 6)] for _, name, p in result.top5]}


def score_fields(extra: dict) -> dict:
    """The evaluate fields of a done image's record (``scores``, ``boxes_status``), from its Result's extra."""
    if "scores" not in extra:
        return {}
    scores = {m: _scores(s) for m, s in extra["scores"].items()}
    fields: dict = {"scores": scores}
    located = extra.get("boxes")
    if located is not None:
        fields["boxes_status"] = located.get("status")
        for m, b in located.get("scores", {}).items():
            scores[m].update(loc={k: round(v, 4) for k, v in b["loc"].items()},
                             pointing_hit=int(b["pointing_hit"]), energy_pointing=round(float(b["energy"]), 4))
    return fields


def _scores(s) -> dict:
    """One method's evaluate scores of one image, as the page shows them."""
    return {"probability": round(float(s.y), 5), "explanation_probability": round(float(s.o), 5),
            "drop_percent": round(float(s.drop), 3), "deletion_auc": round(float(s.deletion_auc), 4),
            "insertion_auc": round(float(s.insertion_auc), 4),
            "deletion_curve": np.round(np.asarray(s.deletion, dtype=np.float64), 4).tolist(),
            "insertion_curve": np.round(np.asarray(s.insertion, dtype=np.float64), 4).tolist(),
            "gini": round(float(s.gini), 4), "entropy": round(float(s.entropy), 4),
            **({"road_morf": round(float(np.mean(s.morf)), 4), "road_lerf": round(float(np.mean(s.lerf)), 4),
                "morf_curve": np.round(np.asarray(s.morf, dtype=np.float64), 4).tolist(),
                "lerf_curve": np.round(np.asarray(s.lerf, dtype=np.float64), 4).tolist()}
               if s.morf is not None else {})}


def mean_curves(records: list[dict], methods: list[str]) -> dict:
    """Each method's mean deletion and insertion curves over the records scored (and ROAD's, where it ran)."""
    out = {}
    for m in methods:
        scored = [r["scores"][m] for r in records if "scores" in r and m in r["scores"]]
        if scored:
            out[m] = {k: np.round(np.mean([s[k] for s in scored], axis=0), 5).tolist()
                      for k in ("deletion_curve", "insertion_curve", "morf_curve", "lerf_curve")
                      if all(s.get(k) is not None for s in scored)}
    return out


def figure_stamp(path) -> list[int] | None:
    """[size, modification time in ns] of an output file: whether a file is still the one a run wrote."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


# ----------------------------------------------------------------------------- records in the page


def _row(fields: dict, columns: tuple[str, ...]) -> list:
    """``fields`` as an array in the order of ``columns``: null where absent, absent last values left out."""
    row = [fields.get(c) for c in columns]
    while row and row[-1] is None:
        row.pop()
    return row


def as_rows(records: list[dict]) -> list[list]:
    """The records as the page's data holds them (see the module's docstring)."""
    rows = []
    for record in records:
        if "scores" in record:
            record = {**record, "scores": {m: _row(s, SCORE_COLUMNS) for m, s in record["scores"].items()}}
        rows.append(_row(record, COLUMNS))
    return rows


def blob_columns() -> dict:
    """The names of the fields of the page's arrays, as the page's data holds them."""
    return {"columns": list(COLUMNS), "top5_columns": list(TOP5_COLUMNS), "score_columns": list(SCORE_COLUMNS)}


def read_rows(data: dict) -> list[dict | None] | None:
    """The records of a page's data (their top-level fields; scores stay arrays), None for one that is not an
    array of at most as many values as there are columns; None where the data is not of this format (a page an
    older campp wrote, whose records were objects, or a damaged one)."""
    columns, rows = data.get("columns"), data.get("records")
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns) or not isinstance(rows, list):
        return None
    return [{c: v for c, v in zip(columns, row) if v is not None}
            if isinstance(row, list) and len(row) <= len(columns) else None for row in rows]


# ----------------------------------------------------------------------------- JSON


def finite(value):
    """``value`` with every non-finite float (an interval over no images...) as None: JSON has no NaN."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value


def plain(value):
    """JSON for NumPy scalars and arrays; a non-finite number becomes null."""
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (tuple, set)):
        return list(value)
    raise TypeError(f"not JSON: {type(value).__name__}")
