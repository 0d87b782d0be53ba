"""From image files to output files: decode, explain, render, write.

This is the layer a notebook or the CLI calls; it knows nothing of click.
"""

from __future__ import annotations

import io
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import images
from .cam import Explanation, explain, guided_backprop
from .errors import CamppError, InputError, ModelError, OutputError, UsageError
from .inputs import Job, output_stem, prepare_output_dir  # noqa: F401 (re-exported)
from .methods import DEFAULT_METHODS, get_method, parse_methods
from .models import Classifier
from .settings import DEFAULT_OUTPUT


@dataclass
class Options:
    """Everything about a run except the model and the files."""

    label: int = -1  # -1: the predicted class
    variant: str = "official"
    methods: tuple[str, ...] = DEFAULT_METHODS  # names from campp_cli.methods.list_methods()
    score_batch: int = 32  # images per extra forward pass of methods that need them (Score-CAM)
    on_passes: Callable[[int], None] | None = None  # called with the count of each batch of extra passes
    max_side: int = images.DEFAULT_MAX_SIDE
    max_pixels: int = images.DEFAULT_MAX_PIXELS
    save_maps: bool = False
    guided: bool = False  # also guided maps of every method (a second, full backward pass)
    batch_size: int | None = None  # None: default_batch_size(device)
    workers: int = max(1, min(4, os.cpu_count() or 1))  # decoding and writing threads
    skip_existing: bool = False  # resume: skip images whose outputs are all there


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
    extra: dict = field(default_factory=dict, repr=False)  # what a handler adds (metrics...)

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


def to_batch(squares: list[np.ndarray], clf: Classifier) -> torch.Tensor:
    """RGB batch in [0, 1] at the model's input size, on its device (before normalisation)."""
    return _to_device(np.stack([images.model_input(s, clf.input_size) for s in squares]), clf.device)


def check_label(clf: Classifier, label: int) -> None:
    if not -1 <= label < len(clf.categories):
        raise UsageError(f"-l {label}: out of range; {clf.arch} has classes 0..{len(clf.categories) - 1}")


