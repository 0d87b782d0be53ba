"""The work of a run as three stages over plain, picklable rows, and what each command adds.

* :func:`decode`: a :class:`~campp_cli.inputs.Job` -> :class:`DecodedRow` (model input and
  display image) or an :class:`InputError` for that image;
* :func:`explain_rows`: a batch of DecodedRows -> one :class:`ExplainedRow` per image (maps,
  probabilities, explained class, and what the command adds: guided gradients, evaluate's scores);
* :func:`finish`: an ExplainedRow -> files written and a :class:`Result`.

An engine (:func:`campp_cli.pipeline.run`, today's threads) only moves rows
between them; the maths is in :mod:`campp_cli.cam` and :mod:`campp_cli.methods`,
the drawing in :mod:`campp_cli.images`.  Rows hold NumPy arrays and paths only,
so any engine can ship them to another process.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from . import images
from .errors import CamppError, InputError, ModelError, OutputError, UsageError
from .inputs import Job, format_of
from .methods import DEFAULT_METHODS, get_method, parse_methods
from .preprocessing import Preprocessing
from .settings import DEFAULT_SCORE_BATCH

if TYPE_CHECKING:  # torch is imported where the model runs, not where rows are decoded or written
    import torch

    from .cam import Explanation
    from .models import Classifier


@dataclass
class Options:
    """Everything about a run except the model and the files."""

    label: int = -1  # -1: the predicted class
    variant: str = "official"
    methods: tuple[str, ...] = DEFAULT_METHODS  # names from campp_cli.methods.list_methods()
    score_batch: int = DEFAULT_SCORE_BATCH  # images per extra forward pass of methods that need them (Score-CAM)
    on_passes: Callable[[int], None] | None = None  # called with the count of each batch of extra passes
    max_side: int = images.DEFAULT_MAX_SIDE
    max_pixels: int = images.DEFAULT_MAX_PIXELS
    save_maps: bool = False
    guided: bool = False  # also guided maps of every method (a second, full backward pass)
    batch_size: int | None = None  # None: default_batch_size(device)
    workers: int = max(1, min(4, os.cpu_count() or 1))  # decoding and writing threads
    skip_existing: bool = False  # resume: skip images whose outputs are all there
    alpha: float = images.DEFAULT_ALPHA  # the heatmap's weight in the overlays
    display: str = "crop"  # images.DISPLAYS: the square the model saw, or the whole photo


@dataclass
class Result:
    """What one image gave: the explained class, the top-5 and the files written."""

    input: str
    class_index: int
    class_name: str
    probability: float
    top5: list[tuple[int, str, float]]
    outputs: list[str] = field(default_factory=list)
    error: str | None = None  # the one-line reason, when this image failed
    skipped: bool = False  # --skip-existing found every output already there
    exception: CamppError | None = field(default=None, repr=False)
    extra: dict = field(default_factory=dict, repr=False)  # what a command adds (metrics...)

    @classmethod
    def failure(cls, source, exc: CamppError) -> "Result":
        return cls(str(source), -1, "", 0.0, [], error=exc.message, exception=exc)

    def as_dict(self) -> dict:
        if self.error is not None:
            return {"input": self.input, "error": self.error}
        if self.skipped:
            return {"input": self.input, "skipped": True, "outputs": self.outputs}
        return {
            "input": self.input,
            "class": self.class_index,
            "name": self.class_name,
            "probability": self.probability,
            "top5": [{"class": c, "name": n, "probability": p} for c, n, p in self.top5],
            "outputs": self.outputs,
        }


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (f"campp: {self.done} done, {self.skipped} skipped, {self.failed} failed in {self.seconds:.1f} s "
                f"({self.images_per_second:.2f} images/s)")


def prepare(clf: Classifier, options: Options | None, command: "Command | None") -> tuple[Options, "Command"]:
    """What every engine checks first: the methods named, the command (default: classify), the label."""
    options = options or Options()
    options.methods = parse_methods(options.methods)
    command = command or ClassifyCommand(options, figure_caption(clf, options))
    check_label(clf, options.label)
    return options, command


class Tally:
    """Counts results into a :class:`Summary` and passes each one on; shared by every engine."""

    def __init__(self, report: Callable[[Result], None] | None = None):
        self.summary = Summary()
        self.report = report or (lambda r: None)

    def record(self, result: Result) -> None:
        if result.error is not None:
            self.summary.failed += 1
        elif result.skipped:
            self.summary.skipped += 1
        else:
            self.summary.done += 1
        self.report(result)


def begin(jobs: list[Job], command: "Command", tally: Tally) -> list[Job]:
    """What every engine does first, on the machine that runs campp: finish or undo the sets a killed
    run left half-written, report the jobs ``--skip-existing`` skips; return the jobs left to do."""
    for folder in sorted({job.out_dir for job in jobs}):
        images.recover(folder)
    todo = []
    for job in jobs:
        skipped = command.is_done(job)
        if skipped is not None:
            tally.record(skipped)
        else:
            todo.append(job)
    return todo


def guarded(fn, source, *args) -> Result:
    """Run one image's step; an error it causes becomes its Result, never the run's end."""
    try:
        return fn(*args)
    except (InputError, OutputError) as exc:  # this image or its files; a broken model ends the run
        return Result.failure(source, exc)


def to_batch(photos: list, clf: Classifier) -> torch.Tensor:
    """RGB batch in [0, 1] at the model's input size, on its device (before normalisation): each photo (an
    RGB uint8 array or Pillow image) framed as ``clf.preprocessing`` says, as a run frames it."""
    pre = clf.preprocessing
    return _to_device(np.stack([images.model_input(p, clf.input_size, pre.resize, pre.interpolation)
                                for p in photos]), clf.device)


def check_label(clf: Classifier, label: int) -> None:
    if not -1 <= label < len(clf.categories):
        raise UsageError(f"-l {label}: out of range; {clf.arch} has classes 0..{len(clf.categories) - 1}")


def default_batch_size(device: "torch.device | str") -> int:
    """Big enough to keep the device busy, small enough for memory (VGG16 at 224: ~0.1 GB an image on CUDA)."""
    return 32 if getattr(device, "type", str(device)).startswith("cuda") else 8


def _to_device(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    import torch

    x = torch.from_numpy(batch)
    if device.type == "cuda":  # pinned host memory lets the copy overlap the GPU's work
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


@dataclass
class DecodedRow:
    """Stage 1's output: one image ready for the model."""

    job: Job
    model_input: np.ndarray  # (3, S, S) float32 RGB in [0, 1]
    display: np.ndarray | None  # (side, side, 3) uint8 at the panel resolution, when figures are drawn
    region: tuple[int, int, int, int] | None = None  # --display full: where in display the model's square is


