"""Where the daemon's socket lives and what a daemon must share with its callers.

The socket is in a folder that only its user can open: ``$XDG_RUNTIME_DIR/campp`` (a per-user folder that
the login manager makes, 0700), else ``campp-UID`` in the temporary folder, made 0700 by campp.  A folder of
another owner, or one that others may open, is refused, never used; ``CAMPP_DAEMON_DIR`` names another one
(the same checks apply).  Never a TCP port.
"""

from __future__ import annotations

import os
import stat
import sys
import zlib
from pathlib import Path

from ..errors import CamppError

SOCKET = "daemon.sock"
START_LOCK = "start.lock"  # held while one caller starts a daemon: two at once start one
SERVE_LOCK = "serve.lock"  # held by the daemon for its life: a second one refuses to serve
LOG = "daemon.log"

#: Variables read when torch starts (threads, devices, allocator): a daemon started under other values would
#: not run as this call would alone, so it is not used.
STARTUP_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "PYTORCH_CUDA_ALLOC_CONF",
               "CUBLAS_WORKSPACE_CONFIG", "PYTHONPATH", "LD_LIBRARY_PATH", "LD_PRELOAD")


class DaemonError(CamppError):
    """The daemon cannot be used, or it failed a call (exit 1)."""


def folder() -> Path:
    """The daemon's folder (not made here)."""
    given = os.environ.get("CAMPP_DAEMON_DIR")
    if given:
        return Path(os.path.abspath(given))  # the daemon runs in "/": a relative name would move
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "campp"
    temp = next((os.environ[v] for v in ("TMPDIR", "TEMP", "TMP") if os.environ.get(v)), "/tmp")  # as tempfile
    return Path(temp) / f"campp-{os.getuid()}"


def private_folder(make: bool = False) -> Path:
    """:func:`folder`, checked: a real folder (not a link) of this user that no one else may open; made 0700
    when ``make`` and missing."""
    path = folder()
    if make:
        try:
            path.mkdir(mode=0o700, parents=False, exist_ok=True)
        except FileNotFoundError:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise DaemonError(f"cannot make the daemon's folder {path} ({exc.strerror or exc})") from None
    check_private(path)
    return path


def check_private(path: Path) -> None:
    """A :class:`DaemonError` unless ``path`` is a folder of this user, closed to every other."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise DaemonError(f"no daemon folder {path}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise DaemonError(f"{path} (the daemon's folder) is not a folder; campp uses only a private one")
    if st.st_uid != os.getuid():
        raise DaemonError(f"{path} (the daemon's folder) belongs to user {st.st_uid}, not to you ({os.getuid()}); "
                          f"campp uses only a folder of its own user")
    if st.st_mode & 0o077:
        raise DaemonError(f"{path} (the daemon's folder) may be opened by others (mode {st.st_mode & 0o777:o}); "
                          f"campp uses only a private one (chmod 700 it, or remove it)")


def socket_path() -> Path:
    return folder() / SOCKET


def identity() -> dict:
    """What a daemon must share with a caller to run its calls as the caller would: campp's version and
    code, Python, and the variables torch reads when it starts."""
    from .. import __version__

    return {
        "campp": __version__,
        "code": code_fingerprint(),
        "python": sys.version.split()[0],
        # The environment (a venv's python and python3 are one), and the interpreter behind its links.
        "executable": f"{os.path.realpath(sys.executable)} in {sys.prefix}",
        "env": {k: os.environ.get(k) for k in STARTUP_ENV},
    }


def code_fingerprint() -> str:
    """campp's own files (path, size and time of each): an edited checkout is another build."""
    root = Path(__file__).resolve().parent.parent
    lines = [str(root)]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith((".py", ".json", ".txt", ".html", ".js", ".css")):
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except OSError:
                    continue
                lines.append(f"{dirpath}/{name}:{st.st_size}:{st.st_mtime_ns}")
    # A checksum, not a secret: it tells an edited checkout from the daemon's (hashlib's OpenSSL takes 15 ms).
    return f"{zlib.crc32(chr(10).join(lines).encode('utf-8', 'surrogateescape')):08x}-{len(lines)}"


def mismatch(ours: dict, theirs: dict) -> tuple[str, str] | None:
    """``(kind, what differs)`` between two :func:`identity` s, or None: kind ``"build"`` (another campp or
    Python: the daemon should stop) or ``"env"`` (another start-up environment: run here)."""
    for key, words in (("campp", "campp"), ("code", "campp's code"), ("python", "Python"),
                       ("executable", "Python")):
        if ours.get(key) != theirs.get(key):
            return "build", f"{words} {theirs.get(key)}, not {ours.get(key)}"
    for key in STARTUP_ENV:
        if ours.get("env", {}).get(key) != theirs.get("env", {}).get(key):
            return "env", f"{key}={theirs.get('env', {}).get(key)!r}, not {ours.get('env', {}).get(key)!r}"
    return None
