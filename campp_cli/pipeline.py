"""From image files to output files: decode, explain, render, write.

This is the layer a notebook or the CLI calls; it knows nothing of click.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import images
from .cam import METHOD_TITLES, METHODS, Explanation, explain, guided_backprop
from .errors import UsageError
from .models import Classifier

JPEG_SUFFIXES = (".jpeg", ".jpg")


@dataclass
class Options:
    """Everything about a run except the model and the files."""

    label: int = -1  # -1: the predicted class
    variant: str = "official"
    max_side: int = images.DEFAULT_MAX_SIDE
    max_pixels: int = images.DEFAULT_MAX_PIXELS
    save_maps: bool = False
    guided: bool = False  # also guided Grad-CAM and Grad-CAM++ (a second, full backward pass)


@dataclass
class Result:
    """What one image gave: the explained class, the top-5 and the files written."""

    input: str
    class_index: int
    class_name: str
    probability: float
    top5: list[tuple[int, str, float]]
    outputs: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "input": self.input,
            "class": self.class_index,
            "name": self.class_name,
            "probability": self.probability,
            "top5": [{"class": c, "name": n, "probability": p} for c, n, p in self.top5],
            "outputs": self.outputs,
        }


def output_stem(name: str) -> tuple[str, str]:
    """Split and check ``-o``: a plain JPEG file name, never a path."""
    if not name or "/" in name or "\\" in name or os.sep in name or name in (".", ".."):
        raise UsageError(f"-o {name!r}: give a file name without folders (use --output-dir for the folder)")
    if ".." in name:
        raise UsageError(f"-o {name!r}: '..' is not allowed in output names")
    stem, suffix = os.path.splitext(name)
    if not suffix:
        suffix = ".jpeg"
    if suffix.lower() not in JPEG_SUFFIXES or not stem or stem.startswith("."):
        raise UsageError(f"-o {name!r}: the output must be a JPEG file name such as out.jpeg")
    return stem, suffix


def prepare_output_dir(path: str | os.PathLike) -> Path:
    """Create the output folder if needed; refuse files and read-only folders."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output-dir {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--output-dir {out}: cannot create it ({exc.strerror or exc})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(f"--output-dir {out}: not writable")
    return out


def to_batch(squares: list[np.ndarray], clf: Classifier) -> torch.Tensor:
    """RGB batch in [0, 1] at the model's input size, on its device (before normalisation)."""
    arr = np.stack([images.model_input(s, clf.input_size) for s in squares])
    return torch.from_numpy(arr).to(clf.device)


def check_label(clf: Classifier, label: int) -> None:
    if not -1 <= label < len(clf.categories):
        raise UsageError(f"-l {label}: out of range; {clf.arch} has classes 0..{len(clf.categories) - 1}")


def render(square: np.ndarray, expl: Explanation, i: int, class_name: str,
           guided: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every figure for image ``i``, keyed by output-name suffix ('' is the comparison).

    ``guided``: image i's guided-backpropagation gradient ``(3, h, w)``, if wanted.
    """
    side = square.shape[0]
    c = int(expl.classes[i])
    p = float(expl.probs[i, c])
    figures: dict[str, np.ndarray] = {}
    panels = [images.titled(square, ["Input", f"{class_name} ({p:.1%})"])]
    for method in METHODS:
        heat = images.colorize(images.upsample(expl.maps[method][i], side))
        blended = images.overlay(square, heat)
        figures[f"_{method}_heatmap"] = heat
        figures[f"_{method}_overlay"] = blended
        panels.append(images.titled(blended, [METHOD_TITLES[method], f"{class_name} ({p:.1%})"]))
        if guided is not None:
            grad = guided.transpose(1, 2, 0)
            weighted = grad * images.upsample(expl.maps[method][i], grad.shape[0])[..., None]
            figures[f"_guided_{method}"] = images.resize(images.gradient_image(weighted), side)
    figures[""] = images.side_by_side(panels)
    return figures


def write_outputs(out_dir: Path, stem: str, suffix: str, figures: dict[str, np.ndarray],
                  maps: dict[str, np.ndarray] | None = None) -> list[str]:
    """Write every figure (and maps as .npy), all or nothing; return the paths in order."""
    files: dict[Path, bytes] = {}
    for key in ["", *sorted(k for k in figures if k)]:
        files[out_dir / f"{stem}{key}{suffix}"] = images.encode_jpeg(figures[key])
    for method, cam in (maps or {}).items():
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(cam, dtype=np.float32))
        files[out_dir / f"{stem}_{method}.npy"] = buf.getvalue()
    images.write_all_atomic(files)
    return [str(p) for p in files]


def classify_file(path: str | os.PathLike, clf: Classifier, out_dir: str | os.PathLike,
                  output: str = "output.jpeg", options: Options | None = None) -> Result:
    """The paper's ``classify.py`` for one file: explain, write the five JPEGs, report."""
    options = options or Options()
    stem, suffix = output_stem(output)
    out = prepare_output_dir(out_dir)
    check_label(clf, options.label)
    rgb = images.load_rgb(path, options.max_pixels)
    square = images.center_square(rgb)  # the model sees the full-resolution crop
    rgb01 = to_batch([square], clf)
    expl = explain(clf.module, clf.layer, clf.preprocessing(rgb01), classes=options.label,
                   variant=options.variant)
    guided = None
    if options.guided:
        guided = guided_backprop(clf.module, rgb01, expl.classes, clf.preprocessing)[0]
    c = int(expl.classes[0])
    name = clf.categories[c]
    figures = render(images.display_square(square, options.max_side), expl, 0, name, guided)
    maps = {m: expl.maps[m][0] for m in METHODS} if options.save_maps else None
    written = write_outputs(out, stem, suffix, figures, maps)
    top5 = [(k, clf.categories[k], p) for k, p in expl.top(0, 5)]
    return Result(str(path), c, name, float(expl.probs[0, c]), top5, written)