def render(square: np.ndarray, expl: Explanation, i: int, class_name: str,
           guided: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every figure for image ``i``, keyed by output-name suffix ('' is the comparison).

    One heatmap and one overlay per method in ``expl.maps`` (in its order);
    ``guided``: image i's guided-backpropagation gradient ``(3, h, w)``, if wanted.
    """
    side = square.shape[0]
    c = int(expl.classes[i])
    p = float(expl.probs[i, c])
    figures: dict[str, np.ndarray] = {"": square}  # the comparison first; drawn below
    guided_figures: dict[str, np.ndarray] = {}
    panels = [images.titled(square, ["Input", f"{class_name} ({p:.1%})"])]
    for method, maps in expl.maps.items():
        heat = images.colorize(images.upsample(maps[i], side))
        blended = images.overlay(square, heat)
        figures[f"_{method}_heatmap"] = heat
        figures[f"_{method}_overlay"] = blended
        spec = get_method(method)
        caption = f"{class_name} ({p:.1%})" if spec.class_specific else "class-agnostic"
        panels.append(images.titled(blended, [spec.title, caption]))
        if guided is not None:
            grad = guided.transpose(1, 2, 0)
            weighted = grad * images.upsample(maps[i], grad.shape[0])[..., None]
            guided_figures[f"_guided_{method}"] = images.resize(images.gradient_image(weighted), side)
    figures[""] = images.side_by_side(panels)
    return {**figures, **guided_figures}


def write_outputs(job: Job, figures: dict[str, np.ndarray], maps: dict[str, np.ndarray] | None = None) -> list[str]:
    """Write every figure (and maps as .npy), all or nothing; return the paths in order."""
    files = {job.figure_path(k): images.encode_jpeg(v) for k, v in figures.items()}
    for method, cam in (maps or {}).items():
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(cam, dtype=np.float32))
        files[job.map_path(method)] = buf.getvalue()
    images.write_all_atomic(files, source=str(job.source))
    return [str(p) for p in files]


def default_batch_size(device: torch.device) -> int:
    """Big enough to keep the device busy, small enough for memory (VGG16 at 224: ~0.1 GB an image on CUDA)."""
    return 32 if device.type == "cuda" else 8


@dataclass
class _Decoded:
    job: Job
    model_input: np.ndarray  # (3, S, S) float32 RGB in [0, 1]
    display: np.ndarray | None  # (side, side, 3) uint8 at the panel resolution, when figures are drawn


def _decode(job: Job, size: int, options: Options, display: bool, budget: images.PixelBudget | None = None
            ) -> _Decoded:
    if job.error is not None:
        raise InputError(job.error)
    need = max(size, options.max_side) if display else size  # larger photos are decoded reduced
    square = images.center_square(images.load_rgb(job.source, options.max_pixels, need, budget))
    shown = images.display_square(square, options.max_side) if display else None
    return _Decoded(job, images.model_input(square, size), shown)


class Handler:
    """What a command does with each explained batch; :func:`run` does the rest.

    ``after_batch`` runs in the main thread (model work: extra passes);
    ``finish`` runs in a worker thread, once per image (rendering, writing).
    """

    #: Whether finish() draws figures (and so needs the photo at panel resolution).
    draws = True

    def is_done(self, job: Job) -> Result | None:
        """A skipped Result when this job needs no work (--skip-existing)."""
        return None

    def after_batch(self, clf: Classifier, rgb01: torch.Tensor, expl: Explanation) -> list:
        return [None] * len(expl.classes)

    def finish(self, item: "_Decoded", expl: Explanation, i: int, extra, clf: Classifier) -> Result:
        raise NotImplementedError


class ClassifyHandler(Handler):
    """campp classify: figures (and maps, and guided figures) for each image."""

    def __init__(self, options: Options):
        self.options = options

    def is_done(self, job: Job) -> Result | None:
        paths = job.output_paths(self.options.methods, self.options.save_maps, self.options.guided)
        if self.options.skip_existing and job.error is None and all(images.is_complete(p) for p in paths):
            return Result(str(job.source), -1, "", 0.0, [], [str(p) for p in paths], skipped=True)
        return None

    def after_batch(self, clf: Classifier, rgb01: torch.Tensor, expl: Explanation) -> list:
        if not self.options.guided:
            return super().after_batch(clf, rgb01, expl)
        return list(guided_backprop(clf.module, rgb01, expl.classes, clf.preprocessing))

    def finish(self, item: "_Decoded", expl: Explanation, i: int, guided, clf: Classifier) -> Result:
        c = int(expl.classes[i])
        name = clf.categories[c]
        figures = render(item.display, expl, i, name, guided)
        maps = {m: v[i] for m, v in expl.maps.items()} if self.options.save_maps else None
        make_output_folder(item.job)
        written = write_outputs(item.job, figures, maps)
        return result_of(item, expl, i, clf, written)


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


def result_of(item: "_Decoded", expl: Explanation, i: int, clf: Classifier, outputs: list[str]) -> Result:
    c = int(expl.classes[i])
    top5 = [(k, clf.categories[k], p) for k, p in expl.top(i, 5)]
    return Result(str(item.job.source), c, clf.categories[c], float(expl.probs[i, c]), top5, outputs)


def _guarded(fn, source, *args) -> Result:
    """Run one image's step; an error it causes becomes its Result, never the run's end."""
    try:
        return fn(*args)
    except (InputError, OutputError) as exc:  # this image or its files; a broken model ends the run
        return Result.failure(source, exc)


def _to_device(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    x = torch.from_numpy(batch)
    if device.type == "cuda":  # pinned host memory lets the copy overlap the GPU's work
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def run(jobs: list[Job], clf: Classifier, options: Options | None = None,
        on_result: Callable[[Result], None] | None = None, handler: Handler | None = None) -> Summary:
    """Explain every job with one model: decoding and writing overlap the model's work.

    Batches of ``options.batch_size`` images go through one forward and one
    backward pass; worker threads decode the next batch and finish (render and
    write) the previous one meanwhile.  At most about three batches are in
    memory at once, so memory stays flat however many images there are.  A bad
    image becomes a failed :class:`Result` and the run goes on; usage errors
    and a broken model (non-finite logits) end it.  Results are reported in
    input order.  ``handler`` says what to do with each batch (default: classify).
    """
    options = options or Options()
    options.methods = parse_methods(options.methods)
    handler = handler or ClassifyHandler(options)
    check_label(clf, options.label)
    report = on_result or (lambda r: None)
    batch_size = options.batch_size or default_batch_size(clf.device)
    summary = Summary()
    start = time.perf_counter()

    def record(result: Result) -> None:
        if result.error is not None:
            summary.failed += 1
        elif result.skipped:
            summary.skipped += 1
        else:
            summary.done += 1
        report(result)

    for folder in sorted({job.out_dir for job in jobs}):
        images.recover(folder)  # sets and temporaries a killed run left half-written
    todo = []
    for job in jobs:
        skipped = handler.is_done(job)
        if skipped is not None:
            record(skipped)
        else:
            todo.append(job)
    chunks = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    decoders = ThreadPoolExecutor(options.workers, thread_name_prefix="campp-decode")
    finishers = ThreadPoolExecutor(options.workers, thread_name_prefix="campp-finish")
    pending: deque[Future] = deque()

    budget = images.PixelBudget(options.max_pixels)  # pixels decoded at once, across the threads

    def submit_decodes(chunk):
        return [decoders.submit(_guarded, _decode, job.source, job, clf.input_size, options, handler.draws, budget)
                for job in chunk]

    def drain(limit: int) -> None:
        while len(pending) > limit:
            record(pending.popleft().result())

    def record_finished() -> None:
        """After an abort: report every image whose work is done, in input order, so --jsonl and the
        lines match the sets on disk."""
        while pending:
            fut = pending.popleft()
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                try:
                    record(fut.result())
                except Exception:  # noqa: BLE001 - the abort's own error is the one to report
                    return

    try:
        upcoming = submit_decodes(chunks[0]) if chunks else []
        for k in range(len(chunks)):
            current = upcoming
            upcoming = submit_decodes(chunks[k + 1]) if k + 1 < len(chunks) else []
            outcomes = [fut.result() for fut in current]
            decoded = [o for o in outcomes if not isinstance(o, Result)]
            finished = iter(())
            if decoded:
                rgb01 = _to_device(np.stack([d.model_input for d in decoded]), clf.device)
                try:
                    expl = explain(clf.module, clf.layer, clf.preprocessing(rgb01), classes=options.label,
                                   variant=options.variant, methods=options.methods, image=rgb01,
                                   preprocess=clf.preprocessing, score_batch=options.score_batch,
                                   progress=options.on_passes)
                except ModelError as exc:
                    raise ModelError(f"{exc.message} (model {clf.arch}, weights {clf.weights_source})") from None
                extras = handler.after_batch(clf, rgb01, expl)
                finished = iter([finishers.submit(_guarded, handler.finish, item.job.source, item, expl, i,
                                                  extras[i], clf) for i, item in enumerate(decoded)])
            for outcome in outcomes:  # queued in input order; a failed decode is already a Result
                if isinstance(outcome, Result):
                    failed: Future = Future()
                    failed.set_result(outcome)
                    pending.append(failed)
                else:
                    pending.append(next(finished))
            drain(2 * batch_size)
        drain(0)
    except BaseException:
        decoders.shutdown(wait=True, cancel_futures=True)
        finishers.shutdown(wait=True, cancel_futures=True)  # sets being written are finished
        record_finished()
        raise
    finally:
        decoders.shutdown(wait=True, cancel_futures=True)
        finishers.shutdown(wait=True, cancel_futures=True)
    summary.seconds = time.perf_counter() - start
    return summary


def classify_file(path: str | os.PathLike, clf: Classifier, out_dir: str | os.PathLike,
                  output: str = DEFAULT_OUTPUT, options: Options | None = None) -> Result:
    """The paper's ``classify.py`` for one file: explain, write the five JPEGs, report.

    Raises the image's error (:class:`InputError`, :class:`OutputError`) instead
    of returning it.
    """
    stem, suffix = output_stem(output)
    out = prepare_output_dir(out_dir)
    results: list[Result] = []
    run([Job(Path(path), out, stem, suffix)], clf, options, results.append)
    if results[0].exception is not None:
        raise results[0].exception
    return results[0]
