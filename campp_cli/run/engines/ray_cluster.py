"""Joining a Ray cluster, or starting a local Ray that dies with this process, for the Ray engine; and
checking that every node sees the files of the run."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import ray
import ray.data

from ...errors import UsageError, first_line
from ...io.inputs import Job


def connect(address: str | None, actors: int | None = None) -> bool:
    """Join the cluster at ``address`` (or start a local Ray); True when this call started Ray.

    An address that cannot be reached is a :class:`UsageError` (``cannot reach Ray at ADDR: ...``).
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    quiet = os.environ.get("CAMPP_DEBUG", "") in ("", "0")
    if quiet:
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # C++ notes on stderr; must precede init
        for name in ("ray", "ray.data", "ray.train", "ray.tune"):
            logging.getLogger(name).setLevel(logging.ERROR)
    kwargs = dict(include_dashboard=False, log_to_driver=not quiet, logging_level=logging.ERROR,
                  configure_logging=True)
    if ray.is_initialized():
        if address is None:
            _quiet_data()
            return False
        ray.shutdown()  # joined elsewhere before (a notebook): the address given wins
    if address is None:
        cores = os.cpu_count() or 1
        _start_watchdog()  # before Ray's processes start: they all die with this process
        # Logical CPUs: the model actors take one each; decoding and writing tasks (half a CPU each) one per core.
        with _own_signal_handlers():
            # "local": a Ray of its own, even when another one runs on this machine (Ray would join that one)
            ray.init(address="local", num_cpus=(actors or 1) + max(1, cores // 2), **kwargs)
        _quiet_data()
        return True
    _check_reachable(address)
    try:
        with _own_signal_handlers():
            ray.init(address=address, **kwargs)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError...
        raise UsageError(f"cannot reach Ray at {address}: {first_line(exc)}") from None
    _quiet_data()
    return True


@contextlib.contextmanager
def _own_signal_handlers():
    """Keep this process's SIGTERM and SIGINT handlers across ``ray.init``, which sets one for SIGTERM that
    exits at once with status 15 (campp finishes the sets being written, reports, and exits 143)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)


#: Run as ``python -c WATCHDOG DRIVER_PID`` in a session of its own, its stdin a pipe from the driver.  Twice
#: a second it notes the driver's descendants that Ray started (pid and start time: a pid may be reused);
#: when the pipe closes (the driver ended, however: even SIGKILL closes it) it kills those still running,
#: and theirs.  Ray's agents (ray::DashboardAgent, ray::RuntimeEnvAgent) otherwise outlive a killed driver.
WATCHDOG = r"""
import os, select, signal, sys
driver, me = int(sys.argv[1]), os.getpid()

def table():
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as fh:
                    fields = fh.read().rsplit(b")", 1)[1].split()
                with open(f"/proc/{name}/cmdline", "rb") as fh:
                    command = fh.read(4096)
            except OSError:
                continue
            out[int(name)] = (int(fields[1]), fields[19], command)
    return out

def below(roots, procs):
    found, todo = set(), list(roots)
    while todo:
        parent = todo.pop()
        for pid, (ppid, _, _) in procs.items():
            if ppid == parent and pid not in found and pid != me:
                found.add(pid)
                todo.append(pid)
    return found

before = below([driver], table())
known = {}
while True:
    ready, _, _ = select.select([sys.stdin], [], [], 0.5)
    if ready and not os.read(sys.stdin.fileno(), 4096):
        break
    procs = table()
    for pid in below([driver], procs) - before:
        if b"ray" in procs[pid][2]:
            known.setdefault(pid, procs[pid][1])
procs = table()
alive = {pid for pid, start in known.items() if pid in procs and procs[pid][1] == start}
for pid in alive | below(alive, procs):
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
"""


_watchdog: subprocess.Popen | None = None


def _start_watchdog() -> None:
    global _watchdog
    if _watchdog is not None or not os.path.isdir("/proc"):
        return
    try:
        _watchdog = subprocess.Popen([sys.executable, "-c", WATCHDOG, str(os.getpid())], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                     close_fds=True)
    except OSError:
        _watchdog = None  # Ray still runs; only a killed driver may leave its agents behind


def _stop_watchdog() -> None:
    """After ``ray.shutdown``: the watchdog kills what Ray left running, and ends."""
    global _watchdog
    if _watchdog is None:
        return
    try:
        _watchdog.stdin.close()
        _watchdog.wait(timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        _watchdog.kill()
    _watchdog = None


def _check_reachable(address: str) -> None:
    """Fail fast (seconds, not Ray's minute of retries) when HOST:PORT does not answer."""
    if address in ("auto", "local"):
        return
    where = address.split("://", 1)[-1]
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"cannot reach Ray at {address}: give auto, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
            pass
    except OSError as exc:
        raise UsageError(f"cannot reach Ray at {address}: {exc.strerror or exc}") from None


def _quiet_data() -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # campp draws its own bar
    ctx.print_on_execution_start = False
    ctx.verbose_progress = False


def check_shared(cwd: str, jobs: list[Job], nodes: list[dict], also: list[str] = ()) -> None:
    """On a multi-node cluster: refuse when a node cannot see the working folder, the first input, the
    output folder (a marker written here must be visible there) or ``also`` (the weights)."""
    folders = sorted({str((job.root or job.out_dir).absolute()) for job in jobs if job.error is None})
    marker_name = f".campp-shared-{uuid.uuid4().hex}"
    markers = []
    try:
        for folder in folders:
            Path(folder).mkdir(parents=True, exist_ok=True)
            marker = Path(folder) / marker_name
            marker.touch()
            markers.append(str(marker))
        first = next((str(Path(job.source).absolute()) for job in jobs if job.error is None), None)
        wanted = [cwd] + ([first] if first else []) + list(also) + markers
        missing = missing_on_nodes(wanted, nodes)
    finally:
        for marker in markers:
            Path(marker).unlink(missing_ok=True)
    for node, paths in missing.items():
        what = Path(paths[0])
        shown = what.parent if what.name == marker_name else what
        raise UsageError(f"Ray node {node} does not see {shown}: on a cluster, inputs and the output folder "
                         f"must be on a filesystem every node sees (NFS, a shared mount)")


def missing_on_nodes(paths: list[str], nodes: list[dict]) -> dict[str, list[str]]:
    """{node address: the paths it does not see}, asking one task pinned on each node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0)(_missing)
    asks = {f'{node.get("NodeManagerAddress", "?")} ({node["NodeID"][:8]})': probe.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(paths)
        for node in nodes}
    found = {name: ray.get(ref, timeout=120) for name, ref in asks.items()}
    return {name: gone for name, gone in found.items() if gone}


def _missing(paths: list[str]) -> list[str]:
    return [p for p in paths if not os.path.exists(p)]
