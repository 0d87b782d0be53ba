"""One image's figures, drawn from its explained row: the comparison, each method's heatmap and overlay,
and guided maps; and the titles and caption they carry."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ..cam.methods import get_method, settings_in_words
from ..errors import CamppError
from ..outputs.kinds import key
from ..settings import DEFAULT_ALPHA
from .geometry import dimmed, on_region, region_pixels, resize_to, upsample
from .panels import captioned, colorize, gradient_image, overlay, side_by_side, stacked, titled, with_colour_bar

if TYPE_CHECKING:
    from ..models.loading import Classifier
    from ..run.options import Options
    from ..run.stages import ExplainedRow


def percent(p: float) -> str:
    """A probability for a title: one decimal from 0.1 % up ("70.0%"), two significant digits below it
    ("0.0020%" for 2e-5, never "0.0%")."""
    if p >= 0.000995 or p <= 0:
        return f"{p:.1%}"
    digits = 1 - math.floor(math.log10(100 * p))  # decimals for two significant digits, never an exponent
    return f"{100 * p:.{digits}f}%"


def figure_caption(clf: Classifier, options: Options) -> str:
    """The strip under a comparison figure: what was explained, where, and how."""
    variants = "".join(f", {label.rsplit(' ', 1)[0]} {value}"
                       for label, value in settings_in_words(options.methods, options.settings))
    return f"model {clf.arch} | layer {layer_label(clf.module, clf.layer)}{variants}"


def layer_label(module, layer) -> str:
    """The layer as ``campp layers`` lists it (its dotted name, ``@k`` for a call), with the module's type:
    "10 (ReLU)" says what a bare number in an ``nn.Sequential`` does not."""
    from ..cam.taps import split_layer

    if not isinstance(layer, str):
        return str(layer)
    if "," in layer:  # several layers, fused
        return ", ".join(layer_label(module, part.strip()) for part in layer.split(","))
    try:
        sub = module.get_submodule(split_layer(layer)[0])
    except (AttributeError, CamppError):
        return layer
    return f"{layer} ({type(sub).__name__})"



def render(row: ExplainedRow, categories: list[str], guided=None, caption: str = "",
           alpha: float = DEFAULT_ALPHA, ranked: bool = False) -> dict[str, np.ndarray]:
    """Every figure for one image, keyed by output-name suffix ('' is the comparison).

    One heatmap and one overlay (the heatmap blended at ``alpha``) per method
    in ``row.maps`` (in its order); ``guided``: the image's guided-backpropagation
    gradient ``(3, h, w)``, if wanted.  The comparison's method panels carry a
    colour bar; its titles say "explained" and "predicted" when the explained
    class (``-l``) is not the predicted one; ``caption`` goes in a strip below.

    ``ranked`` (``-l topK``): one panel row per class of ``row.targets``, titled
    "top r"; each rank's files are named ``top{r}_{method}``; ``guided`` is then
    the list of each rank's gradient.
    """
    from ..cam.targets import rank_label

    region = row.region
    # seen: what the model saw, at panel resolution; place(): it (or a map over it) back in the whole photo
    seen = row.photo if region is None else region_pixels(row.photo, region)
    if region is None:
        place = lambda inside: inside  # noqa: E731
    else:
        base = dimmed(row.photo)  # once for every figure of the photo
        place = lambda inside: on_region(base, region, inside)  # noqa: E731
    height, width = seen.shape[:2]
    predicted = int(np.argmax(row.probs))
    figures: dict[str, np.ndarray] = {key("comparison"): seen}  # the comparison first; drawn below
    guided_figures: dict[str, np.ndarray] = {}
    rows = []
    for rank, (class_index, maps) in enumerate(row.targets, 1):
        explained = f"{categories[class_index]} ({percent(float(row.probs[class_index]))})"
        if ranked:
            title = [f"top {rank}", explained]
            explained = f"top {rank}: {explained}"
        elif predicted != class_index:
            title = [f"explained: {explained}",
                     f"predicted: {categories[predicted]} ({percent(float(row.probs[predicted]))})"]
            explained = f"explained: {explained}"
        else:
            title = ["Input", explained]
        gradient = (guided[rank - 1] if ranked else guided) if guided is not None else None
        panels = [titled(with_colour_bar(place(seen), blank=True), title)]
        for method, cam in maps.items():
            label = rank_label(rank, method) if ranked else method
            heat = colorize(upsample(cam, width, height))
            blended = place(overlay(seen, heat, alpha))
            figures[key("heatmap", label)] = place(heat)
            figures[key("overlay", label)] = blended
            spec = get_method(method)
            lines = [spec.title, explained if spec.class_specific else "class-agnostic"]
            panels.append(titled(with_colour_bar(blended), lines))
            if gradient is not None:
                grad = gradient.transpose(1, 2, 0)
                weighted = grad * upsample(cam, grad.shape[0])[..., None]
                guided_figures[key("guided", label)] = place(resize_to(gradient_image(weighted), width, height))
        rows.append(side_by_side(panels))
    comparison = stacked(rows)
    figures[key("comparison")] = captioned(comparison, caption) if caption else comparison
    return {**figures, **guided_figures}
