"""Crash-safe writes: write-then-rename, a journal for sets of files, recovery after a kill.

The temporary files and journals are :mod:`campp_cli.io.tempfiles`' (named by their process, locked while
it works on them): :func:`recover` removes what a killed run left and nothing a live run holds.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import stat
import sys
from pathlib import Path

from ..errors import OutputError
from .names import is_stream
from .tempfiles import TEMP_PREFIX, create_locked, own_prefix, pid_alive, short_tag, temp_name, try_lock, write_fd

_PENDING = "pending"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot sync a folder; the files themselves were synced
    finally:
        os.close(fd)


def _write_synced(folder: Path, name: str, data: bytes) -> tuple[str, int]:
    """``data`` in a new file ``folder/name`` (see :func:`create_locked`), synced; (its path, its open and
    locked descriptor, for the caller to close once the file is where it belongs)."""
    tmp = os.path.join(folder, name)
    fd = create_locked(tmp)
    try:
        write_fd(fd, data)
        os.fsync(fd)
    except BaseException:
        _unlink(tmp)
        os.close(fd)
        raise
    return tmp, fd


def _unlink(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


_FD_LINK = re.compile(r"/(?:proc/(?:self|\d+)|dev)/fd/(\d+)")


_STD_NAMES = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}


def _descriptor_of(path: str | os.PathLike) -> int | None:
    """The descriptor of this process that ``path`` names (``/dev/stdout``, ``/dev/fd/N``,
    ``/proc/self/fd/N``, or a link to one of them), or None."""
    current = os.path.abspath(path)
    for _ in range(40):
        if current in _STD_NAMES:
            return _STD_NAMES[current]
        match = _FD_LINK.fullmatch(current)
        if match and (current.startswith("/dev/") or current.startswith(("/proc/self/", f"/proc/{os.getpid()}/"))):
            return int(match.group(1))
        if not os.path.islink(current):
            return None
        current = os.path.normpath(os.path.join(os.path.dirname(current), os.readlink(current)))
    return None


def real_descriptor(path: str | os.PathLike) -> int | None:
    """:func:`_descriptor_of`, where stderr is: the console script moves the real stderr off descriptor 2
    (see cli._silence_library_chatter), so ``/dev/stderr`` is Python's ``sys.stderr``."""
    own = _descriptor_of(path)
    if own == 2:
        try:
            own = sys.stderr.fileno()
        except (AttributeError, OSError, ValueError):
            pass
    return own


def names_descriptor(path: str | os.PathLike) -> int | None:
    """The descriptor of this process that ``path`` names, or None (public: the daemon runs only runs whose
    outputs name no descriptor but stdin and stdout, the two it is given)."""
    return _descriptor_of(path)


def write_in_place(path: str | os.PathLike, data: bytes) -> None:
    """``data`` written into the stream ``path`` (see :func:`is_stream`), which stays what it is.  A name of
    one of this process's descriptors (``/dev/stdout``) is written through that descriptor, after what
    Python holds for it: the output lands where the shell's redirection points, after the lines before it."""
    own = real_descriptor(path)
    if own is not None:
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None and stream.fileno() == own:
                    stream.flush()
            except (AttributeError, OSError, ValueError):
                pass
        write_fd(own, data)
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_NOCTTY", 0))
    try:
        write_fd(fd, data)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, synced, then rename it into place.

    Readers see either no file or the whole file, never a partial one; on any
    failure (disk full, interruption) the temporary file is removed.  A
    device, a FIFO or ``/dev/stdout`` is written into, never renamed over
    (:func:`is_stream`).
    """
    if is_stream(path):
        try:
            write_in_place(path, data)
        except OSError as exc:
            raise OutputError(f"cannot write {path} ({exc.strerror or exc})") from None
        return
    write_all_atomic({Path(path): data})


def replace_unsynced(target: Path, data: bytes) -> None:
    """``target`` replaced by ``data`` in one rename (readers see the old image or the new one); not synced:
    a report's images can be made again, and a run writes thousands.  The temporary file is locked while it
    exists, so that another run's recovery leaves it alone (see :func:`recover`)."""
    tmp = target.with_name(temp_name(f"{short_tag(target.name)}.part"))
    fd = create_locked(tmp)
    try:
        write_fd(fd, data)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    finally:
        os.close(fd)


_counter = itertools.count()


def _check_replaceable(path: Path) -> None:
    """An OSError unless ``path`` is missing, a regular file or a link (a link is replaced, not followed)."""
    try:
        st = os.lstat(path)
    except OSError:
        return
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        raise OSError(21 if stat.S_ISDIR(st.st_mode) else 1,
                      "refused: not a regular file (campp never replaces a folder, device, FIFO or socket)")


