"""One call from a notebook: :func:`explain_image` returns a result that Jupyter shows as the comparison
figure, with the overlays, heatmaps and maps at hand.

    from campp_cli import explain_image, load_classifier
    clf = load_classifier("efficientnet_lite0")
    explain_image("images/chelsea.png", clf, methods="gradcam,gradcampp,layercam")   # shown inline
"""

from __future__ import annotations

import base64
import html
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .cam.methods import DEFAULT_METHODS
from .commands.classify_plan import _check_drawing
from .commands.planner import Planner
from .errors import UsageError
from .io import decode
from .io.inputs import Job
from .outputs.kinds import key
from .run.options import Options, Result
from .run.stages import Command, ExplainedRow, result_of
from .settings import DEFAULT_ALPHA, DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE


def _as_rgb(image, max_pixels: int) -> tuple["Image.Image | np.ndarray", str]:
    """A path, a PIL image or an (H, W, 3) array (uint8, or floats in [0, 1]) as an RGB photo (decoded as
    ``campp classify`` decodes files: transparency on white, 16-bit scaled), and its name."""
    if isinstance(image, (str, os.PathLike)):
        return decode.open_photo(image, max_pixels), str(image)
    if isinstance(image, Image.Image):
        return decode.photo_of(image), "<PIL image>"
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4) or min(arr.shape[:2]) < 1:
            raise UsageError(f"image: an array of shape (H, W, 3) is needed, not {arr.shape}")
        arr = arr[..., :3]
        if arr.dtype != np.uint8:
            values = arr.astype(np.float64)
            if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
                raise UsageError("image: a float array must hold values in [0, 1] (or give uint8 in 0..255)")
            arr = np.round(values * 255).astype(np.uint8)
        return np.ascontiguousarray(arr), "<array>"
    raise UsageError(f"image: give a file path, a PIL image or a NumPy array, not {type(image).__name__}")


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class ImageExplanation:
    """What :func:`explain_image` gives: the class, the maps and every figure of one image."""

    source: str
    class_index: int
    class_name: str
    probability: float
    top5: list[tuple[int, str, float]]
    maps: dict[str, np.ndarray]  # method -> low-resolution map in [0, 1]
    figures: dict[str, np.ndarray] = field(repr=False)  # output suffix ('' the comparison) -> RGB

    def figure(self) -> Image.Image:
        """The comparison figure: the input and one overlay per method."""
        return Image.fromarray(self.figures[key("comparison")])

    def _method(self, method: str) -> str:
        if method not in self.maps:
            raise UsageError(f"method {method!r} was not computed; this result has: {', '.join(self.maps)}")
        return method

    def overlay(self, method: str = "gradcampp") -> Image.Image:
        return Image.fromarray(self.figures[key("overlay", self._method(method))])

    def heatmap(self, method: str = "gradcampp") -> Image.Image:
        return Image.fromarray(self.figures[key("heatmap", self._method(method))])

    def save(self, folder: str | os.PathLike = "output", name: str = "explained", format: str = "jpeg"
             ) -> list[str]:
        """Write the figures (as ``campp classify`` names them; ``format`` "jpeg" or "png") into ``folder``;
        return the paths.  ``name`` is a plain file name, as ``-o`` is (``cat``, ``cat.jpeg``; never a folder
        or ``..``), and no figure may replace the image explained."""
        from .io.inputs import Job
        from .io.names import check_no_overwrite, output_stem
        from .outputs.files import make_output_folder, write_outputs
        from .settings import FORMATS

        if format not in FORMATS:
            raise UsageError(f"format {format!r}: use one of {', '.join(FORMATS)}")
        stem, suffix = output_stem(str(name), format, ("name", "folder", "format"))
        out = Path(folder)
        job = Job(Path(self.source), out, stem, suffix, root=out)
        check_no_overwrite([job], list(self.figures), {}, [], folder="folder")
        make_output_folder(job)
        return write_outputs(job, self.figures)

    def show(self) -> None:
        """Display inline in Jupyter; elsewhere in the system's image viewer."""
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:
            get_ipython = None
        if get_ipython is not None and get_ipython() is not None:
            display(self)
        else:
            self.figure().show()

    def _repr_png_(self) -> bytes:
        return _png(self.figures[key("comparison")])

    def _repr_html_(self) -> str:
        data = base64.b64encode(self._repr_png_()).decode("ascii")
        rows = "".join(f"<tr><td>{c}</td><td>{html.escape(n)}</td><td>{p:.2%}</td></tr>" for c, n, p in self.top5)
        return (f'<figure style="margin:0"><img src="data:image/png;base64,{data}" style="max-width:100%" '
                f'alt="{html.escape(self.class_name)}"/><figcaption>{html.escape(self.source)}: explained '
                f'<b>{html.escape(self.class_name)}</b> ({self.probability:.2%})</figcaption></figure>'
                f"<details><summary>top-5</summary><table>{rows}</table></details>")


