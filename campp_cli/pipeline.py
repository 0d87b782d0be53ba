"""The local engine: the stages of :mod:`campp_cli.stages` on threads, in one process.

This is the layer a notebook or the CLI calls; it knows nothing of click.
"""

from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from .io.decode import PixelBudget
from .io.inputs import Job  # noqa: F401 (re-exported)
from .io.names import output_stem, prepare_output_dir  # noqa: F401 (re-exported)
from .models import Classifier
from .settings import DEFAULT_OUTPUT
from .stages import (  # noqa: F401 (re-exported)
    ClassifyCommand,
    Command,
    Options,
    Result,
    Summary,
    Tally,
    begin,
    check_label,
    decode,
    default_batch_size,
    explain_rows,
    finish,
    guarded,
    prepare,
    render,
    to_batch,
    write_outputs,
)


def run(jobs: list[Job], clf: Classifier, options: Options | None = None,
        on_result: Callable[[Result], None] | None = None, command: Command | None = None) -> Summary:
    """Explain every job with one model: decoding and writing overlap the model's work.

    Batches of ``options.batch_size`` images go through one forward and one
    backward pass; worker threads decode the next batch and finish (render and
    write) the previous one meanwhile.  At most about three batches are in
    memory at once, so memory stays flat however many images there are.  A bad
    image becomes a failed :class:`Result` and the run goes on; usage errors
    and a broken model (non-finite logits) end it.  Results are reported in
    input order.  ``command`` says what to add (default: classify); the stages are in :mod:`campp_cli.stages`.
    """
    options, command = prepare(clf, options, command)
    batch_size = options.batch_size or default_batch_size(clf.device)
    tally = Tally(on_result)
    record = tally.record
    start = time.perf_counter()
    todo = begin(jobs, command, tally)
    chunks = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    decoders = ThreadPoolExecutor(options.workers, thread_name_prefix="campp-decode")
    finishers = ThreadPoolExecutor(options.workers, thread_name_prefix="campp-finish")
    pending: deque[Future] = deque()

    budget = PixelBudget(options.max_pixels)  # pixels decoded at once, across the threads

    def submit_decodes(chunk):
        return [decoders.submit(guarded, decode, job.source, job, clf.input_size, options, command.draws, budget,
                                 clf.preprocessing)
                for job in chunk]

    def drain(limit: int) -> None:
        while len(pending) > limit:
            record(pending.popleft().result())

    def record_finished() -> None:
        """After an abort: report every image whose work is done, in input order, so --jsonl and the
        lines match the sets on disk."""
        while pending:
            fut = pending.popleft()
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                try:
                    record(fut.result())
                except Exception:  # noqa: BLE001 - the abort's own error is the one to report
                    return

    try:
        upcoming = submit_decodes(chunks[0]) if chunks else []
        for k in range(len(chunks)):
            current = upcoming
            upcoming = submit_decodes(chunks[k + 1]) if k + 1 < len(chunks) else []
            outcomes = [fut.result() for fut in current]
            decoded = [o for o in outcomes if not isinstance(o, Result)]
            finished = iter(())
            # Report what is done before the next (long) model pass, so the bar and its ETA move with the
            # model's batches; a command that draws nothing (evaluate) has finished its previous batch by now.
            drain(0 if not command.draws else 2 * batch_size)
            while pending and pending[0].done():
                record(pending.popleft().result())
            if decoded:
                rows = explain_rows(decoded, clf, options, command)
                finished = iter([finishers.submit(guarded, finish, row.job.source, row, clf.categories, command)
                                 for row in rows])
            for outcome in outcomes:  # queued in input order; a failed decode is already a Result
                if isinstance(outcome, Result):
                    failed: Future = Future()
                    failed.set_result(outcome)
                    pending.append(failed)
                else:
                    pending.append(next(finished))
            drain(2 * batch_size)
        drain(0)
    except BaseException:
        aborted = True
        raise
    else:
        aborted = False
    finally:
        decoders.shutdown(wait=True, cancel_futures=True)
        finishers.shutdown(wait=True, cancel_futures=True)  # sets being written are finished
        if aborted:
            record_finished()
    tally.summary.seconds = time.perf_counter() - start
    return tally.summary


def classify_file(path: str | os.PathLike, clf: Classifier, out_dir: str | os.PathLike,
                  output: str = DEFAULT_OUTPUT, options: Options | None = None) -> Result:
    """The paper's ``classify.py`` for one file: explain, write the five JPEGs, report.

    Raises the image's error (:class:`InputError`, :class:`OutputError`) instead
    of returning it.
    """
    stem, suffix = output_stem(output)
    out = prepare_output_dir(out_dir)
    results: list[Result] = []
    run([Job(Path(path), out, stem, suffix)], clf, options, results.append)
    if results[0].exception is not None:
        raise results[0].exception
    return results[0]