def write_all_atomic(files: dict[Path, bytes], source: str | None = None) -> None:
    """Write a set of files in one folder all or nothing, even if the process is killed half-way.

    1. every file to a temporary name (``.campp-PID-TOKEN-...part``), synced;
    2. a journal listing the final names (``.campp-PID-TOKEN-pending-....json``), synced with the folder;
    3. the renames, then the folder synced; 4. the journal removed.

    Each temporary file and the journal are ``flock``-ed by this process until
    the set is whole (the kernel releases the locks when a process dies, and
    a process id proves nothing where processes share a folder across PID
    namespaces).  A failure while writing (disk full, permissions) leaves none
    of them and no temporary file.  A kill between two renames leaves the
    journal, unlocked: :func:`recover` (run at the start of every run) then
    removes that set's files and the temporaries, so only complete sets remain
    and ``--skip-existing`` redoes exactly the interrupted ones.  A final name
    that is a folder, a device or a FIFO is refused, never renamed over.
    ``source`` (the input image) is named in errors.
    """
    if not files:
        return
    pending = _SetWrite(files)
    try:
        pending.stage()
        pending.commit()
    except OSError as exc:
        where = f"{source}: " if source else ""
        raise OutputError(f"{where}cannot write {pending.current} ({exc.strerror or exc})") from None
    finally:
        pending.clean_up()


class _SetWrite:
    """The files of one :func:`write_all_atomic` in flight: their temporary files, journal and locks."""

    def __init__(self, files: dict[Path, bytes]):
        folders = {p.parent for p in files}
        if len(folders) != 1:
            raise ValueError("write_all_atomic writes the files of one folder")
        self.folder = folders.pop()
        self.files = files
        self.names = [p.name for p in files]
        self.key = short_tag("/".join(self.names) + f"|{next(_counter)}")
        self.temps: dict[Path, str] = {}
        self.fds: list[int] = []  # held (locked) until clean_up
        self.journal: str | None = None
        self.current = None  # the output being written, named in the error rather than its temporary file

    def stage(self) -> None:
        """Steps 1 and 2: every file under its temporary name, then the journal (two files or more), synced
        with the folder."""
        for final in self.files:
            self.current = final
            _check_replaceable(final)
        for k, (final, data) in enumerate(self.files.items()):
            self.current = final
            tmp, fd = _write_synced(self.folder, temp_name(f"{self.key}-{k}.part"), data)
            self.temps[final] = tmp
            self.fds.append(fd)
        self.current = self.folder
        if len(self.files) > 1:
            self.journal, fd = _write_synced(self.folder, temp_name(f"{_PENDING}-{self.key}.json"),
                                             json.dumps(self.names).encode("utf-8", "surrogateescape"))
            self.fds.append(fd)
        _fsync_dir(self.folder)

    def commit(self) -> None:
        """Steps 3 and 4: the renames, the folder synced, the journal removed."""
        for final, tmp in self.temps.items():
            self.current = final
            _maybe_die_for_tests()
            os.replace(tmp, final)
        _fsync_dir(self.folder)
        if self.journal is not None:
            os.unlink(self.journal)
            self.journal = None

    def clean_up(self) -> None:
        """Whatever happened: no temporary file is left, a set that is not whole goes (all of it, then its
        journal), and the locks go last: until here a recovery leaves all of it alone."""
        for tmp in self.temps.values():
            _unlink(tmp)  # after the renames, nothing is left to remove
        if self.journal is not None:
            for final in self.files:
                _unlink(final)
            _unlink(self.journal)
        for fd in self.fds:
            _close(fd)


def _maybe_die_for_tests() -> None:
    """The attack harness's hook: ``CAMPP_TEST_KILL_AT_RENAME=k`` SIGKILLs this process at rename k."""
    target = os.environ.get("CAMPP_TEST_KILL_AT_RENAME")
    if not target:
        return
    global _renames
    _renames += 1
    if _renames == int(target):
        os.kill(os.getpid(), signal.SIGKILL)


_renames = 0


def recover(folder: str | os.PathLike) -> int:
    """Undo what a killed campp left in ``folder``: half-renamed sets and temporary files.

    Only files that no live process holds are touched: a running campp keeps
    a ``flock`` on each of its temporary files and journals (see
    :func:`write_all_atomic`), so another run's files in flight are left alone,
    whatever the process ids say.  Where the filesystem has no locks, the
    process id in the name decides, as a last resort.  Returns how many files
    were removed.
    """
    folder = Path(folder)
    removed = 0
    own = own_prefix() + "-"
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(TEMP_PREFIX) and not e.name.startswith(own)]
    except OSError:
        return 0
    for entry in entries:
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
        except OSError:
            continue
        fd, held = try_lock(entry.path)
        if held is None:
            pid_text = entry.name[len(TEMP_PREFIX):].split("-", 1)[0]
            held = not pid_text.isdigit() or pid_alive(int(pid_text))
        if held:
            continue
        try:
            if f"-{_PENDING}-" in entry.name and entry.name.endswith(".json"):
                removed += _undo_set(folder, entry.path)
            _unlink(entry.path)
            removed += 1
        finally:
            if fd is not None:
                os.close(fd)
    return removed


def _undo_set(folder: Path, journal: str) -> int:
    """Remove the files a journal lists (plain files of ``folder`` only); how many were removed."""
    try:
        names = json.loads(Path(journal).read_bytes().decode("utf-8", "surrogateescape"))
    except (OSError, ValueError):
        names = []
    removed = 0
    for name in names if isinstance(names, list) else []:
        if isinstance(name, str) and "/" not in name and name not in (".", ".."):
            target = folder / name
            if target.is_file() and not target.is_symlink():
                _unlink(target)
                removed += 1
    return removed
