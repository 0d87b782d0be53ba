"""The stages as Ray Data functions: decoding and finishing tasks on any node, the model in actors.

Rows cross processes pickled, as bytes.  Every task works in the driver's folder.  Once the driver has
asked the run to stop (a flag in Ray's key-value store), tasks pass their images through undone
(:data:`~campp_cli.run.engines.shipping.CANCELLED`), so the rows in flight come back soon.
"""

from __future__ import annotations

import os
import pickle
import time

import numpy as np
import ray
from ray.experimental import internal_kv

from ...errors import CamppError
from ...io.inputs import Job
from .. import stages
from ..options import Options, Result
from .shipping import CANCELLED, objects

#: A test hook: when this names a folder holding a file ``armed``, the first finishing task to rename it to
#: ``fired`` kills its own worker process, as a crashed node would (tests/test_ray.py).
DIE_ONCE_ENV = "CAMPP_TEST_RAY_DIE_ONCE"


#: How long a task trusts its last look at the stop flag (seconds): the flag costs a call to Ray's store.
_STOP_TTL = 0.5


_stop_seen: dict[str, tuple[float, bool]] = {}


def stopping(stop: str) -> bool:
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


def enter(cwd: str) -> None:
    """Work in the driver's folder, so relative paths mean what they meant there."""
    if os.getcwd() != cwd:
        try:
            os.chdir(cwd)
        except OSError as exc:
            raise CamppError(f"Ray node {ray.util.get_node_ip_address()} cannot enter the working folder "
                             f"{cwd} ({exc.strerror or exc}): use a filesystem every node sees") from None


def decode(row: dict, cwd: str, size: int, options: Options, draws: bool, preprocessing,
            stop: str = "") -> dict:
    """CPU task: a job -> a DecodedRow, or the image's failed Result (CANCELLED once the run is stopping)."""
    if stop and stopping(stop):
        return {"i": row["i"], "row": CANCELLED}
    enter(cwd)
    job: Job = pickle.loads(row["job"])
    out = stages.guarded(stages.decode, job.source, job, size, options, draws, None, preprocessing)
    return {"i": row["i"], "row": pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)}


class Explainer:
    """Actor: the model, loaded once with campp's loader; batches of DecodedRows -> ExplainedRows."""

    def __init__(self, cwd: str, model: dict, options: Options, command: stages.Command, stop: str = ""):
        import torch

        from ...models.loading import load_classifier

        enter(cwd)
        if model["threads"]:
            torch.set_num_threads(model["threads"])
        self.options = options
        self.command = command
        self.stop = stop
        self.fatal: bytes | None = None
        self.passes = 0
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
        if self.stop and stopping(self.stop):  # the run is stopping: no model pass, the images pass undone
            return {"i": batch["i"], "row": objects([CANCELLED] * n), "passes": np.zeros(n, int),
                    "fatal": objects([b""] * n)}
        rows = [None if b == CANCELLED else pickle.loads(b) for b in batch["row"]]  # None: cancelled
        decoded = [r for r in rows if r is not None and not isinstance(r, Result)]
        self.passes = 0
        try:
            explained = iter(stages.explain_rows(decoded, self.clf, self.options, self.command, self._count)
                             if decoded else ())
        except CamppError as exc:  # a broken model ends the run, as with the local engine
            return _fatal(batch, pickle.dumps(exc))
        out = [r if r is None or isinstance(r, Result) else next(explained) for r in rows]
        for r in out:
            if r is not None and not isinstance(r, Result):
                r.node = self.node
        passes = [self.passes] + [0] * (n - 1)
        return {"i": batch["i"], "row": objects(CANCELLED if r is None else
                                                 pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in out),
                "passes": np.array(passes), "fatal": objects([b""] * n)}


def _fatal(batch: dict, error: bytes) -> dict:
    """The batch, marked with the error that ends the run (the driver raises it)."""
    n = len(batch["i"])
    return {"i": batch["i"], "row": batch["row"], "passes": np.zeros(n, int), "fatal": objects([error] * n)}


def finish(row: dict, cwd: str, categories: list[str], command: stages.Command, stop: str = "") -> dict:
    """CPU task: an ExplainedRow -> its files written and its Result (a failed Result passes through; once the
    run is stopping, an image not yet written is CANCELLED)."""
    fatal = row.get("fatal")
    if row["row"] == CANCELLED or (stop and stopping(stop) and not (fatal is not None and len(fatal))):
        return {"i": row["i"], "result": CANCELLED, "passes": row["passes"],
                "fatal": fatal if fatal is not None else b""}
    enter(cwd)
    item = pickle.loads(row["row"])
    if isinstance(item, Result) or (fatal is not None and len(fatal)):
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
