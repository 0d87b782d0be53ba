"""classify's planner: its output names and files checked before any model loads, --jsonl for the run."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ..errors import UsageError
from ..settings import DEFAULT_ALPHA, DEFAULT_MAX_SIDE, DEFAULT_OUTPUT_DIR, DISPLAYS, FORMATS
from .planner import Planner


class ClassifyPlanner(Planner):
    """``output``: the comparison figure's name or a {stem} template; ``output_dir``; ``save_maps``;
    ``guided``; ``skip_existing``; ``jsonl``: a file of one JSON line per image; ``max_side``, ``alpha``,
    ``format`` ("jpeg" or "png"), ``display`` ("crop" or "full"): how the figures are drawn."""

    def __init__(self, run, output: str | None = None, output_dir: str = DEFAULT_OUTPUT_DIR,
                 save_maps: bool = False, guided: bool = False, skip_existing: bool = False,
                 jsonl: str | None = None, max_side: int = DEFAULT_MAX_SIDE, alpha: float = DEFAULT_ALPHA,
                 format: str | None = None, display: str = "crop"):
        super().__init__(run)
        _check_drawing(alpha, display, format)
        self.output_dir, self.jsonl = output_dir, jsonl
        self.drawing = dict(max_side=max_side, alpha=alpha, display=display, save_maps=save_maps, guided=guided,
                            skip_existing=skip_existing)
        self.check_names(jsonl=jsonl, report=run.params.report, output_dir=output_dir, weights=run.params.weights,
                         labels=run.params.labels)
        self.output, self.format = output, format
        self.log = None

    def plan_jobs(self) -> list:
        from ..cam.targets import MAX_RANKS, is_multi_label, output_labels, top_k
        from ..io.jsonl import check_writable
        from ..io.names import check_collisions, check_no_overwrite, folds_case, prepare_output_dir
        from ..outputs.kinds import keys as output_keys

        run, out_dir, output, fmt = self.run, self.output_dir, self.output, self.format
        # A multi-label model's photos have up to MAX_RANKS labels: every rank's files are checked.
        multi = is_multi_label(run.params.activation, run.params.label)
        labels = output_labels(run.methods, MAX_RANKS if multi else top_k(run.params.label))
        keys = output_keys(labels, save_maps=self.drawing["save_maps"], guided=self.drawing["guided"])
        self.jobs = self.plan(Path(out_dir), output, keys=keys, fmt=fmt)
        self.check_something_exists()
        named, files = {"jsonl": self.jsonl, "report": run.params.report}, [str(f) for f in run.params.files]
        check_no_overwrite(self.jobs, keys, named, files)
        check_collisions(self.jobs, keys, named, files, self.report_files(), folds=folds_case(out_dir))
        check_writable("jsonl", self.jsonl)
        report = run.params.report
        if report is not None and os.path.dirname(os.path.abspath(report)) == os.path.abspath(out_dir):
            prepare_output_dir(out_dir)  # --report output/report.html: the output folder is made for it
        self.check_report()
        prepare_output_dir(out_dir)
        return self.jobs

    @property
    def prepack(self) -> bool:
        """One photo explained in one pass (--guided's runs with gradients, never packed): oneDNN's copy of the
        weights would cost more than it saves; Score-CAM's many passes pay for it."""
        from ..cam.methods import needs_any

        return not self.run.single or needs_any(self.run.methods, "forward passes")

    @contextlib.contextmanager
    def opened(self):
        from ..io.jsonl import JsonlLog

        self.log = JsonlLog(self.jsonl) if self.jsonl else None
        try:
            yield
        finally:
            if self.log is not None:
                self.log.close()

    def options(self, clf, label: int, **more):
        return super().options(clf, label, **self.drawing, **more)

    def command(self, clf, options, report, tell):
        from ..draw.figures import figure_caption
        from .classify import ClassifyCommand

        return ClassifyCommand(options, figure_caption(clf, options), cards=report is not None)

    def take(self, result) -> None:
        if self.log is not None:
            self.log.write(result.as_dict())


def _check_drawing(alpha: float, display: str, fmt: str | None) -> None:
    """The drawing arguments a library caller may get wrong (the CLI's choices already hold)."""
    if not 0.0 <= alpha <= 1.0:
        raise UsageError("give a weight between 0 and 1", param="alpha", value=alpha)
    if display not in DISPLAYS:
        raise UsageError(f"use one of {', '.join(DISPLAYS)}", param="display", value=display)
    if fmt is not None and fmt not in FORMATS:
        raise UsageError(f"use one of {', '.join(FORMATS)}", param="format", value=fmt)
