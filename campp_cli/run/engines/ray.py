"""The Ray engine: the stages of :mod:`campp_cli.run.stages` on a Ray cluster, through Ray Data.

What runs where:

* the driver (the machine that runs ``campp``): planning, ``--skip-existing``,
  recovery of half-written sets, the progress bar, per-image lines, ``--jsonl``
  and the summary, with results put back in input order;
* Ray Data CPU tasks, on any node: :func:`~campp_cli.run.stages.decode` (read and
  crop) and :func:`~campp_cli.run.stages.finish` (render and write, atomically);
* an actor pool (``actors``, each with ``gpus_per_actor`` GPUs): the model,
  loaded once per actor with campp's own loader, running
  :func:`~campp_cli.run.stages.explain_rows` on batches.

Rows cross processes pickled, as bytes: jobs, decoded images, explained maps
and results are the stages' own dataclasses.  Paths are the driver's: every
task works in the driver's working folder, so inputs and the output folder must
be on a filesystem that every node sees (checked on a multi-node cluster).
A bad image is a failed row; a worker or actor that dies is retried by Ray;
an error that ends a local run (a broken model) ends this one too.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import queue
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import ray
import ray.data
from ray.experimental import internal_kv

from ...errors import UsageError
from ...io.inputs import Job
from ...models.devices import default_batch_size
from .. import stages
from ..options import Options, Result, Summary
from ..signals import deferred
from . import ray_tasks
from .ray_cluster import _stop_watchdog, check_shared, connect, missing_on_nodes  # noqa: F401 (tests patch them)
from .shipping import CANCELLED, InOrder

if TYPE_CHECKING:
    from ...models.loading import Classifier


def run(jobs: list[Job], clf: Classifier, options: Options | None = None,
        on_result: Callable[[Result], None] | None = None, command: stages.Command | None = None,
        on_passes: Callable[[int], None] | None = None, *, ray_address: str | None = None,
        actors: int | None = None, gpus_per_actor: float | None = None) -> Summary:
    """Explain every job on Ray; the same results, files and order as the local engine.

    ``ray_address``: a running cluster (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``); default
    ``RAY_ADDRESS`` if set, else the Ray this process already joined, else a local Ray started for
    the run and stopped after it.  ``actors``: model actors (default: one per GPU, or one per node
    without GPUs).  ``gpus_per_actor``: default 1 when the cluster has GPUs, else 0.
    """
    options, command = stages.prepare(clf, options, command)
    if actors is not None and actors < 1:
        raise UsageError("give at least 1", param="actors", value=actors)
    if gpus_per_actor is not None and gpus_per_actor < 0:
        raise UsageError("give 0 or more", param="gpus_per_actor", value=gpus_per_actor)
    tally = stages.Tally(on_result)
    started = connect(ray_address, actors)
    try:
        start = time.perf_counter()
        todo = stages.begin(jobs, command, tally)
        if todo:
            _drive(todo, clf, options, command, tally, on_passes, _placement(actors, gpus_per_actor))
        tally.summary.seconds = time.perf_counter() - start
    finally:
        if started:
            ray.shutdown()
            _stop_watchdog()
    return tally.summary


def _placement(actors: int | None, gpus_per_actor: float | None) -> tuple[int, float]:
    """(actors, GPUs per actor): the defaults for this cluster, checked against what it has."""
    gpus = ray.cluster_resources().get("GPU", 0)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if gpus_per_actor is None:
        gpus_per_actor = 1 if gpus > 0 else 0
    if actors is None:
        actors = max(1, int(gpus // gpus_per_actor)) if gpus_per_actor > 0 else max(1, len(nodes))
    if gpus_per_actor > 0 and actors * gpus_per_actor > gpus:
        raise UsageError(f"{{actors}} {actors} x {{gpus_per_actor}} {gpus_per_actor:g} needs "
                         f"{actors * gpus_per_actor:g} GPUs; the cluster has {gpus:g}", param="actors", value=actors,
                         also=("gpus_per_actor",))
    return actors, gpus_per_actor


def _model_recipe(clf: Classifier, todo: list[Job], cwd: str) -> dict:
    """load_classifier's arguments, for the actors; on several nodes, every node must see the files."""
    if clf.recipe is None:
        raise UsageError("{engine} ray rebuilds the model on its workers from load_classifier's arguments; "
                         "this classifier was not made by load_classifier", param="engine", value="ray")
    recipe = dict(clf.recipe)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1:
        code = [recipe["model"].rpartition(":")[0]] if isinstance(recipe["model"], str) else []
        code = [str(Path(c).absolute()) for c in code if c.endswith(".py")]
        check_shared(cwd, todo, nodes, also=[w for w in [recipe["weights"]] if w] + code)
    return recipe


