"""The CLI's listener of a run: it turns the run's events into the lines campp prints and the progress bar.

One printer per command (:mod:`campp_cli.cli.classify`, :mod:`campp_cli.cli.evaluate`) says what each
result and the end of the run look like; this base prints what every command shares.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..run.events import Finished, Loaded, Note, Passes, Planned
from ..run.options import Result
from .console import clear_bar_line, echo, isatty, progress_bar, say


def run_printed(command: str, printer_type: type, quiet: bool, files, params: dict) -> None:
    """A subcommand's whole body: make the :class:`~campp_cli.run.run.Run` (checked and planned here), execute
    it through its printer (the bar closed however it ends), exit 1 when an image failed.  In the campp daemon
    (:mod:`campp_cli.daemon`) this runs as it would in the caller's own process, with the caller's folder,
    environment, stdin, stdout and stderr."""
    from ..daemon.client import planned
    from ..run.run import Run
    from .main import EXIT_FAILURE, command_line

    no_daemon = params.pop("no_daemon", False)
    run = Run(command, files, argv=command_line(), **params)
    planned(run, no_daemon)
    printer = printer_type(run, quiet)
    try:
        summary = run.execute(printer)
    finally:
        printer.close()
    if summary.failed:
        sys.exit(EXIT_FAILURE)


class Printer:
    """Callable with each event of a :class:`~campp_cli.run.run.Run`; :meth:`close` when the run ends however."""

    def __init__(self, run, quiet: bool):
        self.run = run
        self.quiet = quiet
        self.bar = None
        self.loaded: Loaded | None = None
        self.started = time.monotonic()

    def __call__(self, event) -> None:
        if isinstance(event, Result):
            bar = self._bar()
            if bar is not None:
                bar.update(1)
            self.result(event)
        elif isinstance(event, (Passes, Planned)):
            bar = self._bar()
            if bar is not None:
                bar(event.count) if isinstance(event, Passes) else bar.planned(event.passes, event.images)
        elif isinstance(event, Loaded):
            self.on_loaded(event)
        elif isinstance(event, Note):
            self.close()
            say(f"campp: warning: {event.text}")
        elif isinstance(event, Finished):
            self.close()
            self.finished(event)

    def on_loaded(self, event: Loaded) -> None:
        self.loaded = event
        self.started = time.monotonic()
        clf = event.classifier
        if not self.quiet:
            say(f"campp: {clf.arch} on {event.where}, layer {event.layer}, weights "
                f"{clf.weights_source}")

    def wants_bar(self) -> bool:
        return True

    def _bar(self):
        if self.bar is None and self.loaded is not None and self.wants_bar():
            self.bar = progress_bar(self.loaded.images, self.quiet, self.started)
            self.loaded = None  # one bar a run
        return self.bar

    def above_bar(self, line: str) -> None:
        """A line on stdout; with stdout and the bar on one terminal, printed above the bar, drawn again below."""
        bar = self.bar
        if bar is not None and bar.tty and not bar.finished and isatty(sys.stdout):
            clear_bar_line()
            echo(line)
            bar.render_progress()
        else:
            echo(line)

    def result(self, result: Result) -> None:
        """Print one image's result."""

    def finished(self, event: Finished) -> None:
        """Print the end of the run."""

    def say_report(self, report) -> None:
        """Where the report is, and the address to open it at in a browser."""
        if report is not None and not self.quiet:
            say(f"campp: report {report.path} (images in {report.assets}); open "
                f"{Path(report.path).absolute().as_uri()}")

    def close(self) -> None:
        """The bar's last drawing (its line ends), once."""
        if self.bar is not None and not self.bar.finished:
            self.bar.render_finish()
