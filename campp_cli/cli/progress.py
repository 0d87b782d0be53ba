"""Progress on stderr: a bar redrawn in place on a terminal, a line every few seconds on a pipe.

The work of a run is its images and, for methods with extra forward passes
(Score-CAM), those passes, which dominate: a photo can take a minute of them.
The bar moves with every batch of passes and its ETA counts them.  On a pipe
(a log file, CI) nothing is printed for a short run; a long one gets a line
every :data:`INTERVAL` seconds (``CAMPP_PROGRESS_INTERVAL`` overrides it).

torch-free: the CLI builds this before the model is loaded.
"""

from __future__ import annotations

import os
import shutil
import time

INTERVAL = 10.0  # seconds between progress lines on a pipe (and before the first one)
BAR_WIDTH = 20


def interval() -> float:
    """Seconds between progress lines on a pipe: ``$CAMPP_PROGRESS_INTERVAL`` if set, else :data:`INTERVAL`."""
    raw = os.environ.get("CAMPP_PROGRESS_INTERVAL", "").strip()
    try:
        value = float(raw) if raw else INTERVAL
    except ValueError:
        value = INTERVAL
    return value if value >= 0 else INTERVAL


def clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Images done out of ``total``, and extra forward passes, on ``stream``.

    ``update(n)`` counts finished images; calling the object itself, ``progress(n)``,
    counts ``n`` extra forward passes (it is the ``progress`` callback of
    :func:`campp_cli.explain`); ``planned(passes, images)``, called by Score-CAM
    before a batch's passes, lets the ETA count the passes still to come.
    """

    def __init__(self, total: int, stream, tty: bool, label: str = "explaining", every: float | None = None):
        self.total = max(1, total)
        self.stream = stream
        self.tty = tty
        self.label = label
        self.every = interval() if every is None else every
        self.images = 0
        self.passes = 0
        self.planned_passes = 0
        self.planned_images = 0
        self.start = time.monotonic()
        self.last_line = self.start  # a pipe's first line comes only after one interval: a short run prints none
        self.finished = False

    # -- counting ---------------------------------------------------------------------------------------------
    def update(self, n: int = 1) -> None:
        self.images += n
        self._show()

    def __call__(self, n: int) -> None:
        self.passes += n
        self._show()

    def planned(self, passes: int, images: int) -> None:
        self.planned_passes += passes
        self.planned_images += images
        self._show()

    def fraction(self) -> float:
        """The share of the run's work done: images, and passes weighed by the passes an image needs so far."""
        if self.images >= self.total:
            return 1.0
        if not self.planned_images:
            return self.images / self.total
        per_image = self.planned_passes / self.planned_images
        done = min(self.passes, self.planned_passes) + self.images
        return min(0.999, done / (self.total * (1 + per_image)))

    def eta(self) -> float | None:
        f = self.fraction()
        if f <= 0 or f >= 1:
            return None
        return (time.monotonic() - self.start) * (1 - f) / f

    # -- drawing ----------------------------------------------------------------------------------------------
    def status(self) -> str:
        parts = [f"{self.images}/{self.total}"]
        if self.passes:
            parts.append(f"({self.passes} extra forward passes)")
        eta = self.eta()
        if eta is not None:
            parts.append(f"ETA {clock(eta)}")
        return "  ".join(parts)

    def line(self) -> str:
        """One line for a pipe."""
        text = f"campp: progress: {self.images}/{self.total} images"
        if self.passes:
            text += f", {self.passes} extra forward passes"
        text += f", {clock(time.monotonic() - self.start)} elapsed"
        eta = self.eta()
        if eta is not None:
            text += f", about {clock(eta)} left"
        return text

    def render_progress(self) -> None:
        """Draw the bar now (a terminal) or nothing (a pipe)."""
        if not self.tty or self.finished:
            return
        filled = int(self.fraction() * BAR_WIDTH)
        text = f"{self.label}  [{'#' * filled}{'-' * (BAR_WIDTH - filled)}]  {self.status()}"
        width = shutil.get_terminal_size((80, 24)).columns
        self._write("\r\033[K" + text[:max(10, width - 1)])

    def _show(self) -> None:
        if self.tty:
            self.render_progress()
            return
        now = time.monotonic()
        if self.every >= 0 and now - self.last_line >= self.every and not self.finished:
            self.last_line = now
            self._write(self.line() + "\n")

    def render_finish(self) -> None:
        if self.tty and not self.finished:
            self.render_progress()
            self._write("\n")
        self.finished = True

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError, AttributeError):
            pass  # a closed stderr loses the progress, not the run
