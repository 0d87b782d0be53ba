"""The caller's side of the daemon: forward a command line to it, or say why it runs here; start, ask, stop.

:func:`forward` is the console script's first step (:mod:`campp_cli.cli.entry`), before click or anything
heavy is imported: a call to a daemon costs Python, a few standard modules and the socket.  It returns None
wherever the call is to run here: no daemon, ``--no-daemon`` or ``CAMPP_DAEMON=off``, ``--debug``
(tracebacks come from this process), a command the daemon does not serve (it says which), a daemon busy
with a long run, one that cannot be used (a stale socket, another build, another start-up environment: said
in one warning line), or a run that the daemon finds is not its to run (:func:`eligible`: it says so before
it has printed or written anything).  With ``CAMPP_DAEMON=auto`` a run here starts a daemon for the next
calls (:func:`planned`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import socket
import sys
import time

from ..errors import ABORTED, UsageError, aborted_line
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

#: In the daemon, while it runs a caller's command: the check each served command makes once its run is
#: planned (:meth:`campp_cli.daemon.server.Server.planned`).  None in every other process.
serving = None


class RunInCaller(BaseException):
    """Raised in the daemon when a caller's run is not the daemon's to run (nothing printed yet)."""


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
    """Whether an input or output of ``run`` names a descriptor other than stdin, stdout and stderr
    (``--jsonl /dev/fd/3``, ``>(gzip > x.gz)``): the daemon is given those three only."""
    from ..io.durable import names_descriptor

    values = [*vars(run.params).values(), *vars(run.planner).values()]
    names = [v for v in values if isinstance(v, (str, os.PathLike))]
    names += [f for v in values if isinstance(v, (tuple, list)) for f in v if isinstance(f, (str, os.PathLike))]
    for name in names:
        try:
            if names_descriptor(name) not in (None, 0, 1, 2):
                return True
        except (OSError, ValueError):
            continue
    return False


def planned(run, no_daemon: bool = False) -> None:
    """Each served command's step once its run is planned: in the daemon, its check (a run that is not its
    to run goes back to the caller: :class:`RunInCaller`); elsewhere, with ``CAMPP_DAEMON=auto``, a daemon
    started in the background for the next calls, unless one runs or is starting (this call runs here)."""
    if serving is not None:
        serving(run)
        return
    if mode(no_daemon) == "auto" and eligible(run):
        with contextlib.suppress(DaemonError, OSError):
            start(wait=0)


def forward(args: list[str]) -> int | None:
    """``campp ARGS`` run by the daemon: its exit code, or None to run it here."""
    try:
        how = mode()
    except UsageError:
        return None  # said by the call here
    if how == "off" or "--no-daemon" in args or "--debug" in args or os.environ.get("CAMPP_DEBUG", "") not in (
            "", "0"):
        return None
    command = next((a for a in args if not a.startswith("-")), None)
    if command is None or not _std_open() or any(_names_a_device(a) for a in args):
        return None
    try:
        sock_path = paths.socket_path()
        if not os.path.lexists(sock_path):
            return None
        paths.check_private(sock_path.parent)
        sock, pid = _connect(sock_path, restart=False)
    except DaemonError as exc:
        _warn(f"{exc.message}; running here")
        return None
    if sock is None:
        return None
    with sock:
        return _call(sock, pid, command, args)


def _std_open() -> bool:
    """Whether stdin, stdout and stderr are all open (a closed one would be the socket's number, and a run
    here says what a closed stdout means)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            return False
    return True


#: Names of the caller's own standard streams (the daemon is given those three) and of nothing at all.
_SHARED = ("/dev/stdin", "/dev/stdout", "/dev/stderr", "/dev/null")


def _names_a_device(arg: str) -> bool:
    """Whether an argument (``--opt=VALUE``, ``@LIST`` too) names a descriptor of this process, its terminal or
    another device (``<(...)`` is /dev/fd/63): such a name means something else in the daemon, so the call
    runs here."""
    for value in (arg, arg.split("=", 1)[-1]):
        value = value[1:] if value.startswith("@") else value
        if value.startswith(("/dev/", "/proc/")) and value not in _SHARED:
            return True
    return False


def _call(sock: socket.socket, pid: int, command: str, args: list[str]) -> int | None:
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        wire.send(sock, "hello", paths.identity(), command)
        answer = wire.receive(sock)
        if answer[0] == "local":
            return None  # a command it does not serve
        if answer[0] == "mismatch":
            _, kind, what, pid = answer
            if kind == "build":
                with contextlib.suppress(DaemonError):
                    stop(wait=0)
                _warn(f"the campp daemon (pid {pid}) runs {what}: told it to stop; running here")
            else:
                _warn(f"the campp daemon (pid {pid}) was started with {what}; running here ('campp daemon "
                      f"stop', then start it from this shell, to use one)")
            return None
        if answer[0] != "welcome":
            _warn(f"the campp daemon (pid {pid}) did not take the call; running here")
            return None
        _, images, pid = answer
        if images > WAIT_FOR_IMAGES:
            return None  # behind a long run: here, now
        wire.send(sock, "call", args, _context(), fds=[0, 1, 2])
        sock.settimeout(None)
    except (wire.Closed, OSError):
        _warn(f"the campp daemon (pid {pid}) did not take the call; running here")
        return None
    return _wait(sock, pid)


