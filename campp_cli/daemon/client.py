"""The caller's side of the daemon: hand a planned run over, print what comes back; start, ask, stop.

Nothing here imports torch, NumPy or OpenCV: a call handed to a daemon costs Python, click and campp's
planning.  :func:`hand_over` returns None wherever the run is to go on here: no daemon (and
``CAMPP_DAEMON`` is not ``auto``), ``--no-daemon`` or ``CAMPP_DAEMON=off``, ``--debug`` (tracebacks come
from this process), a run that is not the daemon's to run (your own ``--model`` code, an engine that places
its own model), a daemon busy with a long run, or one that cannot be used (a stale socket, another build,
another start-up environment: said in one warning line).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import socket
import sys
import time

from ..errors import UsageError
from . import paths, wire
from .paths import DaemonError

#: A call waits for a busy daemon while the calls ahead of it have at most this many images; behind a longer
#: run it runs here at once (two shell loops share the daemon; a folder run in one shell does not hold up the
#: other).
WAIT_FOR_IMAGES = 64
#: The longest a call waits for its turn before it runs here instead.
WAIT_SECONDS = 10.0

MODES = ("on", "off", "auto")
CONNECT_TIMEOUT = 10.0


def mode(no_daemon: bool = False) -> str:
    """``on`` (use a daemon that runs; the default), ``off`` or ``auto`` (start one if none runs), from
    ``--no-daemon`` and ``CAMPP_DAEMON``."""
    if no_daemon:
        return "off"
    value = os.environ.get("CAMPP_DAEMON", "").strip().lower() or "on"
    aliases = {"1": "on", "yes": "on", "true": "on", "0": "off", "no": "off", "false": "off"}
    value = aliases.get(value, value)
    if value not in MODES:
        raise UsageError(f"CAMPP_DAEMON={value!r}: use one of {', '.join(MODES)}")
    return value


def eligible(run) -> bool:
    """The daemon runs campp's own models on this machine's engine; your ``--model`` code runs where you
    run it (an edited file is always the one used), and engines that place their model run here too."""
    from ..run.engines import get_engine

    return (run.classifier is None and run.params.model is None and get_engine(run.params.engine).on_this_machine
            and not _names_other_descriptors(run))


def _names_other_descriptors(run) -> bool:
    """Whether an input or output of ``run`` names a descriptor of this process other than stdin and stdout
    (``--jsonl /dev/fd/3``, ``>(gzip > x.gz)``, ``/dev/stderr``): the daemon is given those two only."""
    from ..io.durable import names_descriptor

    values = [*vars(run.params).values(), *vars(run.planner).values()]
    paths = [v for v in values if isinstance(v, (str, os.PathLike))]
    paths += [f for v in values if isinstance(v, (tuple, list)) for f in v if isinstance(f, (str, os.PathLike))]
    for path in paths:
        try:
            if names_descriptor(path) not in (None, 0, 1):
                return True
        except (OSError, ValueError):
            continue
    return False


def hand_over(run, listener, *, no_daemon: bool = False, debug: bool = False):
    """Run ``run`` in the daemon, telling ``listener`` its events; its Summary, or None to run it here."""
    from ..run.events import Note

    how = mode(no_daemon)
    if how == "off" or debug or not eligible(run):
        return None
    try:
        folder = paths.folder()
        sock_path = folder / paths.SOCKET
        if not os.path.lexists(sock_path):
            if how != "auto":
                return None
            start()
        paths.check_private(folder)
        sock, pid = _connect(sock_path, restart=how == "auto")
    except DaemonError as exc:
        listener(Note(f"{exc.message}; running here"))
        return None
    if sock is None:
        return None
    with sock:
        try:
            sock.settimeout(CONNECT_TIMEOUT)
            wire.send(sock, "hello", paths.identity())
            answer = wire.receive(sock)
            if answer[0] == "mismatch":
                _, kind, what, pid = answer
                if kind == "build":
                    with contextlib.suppress(DaemonError):
                        stop(wait=0)
                    listener(Note(f"the campp daemon (pid {pid}) runs {what}: told it to stop; running here"))
                else:
                    listener(Note(f"the campp daemon (pid {pid}) was started with {what}; running here ('campp "
                                  f"daemon stop', then start it from this shell, to use one)"))
                return None
            if answer[0] != "welcome":
                listener(Note(f"the campp daemon (pid {pid}) did not take the call; running here"))
                return None
            _, calls, images, pid = answer
            if images > WAIT_FOR_IMAGES:
                return None  # behind a long run: here, now
            context = _context()
            wire.send(sock, "call", run, context, fds=context["fds"])
            sock.settimeout(None)
            if not _wait_turn(sock, listener, pid):
                return None
        except (wire.Closed, OSError):
            listener(Note(f"the campp daemon (pid {pid}) did not take the call; running here"))
            return None
        return _follow(sock, listener, pid)


def _wait_turn(sock: socket.socket, listener, pid: int) -> bool:
    """Wait for the daemon to start the call: True once it has; False where it runs here instead: after
    :data:`WAIT_SECONDS` behind other calls (a caller ahead may be paused), or when the daemon stopped first.
    A signal meanwhile ends the wait (the connection closes: a call that had just started is stopped)."""
    from ..run.events import Note

    deadline = time.monotonic() + WAIT_SECONDS
    withdrawn = False
    while True:
        if not withdrawn:
            ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                wire.send(sock, "withdraw")
                withdrawn = True
                continue
        try:
            kind, *fields = wire.receive(sock)
        except wire.Closed:
            kind, fields = "gone", []
        if kind == "start":
            return True
        if kind == "withdrawn":
            return False
        if kind == "raised":  # it could not read the call: nothing ran there
            listener(Note(f"the campp daemon (pid {pid}) could not take the call ({fields[0]}); running here"))
            return False
        if kind in ("gone", "aborted"):
            listener(Note(f"the campp daemon (pid {pid}) stopped before this call started; running here"))
            return False


def _context() -> dict:
    """What the run needs of this process: its folder, umask, environment, stdin and stdout."""
    mask = os.umask(0o022)
    os.umask(mask)
    fds = []
    for fd in (0, 1):
        with contextlib.suppress(OSError):
            os.fstat(fd)
            fds.append(fd)
    return {"cwd": os.getcwd(), "umask": mask, "env": dict(os.environ), "fds": fds}


def _follow(sock: socket.socket, listener, pid: int):
    """The run's events, printed as they come; its Summary, or its error raised here.

    Ctrl-C or SIGTERM here stops the call there: its results reported meanwhile are still printed, then the
    signal's exception is raised (``campp: aborted ...``, as a run here would end); a second one ends the
    wait.  An error of the listener (a stdout that cannot be written, a single photo that failed) stops the
    call too, and is raised once the daemon has stopped it (its --jsonl and report are then as a run here
    would leave them)."""
    from ..run.signals import deferred

    state = {"stopped": None, "printing": True}

    def stop_call(exc: BaseException) -> None:
        if state["stopped"] is not None or isinstance(exc, (SystemExit, GeneratorExit)):
            raise exc
        state["stopped"] = exc
        state["printing"] = not isinstance(exc, Exception)  # after a signal, what it finished is printed
        try:
            wire.send(sock, "cancel")
        except OSError:
            raise exc from None

    while True:
        try:
            message = wire.receive(sock)
        except wire.Closed:
            if state["stopped"] is not None:
                raise state["stopped"] from None
            raise DaemonError(f"the campp daemon (pid {pid}) ended during this call (see "
                              f"{paths.folder() / paths.LOG}); every file it wrote is whole: run it again "
                              f"(--no-daemon runs it here)") from None
        except BaseException as exc:  # noqa: BLE001 - a signal while waiting
            stop_call(exc)
            continue
        kind = message[0]
        if kind == "event":
            try:
                if state["printing"]:
                    with deferred():
                        listener(message[1])
                wire.send(sock, "ack")
            except BaseException as exc:  # noqa: BLE001 - a signal, or the listener's error
                stop_call(exc)
            continue
        if state["stopped"] is not None and kind in ("done", "raised", "aborted", "gone"):
            raise state["stopped"]
        if kind == "done":
            return message[1]
        if kind == "raised":
            raise message[1]
        if kind == "aborted":
            raise DaemonError(f"the campp daemon (pid {pid}) was stopped during this call; every file it wrote "
                              f"is whole: run it again")
        if kind == "gone":
            raise DaemonError(f"the campp daemon (pid {pid}) stopped before this call started: run it again")


def _connect(sock_path, restart: bool) -> tuple[socket.socket | None, int | None]:
    """A connection to the daemon, its uid checked; (None, None) where there is none (said in a Note by the
    caller through DaemonError, or silently when the socket is gone)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT)
    try:
        sock.connect(str(sock_path))
    except (ConnectionRefusedError, FileNotFoundError) as exc:
        sock.close()
        stale = isinstance(exc, ConnectionRefusedError) and _remove_if_stale(sock_path)
        if restart:
            start()
            return _connect(sock_path, restart=False)
        if isinstance(exc, FileNotFoundError):
            return None, None
        if stale:
            raise DaemonError(f"no campp daemon answers at {sock_path} (a stale socket, removed)") from None
        raise DaemonError(f"the campp daemon at {sock_path} does not answer") from None
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EACCES:
            raise DaemonError(f"cannot open {sock_path} ({exc.strerror})") from None
        raise DaemonError(f"cannot reach the campp daemon at {sock_path} ({exc.strerror or exc})") from None
    uid = wire.peer_uid(sock)
    if uid is not None and uid != os.getuid():
        sock.close()
        raise DaemonError(f"{sock_path} is served by user {uid}, not by you; campp talks only to your own daemon")
    return sock, wire.peer_pid(sock)


