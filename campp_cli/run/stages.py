"""The work of a run as three stages over plain, picklable rows.

* :func:`decode`: a :class:`~campp_cli.inputs.Job` -> :class:`DecodedRow` (model input and
  the photo at panel resolution) or an :class:`InputError` for that image;
* :func:`explain_rows`: a batch of DecodedRows -> one :class:`ExplainedRow` per image (maps,
  probabilities, explained class, and what the command adds: guided gradients, evaluate's scores);
* :func:`finish`: an ExplainedRow -> files written and a :class:`Result`.

An engine (:mod:`campp_cli.run.engines`) only moves rows between them; the maths is in
:mod:`campp_cli.cam` and :mod:`campp_cli.methods`, the drawing in :mod:`campp_cli.draw`, what each
command adds in :mod:`campp_cli.commands`.  Rows hold NumPy arrays and paths only, so any engine can
ship them to another process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..draw.geometry import display_full, display_square, model_input
from ..errors import InputError, MemoryLimitError, ModelError, OutputError, UsageError
from ..io.decode import PixelBudget, open_photo, photo_of
from ..io.durable import recover
from ..io.inputs import Job
from ..models.preprocessing import Preprocessing
from .options import Options, Result, Summary

if TYPE_CHECKING:  # torch is imported where the model runs, not where rows are decoded or written
    import torch

    from ..cam.explain import Explanation
    from ..models.loading import Classifier


def prepare(clf: Classifier, options: Options | None, command: "Command | None") -> tuple[Options, "Command"]:
    """What every engine checks first: the options (default ones), the command (default: classify), the label."""
    options = options or Options()
    if command is None:
        from ..commands.classify import ClassifyCommand
        from ..draw.figures import figure_caption

        command = ClassifyCommand(options, figure_caption(clf, options))
    check_label(clf, options.label)
    return options, command


class Tally:
    """Counts results into a :class:`Summary` and passes each one on; shared by every engine."""

    def __init__(self, on_result: Callable[[Result], None] | None = None):
        self.summary = Summary()
        self.on_result = on_result or (lambda r: None)

    def record(self, result: Result) -> None:
        """Count ``result`` and report it, whole: a stop that comes meanwhile takes effect after it."""
        from .signals import deferred

        with deferred():
            if result.error is not None:
                self.summary.failed += 1
            elif result.skipped:
                self.summary.skipped += 1
            else:
                self.summary.done += 1
            self.on_result(result)


def begin(jobs: list[Job], command: "Command", tally: Tally) -> list[Job]:
    """What every engine does first, on the machine that runs campp: finish or undo the sets a killed
    run left half-written, report the jobs ``--skip-existing`` skips; return the jobs left to do."""
    for folder in sorted({job.out_dir for job in jobs}) if command.writes else ():
        recover(folder)
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
    return _to_device(np.stack([frame(p, clf.input_size, clf.preprocessing)[0] for p in photos]), clf.device)


def check_label(clf: Classifier, label: "int | str") -> None:
    if isinstance(label, str):  # -l true, -l topK: checked when the run was made
        return
    if not -1 <= label < len(clf.categories):
        raise UsageError(f"out of range; {clf.arch} has classes 0..{len(clf.categories) - 1}", param="label",
                         value=label)


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
    photo: np.ndarray | None  # (side, side, 3) uint8 at the panel resolution, when figures are drawn
    region: tuple[int, int, int, int] | None = None  # --display full: where in photo the model's square is
    target: int = -1  # the class to explain (-1: the predicted one); -l true: the image's own


@dataclass
class ExplainedRow:
    """Stage 2's output: everything one image's files and result need."""

    job: Job
    photo: np.ndarray | None  # as DecodedRow.photo
    class_index: int
    probs: np.ndarray  # (C,) float32 softmax
    maps: dict[str, np.ndarray]  # method -> (h, w) float32 in [0, 1]
    added: Any = None  # what the command added with the model (guided gradient, evaluate's scores)
    region: tuple[int, int, int, int] | None = None  # as DecodedRow.region
    more: list = field(default_factory=list)  # -l topK: (class index, maps) of ranks 2..K

    @property
    def probability(self) -> float:
        return float(self.probs[self.class_index])

    @property
    def targets(self) -> list[tuple[int, dict[str, np.ndarray]]]:
        """(class index, maps) of every class explained: the first, then ranks 2..K of ``-l topK``."""
        return [(self.class_index, self.maps), *self.more]

    def labelled_maps(self, ranked: bool) -> dict[str, np.ndarray]:
        """The maps by what names their files: the methods, or ``top2_gradcam``... when ``ranked``."""
        from ..cam.targets import rank_label

        if not ranked:
            return dict(self.maps)
        return {rank_label(r, m): cam for r, (_, maps) in enumerate(self.targets, 1) for m, cam in maps.items()}

    def top(self, k: int = 5) -> list[tuple[int, float]]:
        from ..cam.explain import top_classes

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
    photo = photo_of(photo)
    x = model_input(photo, size, pre.resize, pre.interpolation)
    if max_side is None:
        return x, None, None
    if display == "full":
        return (x, *display_full(photo, pre.resize, max_side))
    return x, display_square(photo, pre.resize, max_side), None


def decode(job: Job, size: int, options: Options, draws: bool,
           budget: PixelBudget | None = None, preprocessing: "Preprocessing | None" = None) -> DecodedRow:
    """Stage 1: read one image and :func:`frame` it; an :class:`InputError` names it if it cannot be read."""
    if job.error is not None:
        raise InputError(job.error)
    if options.truth is None:
        target = options.label if isinstance(options.label, int) else -1  # -l topK: ranked from the prediction
    else:
        target = options.truth.get(str(job.source), "no true class")
        if isinstance(target, str):  # -l true, and this image has none: it alone fails, before it is read
            raise InputError(f"{job.source}: {target}")
    use = lambda photo: frame(photo, size, preprocessing, options.max_side if draws else None,  # noqa: E731
                              options.display)
    if not isinstance(job.source, (str, os.PathLike)):  # an image in memory (a notebook's), decoded already
        return DecodedRow(job, *use(job.source), target=target)
    return DecodedRow(job, *open_photo(job.source, options.max_pixels, budget, use=use), target=target)


def explain_rows(rows: list[DecodedRow], clf: Classifier, options: Options, command: "Command",
                 progress: Callable[[int], None] | None = None) -> list[ExplainedRow]:
    """Stage 2: one batch through the model: every requested map, then what the command adds.  ``progress``
    is told of extra forward passes as they run (see :func:`campp_cli.cam.explain`).  A batch that does not
    fit in the device's memory is a :class:`MemoryLimitError` naming ``--batch-size`` (one line, no CUDA
    traceback): the run stops there, every set written before it complete."""
    try:
        return _explain_rows(rows, clf, options, command, progress)
    except (RuntimeError, MemoryError) as exc:
        if not out_of_memory(exc):
            raise
        import torch

        if clf.device.type == "cuda":
            torch.cuda.empty_cache()
        # on CUDA, a MemoryError is the host's memory, not the GPU's
        where = "the machine (cpu)" if clf.device.type != "cuda" else "the machine's memory" \
            if isinstance(exc, MemoryError) else f"the GPU ({clf.device})"
        what = f"{clf.arch} at {clf.input_size}x{clf.input_size}"
        if len(rows) == 1:
            raise MemoryLimitError(f"{where} ran out of memory for one image of {what}; a smaller --input-size "
                                   f"or another device may fit it") from None
        raise MemoryLimitError(f"{where} ran out of memory for a batch of {len(rows)} images of {what}; try a "
                               f"smaller one, such as {len(rows) // 2}", param="batch_size") from None


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says the device's memory ran out: CUDA's ``torch.OutOfMemoryError``, the CPU
    allocator's RuntimeError, or Python's MemoryError."""
    import torch

    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "CUDA out of memory" in text)