def explain_image(image, clf, methods=DEFAULT_METHODS, label: int | str = -1, alpha: float = DEFAULT_ALPHA,
                  max_side: int = DEFAULT_MAX_SIDE, max_pixels: int = DEFAULT_MAX_PIXELS, display: str = "crop",
                  **settings) -> ImageExplanation:
    """Explain one image (a path, a PIL image or an (H, W, 3) array) with ``clf``.

    ``methods``: names, a comma-separated string or ``"all"``; ``label``: a class index, a class name, or
    -1 for the predicted class; ``display``: "crop" (the square the model saw) or "full" (the whole photo,
    the rest dimmed); ``settings``: the methods' own (``variant="paper"`` for Grad-CAM++...).  Framed,
    normalised and drawn as ``campp classify`` does: it is the same :class:`~campp_cli.run.run.Run`.
    """
    (explained,) = explain_images([image], clf, methods, label, alpha, max_side, max_pixels, display, **settings)
    return explained


def explain_images(images_, clf, methods=DEFAULT_METHODS, label: int | str = -1, alpha: float = DEFAULT_ALPHA,
                   max_side: int = DEFAULT_MAX_SIDE, max_pixels: int = DEFAULT_MAX_PIXELS, display: str = "crop",
                   batch_size: int | None = None, **settings) -> list[ImageExplanation]:
    """:func:`explain_image` for several images, in batches; the first image that fails raises its error."""
    from .run.run import Run

    results: list = []
    run = Run("explain", list(images_), classifier=clf, methods=methods, label=label, max_pixels=max_pixels,
              batch_size=batch_size, alpha=alpha, max_side=max_side, display=display, **settings)
    run.execute(lambda event: results.append(event) if isinstance(event, Result) else None)
    out = []
    for result in results:
        if result.exception is not None:
            raise result.exception
        out.append(ImageExplanation(result.input, result.class_index, result.class_name, result.probability,
                                    result.top5, result.extra["maps"], result.extra["figures"]))
    return out


class ExplainCommand(Command):
    """The stage command of a notebook's run: every figure drawn and kept in memory, nothing written."""

    writes = False

    def __init__(self, options: Options, caption: str):
        self.options = options
        self.caption = caption

    def finish(self, row: ExplainedRow, categories: list[str]) -> Result:
        from .draw.figures import render

        result = result_of(row, categories, [])
        result.input = row.job.stem
        result.extra["figures"] = render(row, categories, caption=self.caption, alpha=self.options.alpha)
        result.extra["maps"] = row.maps
        return result


class ExplainPlanner(Planner):
    """A run over images in memory or on disk whose figures stay in memory (``classifier=`` is needed)."""

    prepack = False

    def __init__(self, run, alpha: float = DEFAULT_ALPHA, max_side: int = DEFAULT_MAX_SIDE, display: str = "crop"):
        super().__init__(run)
        if run.classifier is None:
            raise UsageError("a notebook run explains with a loaded classifier: give classifier=")
        _check_drawing(alpha, display, None)
        self.drawing = dict(alpha=alpha, max_side=max_side, display=display)

    def plan_jobs(self) -> list:
        self.jobs = [_job(image, self.run.params.max_pixels) for image in self.run.params.files]
        return self.jobs

    def options(self, clf, label: int, **more) -> Options:
        return super().options(clf, label, **self.drawing, **more)

    def command(self, clf, options, report, tell) -> ExplainCommand:
        from .draw.figures import figure_caption

        return ExplainCommand(options, figure_caption(clf, options))


def _job(image, max_pixels: int) -> Job:
    """A job for a path (decoded by the run as any file) or an image in memory (decoded here)."""
    if isinstance(image, (str, os.PathLike)):
        return Job(Path(image), Path("."), str(image), ".jpeg")
    photo, name = _as_rgb(image, max_pixels)
    return Job(photo, Path("."), name, ".jpeg")
