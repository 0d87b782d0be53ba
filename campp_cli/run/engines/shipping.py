"""What every engine that ships rows to other processes shares: the marker of an image not done, bytes
as object arrays, and the reporting of results in input order as they come back in any order."""

from __future__ import annotations

import numpy as np

from ..options import Result
from ..stages import Tally

#: The row of an image that an interrupted run did not do.
CANCELLED = b"campp-cancelled"


def objects(items) -> np.ndarray:
    """Bytes as an object array (NumPy's own bytes type would pad them to the longest)."""
    items = list(items)
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


class InOrder:
    """Results that come back in any order, recorded in input order: each as soon as every earlier one is."""

    def __init__(self, tally: Tally):
        self.tally = tally
        self.waiting: dict[int, Result] = {}
        self.following = 0

    def add(self, index: int, result: Result) -> None:
        self.waiting[index] = result
        while self.following in self.waiting:  # the longest finished prefix
            self.tally.record(self.waiting.pop(self.following))
            self.following += 1

    def flush(self) -> None:
        """After an interruption: every result that came back, in input order, gaps skipped."""
        for index in sorted(self.waiting):
            self.tally.record(self.waiting.pop(index))
