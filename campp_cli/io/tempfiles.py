"""The temporary files campp makes: names that say whose they are, created locked by their process.

Every temporary or journal file starts with :data:`TEMP_PREFIX`, then its process id and a random token,
and its process holds a ``flock`` on it while it exists: what :func:`campp_cli.io.durable.recover` sees as
alive (the kernel drops the lock when the process dies, however it dies).
"""

from __future__ import annotations

import hashlib
import os
import secrets

try:
    import fcntl
except ImportError:  # Windows: no flock; recovery falls back to process ids
    fcntl = None




#: Every temporary or journal file campp makes starts with this, then its process id and a random token.
TEMP_PREFIX = ".campp-"


def _new_token() -> str:
    """This process's own mark in its temporary names: a process id alone is no identity (in a container
    every campp may be PID 1, and ids are reused)."""
    return secrets.token_hex(4)


_TOKEN = _new_token()


def _refresh_token() -> None:
    global _TOKEN
    _TOKEN = _new_token()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_refresh_token)


def own_prefix() -> str:
    """The start of every temporary name this process makes: ``.campp-PID-TOKEN``."""
    return f"{TEMP_PREFIX}{os.getpid()}-{_TOKEN}"


def temp_name(tail: str) -> str:
    """A temporary name of this process, ``.campp-PID-TOKEN-tail``, that
    :func:`~campp_cli.io.durable.recover` knows."""
    return f"{own_prefix()}-{tail}"


def short_tag(text: str) -> str:
    """A short name for a long one: keeps temporary names far below the 255-byte file-name limit."""
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _lock(fd: int) -> bool:
    """Hold an exclusive ``flock`` on ``fd`` (waiting for a recovery that holds it for a moment); False
    where the filesystem or the system has no such locks."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    except OSError:
        return False


def create_locked(path: str | os.PathLike) -> int:
    """A new file at ``path`` (never an existing one, never through a link), open for writing and locked
    by this process until the descriptor is closed: what :func:`~campp_cli.io.durable.recover` sees as
    alive.  The kernel drops the lock when the process dies, however it dies."""
    for _ in range(5):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
        if not _lock(fd):
            return fd
        try:  # a recovery may have removed the name between its creation and the lock: then again
            if os.path.samestat(os.lstat(path), os.fstat(fd)):
                return fd
        except OSError:
            pass
        os.close(fd)
    raise OSError(11, "temporary file removed while it was being created")


def write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(28, "No space left on device")
        view = view[n:]


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def try_lock(path: str) -> tuple[int | None, bool | None]:
    """(an open descriptor holding the lock, or None; whether a live process holds the file: True, False,
    or None where this filesystem cannot say)."""
    if fcntl is None:
        return None, None
    flags = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, os.O_RDWR | flags)  # NFS grants exclusive locks to writers only
    except PermissionError:
        try:
            fd = os.open(path, os.O_RDONLY | flags)
        except OSError:
            return None, None
    except OSError:
        return None, None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None, True
    except OSError:  # no locks here (some network filesystems)
        os.close(fd)
        return None, None
    return fd, False