class _Signal(BaseException):
    def __init__(self, how: str):
        super().__init__(how)
        self.how = how


def _raise(how: str):
    def handler(signum, frame):
        raise _Signal(how)

    return handler


def _wait(sock: socket.socket, pid: int) -> int | None:
    """Wait for the call's end there: its exit code; None where it runs here instead (after
    :data:`WAIT_SECONDS` behind other calls, a daemon that stopped first, a run not the daemon's).

    Ctrl-C or SIGTERM here stops the call there as it would stop here (what it finished is reported, then
    ``campp: aborted ...`` and 130 or 143, said by the daemon); a second one, or one before the call has
    started, ends the wait at once (the connection closes: the daemon stops the call)."""
    previous = {}
    with contextlib.suppress(ValueError):  # not the main thread: leave the handlers alone
        for sig, how in ((signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated")):
            previous[sig] = signal.signal(sig, _raise(how))
    try:
        return _follow(sock, pid)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _follow(sock: socket.socket, pid: int) -> int | None:
    deadline = time.monotonic() + WAIT_SECONDS
    started = withdrawn = False
    stopped = None  # how the caller stopped it: "interrupted" or "terminated"
    while True:
        try:
            if not started and not withdrawn:
                ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
                if not ready:
                    wire.send(sock, "withdraw")
                    withdrawn = True
                    continue
            kind, *fields = wire.receive(sock)
        except _Signal as sig:
            if stopped is not None or not started:
                return _aborted(stopped or sig.how)
            stopped = sig.how
            try:
                wire.send(sock, "cancel", sig.how)
            except OSError:
                return _aborted(stopped)
            continue
        except (wire.Closed, OSError):
            kind, fields = "gone", []
        if kind == "start":
            started = True
        elif kind == "exit":
            return fields[0]
        elif kind in ("withdrawn", "here"):
            return None
        elif stopped is not None:  # it ended otherwise after the caller's signal
            return _aborted(stopped)
        elif not started:  # nothing of it ran there
            reason = f"could not take the call ({fields[0]})" if kind == "raised" else \
                "stopped before this call started"
            _warn(f"the campp daemon (pid {pid}) {reason}; running here")
            return None
        elif kind == "aborted":
            return _error(f"the campp daemon (pid {pid}) was stopped during this call; every file it wrote is "
                          f"whole: run it again")
        elif kind == "raised":
            return _error(f"the campp daemon (pid {pid}) failed this call ({fields[0]}; see "
                          f"{paths.folder() / paths.LOG}): run it again (--no-daemon runs it here)")
        else:
            return _error(f"the campp daemon (pid {pid}) ended during this call (see {paths.folder() / paths.LOG}); "
                          f"every file it wrote is whole: run it again (--no-daemon runs it here)")


def _context() -> dict:
    """What the call needs of this process besides its descriptors 0, 1 and 2 (sent with it, all open: see
    :func:`_std_open`): its folder, umask, environment, and the encoding Python gave each std stream."""
    mask = os.umask(0o022)
    os.umask(mask)
    streams = {fd: (stream.encoding, stream.errors)
               for fd, stream in ((0, sys.stdin), (1, sys.stdout), (2, sys.stderr)) if stream is not None}
    return {"cwd": os.getcwd(), "umask": mask, "env": dict(os.environ), "streams": streams}


def _warn(text: str) -> None:
    _say(f"campp: warning: {text}")


def _error(text: str) -> int:
    _say(f"campp: error: {text}")
    return DaemonError.exit_code


def _aborted(how: str) -> int:
    _say(aborted_line(how))
    return ABORTED[how]


def _say(line: str) -> None:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


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
    with ``"started": True`` when this call started it.  ``wait=0`` starts one in the background and returns
    at once (``{}`` where one runs or is starting: its serve lock is held)."""
    import subprocess

    folder = paths.private_folder(make=True)
    with _lock(folder / paths.START_LOCK, wait=wait) as got:
        if not got and not wait:
            return {}
        if not got:
            raise DaemonError(f"another campp is starting the daemon and has not finished (lock {folder}/"
                              f"{paths.START_LOCK})")
        if not wait and _serving(folder):
            return {}
        info = ping() if wait else None
        if info is not None:
            differs = paths.mismatch(paths.identity(), info["identity"])
            if differs is None:
                return {**info, "started": False}
            stop(wait=30)
        log = open(folder / paths.LOG, "ab")  # noqa: SIM115 - the daemon's, handed over
        command = [sys.executable, "-m", "campp_cli.daemon.server", "--idle", repr(float(idle)),
                   "--models", str(models)] + (["--max-bytes", str(max_bytes)] if max_bytes else [])
        env = {**os.environ, "CAMPP_DAEMON_DIR": str(folder)} if os.environ.get("CAMPP_DAEMON_DIR") else None
        with log:  # started in "/", with -P: no module of the caller's folder shadows one of Python's
            proc = subprocess.Popen([command[0], "-P", *command[1:]], stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=log, close_fds=True, start_new_session=True, cwd="/", env=env)
        if not wait:
            return {"pid": proc.pid, "started": True}
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