@dataclass
class ExplainedRow:
    """Stage 2's output: everything one image's files and result need."""

    job: Job
    display: np.ndarray | None
    class_index: int
    probs: np.ndarray  # (C,) float32 softmax
    maps: dict[str, np.ndarray]  # method -> (h, w) float32 in [0, 1]
    extra: Any = None  # what the command added (guided gradient, evaluate's scores)
    region: tuple[int, int, int, int] | None = None  # as DecodedRow.region

    @property
    def probability(self) -> float:
        return float(self.probs[self.class_index])

    def top(self, k: int = 5) -> list[tuple[int, float]]:
        from .cam import top_classes

        return top_classes(self.probs, k)


def frame(photo, size: int, preprocessing: "Preprocessing | None" = None,
          max_side: int | None = None, display: str = "crop"
          ) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int, int, int] | None]:
    """A decoded photo (a Pillow RGB image or an RGB uint8 array) as the model's input ``(3, size, size)``
    in [0, 1], framed and resampled as ``preprocessing`` says (default: the central square, bilinear), and,
    given ``max_side``, what the panels are drawn on at their resolution: the square (``display`` "crop"),
    or the whole photo and where the square lies in it ("full"; else None).  The input depends on the photo
    and ``preprocessing`` only: the panels are made separately, from the same full-resolution photo."""
    pre = preprocessing if preprocessing is not None else Preprocessing()
    photo = images.photo_of(photo)
    x = images.model_input(photo, size, pre.resize, pre.interpolation)
    if max_side is None:
        return x, None, None
    if display == "full":
        return (x, *images.display_full(photo, pre.resize, max_side))
    return x, images.display_square(photo, pre.resize, max_side), None


def decode(job: Job, size: int, options: Options, display: bool,
           budget: images.PixelBudget | None = None, preprocessing: "Preprocessing | None" = None) -> DecodedRow:
    """Stage 1: read one image and :func:`frame` it; an :class:`InputError` names it if it cannot be read."""
    if job.error is not None:
        raise InputError(job.error)
    framed = images.open_photo(job.source, options.max_pixels, budget, use=lambda photo: frame(
        photo, size, preprocessing, options.max_side if display else None, options.display))
    return DecodedRow(job, *framed)


