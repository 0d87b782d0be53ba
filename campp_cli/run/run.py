"""The one library run that the CLI, the notebook and every engine share.

    from campp_cli import Run
    run = Run("classify", ["images/"], arch="efficientnet_lite0", report="output/report.html")
    summary = run.execute(print)        # every event: Loaded, Planned/Passes, each Result, Note, Finished

Making a :class:`Run` checks every argument and plans the inputs (torch-free, so a mistake is reported at
once); :meth:`Run.execute` picks the engine, loads the model (or reuses ``classifier=``), runs the
command's stages and tells a listener what happens, in order (:mod:`campp_cli.run.events`).  What a command
adds (classify's files, evaluate's scores) is its planner in :mod:`campp_cli.commands`, found in the
command registry; a method's settings (``variant``, ``score_batch``) and an engine's (``actors``...) are
keyword arguments too, by the names their registries declare.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, fields, replace
from typing import Any, Callable

from ..cam.methods import DEFAULT_METHODS, parse_methods
from ..errors import UsageError
from ..models.labels import check_label_text, read_labels
from ..models.preprocessing import parse_overrides
from ..settings import DEFAULT_MAX_PIXELS, DEFAULT_REPORT_EVERY
from .engines import ENGINES, check_settings, get_engine
from .events import Finished, Loaded, Note, Passes, Planned

Listener = Callable[[Any], None]


@dataclass(frozen=True)
class RunParams:
    """What every command's run takes: inputs, model, methods, engine, report."""

    files: tuple = ()
    recursive: bool = False
    label: str | int = -1
    arch: str | None = None
    model: Any = None  # "FILE.py:FUNCTION", "package.module:FUNCTION" or an nn.Module
    layer: str | None = None
    weights: str | None = None
    num_classes: int | None = None
    labels: str | None = None  # a file of class names
    input_size: int | None = None
    mean: str | None = None
    std: str | None = None
    resize: str | None = None
    gpu: int | None = None
    precision: str | None = None  # campp_cli.models.precision.PRECISIONS; None: fp32
    offline: bool = False
    methods: Any = DEFAULT_METHODS
    batch_size: int | None = None
    workers: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    engine: str = "local"
    report: str | None = None
    report_every: int = DEFAULT_REPORT_EVERY
    labels_from_folders: bool = False
    output_key: str | None = None  # the entry of a dict or tuple output that holds the logits
    targets: str | None = None  # a file of path,class lines: each image's class for -l true
    score: str = "logit"  # what the gradient methods differentiate (campp_cli.cam.targets.SCORES)
    activation: str = "softmax"  # "sigmoid": a multi-label model (campp_cli.cam.targets.ACTIVATIONS)
    threshold: float | None = None  # with "sigmoid": the probability a label must reach to be explained


_COMMON = {f.name for f in fields(RunParams)}


