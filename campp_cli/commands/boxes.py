"""Bounding boxes for localisation: Pascal VOC XML files, mapped into the model's input frame, and the scores.

* Files: Pascal VOC annotation XML (the format of ImageNet's validation boxes), one per image, matched by
  file stem.  Coordinates are read in VOC's convention, 1-based inclusive pixel indices, so a box covers
  the pixel edges [xmin - 1, xmax] x [ymin - 1, ymax].
* Object names: a WordNet id (``n02124075``), mapped to a class through ImageNet's 1000 synsets in class
  order when the model has 1000 classes; else a class name (exact, then case-insensitive).
* Frame: campp's centre crop (the central square, side = the short side) then the resize to the input size;
  a box cut by the crop is clipped, one entirely outside it dropped.
* Scores, per image, method and explained class, against the union U of that class's boxes, on the map
  upsampled to the input resolution:
  - Loc(delta), the Grad-CAM++ paper's eq. 26: the map min-max normalised and binarised (> delta is 1);
    Loc = (positive pixels inside U) / (area of U + positive pixels outside U).
  - pointing game (Zhang et al., ECCV 2016): a hit when the map's maximum is within 15 pixels of a box.
  - energy-based pointing game (Wang et al., Score-CAM, CVPR-W 2020): the share of the map's sum inside U.

Nothing here imports torch.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import UsageError, clip
from ..models.preprocessing import input_frame

#: Zhang et al.'s tolerance for the pointing game, in pixels at the input resolution.
POINTING_TOLERANCE = 15
DEFAULT_DELTAS = (0.0, 0.25, 0.5)
_WNID = re.compile(r"^n\d{8}$")
#: Largest annotation file read: ImageNet's and VOC's are a few kilobytes; a thousand objects fit in 1 MB.
MAX_ANNOTATION_BYTES = 1 << 20


@dataclass
class Box:
    name: str
    x0: float
    y0: float
    x1: float
    y1: float


@dataclass
class Annotation:
    path: str
    boxes: list[Box] = field(default_factory=list)
    problem: str | None = None  # the one line saying why this file could not be used


@lru_cache(maxsize=1)
def imagenet_wnids() -> list[str]:
    """ImageNet-1k's WordNet ids in class-index order (from timm's imagenet_synsets.txt, Apache-2.0)."""
    text = (Path(__file__).parent.parent / "data" / "imagenet_wnids.txt").read_text()
    return text.split()


def read_voc(path: str | os.PathLike) -> Annotation:
    """One VOC XML file; a file that cannot be used gives an Annotation whose ``problem`` says why."""
    where = str(path)
    try:
        # O_NONBLOCK: a FIFO named img.xml must not hang the open; only a regular file is read.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            info = os.fstat(fh.fileno())
            if not stat.S_ISREG(info.st_mode):
                return Annotation(where, problem=f"{where}: not a regular file")
            if info.st_size > MAX_ANNOTATION_BYTES:
                return Annotation(where, problem=f"{where}: larger than {MAX_ANNOTATION_BYTES >> 20} MB, more than "
                                                 f"an annotation holds")
            data = fh.read(MAX_ANNOTATION_BYTES + 1)
        if len(data) > MAX_ANNOTATION_BYTES:  # it grew
            return Annotation(where, problem=f"{where}: larger than {MAX_ANNOTATION_BYTES >> 20} MB, more than "
                                             f"an annotation holds")
        root = ET.fromstring(data)
    except (ET.ParseError, OSError, ValueError) as exc:
        return Annotation(where, problem=f"{where}: not a readable annotation ({clip(exc)})")
    if root.tag != "annotation":
        return Annotation(where, problem=f"{where}: not a Pascal VOC annotation (root <{root.tag}>)")
    boxes = []
    for k, obj in enumerate(root.iter("object"), 1):
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        try:
            xmin, ymin, xmax, ymax = (float(box.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            return Annotation(where, problem=f"{where}: object {k} has no valid <bndbox> (xmin ymin xmax ymax)")
        if not name:
            return Annotation(where, problem=f"{where}: object {k} has no <name>")
        if not all(np.isfinite([xmin, ymin, xmax, ymax])) or xmax < xmin or ymax < ymin:
            return Annotation(where, problem=f"{where}: object {k} ({clip(name)}) has an empty or inverted box")
        boxes.append(Box(name, xmin - 1, ymin - 1, xmax, ymax))
    return Annotation(where, boxes)


def load_folder(folder: str | os.PathLike) -> dict[str, Annotation]:
    """{file stem: Annotation} for every ``*.xml`` in ``folder`` (not recursive)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError("not a folder", param="boxes", value=folder)
    try:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".xml")
    except OSError as exc:
        raise UsageError(f"cannot read the folder ({exc.strerror or exc})", param="boxes", value=folder) from None
    return {p.stem: read_voc(p) for p in files}


