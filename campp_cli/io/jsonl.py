"""``--jsonl``: one JSON line per image, never torn, never shared.

The file is locked for the whole run (``flock``): a second campp pointed at
the same file is refused instead of interleaving with the first.  Each line
goes out in one ``write`` on a file opened for appending (a short one is
cut back), so a reader (or a kill) sees whole lines only, in input order,
each written as soon as its image is done.  Names that are not valid UTF-8 are written as JSON escapes.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from ..errors import OutputError, UsageError
from .names import is_stream

try:
    import fcntl
except ImportError:  # not on Windows: no lock, still one write per line
    fcntl = None


def check_writable(param: str, path: str | os.PathLike | None) -> None:
    """A usage error now, before any model loads, for an output file that could not be written; ``param``:
    the parameter that names it (``jsonl``, ``report``...)."""
    if path is None:
        return
    if str(path) == "-":
        raise UsageError("give a file name (/dev/stdout writes to standard output)", param=param, value="-")
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if is_stream(path):  # /dev/null, a FIFO: written into, whatever its folder allows
        if not os.access(path, os.W_OK):
            raise UsageError("not writable", param=param, value=path)
        return
    if path.is_dir():
        raise UsageError("is a folder, give a file name", param=param, value=path)
    if not parent.is_dir():
        raise UsageError(f"the folder {parent} does not exist", param=param, value=path)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"the folder {parent} is not writable", param=param, value=path)


class JsonlLog:
    """An open, locked ``--jsonl`` file.

    The lock is taken at once (a second run is refused before any work); the
    file is emptied only when the first line is written, so a run that fails
    before any image (a wrong ``--layer``, ``--labels`` of another length)
    leaves an earlier run's file as it was, and leaves no file where there was
    none.  A line is written whole or not at all: a short write (a full disk)
    is cut back to the line's start before the run stops.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        check_writable("jsonl", self.path)
        self.created = False  # this run made the file: it goes again if no line is ever written
        self.started = False
        flags = os.O_WRONLY | os.O_APPEND
        from .durable import names_descriptor, real_descriptor

        try:
            if names_descriptor(self.path) == 2:  # --jsonl /dev/stderr: where stderr really is
                self.fd = os.dup(real_descriptor(self.path))
            else:
                try:
                    self.fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o666)
                    self.created = True
                except FileExistsError:
                    self.fd = os.open(self.path, flags)
        except OSError as exc:
            raise UsageError(f"cannot write ({exc.strerror or exc})", param="jsonl", value=self.path) from None
        if fcntl is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(self.fd)
                self.fd = None
                raise UsageError("in use by another campp run", param="jsonl", value=self.path) from None
        try:
            self.regular = stat.S_ISREG(os.fstat(self.fd).st_mode)
        except OSError:
            self.regular = False

    def _fail(self, exc: OSError) -> OutputError:
        return OutputError(f"cannot write ({exc.strerror or exc}); the run stops here", param="jsonl",
                           value=self.path)

    def write(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=True) + "\n").encode("ascii")
        start = None
        try:
            if not self.started:
                if self.regular:  # an earlier run's lines go now, when this run has its first one
                    os.ftruncate(self.fd, 0)
                self.started = True
            if self.regular:
                start = os.lseek(self.fd, 0, os.SEEK_END)
            written = os.write(self.fd, line)
            if written != len(line):
                raise OSError(28, "No space left on device (a short write)")
        except OSError as exc:
            if start is not None:
                try:
                    os.ftruncate(self.fd, start)  # never half a line
                except OSError:
                    pass
            raise self._fail(exc) from None

    def _drop(self) -> None:
        if self.created and not self.started:
            try:
                os.unlink(self.path)
            except OSError:
                pass
        os.close(self.fd)
        self.fd = None

    def close(self) -> None:
        if self.fd is not None:
            self._drop()  # closing also releases the lock
