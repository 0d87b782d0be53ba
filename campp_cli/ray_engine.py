"""The Ray engine: the stages of :mod:`campp_cli.stages` on a Ray cluster, through Ray Data.

What runs where:

* the driver (the machine that runs ``campp``): planning, ``--skip-existing``,
  recovery of half-written sets, the progress bar, per-image lines, ``--jsonl``
  and the summary, with results put back in input order;
* Ray Data CPU tasks, on any node: :func:`~campp_cli.stages.decode` (read and
  crop) and :func:`~campp_cli.stages.finish` (render and write, atomically);
* an actor pool (``actors``, each with ``gpus_per_actor`` GPUs): the model,
  loaded once per actor with campp's own loader, running
  :func:`~campp_cli.stages.explain_rows` on batches.

Rows cross processes pickled, as bytes: jobs, decoded images, explained maps
and results are the stages' own dataclasses.  Paths are the driver's: every
task works in the driver's working folder, so inputs and the output folder must
be on a filesystem that every node sees (checked on a multi-node cluster).
A bad image is a failed row; a worker or actor that dies is retried by Ray;
an error that ends a local run (a broken model) ends this one too.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import ray
import ray.data
from ray.experimental import internal_kv

from . import stages
from .errors import CamppError, UsageError
from .io.inputs import Job

if TYPE_CHECKING:
    from .models import Classifier

#: A test hook: when this names a folder holding a file ``armed``, the first finishing task to rename it to
#: ``fired`` kills its own worker process, as a crashed node would (tests/test_ray.py).
DIE_ONCE_ENV = "CAMPP_TEST_RAY_DIE_ONCE"


def run(jobs: list[Job], clf: Classifier, options: stages.Options | None = None,
        on_result: Callable[[stages.Result], None] | None = None, command: stages.Command | None = None, *,
        ray_address: str | None = None, actors: int | None = None,
        gpus_per_actor: float | None = None) -> stages.Summary:
    """Explain every job on Ray; the same results, files and order as :func:`campp_cli.pipeline.run`.

    ``ray_address``: a running cluster (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``); default
    ``RAY_ADDRESS`` if set, else the Ray this process already joined, else a local Ray started for
    the run and stopped after it.  ``actors``: model actors (default: one per GPU, or one per node
    without GPUs).  ``gpus_per_actor``: default 1 when the cluster has GPUs, else 0.
    """
    options, command = stages.prepare(clf, options, command)
    if actors is not None and actors < 1:
        raise UsageError(f"--actors {actors}: give at least 1")
    if gpus_per_actor is not None and gpus_per_actor < 0:
        raise UsageError(f"--gpus-per-actor {gpus_per_actor}: give 0 or more")
    tally = stages.Tally(on_result)
    started = connect(ray_address, actors)
    try:
        start = time.perf_counter()
        todo = stages.begin(jobs, command, tally)
        if todo:
            _drive(todo, clf, options, command, tally, actors, gpus_per_actor)
        tally.summary.seconds = time.perf_counter() - start
    finally:
        if started:
            ray.shutdown()
            _stop_watchdog()
    return tally.summary


# --- connecting ----------------------------------------------------------------------------------------

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
        raise UsageError(f"cannot reach Ray at {address}: {_first_line(exc)}") from None
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


# --- the watchdog: a local Ray dies with the process that started it ------------------------------------

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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- the dataset -----------------------------------------------------------------------------------------

def _drive(todo: list[Job], clf: Classifier, options: stages.Options, command: stages.Command,
           tally: stages.Tally, actors: int | None, gpus_per_actor: float | None) -> None:
    resources = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    gpus = resources.get("GPU", 0)
    if gpus_per_actor is None:
        gpus_per_actor = 1 if gpus > 0 else 0
    if actors is None:
        actors = max(1, int(gpus // gpus_per_actor)) if gpus_per_actor > 0 else max(1, len(nodes))
    if gpus_per_actor > 0 and actors * gpus_per_actor > gpus:
        raise UsageError(f"--actors {actors} x --gpus-per-actor {gpus_per_actor:g} needs {actors * gpus_per_actor:g} "
                         f"GPUs; the cluster has {gpus:g}")
    cwd = os.getcwd()
    if clf.recipe is None:
        raise UsageError("--engine ray rebuilds the model on its workers from load_classifier's arguments; "
                         "this classifier was not made by load_classifier")
    recipe = dict(clf.recipe)
    if len(nodes) > 1:
        code = [recipe["model"].rpartition(":")[0]] if isinstance(recipe["model"], str) else []
        code = [str(Path(c).absolute()) for c in code if c.endswith(".py")]
        check_shared(cwd, todo, nodes, also=[w for w in [recipe["weights"]] if w] + code)
    on_passes = options.on_passes
    shipped = _shippable(options)
    command = _shippable_command(command, shipped)
    batch_size = options.batch_size or stages.default_batch_size(_device(gpus_per_actor))
    threads = max(1, (os.cpu_count() or 1) * max(1, len(nodes)) // actors) if gpus_per_actor == 0 else None
    model = dict(recipe=recipe, device=_device(gpus_per_actor), threads=threads)

    items = [{"i": i, "job": pickle.dumps(job)} for i, job in enumerate(todo)]
    blocks = max(1, min(len(items), math.ceil(len(items) / batch_size)))
    stop = f"campp-stop-{uuid.uuid4().hex}"  # set when this run is interrupted (see _stopping)
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    # Different resources keep Ray Data from fusing the CPU tasks into the actors.
    ds = ds.map(_decode, fn_kwargs=dict(cwd=cwd, size=clf.input_size, options=shipped, draws=command.draws,
                                   preprocessing=clf.preprocessing, stop=stop),
                num_cpus=0.5)
    ds = ds.map_batches(_Explainer, batch_size=batch_size, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=actors),
                        fn_constructor_kwargs=dict(cwd=cwd, model=model, options=shipped, command=command, stop=stop),
                        num_cpus=1, num_gpus=gpus_per_actor)  # Ray Data restarts a dead actor, retries its batch
    ds = ds.map(_finish, fn_kwargs=dict(cwd=cwd, categories=clf.categories, command=command, stop=stop),
                num_cpus=0.5)
    # Tasks whose worker dies are retried by Ray; sets are written atomically, so a retry never sees half of one.

    waiting: dict[int, dict] = {}
    following = 0

    def take(row: dict) -> None:
        fatal = row.get("fatal")
        if fatal is not None and len(fatal):
            raise pickle.loads(fatal)
        if on_passes is not None and row["passes"]:
            on_passes(int(row["passes"]))
        if row["result"] != CANCELLED:
            waiting[int(row["i"])] = row

    rows = _Rows(ds)
    try:
        for row in rows:
            take(row)
            while following in waiting:  # input order: report the longest finished prefix
                tally.record(pickle.loads(waiting.pop(following)["result"]))
                following += 1
    except Exception:
        rows.close()
        raise
    except BaseException:
        # Interrupted (SIGINT, SIGTERM): as the local engine, the sets being written are finished and every
        # image done is reported.  The stages see the stop and pass the rest through undone, so the rows
        # still in flight come back soon; a second signal ends the wait.
        internal_kv._internal_kv_put(stop, b"1")
        try:
            for row in rows:
                take(row)
        finally:
            rows.close()
            with contextlib.suppress(Exception):
                internal_kv._internal_kv_del(stop)
            for i in sorted(waiting):
                tally.record(pickle.loads(waiting.pop(i)["result"]))
        raise


#: The row of an image that an interrupted run did not do.
CANCELLED = b"campp-cancelled"


class _Rows:
    """The dataset's rows, pulled by a thread of their own: a signal then interrupts the driver's wait for
    the next row, never Ray Data's iterator, which goes on after it (to finish what is in flight)."""

    def __init__(self, ds):
        self._queue: queue.Queue = queue.Queue(maxsize=256)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._pull, args=(ds,), name="campp-ray-rows", daemon=True)
        self._thread.start()

    def _pull(self, ds) -> None:
        try:
            for row in ds.iter_rows():
                while not self._closed.is_set():
                    try:
                        self._queue.put(("row", row), timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if self._closed.is_set():
                    return
            self._queue.put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the driver's thread
            self._queue.put(("error", exc))

    def __iter__(self):
        while True:
            kind, value = self._queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value

    def close(self) -> None:
        self._closed.set()


#: How long a task trusts its last look at the stop flag (seconds): the flag costs a call to Ray's store.
_STOP_TTL = 0.5
_stop_seen: dict[str, tuple[float, bool]] = {}


def _stopping(stop: str) -> bool:
    """Whether the driver has asked the run ``stop`` to stop (looked up at most every _STOP_TTL seconds)."""
    now = time.monotonic()
    seen = _stop_seen.get(stop)
    if seen is not None and (seen[1] or now - seen[0] < _STOP_TTL):
        return seen[1]
    try:
        value = bool(internal_kv._internal_kv_exists(stop))
    except Exception:  # noqa: BLE001 - no answer: go on working
        value = False
    _stop_seen[stop] = (now, value)
    return value


def _device(gpus_per_actor: float) -> str:
    return "cuda" if gpus_per_actor > 0 else "cpu"


def _shippable(options: stages.Options) -> stages.Options:
    """The options without what cannot leave this process (the progress callback)."""
    copy = stages.Options(**vars(options))
    copy.on_passes = None
    return copy


def _shippable_command(command: stages.Command, shipped: stages.Options) -> stages.Command:
    """The command with the shippable options in place of its own (whose progress callback holds this
    process's stderr)."""
    if getattr(command, "options", None) is None:
        return command
    out = object.__new__(type(command))
    out.__dict__.update(vars(command), options=shipped)
    return out


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


# --- the stages, as Ray Data functions -----------------------------------------------------------------

def _enter(cwd: str) -> None:
    """Work in the driver's folder, so relative paths mean what they meant there."""
    if os.getcwd() != cwd:
        try:
            os.chdir(cwd)
        except OSError as exc:
            raise CamppError(f"Ray node {ray.util.get_node_ip_address()} cannot enter the working folder "
                             f"{cwd} ({exc.strerror or exc}): use a filesystem every node sees") from None


def _decode(row: dict, cwd: str, size: int, options: stages.Options, draws: bool, preprocessing,
            stop: str = "") -> dict:
    """CPU task: a job -> a DecodedRow, or the image's failed Result (CANCELLED once the run is stopping)."""
    if stop and _stopping(stop):
        return {"i": row["i"], "row": CANCELLED}
    _enter(cwd)
    job: Job = pickle.loads(row["job"])
    out = stages.guarded(stages.decode, job.source, job, size, options, draws, None, preprocessing)
    return {"i": row["i"], "row": pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)}