def class_of(name: str, categories: list[str]) -> int | None:
    """The class an object name means, or None: a WordNet id (1000-class models), else a class name."""
    if _WNID.match(name) and len(categories) == 1000:
        try:
            return imagenet_wnids().index(name)
        except ValueError:
            return None
    if name in categories:
        return categories.index(name)
    lowered = [c.lower() for c in categories]
    return lowered.index(name.lower()) if name.lower() in lowered else None


def closest_names(name: str, categories: list[str]) -> list[str]:
    return difflib.get_close_matches(name, categories, n=3)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) as campp decodes the image: from its header, turned as its EXIF orientation says."""
    from PIL import Image

    with Image.open(path) as im:
        width, height = im.size
        orientation = im.getexif().get(0x0112, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def to_input_frame(box: Box, width: int, height: int, size: int,
                   resize: str = "crop") -> tuple[float, float, float, float] | None:
    """The box in the model's input frame (the square ``resize`` makes of the image, resized to ``size``),
    clipped; None when nothing of it is left."""
    sx, sy, left, top = input_frame(width, height, size, resize)
    x0 = min(max(box.x0 * sx + left, 0.0), size)
    x1 = min(max(box.x1 * sx + left, 0.0), size)
    y0 = min(max(box.y0 * sy + top, 0.0), size)
    y1 = min(max(box.y1 * sy + top, 0.0), size)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def union_mask(boxes: list[tuple[float, float, float, float]], size: int) -> np.ndarray:
    """(size, size) bool: pixels whose centre lies inside any box."""
    centres = np.arange(size) + 0.5
    mask = np.zeros((size, size), bool)
    for x0, y0, x1, y1 in boxes:
        cols = (centres >= x0) & (centres < x1)
        rows = (centres >= y0) & (centres < y1)
        mask |= rows[:, None] & cols[None, :]
    return mask


def loc(cam: np.ndarray, mask: np.ndarray, delta: float) -> float:
    """The paper's eq. 26 for one map (any range: min-max normalised here) and the union of boxes."""
    lo, hi = float(cam.min()), float(cam.max())
    norm = (cam - lo) / (hi - lo) if hi > lo else np.zeros_like(cam)
    positive = norm > delta
    internal = np.count_nonzero(positive & mask)
    external = np.count_nonzero(positive & ~mask)
    area = np.count_nonzero(mask)
    return internal / (area + external) if area + external else 0.0


def pointing_hit(cam: np.ndarray, boxes: list[tuple[float, float, float, float]],
                 tolerance: float = POINTING_TOLERANCE) -> bool:
    """Whether the map's maximum (its pixel centre) lies within ``tolerance`` pixels of a box."""
    r, c = np.unravel_index(int(np.argmax(cam)), cam.shape)
    x, y = c + 0.5, r + 0.5
    for x0, y0, x1, y1 in boxes:
        dx = max(x0 - x, 0.0, x - x1)
        dy = max(y0 - y, 0.0, y - y1)
        if dx * dx + dy * dy <= tolerance * tolerance:
            return True
    return False


def energy(cam: np.ndarray, mask: np.ndarray) -> float:
    """Share of the map's sum (negative values as 0) that lies inside the boxes."""
    cam = np.maximum(cam, 0.0)
    total = float(cam.sum())
    return float(cam[mask].sum()) / total if total > 0 else 0.0


def score(cam_up: np.ndarray, boxes: list[tuple[float, float, float, float]], deltas) -> dict:
    """Every localisation score of one upsampled map against boxes already in its frame."""
    mask = union_mask(boxes, cam_up.shape[0])
    return {"loc": {key(d): loc(cam_up, mask, d) for d in deltas}, "pointing_hit": pointing_hit(cam_up, boxes),
            "energy": energy(cam_up, mask)}


def key(delta: float) -> str:
    """JSON key of a delta: 0, 0.25, 0.5 (as the issue and the paper write them)."""
    return f"{delta:g}"


_DELTAS = "give numbers in [0, 1), comma-separated (e.g. 0,0.25,0.5)"


def parse_deltas(text: str) -> tuple[float, ...]:
    try:
        deltas = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise UsageError(_DELTAS, param="deltas", value=text) from None
    if not deltas or not all(0 <= d < 1 for d in deltas):
        raise UsageError(_DELTAS, param="deltas", value=text)
    return deltas
