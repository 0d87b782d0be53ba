"""The local engine: the stages of :mod:`campp_cli.run.stages` on threads, in one process.

Batches of ``options.batch_size`` images go through one forward and one backward pass; worker threads
decode the next batch and finish (render and write) the previous one meanwhile.  At most about three
batches are in memory at once, so memory stays flat however many images there are.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from ...io.decode import PixelBudget
from ...io.inputs import Job
from ...models.devices import default_batch_size
from ...models.loading import Classifier
from .. import stages
from ..options import Options, Result, Summary
from ..signals import deferred
from ..stages import Command, Tally


def run(jobs: list[Job], clf: Classifier, options: Options | None = None,
        on_result: Callable[[Result], None] | None = None, command: Command | None = None,
        on_passes: Callable[[int], None] | None = None) -> Summary:
    """Explain every job with one model: decoding and writing overlap the model's work.

    A bad image becomes a failed :class:`Result` and the run goes on; usage errors and a broken model
    (non-finite logits) end it.  Results are reported to ``on_result`` in input order; ``on_passes`` is
    told of extra forward passes (Score-CAM) as they run.  ``command`` says what to add (default: classify).
    """
    options, command = stages.prepare(clf, options, command)
    tally = Tally(on_result)
    start = time.perf_counter()
    todo = stages.begin(jobs, command, tally)
    _Threads(clf, options, command, tally, on_passes).run(todo)
    tally.summary.seconds = time.perf_counter() - start
    return tally.summary


class _Threads:
    """Decoding threads ahead of the model, finishing threads behind it; results in input order."""

    def __init__(self, clf: Classifier, options: Options, command: Command, tally: Tally, on_passes):
        self.clf, self.options, self.command, self.on_passes = clf, options, command, on_passes
        self.record = tally.record
        self.batch_size = options.batch_size or default_batch_size(clf.device)
        self.decoders = ThreadPoolExecutor(options.workers, thread_name_prefix="campp-decode")
        self.finishers = ThreadPoolExecutor(options.workers, thread_name_prefix="campp-finish")
        self.budget = PixelBudget(options.max_pixels)  # pixels decoded at once, across the threads
        self.pending: deque[Future] = deque()  # every image's outcome, in input order

    def run(self, todo: list[Job]) -> None:
        size = self.batch_size
        chunks = [todo[i:i + size] for i in range(0, len(todo), size)]
        try:
            upcoming = self._decode(chunks[0]) if chunks else []
            for k in range(len(chunks)):
                current = upcoming
                upcoming = self._decode(chunks[k + 1]) if k + 1 < len(chunks) else []
                self._explain([fut.result() for fut in current])
            self._drain(0)
        except BaseException:
            self._shutdown()
            self._record_finished()
            raise
        self._shutdown()

    def _decode(self, chunk: list[Job]) -> list[Future]:
        clf, options = self.clf, self.options
        return [self.decoders.submit(stages.guarded, stages.decode, job.source, job, clf.input_size, options,
                                     self.command.draws, self.budget, clf.preprocessing) for job in chunk]

    def _explain(self, outcomes: list) -> None:
        """One batch through the model, its finishing queued behind it in input order."""
        decoded = [o for o in outcomes if not isinstance(o, Result)]
        # Report what is done before the next (long) model pass, so the bar and its ETA move with the model's
        # batches; a command that draws nothing (evaluate) has finished its previous batch by now.
        self._drain(0 if not self.command.draws else 2 * self.batch_size)
        while self.pending and self.pending[0].done():
            self._record_first()
        rows = stages.explain_rows(decoded, self.clf, self.options, self.command, self.on_passes) if decoded else []
        with deferred():  # a set whose writing has begun is in pending, so an abort reports it
            finished = iter([self.finishers.submit(stages.guarded, stages.finish, row.job.source, row,
                                                   self.clf.categories, self.command) for row in rows])
            for outcome in outcomes:  # a failed decode is already a Result
                if isinstance(outcome, Result):
                    failed: Future = Future()
                    failed.set_result(outcome)
                    self.pending.append(failed)
                else:
                    self.pending.append(next(finished))
        self._drain(2 * self.batch_size)

    def _drain(self, limit: int) -> None:
        while len(self.pending) > limit:
            self.pending[0].result()  # a signal while waiting leaves it queued, for _record_finished
            self._record_first()

    def _record_first(self) -> None:
        """Take the first finished outcome off pending and report it, with no stop in between."""
        with deferred():
            self.record(self.pending.popleft().result())

    def _shutdown(self) -> None:
        self.decoders.shutdown(wait=True, cancel_futures=True)
        self.finishers.shutdown(wait=True, cancel_futures=True)  # sets being written are finished

    def _record_finished(self) -> None:
        """After an abort: report every image whose work is done, in input order, so --jsonl and the lines
        match the sets on disk."""
        while self.pending:
            fut = self.pending.popleft()
            if not fut.done() or fut.cancelled() or fut.exception() is not None:
                continue
            try:
                self.record(fut.result())
            except Exception:  # noqa: BLE001 - the abort's own error is the one to report
                return
