"""The planner of a command: the part of a :class:`~campp_cli.run.run.Run` that belongs to one command.

It checks the command's own arguments and plans the jobs when the run is made (torch-free), then makes the
stage command, handles each result as it comes and closes the run.  The base class does what every command
shares: the report's checks, the options, the order of what happens to a result.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import UsageError

if TYPE_CHECKING:
    from ..run.options import Options
    from ..run.run import Run


class Planner:
    """Shared by every command: ``__init__`` checks the command's own arguments, :meth:`plan_jobs` (after the
    run's model arguments are checked) the inputs and outputs."""

    #: Whether the model's convolutions are prepacked (pays from the second pass of a shape on).
    prepack = True

    def __init__(self, run: Run):
        self.run = run
        self.jobs: list = []

    # --- planning ------------------------------------------------------------------------------------------

    def plan_jobs(self) -> list:
        """The jobs of the run, every output checked; nothing is loaded yet."""
        return self.jobs

    def check_names(self, **paths) -> None:
        """Usage errors for option values whose folder or file names are longer than filesystems allow."""
        from ..io.names import check_name_length

        for param, path in paths.items():
            if path is not None:
                check_name_length(param, path)

    def report_files(self) -> dict:
        """``{"report": (FILE.html, FILE_files)}``: the folder the report's images go to (never searched for
        inputs), or nothing."""
        report = self.run.params.report
        if report is None:
            return {}
        from ..outputs.report import assets_folder

        folder = assets_folder(report)
        if folder.is_symlink():  # before the inputs are planned: a link could lead into them
            raise UsageError(f"{folder} (where its images go) is a symbolic link; campp never writes through links",
                             param="report", value=report)
        return {"report": (report, folder)}

    def check_report(self) -> None:
        from ..cam.targets import is_true
        from ..outputs.report import check_path

        p = self.run.params
        if p.labels_from_folders and p.report is None and not is_true(p.label):
            raise UsageError("{labels_from_folders} marks right and wrong predictions in a report: give {report} "
                             "FILE.html too (or {label} true to explain each image's true class)",
                             param="labels_from_folders", also=("report", "label"))
        check_path(self.run.params.report)

    def check_something_exists(self) -> None:
        """A usage error, before torch is imported, when no input exists at all (a mistyped -f): nothing to
        load the model for.  One bad path among others fails alone, as any bad image does."""
        jobs = self.jobs
        if jobs and all(j.error is not None or not os.path.lexists(j.source) for j in jobs):
            first = jobs[0]
            shown, _, problem = (first.error or f"{first.source}: no such file").rpartition(": ")
            raise UsageError(problem, param="files", value=shown)

    def plan(self, out_root: Path, output: str | None = None, writes: bool = True, **more) -> list:
        from ..io.inputs import plan

        files = [str(f) for f in self.run.params.files]
        return plan(files, out_root, output, self.run.params.recursive, writes=writes,
                    exclude=[folder for _, folder in self.report_files().values()], **more)

    # --- the run ---------------------------------------------------------------------------------------------

    def opened(self):
        """What stays open for the whole run (--jsonl)."""
        return contextlib.nullcontext()

    def options(self, clf, label: "int | str", **more) -> Options:
        from ..cam.targets import DEFAULT_THRESHOLD, is_true, true_classes
        from ..run.options import Options

        p = self.run.params
        truth = true_classes([job.source for job in self.jobs], clf.categories, self.run.targets,
                             p.labels_from_folders) if is_true(label) else None
        threshold = DEFAULT_THRESHOLD if p.threshold is None else p.threshold
        return Options(label=label, methods=self.run.methods, settings=self.run.settings, max_pixels=p.max_pixels,
                       batch_size=p.batch_size, workers=p.workers, score=p.score, activation=p.activation,
                       threshold=threshold, truth=truth, **more)

    def command(self, clf, options: Options, report, tell: Callable[[Any], None]) -> Any:
        raise NotImplementedError

    def each(self, tell: Callable[[Any], None], report) -> Callable:
        """What happens to each result, in input order: the report first, the command's own, the listener."""
        def on_result(result) -> None:
            if report is not None:
                report.add(result)
            self.take(result)
            tell(result)

        return on_result

    def take(self, result) -> None:
        """The command's own use of a result (--jsonl, keeping it for the summary)."""

    def close(self, clf, options: Options, command, summary) -> dict | None:
        """What the command makes of the whole run (evaluate's document), after the last result."""
        return None