def explain_rows(rows: list[DecodedRow], clf: Classifier, options: Options, command: "Command") -> list[ExplainedRow]:
    """Stage 2: one batch through the model: every requested map, then what the command adds."""
    from .cam import explain

    rgb01 = _to_device(np.stack([r.model_input for r in rows]), clf.device)
    try:
        expl = explain(clf.module, clf.layer, clf.preprocessing(rgb01), classes=options.label,
                       variant=options.variant, methods=options.methods, image=rgb01,
                       preprocess=clf.preprocessing, score_batch=options.score_batch,
                       progress=options.on_passes)
    except ModelError as exc:
        raise ModelError(f"{exc.message} (model {clf.arch}, weights {clf.weights_source})") from None
    extras = command.extras(clf, rgb01, expl)
    return [ExplainedRow(row.job, row.display, int(expl.classes[i]), expl.probs[i],
                         {m: v[i] for m, v in expl.maps.items()}, extras[i], row.region)
            for i, row in enumerate(rows)]


def finish(row: ExplainedRow, categories: list[str], command: "Command") -> "Result":
    """Stage 3: the command's files for one image, and its Result."""
    return command.finish(row, categories)


def percent(p: float) -> str:
    """A probability for a title: one decimal from 0.1 % up ("70.0%"), two significant digits below it
    ("0.0020%" for 2e-5, never "0.0%")."""
    if p >= 0.000995 or p <= 0:
        return f"{p:.1%}"
    digits = 1 - math.floor(math.log10(100 * p))  # decimals for two significant digits, never an exponent
    return f"{100 * p:.{digits}f}%"


def result_of(row: ExplainedRow, categories: list[str], outputs: list[str]) -> "Result":
    top5 = [(k, categories[k], p) for k, p in row.top(5)]
    c = row.class_index
    return Result(str(row.job.source), c, categories[c], row.probability, top5, outputs)


class Command:
    """What a command (classify, evaluate) adds to the stages.

    ``extras`` runs with the model (extra passes: guided backpropagation,
    evaluate's perturbations), once per batch; ``finish`` once per image, where
    the engine likes (a worker thread, another process).
    """

    #: Whether finish() draws figures (and so needs the photo at panel resolution).
    draws = True
    #: Whether finish() also makes the --report images of each image (:func:`campp_cli.report.card_assets`).
    cards = False

    def is_done(self, job: Job) -> "Result | None":
        """A skipped Result when this job needs no work (--skip-existing)."""
        return None

    def extras(self, clf: Classifier, rgb01: torch.Tensor, expl: Explanation) -> list:
        return [None] * len(expl.classes)

    def finish(self, row: ExplainedRow, categories: list[str]) -> "Result":
        raise NotImplementedError


class ClassifyCommand(Command):
    """campp classify: figures (and maps, and guided figures) for each image."""

    def __init__(self, options: Options, caption: str = "", cards: bool = False):
        self.options = options
        self.caption = caption  # the strip under each comparison figure: model, layer, variant
        self.cards = cards

    def is_done(self, job: Job) -> "Result | None":
        paths = job.output_paths(self.options.methods, self.options.save_maps, self.options.guided)
        if self.options.skip_existing and job.error is None and all(images.is_complete(p) for p in paths):
            return Result(str(job.source), -1, "", 0.0, [], [str(p) for p in paths], skipped=True)
        return None

    def extras(self, clf: Classifier, rgb01: torch.Tensor, expl: Explanation) -> list:
        if not self.options.guided:
            return super().extras(clf, rgb01, expl)
        from .cam import guided_backprop

        return list(guided_backprop(clf.module, rgb01, expl.classes, clf.preprocessing))

    def finish(self, row: ExplainedRow, categories: list[str]) -> "Result":
        figures = render(row, categories, row.extra, caption=self.caption, alpha=self.options.alpha)
        make_output_folder(row.job)
        written = write_outputs(row.job, figures, row.maps if self.options.save_maps else None)
        return with_card(result_of(row, categories, written), row, figures, self.cards)


def with_card(result: "Result", row: ExplainedRow, figures: dict[str, np.ndarray], cards: bool) -> "Result":
    """``result`` with its --report images (``extra["card"]``) when ``cards``."""
    if cards:
        from .outputs.report_cards import card_assets

        result.extra["card"] = card_assets(row.display, figures, row.maps)
    return result


def figure_caption(clf: Classifier, options: Options) -> str:
    """The strip under a comparison figure: what was explained, where, and how."""
    variant = f", Grad-CAM++ {options.variant}" if "gradcampp" in options.methods else ""
    return f"model {clf.arch} | layer {layer_label(clf.module, clf.layer)}{variant}"


