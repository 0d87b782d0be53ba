"""``--jsonl``: one JSON line per image, never torn, never shared.

The file is locked for the whole run (``flock``): a second campp pointed at
the same file is refused instead of interleaving with the first.  Each line
goes out in one ``write`` on a file opened for appending, so a reader (or a
kill) sees whole lines only, in input order, each written as soon as its
image is done.  Names that are not valid UTF-8 are written as JSON escapes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import OutputError, UsageError
from .inputs import is_stream

try:
    import fcntl
except ImportError:  # not on Windows: no lock, still one write per line
    fcntl = None


def check_writable(option: str, path: str | os.PathLike | None) -> None:
    """A usage error now, before any model loads, for an output file that could not be written."""
    if path is None:
        return
    if str(path) == "-":
        raise UsageError(f"{option} -: give a file name (/dev/stdout writes to standard output)")
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if is_stream(path):  # /dev/null, a FIFO: written into, whatever its folder allows
        if not os.access(path, os.W_OK):
            raise UsageError(f"{option} {path}: not writable")
        return
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a folder, give a file name")
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: the folder {parent} is not writable")


class JsonlLog:
    """An open, locked ``--jsonl`` file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        check_writable("--jsonl", self.path)
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        except OSError as exc:
            raise UsageError(f"--jsonl {self.path}: cannot write ({exc.strerror or exc})") from None
        if fcntl is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(self.fd)
                raise UsageError(f"--jsonl {self.path}: in use by another campp run") from None
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass  # not a regular file (a pipe, /dev/stdout...): nothing to empty

    def write(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=True) + "\n").encode("ascii")
        try:
            written = os.write(self.fd, line)
            if written != len(line):
                raise OSError(28, "short write (disk full?)")
        except OSError as exc:
            raise OutputError(f"--jsonl {self.path}: cannot write ({exc.strerror or exc}); "
                              f"the run stops here") from None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # also releases the lock
            self.fd = None