def _explain_rows(rows: list[DecodedRow], clf: Classifier, options: Options, command: "Command",
                  progress: Callable[[int], None] | None) -> list[ExplainedRow]:
    from ..cam.explain import explain, explain_labels, explain_top

    rgb01 = _to_device(np.stack([r.model_input for r in rows]), clf.device)
    keywords = dict(methods=options.methods, image=rgb01, preprocess=clf.preprocessing, progress=progress,
                    score=options.score, activation=options.activation, **options.settings)
    x = clf.preprocessing(rgb01)
    try:
        if not options.ranked:
            ranked, counts = None, [1] * len(rows)
            expl = explain(clf.module, clf.layer, x, [r.target for r in rows], **keywords)
        elif options.top is not None:  # each image's K most probable classes, from one pass
            counts = [options.top] * len(rows)
            ranked = explain_top(clf.module, clf.layer, x, options.top, **keywords)
            expl = ranked[0]
        else:  # a multi-label model: each image's labels above the threshold, from one pass
            keywords.pop("activation")
            ranked, counts = explain_labels(clf.module, clf.layer, x, options.threshold, **keywords)
            expl = ranked[0]
    except ModelError as exc:
        raise ModelError(f"{exc.message} (model {clf.arch}, weights {clf.weights_source})") from None
    added = command.additions(clf, rgb01, expl) if ranked is None else command.additions(clf, rgb01, expl, ranked)
    if ranked is not None and added and isinstance(added[0], list):  # per-rank additions: an image's own ranks
        added = [a[:n] for a, n in zip(added, counts)]

    def maps_of(e, i):
        return {m: v[i] for m, v in e.maps.items()}

    return [ExplainedRow(row.job, row.photo, int(expl.classes[i]), expl.probs[i], maps_of(expl, i), added[i],
                         row.region, [(int(e.classes[i]), maps_of(e, i)) for e in (ranked or [])[1:counts[i]]])
            for i, row in enumerate(rows)]


def finish(row: ExplainedRow, categories: list[str], command: "Command") -> "Result":
    """Stage 3: the command's files for one image, and its Result."""
    return command.finish(row, categories)


def result_of(row: ExplainedRow, categories: list[str], outputs: list[str]) -> "Result":
    top5 = [(k, categories[k], p) for k, p in row.top(5)]
    c = row.class_index
    return Result(str(row.job.source), c, categories[c], row.probability, top5, outputs)


class Command:
    """What a command (classify, evaluate) adds to the stages.

    ``additions`` runs with the model (extra passes: guided backpropagation,
    evaluate's perturbations), once per batch; ``finish`` once per image, where
    the engine likes (a worker thread, another process).
    """

    #: Whether finish() draws figures (and so needs the photo at panel resolution).
    draws = True
    #: Whether it writes into the jobs' output folders (which a run then first recovers after a killed run).
    writes = True
    #: Whether finish() also makes the --report images of each image
    #: (:func:`~campp_cli.outputs.report_cards.card_assets`).
    cards = False

    def is_done(self, job: Job) -> "Result | None":
        """A skipped Result when this job needs no work (--skip-existing)."""
        return None

    def additions(self, clf: Classifier, rgb01: torch.Tensor, expl: Explanation, ranked=None) -> list:
        """What the command computes with the model for the batch, one entry per image; ``ranked``: under
        ``-l topK``, each rank's Explanation (``expl`` is the first)."""
        return [None] * len(expl.classes)

    def finish(self, row: ExplainedRow, categories: list[str]) -> "Result":
        raise NotImplementedError