class _Explainer:
    """Actor: the model, loaded once with campp's loader; batches of DecodedRows -> ExplainedRows."""

    def __init__(self, cwd: str, model: dict, options: stages.Options, command: stages.Command, stop: str = ""):
        import torch

        from .models import load_classifier

        _enter(cwd)
        if model["threads"]:
            torch.set_num_threads(model["threads"])
        self.options = options
        self.command = command
        self.stop = stop
        self.fatal: bytes | None = None
        self.passes = 0
        self.options.on_passes = self._count
        try:
            self.clf = load_classifier(**model["recipe"], device=model["device"], download=False)
        except CamppError as exc:  # reported by the driver as the run's one line
            self.fatal = pickle.dumps(exc)
        self.node = ray.get_runtime_context().get_node_id()

    def _count(self, n: int) -> None:
        self.passes += n

    def __call__(self, batch: dict) -> dict:
        n = len(batch["row"])
        if self.fatal is not None:
            return _fatal(batch, self.fatal)
        if self.stop and _stopping(self.stop):  # the run is stopping: no model pass, the images pass undone
            return {"i": batch["i"], "row": _objects([CANCELLED] * n), "passes": np.zeros(n, int),
                    "fatal": _objects([b""] * n)}
        rows = [None if b == CANCELLED else pickle.loads(b) for b in batch["row"]]  # None: cancelled
        decoded = [r for r in rows if r is not None and not isinstance(r, stages.Result)]
        self.passes = 0
        try:
            explained = iter(stages.explain_rows(decoded, self.clf, self.options, self.command) if decoded else ())
        except CamppError as exc:  # a broken model ends the run, as with the local engine
            return _fatal(batch, pickle.dumps(exc))
        out = [r if r is None or isinstance(r, stages.Result) else next(explained) for r in rows]
        for r in out:
            if r is not None and not isinstance(r, stages.Result):
                r.node = self.node
        passes = [self.passes] + [0] * (n - 1)
        return {"i": batch["i"], "row": _objects(CANCELLED if r is None else
                                                 pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in out),
                "passes": np.array(passes), "fatal": _objects([b""] * n)}