def layer_label(module, layer) -> str:
    """The layer as ``campp layers`` lists it (its dotted name, ``@k`` for a call), with the module's type:
    "10 (ReLU)" says what a bare number in an ``nn.Sequential`` does not."""
    from .cam import split_layer

    if not isinstance(layer, str):
        return str(layer)
    try:
        sub = module.get_submodule(split_layer(layer)[0])
    except (AttributeError, CamppError):
        return layer
    return f"{layer} ({type(sub).__name__})"


def render(row: ExplainedRow, categories: list[str], guided: np.ndarray | None = None,
           caption: str = "", alpha: float = images.DEFAULT_ALPHA) -> dict[str, np.ndarray]:
    """Every figure for one image, keyed by output-name suffix ('' is the comparison).

    One heatmap and one overlay (the heatmap blended at ``alpha``) per method
    in ``row.maps`` (in its order); ``guided``: the image's guided-backpropagation
    gradient ``(3, h, w)``, if wanted.  The comparison's method panels carry a
    colour bar; its titles say "explained" and "predicted" when the explained
    class (``-l``) is not the predicted one; ``caption`` goes in a strip below.
    """
    region = row.region
    # seen: what the model saw, at panel resolution; place(): it (or a map over it) back in the whole photo
    seen = row.display if region is None else images.region_pixels(row.display, region)
    if region is None:
        place = lambda inside: inside  # noqa: E731
    else:
        base = images.dimmed(row.display)  # once for every figure of the photo
        place = lambda inside: images.on_region(base, region, inside)  # noqa: E731
    height, width = seen.shape[:2]
    p = row.probability
    name = categories[row.class_index]
    predicted = int(np.argmax(row.probs))
    explained = f"{name} ({percent(p)})"
    if predicted != row.class_index:
        title = [f"explained: {explained}", f"predicted: {categories[predicted]} ({percent(row.probs[predicted])})"]
        explained = f"explained: {explained}"
    else:
        title = ["Input", explained]
    figures: dict[str, np.ndarray] = {"": seen}  # the comparison first; drawn below
    guided_figures: dict[str, np.ndarray] = {}
    panels = [images.titled(images.with_colour_bar(place(seen), blank=True), title)]
    for method, cam in row.maps.items():
        heat = images.colorize(images.upsample(cam, width, height))
        blended = place(images.overlay(seen, heat, alpha))
        figures[f"_{method}_heatmap"] = place(heat)
        figures[f"_{method}_overlay"] = blended
        spec = get_method(method)
        lines = [spec.title, explained if spec.class_specific else "class-agnostic"]
        panels.append(images.titled(images.with_colour_bar(blended), lines))
        if guided is not None:
            grad = guided.transpose(1, 2, 0)
            weighted = grad * images.upsample(cam, grad.shape[0])[..., None]
            guided_figures[f"_guided_{method}"] = place(images.resize_to(images.gradient_image(weighted), width,
                                                                         height))
    figures[""] = images.captioned(images.side_by_side(panels), caption) if caption else images.side_by_side(panels)
    return {**figures, **guided_figures}


def write_outputs(job: Job, figures: dict[str, np.ndarray], maps: dict[str, np.ndarray] | None = None) -> list[str]:
    """Write every figure (and maps as .npy), all or nothing; return the paths in order."""
    encode = images.ENCODERS[format_of(job.suffix) or "jpeg"]
    files = {job.path(k): encode(v) for k, v in figures.items()}
    for method, cam in (maps or {}).items():
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(cam, dtype=np.float32))
        files[job.path(f".npy:{method}")] = buf.getvalue()
    images.write_all_atomic(files, source=str(job.source))
    return [str(p) for p in files]


def make_output_folder(job: Job) -> None:
    """Create the job's (mirrored) output folder under its root, never through a symbolic link."""
    root = job.root or job.out_dir
    try:
        rel = job.out_dir.relative_to(root)
    except ValueError:
        root, rel = job.out_dir, Path()
    try:
        root.mkdir(parents=True, exist_ok=True)  # the folder the user named (a link there is their choice)
    except OSError as exc:
        raise OutputError(f"{job.source}: cannot create the output folder {root} ({exc.strerror or exc})") from None
    folder = root
    for part in rel.parts:
        folder = folder / part
        if folder.is_symlink():
            raise OutputError(f"{job.source}: refused: the output folder {folder} is a symbolic link "
                              f"(campp never writes through links)")
        try:
            folder.mkdir(exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{job.source}: cannot create the output folder {folder} "
                              f"({exc.strerror or exc})") from None
        if not folder.is_dir():
            raise OutputError(f"{job.source}: cannot create the output folder {folder}: a file is in the way")