def _remove_if_stale(sock_path) -> bool:
    """Remove a socket that no daemon serves (none holds the serve lock); whether it was."""
    folder = sock_path.parent
    with _lock(folder / paths.START_LOCK, wait=0) as got:
        if not got or _serving(folder):
            return False
        with contextlib.suppress(OSError):
            os.unlink(sock_path)
        return True


def _serving(folder) -> bool:
    """Whether a daemon holds the folder's serve lock."""
    try:
        fd = os.open(folder / paths.SERVE_LOCK, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


@contextlib.contextmanager
def _lock(path, wait: float):
    """An exclusive lock on ``path`` (made 0600), waiting up to ``wait`` seconds; yields whether it is held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.05)
        yield True
    finally:
        os.close(fd)


def _ask(*message) -> tuple | None:
    """The running daemon's answer to one message (``ping``, ``stop``), or None when none answers."""
    sock_path = paths.socket_path()
    if not os.path.lexists(sock_path):
        return None
    paths.check_private(sock_path.parent)
    try:
        sock, _ = _connect(sock_path, restart=False)
    except DaemonError:
        return None
    if sock is None:
        return None
    with sock:
        try:
            wire.send(sock, *message)
            return wire.receive(sock)
        except (wire.Closed, OSError):
            return None


def ping() -> dict | None:
    """The running daemon's state (pid, uptime, models...), or None when none answers."""
    answer = _ask("ping")
    return answer[1] if answer is not None and answer[0] == "pong" else None


def start(idle: float = 600.0, models: int = 3, max_bytes: int | None = None, wait: float = 120.0) -> dict:
    """Start a daemon unless one of this build runs (two calls at once start one); its :func:`ping` info,
    with ``"started": True`` when this call started it."""
    import subprocess

    folder = paths.private_folder(make=True)
    with _lock(folder / paths.START_LOCK, wait=wait) as got:
        if not got:
            raise DaemonError(f"another campp is starting the daemon and has not finished (lock {folder}/"
                              f"{paths.START_LOCK})")
        info = ping()
        if info is not None:
            differs = paths.mismatch(paths.identity(), info["identity"])
            if differs is None:
                return {**info, "started": False}
            stop(wait=30)
        log = open(folder / paths.LOG, "ab")  # noqa: SIM115 - the daemon's, handed over
        command = [sys.executable, "-m", "campp_cli.daemon.server", "--idle", repr(float(idle)),
                   "--models", str(models)] + (["--max-bytes", str(max_bytes)] if max_bytes else [])
        with log:
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True,
                                    start_new_session=True)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            info = ping()
            if info is not None and info["pid"] == proc.pid:
                return {**info, "started": True}
            if proc.poll() is not None:
                raise DaemonError(f"the daemon exited as it started (exit {proc.returncode}): "
                                  f"{_last_line(folder / paths.LOG)}")
            time.sleep(0.05)
        proc.kill()
        raise DaemonError(f"the daemon did not answer within {wait:.0f} s (see {folder / paths.LOG})")


def stop(wait: float = 30.0) -> int | None:
    """Tell the daemon to stop (a run it is running is stopped); its pid, or None when none runs."""
    answer = _ask("stop")
    if answer is None or answer[0] != "stopping":
        return None
    pid = answer[1]
    deadline = time.monotonic() + wait
    while wait and time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    return pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (its parent has not reaped it) has exited
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def _last_line(path) -> str:
    try:
        lines = [line for line in open(path, errors="replace").read().splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "no log"