def _fatal(batch: dict, error: bytes) -> dict:
    """The batch, marked with the error that ends the run (the driver raises it)."""
    n = len(batch["i"])
    return {"i": batch["i"], "row": batch["row"], "passes": np.zeros(n, int), "fatal": _objects([error] * n)}


def _objects(items) -> np.ndarray:
    """Bytes as an object array (NumPy's own bytes type would pad them to the longest)."""
    items = list(items)
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _finish(row: dict, cwd: str, categories: list[str], command: stages.Command, stop: str = "") -> dict:
    """CPU task: an ExplainedRow -> its files written and its Result (a failed Result passes through; once the
    run is stopping, an image not yet written is CANCELLED)."""
    fatal = row.get("fatal")
    if row["row"] == CANCELLED or (stop and _stopping(stop) and not (fatal is not None and len(fatal))):
        return {"i": row["i"], "result": CANCELLED, "passes": row["passes"],
                "fatal": fatal if fatal is not None else b""}
    _enter(cwd)
    item = pickle.loads(row["row"])
    if isinstance(item, stages.Result) or (fatal is not None and len(fatal)):
        result = item
    else:
        _die_once_for_tests()
        result = stages.guarded(stages.finish, item.job.source, item, categories, command)
        result.extra["nodes"] = sorted({getattr(item, "node", ""), ray.get_runtime_context().get_node_id()})
    return {"i": row["i"], "result": pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL),
            "passes": row["passes"], "fatal": fatal if fatal is not None else b""}


def _die_once_for_tests() -> None:
    folder = os.environ.get(DIE_ONCE_ENV)
    if folder:
        try:
            os.rename(os.path.join(folder, "armed"), os.path.join(folder, "fired"))
        except OSError:
            return
        os._exit(1)
