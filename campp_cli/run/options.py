"""What a run is asked to do (:class:`Options`, frozen once built) and what it gives (:class:`Result`,
:class:`Summary`).  Plain, picklable and torch-free: every engine ships them to its workers as they are."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from ..cam.methods import DEFAULT_METHODS, check_method_settings, parse_methods
from ..errors import CamppError
from ..settings import DEFAULT_ALPHA, DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE


def default_workers() -> int:
    """Decoding and writing threads: one per core, at most four."""
    return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class Options:
    """Everything about a run except the model and the files; frozen (``dataclasses.replace`` makes another).

    ``settings`` holds the methods' own settings (Grad-CAM++'s ``variant``, Score-CAM's ``score_batch``...),
    by the names their methods declare.
    """

    label: int | str = -1  # -1: the predicted class; "true": each image's own class (truth); "topK"
    methods: tuple[str, ...] = DEFAULT_METHODS  # names from campp_cli.methods.list_methods()
    settings: dict[str, Any] = field(default_factory=dict)  # the methods' settings, by name
    max_side: int = DEFAULT_MAX_SIDE
    max_pixels: int = DEFAULT_MAX_PIXELS
    save_maps: bool = False
    guided: bool = False  # also guided maps of every method (a second, full backward pass)
    batch_size: int | None = None  # None: the device's default
    workers: int = field(default_factory=default_workers)  # decoding and writing threads
    skip_existing: bool = False  # resume: skip images whose outputs are all there
    alpha: float = DEFAULT_ALPHA  # the heatmap's weight in the overlays
    display: str = "crop"  # settings.DISPLAYS: the square the model saw, or the whole photo
    score: str = "logit"  # what the gradient methods differentiate (campp_cli.cam.targets.SCORES)
    activation: str = "softmax"  # "sigmoid": a multi-label model, every label above threshold explained
    threshold: float = 0.5  # a multi-label model's labels explained: those whose probability reaches it
    truth: dict | None = None  # label "true": str(source) -> its class index, or why it has none

    def __post_init__(self) -> None:
        from ..cam.targets import check_activation, check_score

        check_score(self.score)
        check_activation(self.activation)
        object.__setattr__(self, "methods", parse_methods(self.methods))
        # Every setting of the methods, checked, defaults filled: the same options give the same run.
        object.__setattr__(self, "settings", check_method_settings(dict(self.settings or {}), self.methods))
        if self.workers is None:
            object.__setattr__(self, "workers", default_workers())

    @property
    def top(self) -> int | None:
        """K of ``-l topK`` (each image's K most probable classes explained), else None."""
        from ..cam.targets import top_k

        return top_k(self.label) if isinstance(self.label, str) else None

    @property
    def multi_label(self) -> bool:
        """A multi-label model's predicted labels: every label above ``threshold`` explained."""
        from ..cam.targets import is_multi_label

        return is_multi_label(self.activation, self.label)

    @property
    def ranked(self) -> bool:
        """Whether several classes of each image are explained, their files named by rank."""
        return self.top is not None or self.multi_label

    def labels(self) -> list[str]:
        """What names each method's files: the methods, or under ``-l topK`` each rank's (``top2_gradcam``);
        a multi-label model's first label's (how many more an image has is known once it is explained)."""
        from ..cam.targets import output_labels

        return output_labels(self.methods, 1 if self.multi_label else self.top)

    def replace(self, **changes) -> "Options":
        return dataclasses.replace(self, **changes)


@dataclass
class Result:
    """What one image gave: the explained class, the top-5 and the files written."""

    input: str
    class_index: int
    class_name: str
    probability: float
    top5: list[tuple[int, str, float]]
    outputs: list[str] = field(default_factory=list)
    targets: list[tuple[int, str, float]] = field(default_factory=list)  # -l topK: each rank's class
    error: str | None = None  # the one-line reason, when this image failed
    skipped: bool = False  # --skip-existing found every output already there
    exception: CamppError | None = field(default=None, repr=False)
    extra: dict = field(default_factory=dict, repr=False)  # what a command adds (metrics...)

    @classmethod
    def failure(cls, source, exc: CamppError) -> "Result":
        return cls(str(source), -1, "", 0.0, [], error=exc.message, exception=exc)

    def as_dict(self) -> dict:
        if self.error is not None:
            return {"input": self.input, "error": self.error}
        if self.skipped:
            return {"input": self.input, "skipped": True, "outputs": self.outputs}
        return {
            "input": self.input,
            "class": self.class_index,
            "name": self.class_name,
            "probability": self.probability,
            "top5": [{"class": c, "name": n, "probability": p} for c, n, p in self.top5],
            **({"targets": [{"rank": r, "class": c, "name": n, "probability": p}
                            for r, (c, n, p) in enumerate(self.targets, 1)]} if self.targets else {}),
            "outputs": self.outputs,
        }


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (f"campp: {self.done} done, {self.skipped} skipped, {self.failed} failed in {self.seconds:.1f} s "
                f"({self.images_per_second:.2f} images/s)")