def _dataset(todo: list[Job], clf: Classifier, options: Options, command: stages.Command,
             placement: tuple[int, float], stop: str):
    """The run as a Ray dataset: decoding tasks -> model actors -> finishing tasks."""
    actors, gpus_per_actor = placement
    cwd = os.getcwd()
    device = "cuda" if gpus_per_actor > 0 else "cpu"
    nodes = max(1, len([n for n in ray.nodes() if n.get("Alive")]))
    threads = max(1, (os.cpu_count() or 1) * nodes // actors) if gpus_per_actor == 0 else None
    model = dict(recipe=_model_recipe(clf, todo, cwd), device=device, threads=threads)
    batch_size = options.batch_size or default_batch_size(device)
    items = [{"i": i, "job": pickle.dumps(job)} for i, job in enumerate(todo)]
    blocks = max(1, min(len(items), math.ceil(len(items) / batch_size)))
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    # Different resources keep Ray Data from fusing the CPU tasks into the actors.
    ds = ds.map(ray_tasks.decode, fn_kwargs=dict(cwd=cwd, size=clf.input_size, options=options,
                                                 draws=command.draws, preprocessing=clf.preprocessing, stop=stop),
                num_cpus=0.5)
    ds = ds.map_batches(ray_tasks.Explainer, batch_size=batch_size, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=actors),
                        fn_constructor_kwargs=dict(cwd=cwd, model=model, options=options, command=command, stop=stop),
                        num_cpus=1, num_gpus=gpus_per_actor)  # Ray Data restarts a dead actor, retries its batch
    # Tasks whose worker dies are retried by Ray; sets are written atomically, so a retry never sees half of one.
    return ds.map(ray_tasks.finish, fn_kwargs=dict(cwd=cwd, categories=clf.categories, command=command, stop=stop),
                  num_cpus=0.5)


def _drive(todo: list[Job], clf: Classifier, options: Options, command: stages.Command, tally: stages.Tally,
           on_passes, placement: tuple[int, float]) -> None:
    stop = f"campp-stop-{uuid.uuid4().hex}"  # set when this run is interrupted (see ray_tasks.stopping)
    order = InOrder(tally)

    def take(row: dict) -> None:
        fatal = row.get("fatal")
        if fatal is not None and len(fatal):
            raise pickle.loads(fatal)
        if on_passes is not None and row["passes"]:
            on_passes(int(row["passes"]))
        if row["result"] != CANCELLED:
            order.add(int(row["i"]), pickle.loads(row["result"]))

    rows = _Rows(_dataset(todo, clf, options, command, placement, stop))
    try:
        rows.each(take)
    except Exception:
        rows.close()
        raise
    except BaseException:
        # Interrupted (SIGINT, SIGTERM): as the local engine, the sets being written are finished and every
        # image done is reported.  The stages see the stop and pass the rest through undone, so the rows
        # still in flight come back soon; a second signal ends the wait.
        internal_kv._internal_kv_put(stop, b"1")
        try:
            rows.each(take)
        finally:
            rows.close()
            with contextlib.suppress(Exception):
                internal_kv._internal_kv_del(stop)
            order.flush()
        raise


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

    def each(self, take) -> None:
        """``take`` every row, in turn.  A stop waits while a row is taken off the queue and taken, so none
        is lost between the two; it waits at most a fraction of a second for the next row to come."""
        while True:
            with deferred():
                try:
                    kind, value = self._queue.get(timeout=0.1)
                except queue.Empty:
                    continue
                if kind == "end":
                    return
                if kind == "error":
                    raise value
                take(value)

    def close(self) -> None:
        self._closed.set()
