"""What the CLI prints: one-line messages on stderr, results on stdout, the progress bar, each made safe to
print whatever a file name held."""

from __future__ import annotations

import re
import sys

import click

from ..errors import OutputError, clip

#: Longest line campp prints on stderr (a safety net: each value in a message is clipped much shorter).
MAX_LINE = 20000

#: Control characters, and the Unicode controls that reorder or break a line on a terminal (bidirectional
#: embeddings, overrides and isolates such as U+202E; the line and paragraph separators).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str, encoding: str | None = "utf-8") -> str:
    """One line, whatever a file name held: control characters and bytes that are not valid
    text (or not in the stream's encoding) become backslash escapes."""
    text = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))
    enc = encoding or "utf-8"
    try:
        return text.encode(enc, "backslashreplace").decode(enc)
    except LookupError:
        return text.encode("ascii", "backslashreplace").decode("ascii")


def isatty(stream) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def say(message: str) -> None:
    """One line on stderr; nothing if stderr is closed (errors still set the exit code)."""
    stream = sys.stderr
    if stream is None:
        return
    try:
        click.echo(printable(clip(message, MAX_LINE), getattr(stream, "encoding", None)), err=True)
    except (OSError, ValueError):
        pass  # stderr itself cannot be written: the exit code still tells


def echo(message: str, block: bool = False) -> None:
    """One line on stdout (``block``: several, each made printable); a stdout that cannot be written
    ends the run with one line on stderr."""
    stream = sys.stdout
    if stream is None:
        raise OutputError("stdout is closed; the run stops here (use -q, or redirect stdout)")
    encoding = getattr(stream, "encoding", None)
    lines = message.split("\n") if block else [message]
    try:
        click.echo("\n".join(printable(line, encoding) for line in lines))
    except BrokenPipeError:
        raise
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise OutputError(f"stdout: cannot write ({reason}); the run stops here") from None


def progress_bar(count: int, quiet: bool, start: float | None = None):
    """Progress on stderr (:mod:`campp_cli.cli.progress`): a bar on a terminal, a line every few seconds of a
    long run on a pipe; None with --quiet or a closed stderr.  ``start``: when the work began."""
    from .progress import Progress

    if quiet or sys.stderr is None:
        return None
    bar = Progress(count, sys.stderr, isatty(sys.stderr))
    if start is not None:
        bar.start = bar.last_line = start
    return bar


def clear_bar_line() -> None:
    """Wipe the progress bar's line on the terminal, so that a line printed next takes its place."""
    try:
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass
