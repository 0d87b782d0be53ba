"""The daemon: ``python -m campp_cli.daemon.server`` (``campp daemon start`` starts it, detached).

One process per user, holding :data:`~campp_cli.daemon.paths.SERVE_LOCK` for its life.  Its main thread runs
the callers' command lines one at a time, each through :func:`campp_cli.cli.main.run` as the caller's own
process would (signals reach the main thread: a caller's Ctrl-C is raised there as it would be in the
caller); a thread accepts connections and one thread per connection reads its messages.  A command runs in
the caller's folder, umask and environment, with the caller's stdin, stdout and stderr (descriptors 0 and 1
are the caller's, so ``--json /dev/stdout`` writes where it would; descriptor 2 is /dev/null during a call,
as the console script makes it, and Python's stderr is the caller's).  The models stay loaded between calls
(:func:`~campp_cli.models.loading.keep_models`).  After ``--idle`` seconds without a call the daemon exits,
freeing its memory (a GPU's too).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import queue
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

from ..run.signals import forget_held
from . import client, paths, wire


class Cancelled(BaseException):
    """The daemon is stopping: the call it runs is stopped (the caller is told so)."""


@dataclass
class Call:
    """One caller's command line, from its arrival to its end."""

    conn: socket.socket
    args: list
    context: dict
    fds: list[int]
    images: int = 1  # until its run is planned
    cancelled: bool = False
    how: str | None = None  # the caller's signal ("interrupted", "terminated"); None: the daemon stops
    gone: bool = False  # the caller's connection is closed: nothing more is sent
    interrupted: bool = False  # the cancel has been raised in its run
    send_lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, *message) -> None:
        if self.gone:
            return
        try:
            with self.send_lock:
                wire.send(self.conn, *message)
        except OSError:
            self.gone = True

    def release(self) -> None:
        """Close the caller's descriptors (once): a caller's stdout must not stay open in the daemon, or its
        reader (a pipe, a test) waits for an end of file forever."""
        with self.send_lock:
            fds, self.fds = self.fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


class Server:
    def __init__(self, idle: float, models: int, max_bytes: int | None):
        self.idle = idle
        self.models = models
        self.max_bytes = max_bytes
        self.calls: queue.Queue = queue.Queue()
        self.running: Call | None = None
        self.waiting: list[Call] = []
        self.arriving = 0  # welcomed connections whose call is not queued yet: the daemon does not idle out
        self.lock = threading.Lock()
        self.stopping = False
        self.started = time.time()
        self.served = 0
        self.last = time.monotonic()
        self.main_thread = threading.main_thread().ident
        self.ours = paths.identity()
        self.serves: list[str] = []

    # --- the main thread -----------------------------------------------------------------------------

    def serve(self) -> int:
        folder = paths.private_folder(make=True)
        lock = open(folder / paths.SERVE_LOCK, "a+")  # noqa: SIM115 - held for the daemon's life
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            print("campp daemon: another daemon serves this folder", file=sys.stderr)
            return 3
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        self._warm_up()
        os.chdir("/")  # hold no caller's folder between calls (each call runs in its own)
        listener = self._bind(folder / paths.SOCKET)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the caller's
        from ..run.signals import deferrable

        signal.signal(signal.SIGUSR1, deferrable(self._on_cancel))
        threading.Thread(target=self._accept, args=(listener,), name="campp-accept", daemon=True).start()
        try:
            while not self.stopping:
                try:
                    call = self.calls.get(timeout=max(0.05, min(1.0, self.last + self.idle - time.monotonic())))
                except queue.Empty:
                    with self.lock:
                        idle = not self.arriving and self.calls.empty()
                    if idle and time.monotonic() - self.last >= self.idle:
                        break
                    continue
                if call is None:
                    break
                try:
                    self._execute(call)
                except Cancelled:  # a cancel that fell outside the run: that call is over, the daemon is not
                    call.send("aborted")
                self.last = time.monotonic()
        finally:
            self._unbind(listener, folder / paths.SOCKET)
            for call in self._drain_queue():
                call.release()
                call.send("gone", "the daemon stopped before your call started")
        return 0

    def _warm_up(self) -> None:
        """What every call needs, imported once: torch, the CLI, the stages, the model sources."""
        import torch  # noqa: F401

        from ..cli.main import SUBCOMMANDS
        from ..commands import classify, evaluate  # noqa: F401
        from ..models import loading
        from ..run.engines import local  # noqa: F401

        loading.keep_models(self.models, self.max_bytes)
        self.serves = [name for name in SUBCOMMANDS.list() if SUBCOMMANDS.get(name).served]

    def _bind(self, path) -> socket.socket:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a stale one: the serve lock says no daemon holds it
        old = os.umask(0o177)
        try:
            listener.bind(str(path))
        finally:
            os.umask(old)
        listener.listen(16)
        self.socket_inode = os.stat(path).st_ino
        return listener

    def _unbind(self, listener: socket.socket, path) -> None:
        """Close the socket; remove its name unless it is no longer ours."""
        listener.close()
        try:
            if os.stat(path).st_ino == self.socket_inode:
                os.unlink(path)
        except OSError:
            pass

    def _drain_queue(self) -> list[Call]:
        drained = []
        while True:
            try:
                call = self.calls.get_nowait()
            except queue.Empty:
                return drained
            if call is not None:
                drained.append(call)

    def _execute(self, call: Call) -> None:
        from ..cli.main import Terminated, run

        with self.lock:
            if call in self.waiting:
                self.waiting.remove(call)
            if call.cancelled or call.gone:
                call.release()
                return
            self.running = call
        try:
            call.send("start")
            with _caller_context(call):
                client.serving = self.planned
                try:
                    outcome = ("exit", run(call.args))
                finally:
                    client.serving = None
                    with self.lock:
                        self.running = None  # from here on a cancel interrupts nothing
        except client.RunInCaller:
            outcome = ("here",)
            self.served -= 1  # it runs in its caller
        except (Cancelled, KeyboardInterrupt, Terminated):  # stopped outside the command's own handling
            outcome = ("aborted",)
        except BaseException as exc:  # noqa: BLE001 - the call fails, the daemon goes on
            outcome = ("raised", f"{type(exc).__name__}: {exc}"[:300])
        finally:
            with self.lock:
                self.running = None
            self.served += 1
            call.release()
            forget_held()
        call.send(*outcome)

    def planned(self, run) -> None:
        """The check of a served command's planned run (:func:`campp_cli.daemon.client.planned`): one that is
        not the daemon's to run goes back to its caller, before anything is printed or written."""
        if not client.eligible(run):
            raise client.RunInCaller()
        call = self.running
        if call is not None:
            call.images = len(getattr(run, "jobs", ()))

    def _on_cancel(self, signum, frame) -> None:
        """SIGUSR1 (deferrable: after the result being reported): the running call's cancel, once, raised as
        the caller's signal would be raised in the caller (Ctrl-C, SIGTERM), or as the daemon's stop."""
        from ..cli.main import Terminated

        call = self.running
        if call is not None and call.cancelled and not call.interrupted:
            call.interrupted = True
            raise {"interrupted": KeyboardInterrupt, "terminated": Terminated}.get(call.how, Cancelled)()

    def _on_sigterm(self, signum, frame) -> None:
        # Not here: the main thread may hold self.lock right now (a plain Lock would deadlock).
        threading.Thread(target=self.stop, name="campp-stop", daemon=True).start()

    def stop(self) -> None:
        self.stopping = True
        self.calls.put(None)
        with self.lock:
            running = self.running
        if running is not None:
            self.cancel(running)

    def cancel(self, call: Call, how: str | None = None) -> None:
        with self.lock:
            if not call.cancelled:
                call.how = how
            call.cancelled = True
            running = self.running is call
            queued = call in self.waiting
            if queued:
                self.waiting.remove(call)
        if queued:  # it never started: said at once (the main thread will skip it)
            call.release()
            call.send("aborted")
            return
        if running and threading.get_ident() != self.main_thread:
            signal.pthread_kill(self.main_thread, signal.SIGUSR1)
        elif running:
            os.kill(os.getpid(), signal.SIGUSR1)

    # --- the connections -------------------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        while not self.stopping:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), name="campp-conn", daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        """One caller: ``hello`` (its identity), then a ``call`` (the run, with its descriptors), its answers;
        or a ``ping`` or a ``stop``."""
        call = None
        try:
            uid = wire.peer_uid(conn)
            if uid is not None and uid != os.getuid():
                return  # another user: not a word, not a byte read
            kind, *fields = wire.receive(conn)
            if kind == "ping":
                wire.send(conn, "pong", self.info())
            elif kind == "stop":
                wire.send(conn, "stopping", os.getpid())
                self.stop()
            elif kind == "hello":  # its identity and its command
                if len(fields) > 1 and fields[1] not in self.serves:
                    wire.send(conn, "local", os.getpid())  # not a command it serves: the caller's to run
                    return
                differs = paths.mismatch(self.ours, fields[0])
                if differs is not None:
                    wire.send(conn, "mismatch", differs[0], differs[1], os.getpid())
                    return
                with self.lock:
                    ahead = ([self.running] if self.running is not None else []) + list(self.waiting)
                    self.arriving += 1
                try:
                    wire.send(conn, "welcome", sum(c.images for c in ahead), os.getpid())
                    kind, args, context, fds = wire.receive(conn, fds=3)
                    if kind != "call" or len(fds) != 3:
                        for fd in fds:
                            os.close(fd)
                        return
                    call = Call(conn, list(args), context, fds)
                    with self.lock:
                        self.waiting.append(call)
                    self.calls.put(call)
                finally:
                    with self.lock:
                        self.arriving -= 1
                self._follow(call)
        except (wire.Closed, OSError):
            pass
        except Exception as exc:  # noqa: BLE001 - a message it cannot read: that caller fails, not the daemon
            with contextlib.suppress(OSError):
                wire.send(conn, "raised", f"{type(exc).__name__}: {exc}"[:300])
        finally:
            if call is not None:
                self._left(call)
            with contextlib.suppress(OSError):
                conn.close()

    def _follow(self, call: Call) -> None:
        """The caller's cancel (its Ctrl-C or SIGTERM), its withdrawal, or its end."""
        while True:
            try:
                kind, *fields = wire.receive(call.conn)
            except (wire.Closed, OSError):
                return
            if kind == "cancel":
                self.cancel(call, fields[0] if fields else None)
            elif kind == "withdraw":  # waited too long: it runs in its own process, unless it has started
                with self.lock:
                    withdrawn = call in self.waiting
                    if withdrawn:
                        self.waiting.remove(call)
                        call.cancelled = True
                if withdrawn:
                    call.release()
                    call.send("withdrawn")

    def _left(self, call: Call) -> None:
        """Its connection ended: nothing more is sent; a command still going stops (a caller that left or
        died), as a Ctrl-C would stop it."""
        call.gone = True
        if not call.cancelled:
            self.cancel(call, "interrupted")

    def info(self) -> dict:
        from ..models.loading import kept_models
        from ..models.weights import tensor_bytes

        with self.lock:
            running = self.running
            waiting = len(self.waiting)
        return {
            "pid": os.getpid(), "identity": self.ours, "uptime": time.time() - self.started,
            "idle_after": self.idle, "idle_for": 0.0 if running else time.monotonic() - self.last,
            "served": self.served, "running": running.images if running else None, "waiting": waiting,
            "models": [{"arch": c.arch, "layer": c.layer, "device": str(c.device), "weights": c.weights_source,
                        "bytes": tensor_bytes(c.module)} for c in kept_models()],
            "rss": _rss(), "socket": str(paths.socket_path()),
        }


@contextlib.contextmanager
def _caller_context(call: Call):
    """The caller's folder, umask, environment, stdin, stdout and stderr for its command; the daemon's own
    after it (restored however the command ends, even by a cancel that lands while this is being set up).

    Python's streams are made as Python makes them for the caller: stdout line-buffered on a terminal,
    stderr always, each with the caller's encoding; descriptor 2 is /dev/null meanwhile (C libraries' chatter
    goes nowhere, as the console script makes it)."""
    ctx = call.context
    given = call.fds  # the caller's descriptors 0, 1 and 2
    saved_env = dict(os.environ)
    saved_dir = os.getcwd()
    saved_streams = (sys.stdin, sys.stdout, sys.stderr)
    saved_fds: dict[int, int] = {}
    opened: list = []
    old_mask = None
    try:
        for target in (0, 1, 2):
            saved_fds[target] = os.dup(target)
        old_mask = os.umask(ctx["umask"])
        os.chdir(ctx["cwd"])
        os.environ.clear()
        os.environ.update(ctx["env"])
        time.tzset()  # the caller's TZ, for the report's times
        null = os.open(os.devnull, os.O_RDWR)
        try:
            for target in (0, 1, 2):
                os.dup2(given[target] if target != 2 else null, target)
        finally:
            os.close(null)
        streams = ctx["streams"]

        def stream(fd: int, mode: str, target: int, **kw):
            encoding, errors = streams.get(target, ("utf-8", "strict" if target != 2 else "backslashreplace"))
            opened.append(open(fd, mode, encoding=encoding, errors=errors, closefd=False, **kw))  # noqa: SIM115
            return opened[-1]

        sys.stdin = stream(0, "r", 0)
        sys.stdout = stream(1, "w", 1, buffering=1 if os.isatty(1) else -1)
        sys.stderr = stream(given[2], "w", 2, buffering=1)
        yield
    finally:
        for f in opened:
            with contextlib.suppress(Exception):
                f.flush()
        sys.stdin, sys.stdout, sys.stderr = saved_streams
        for target, fd in saved_fds.items():
            os.dup2(fd, target)
            os.close(fd)
        if old_mask is not None:
            os.umask(old_mask)
        os.environ.clear()
        os.environ.update(saved_env)
        time.tzset()
        os.chdir(saved_dir)


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m campp_cli.daemon.server")
    parser.add_argument("--idle", type=float, default=600.0)
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--max-bytes", type=int, default=None)
    args = parser.parse_args(argv)
    import warnings

    warnings.simplefilter("ignore")
    return Server(args.idle, args.models, args.max_bytes).serve()


if __name__ == "__main__":
    sys.exit(main())
