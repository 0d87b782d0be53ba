"""What a :class:`~campp_cli.run.run.Run` tells its listener as it goes: one event at a time, in order.

Besides these, every image's :class:`~campp_cli.run.options.Result` is an event of its own, given in input
order.  Plain dataclasses: a listener (the CLI's printer, a notebook's progress widget) needs nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Loaded:
    """The model is ready: ``classifier`` (a :class:`~campp_cli.models.Classifier`), the explained class
    ``label`` (-1: the predicted one), ``where`` it runs in words, how many ``images`` the run has, and its
    ``layer`` in words (``"10 (ReLU)"``)."""

    classifier: Any
    label: int
    where: str
    images: int
    layer: str = ""


@dataclass(frozen=True)
class Planned:
    """Methods with extra forward passes (Score-CAM) are about to run ``passes`` of them for ``images``."""

    passes: int
    images: int


@dataclass(frozen=True)
class Passes:
    """``count`` extra forward passes have run."""

    count: int


@dataclass(frozen=True)
class Note:
    """A warning the run wants said (one line, without a prefix)."""

    text: str


@dataclass(frozen=True)
class Finished:
    """The run is over: its :class:`~campp_cli.run.options.Summary`, what its command made of the results
    (evaluate's document; None for classify) and the report written (or None)."""

    summary: Any
    document: dict | None = None
    report: Any = None
