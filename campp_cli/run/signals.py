"""Signals that wait for the result being reported: a stop (SIGTERM, Ctrl-C) that arrives while a run records
one image's result (its --jsonl line, its report card, its stdout line) takes effect just after that result,
never half-way through it, so what is reported always matches the sets on disk.

The CLI installs its handlers through :func:`deferrable`; the engines record each result inside
:func:`deferred`.  Where campp installed no handler (a notebook) nothing is deferred.
"""

from __future__ import annotations

import contextlib
import threading

_state = threading.local()
_held: list[tuple] = []  # the (handler, signum, frame) of a signal that came inside deferred()


def _depth() -> int:
    return getattr(_state, "depth", 0)


def deferrable(handler):
    """``handler`` as a signal handler that waits for the end of a :func:`deferred` block."""
    def handle(signum, frame):
        if _depth() > 0:
            _held.append((handler, signum, frame))
            return
        handler(signum, frame)

    return handle


@contextlib.contextmanager
def deferred():
    """Hold deferrable signals until the block ends, then act on the first one."""
    _state.depth = _depth() + 1
    try:
        yield
    finally:
        _state.depth -= 1
        if _state.depth == 0 and _held:
            handler, signum, frame = _held[0]
            _held.clear()
            handler(signum, frame)


def forget_held() -> None:
    """Drop a signal held by :func:`deferred` and not yet acted on (the daemon, between two callers' runs)."""
    _held.clear()