class Run:
    """One run of ``command`` ("classify", "evaluate", or any registered one) over ``files``.

    ``classifier``: a loaded :class:`~campp_cli.models.Classifier` to reuse (the model arguments are then
    not given).  ``argv``: the command line, for the report's header.  Other keywords: :class:`RunParams`,
    the command's own (see its planner), the methods' and the engine's settings.
    """

    def __init__(self, command: str = "classify", files=(), *, classifier=None, argv: str | None = None,
                 **params):
        from ..commands import get_planner

        planner_type = get_planner(command)
        methods_settings = _method_setting_names()
        engine_settings = {s.name for s in ENGINES.settings()}
        split: dict[str, dict] = {"common": {}, "own": {}, "method": {}, "engine": {}}
        for key, value in params.items():
            kind = "common" if key in _COMMON else "method" if key in methods_settings else \
                "engine" if key in engine_settings else "own"
            split[kind][key] = value
        files = (files,) if isinstance(files, (str, os.PathLike)) else tuple(files)
        self.command = command
        self.params = RunParams(files=files, **split["common"])
        self.classifier = classifier
        self.argv = argv
        self.engine_settings = self._check_engine(split["engine"])
        self.methods = parse_methods(self.params.methods)
        self.settings = _method_settings(split["method"], self.methods)
        self.targets = self._check_targets()
        check_label_text(str(self.params.label))
        self.planner = planner_type(self, **split["own"])  # the command's own arguments, and every name
        self.request = self._model_request()
        self.jobs = self.planner.plan_jobs()

    # --- checks, before anything slow ------------------------------------------------------------------

    def _check_engine(self, given: dict) -> dict:
        engine = self.params.engine
        if self.params.gpu is not None and not get_engine(engine).on_this_machine:
            raise UsageError(f"{{gpu}} places the model on this machine; {{engine}} {engine} places its own "
                             f"(see {{gpus_per_actor}})", param="gpu", value=self.params.gpu,
                             also=("engine", "gpus_per_actor"))
        return check_settings(engine, given)

    def _check_targets(self) -> dict | None:
        """-l true, --targets and --score, checked (the targets file read) before anything slow."""
        from ..cam.targets import TRUE, check_activation, check_score, is_true, read_targets, top_k

        p = self.params
        check_score(p.score)
        check_activation(p.activation)
        if p.threshold is not None and p.activation != "sigmoid":
            raise UsageError("is the probability a multi-label model's labels must reach: give {activation} "
                             "sigmoid too", param="threshold", value=p.threshold, also=("activation",))
        if p.threshold is not None and not 0 <= p.threshold <= 1:
            raise UsageError("give a probability, 0..1", param="threshold", value=p.threshold)
        if p.threshold is not None and str(p.label).strip() != "-1":
            raise UsageError("picks a multi-label model's labels; {label} gives the classes already",
                             param="threshold", value=p.threshold, also=("label",))
        if top_k(p.label) is not None and p.targets is not None:
            raise UsageError("{targets} gives each photo's one class; {label} topK explains its most probable "
                             "ones: give one of them", param="targets", value=p.targets, also=("label",))
        if p.targets is not None:
            if str(p.label).strip().lower() not in ("-1", TRUE):
                raise UsageError("{targets} gives each photo's class: use {label} true (or leave {label} out)",
                                 param="targets", value=p.targets, also=("label",))
            self.params = replace(p, label=TRUE)
            return read_targets(p.targets)
        if is_true(p.label) and not p.labels_from_folders:
            raise UsageError("each photo's own class comes from {targets} FILE or {labels_from_folders}",
                             param="label", value=TRUE, also=("targets", "labels_from_folders"))
        return None

    def _model_request(self) -> dict:
        """load_classifier's model arguments, checked (none when a classifier is given)."""
        p = self.params
        if self.classifier is None:
            return model_request(p.arch, p.model, p.num_classes, p.labels, p.input_size, p.mean, p.std, p.resize,
                                 p.output_key, p.precision)
        given = [k for k in ("arch", "model", "weights", "num_classes", "labels", "input_size", "mean", "std",
                             "resize", "output_key", "precision") if getattr(p, k) is not None]
        if given:
            raise UsageError(f"give a classifier or the arguments that load one ({', '.join(given)}), not both")
        return {}

    @property
    def single(self) -> bool:
        """One photo named by path: the paper's one call per photo."""
        from ..io.inputs import is_single

        return is_single([str(f) for f in self.params.files])

    # --- the run -----------------------------------------------------------------------------------------

    def execute(self, listener: Listener | None = None) -> Any:
        """Run it, telling ``listener`` every event; return the :class:`~campp_cli.run.options.Summary`."""
        from .engines import load_engine

        tell = listener or (lambda event: None)
        with self.planner.opened():  # --jsonl: open for the whole run, closed however it ends
            engine = load_engine(self.params.engine)
            clf, label = self._classifier(tell)
            options = self.planner.options(clf, label)
            report = self._open_report(clf, options)
            command = self.planner.command(clf, options, report, tell)
            summary = self._engine(engine, clf, options, command, self.planner.each(tell, report), tell, report)
            document = self.planner.close(clf, options, command, summary)
        if report is not None:
            report.close(summary=document)
            if report.unknown_truth:
                tell(Note(_unknown_truth(report)))
        tell(Finished(summary, document, report))
        return summary

    def _classifier(self, tell: Listener):
        from ..cam.targets import TRUE, is_true, top_k
        from ..draw.figures import layer_label
        from ..models.devices import describe_device, resolve_device
        from ..models.labels import resolve_label
        from ..models.loading import load_classifier

        here = get_engine(self.params.engine).on_this_machine
        clf = self.classifier
        if clf is None:
            device = resolve_device(self.params.gpu if here else -1, warn=lambda text: tell(Note(text)))
            clf = load_classifier(weights=self.params.weights, device=device, layer=self.params.layer,
                                  download=not self.params.offline, prepack=self.planner.prepack, **self.request)
        given, k = str(self.params.label), top_k(self.params.label)
        if is_true(given):
            label = TRUE
        elif k is not None:
            label = f"top{k}"
            if k > len(clf.categories):
                raise UsageError(f"{clf.arch} has {len(clf.categories)} classes", param="label", value=given)
        else:
            label = resolve_label(given, clf.categories)
        where = describe_device(clf.device) + _precision_words(clf) if here else f"--engine {self.params.engine}"
        tell(Loaded(clf, label, where, len(self.jobs), layer_label(clf.module, clf.layer)))
        return clf, label

    def _engine(self, engine, clf, options, command, each, tell, report):
        """The engine over the planned jobs; the report (if any) written, marked unfinished, on an error."""
        try:
            return engine(self.jobs, clf, options, each, command, _Progress(tell), **self.engine_settings)
        except BaseException:
            if report is not None:
                try:
                    report.write()
                except Exception:  # noqa: BLE001 - the run's own error is the one to report
                    pass
            raise

    def _open_report(self, clf, options):
        """The --report being written for this run, or None."""
        if self.params.report is None:
            return None
        import time

        from ..cam.methods import settings_in_words
        from ..cam.targets import describe_label
        from ..models.devices import describe_device, versions
        from ..outputs.report import Report

        label, engine = options.label, self.params.engine
        header = {
            "argv": self.argv or argv_line(),
            "model": clf.arch, "weights": clf.weights_source, "layer": clf.layer,
            "settings": settings_in_words(options.methods, options.settings),
            "label": f"each image's labels of probability {options.threshold} or more (--activation sigmoid)"
                     if options.multi_label else describe_label(label, clf.categories),
            "device": describe_device(clf.device) + _precision_words(clf) if get_engine(engine).on_this_machine
            else f"--engine {engine}",
            "versions": versions(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        return Report(self.params.report, self.command, header, list(options.methods), clf.categories,
                      len(self.jobs), self.params.labels_from_folders, self.params.report_every, options.alpha,
                      truth=options.truth if self.targets is not None else None)


def _precision_words(clf) -> str:
    """How the device line names a half precision (nothing for fp32)."""
    from ..models.precision import precision_of

    name = precision_of(clf.module)
    return "" if name == "fp32" else f", {name} autocast"


def model_request(arch=None, model=None, num_classes=None, labels=None, input_size=None, mean=None, std=None,
                  resize=None, output_key=None, precision=None) -> dict:
    """load_classifier's model arguments from a run's, checked before any slow import."""
    from ..cam.outputs import parse_key
    from ..models.precision import check_precision

    if model is not None and arch is not None:
        raise UsageError("give {arch} or {model}, not both", also=("arch", "model"))
    if model is not None and num_classes is not None:
        raise UsageError("your {model} function builds its own head; give {labels} for names", param="num_classes",
                         also=("model", "labels"))
    return dict(arch=arch or "vgg16", model=model, num_classes=num_classes,
                labels=read_labels(labels) if labels is not None else None,
                preprocessing=parse_overrides(input_size, mean, std, resize) or None,
                output_key=parse_key(output_key), precision=check_precision(precision))


def run(command: str = "classify", files=(), listener: Listener | None = None, **params):
    """``Run(command, files, **params).execute(listener)``: plan, check and run in one call."""
    return Run(command, files, **params).execute(listener)


def _method_setting_names() -> set[str]:
    from ..cam.methods import method_settings

    return {s.name for s in method_settings()}


def _method_settings(given: dict, methods) -> dict:
    from ..cam.methods import check_method_settings

    return check_method_settings(given, methods)


def _unknown_truth(report) -> str:
    path, name = report.unknown_truth[0]
    return (f"--labels-from-folders: {len(report.unknown_truth)} image(s) have no class named by their folder or "
            f"file name (e.g. {path}: {name!r}); the report leaves them unmarked")


class _Progress:
    """The ``on_passes`` of an engine: extra forward passes as events."""

    def __init__(self, tell: Listener):
        self.tell = tell

    def __call__(self, n: int) -> None:
        self.tell(Passes(n))

    def planned(self, passes: int, images: int) -> None:
        self.tell(Planned(passes, images))


def argv_line() -> str:
    """This process's command line, as the report's header names it."""
    import shlex

    return "campp " + shlex.join(sys.argv[1:])
