"""What each method costs on a given model: ``campp methods --measure`` and :func:`measure_costs`.

A method's passes (:attr:`campp_cli.cam.methods.Method.passes`) say what it runs; what that costs depends on
the model, its layer, the device and, for the perturbation methods, on the photo (constant channels are
skipped).  This module times :func:`campp_cli.cam.explain.explain` itself, the call every command makes, on
one image: first the two-map pass (Grad-CAM and Grad-CAM++, the paper's pair), then each method alone, so
each cost is also given as a multiple of that pass.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from ..errors import CamppError
from .methods import DEFAULT_METHODS, check_method_settings, get_method, list_methods, parse_methods

if TYPE_CHECKING:
    from ..models.loading import Classifier

#: The pass every cost is compared with.
BASELINE = ",".join(DEFAULT_METHODS)


@dataclass(frozen=True)
class Cost:
    """One method's cost on one image: ``seconds``, the median of the timed calls, ``ratio``, that over the
    two-map pass's (1 for the pass itself, whose ``method`` is :data:`BASELINE`); or ``refused``, the error
    saying why the model cannot have it (CAM without a pooled linear head...), with ``seconds`` None."""

    method: str
    seconds: float | None
    ratio: float | None
    refused: CamppError | None = None


def measure_costs(classifier: "Classifier", methods=None, *, image=None, repeats: int = 3,
                  **settings: Any) -> Iterator[Cost]:
    """Time ``explain`` on ``classifier`` for the two-map pass, then for each of ``methods`` alone (default:
    every method but those that need extra forward passes, whose cost grows with the layer's channels), then
    for all of those the model has in one call (``method``: their names joined by commas), yielding each
    :class:`Cost` as soon as it is measured.

    ``image``: the RGB input in [0, 1], ``(1, 3, S, S)`` at the model's input size (default: uniform noise
    from seed 0; give a photo for the perturbation methods, whose cost depends on how many channels it
    leaves constant).  ``repeats``: timed calls per method after one untimed call of the pass (which warms
    the model up), each after a call of the two-map pass, their medians reported and compared.  ``settings``:
    the methods' settings, as ``explain`` takes them.
    """
    import torch

    from .explain import explain

    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, not {repeats!r}")
    names = default_measured() if methods is None else parse_methods(methods)
    settings = check_method_settings(settings, names + DEFAULT_METHODS)
    size = classifier.input_size
    if image is None:
        image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    rgb = torch.as_tensor(image, dtype=torch.float32).to(classifier.device)
    if rgb.dim() != 4 or rgb.shape[:2] != (1, 3):
        raise ValueError(f"image must be one RGB image of shape (1, 3, S, S), not {tuple(rgb.shape)}")
    x = classifier.preprocessing(rgb)

    def once(spec: str) -> float:
        start = time.perf_counter()
        explain(classifier.module, classifier.layer, x, methods=spec, image=rgb,
                preprocess=classifier.preprocessing, settings=settings)
        return time.perf_counter() - start

    def beside(spec: str) -> tuple[float, float]:
        """(median seconds of ``spec``, that over the two-map pass's), the two timed in turn, so that the
        machine's drift (another process, the clock speed) reaches both alike."""
        pairs = [(once(BASELINE), once(spec)) for _ in range(repeats)]
        seconds = statistics.median(t for _, t in pairs)
        return seconds, seconds / statistics.median(b for b, _ in pairs)

    once(BASELINE)  # untimed: the first pass prepares what later ones reuse
    yield Cost(BASELINE, statistics.median(once(BASELINE) for _ in range(repeats)), 1.0)
    done = []
    for name in names:
        try:
            seconds, ratio = beside(name)
        except CamppError as exc:
            yield Cost(name, None, None, refused=exc)
            continue
        done.append(name)
        yield Cost(name, seconds, ratio)
    if len(done) > 1:  # what a run asking for them all pays: the shared pass once
        yield Cost(",".join(done), *beside(",".join(done)))


def default_measured() -> tuple[str, ...]:
    """The methods measured unless told otherwise: every method (CAM too) but the perturbation methods."""
    return tuple(n for n in list_methods() if get_method(n).needs != "forward passes")


def not_measured() -> tuple[str, ...]:
    """The methods :func:`default_measured` leaves out."""
    kept = set(default_measured())
    return tuple(n for n in list_methods() if n not in kept)
