"""The explaining pass: every requested map from one forward and (at most) one backward pass.

The methods themselves live in :mod:`campp_cli.cam.methods` (a registry); this
module runs the model and hands each method what it needs: the target
layer's activations A, the gradient g = dS/dA of the class logit S
(pre-softmax) when any requested method needs it, and a scoring function for
methods that need extra forward passes (Score-CAM).  Every map then goes
through the same last step::

    cam = relu(combination) / max(...)      (an all-zero map stays 0)

The pass is cheap because the model's parameters are frozen while it runs:
autograd records nothing before the target layer, and the backward pass
stops at A (no gradient for any weight or for the input).  Its cost is a
forward pass plus the backward of the classifier head, whatever the number
of gradient methods; with no gradient method requested there is no backward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import ModelError, UsageError
from .methods import DEFAULT_METHODS, MethodInput, check_method_settings, get_method, needs_any, nonzero, parse_methods
from .taps import FeatureTap

# --------------------------------------------------------------------------- the maps


def normalise(combination: torch.Tensor) -> torch.Tensor:
    """``relu(combination)`` divided by its maximum per image (an all-zero map stays 0)."""
    cam = torch.relu(combination)
    peak = cam.amax(dim=(1, 2), keepdim=True)
    return cam / nonzero(peak)


def cam_maps(grads: torch.Tensor | None, acts: torch.Tensor, methods=DEFAULT_METHODS, *, classes=None,
             image: torch.Tensor | None = None, score=None, progress=None, settings: dict | None = None,
             **method_settings) -> dict[str, torch.Tensor]:
    """Every requested map from one (A, g) pair, computed in float64, returned as float32.

    ``classes``, ``image``, ``score``, ``progress``: what methods that need forward passes take (see
    :class:`campp_cli.cam.methods.MethodInput`).  ``settings`` and any other keyword: the methods'
    own settings (``variant="paper"``), checked, the others at their defaults.
    """
    names = parse_methods(methods)
    checked = check_method_settings({**(settings or {}), **method_settings}, names)
    inp = MethodInput(acts=acts.double(), grads=None if grads is None else grads.double(), classes=classes,
                      image=image, score=score, progress=progress, settings=checked)
    out = {}
    for name in names:
        method = get_method(name)
        if method.needs == "gradients" and inp.grads is None:
            raise UsageError(f"method {name} needs the gradient; none was computed")
        out[name] = normalise(method.compute(inp)).float()
    return out


# --------------------------------------------------------------------------- the pass


@dataclass
class Explanation:
    """Result of :func:`explain` for a batch of N images (all arrays on the CPU)."""

    logits: np.ndarray  # (N, C) float32, pre-softmax
    probs: np.ndarray  # (N, C) float32, softmax
    classes: np.ndarray  # (N,) explained class per image
    maps: dict[str, np.ndarray]  # method -> (N, h, w) float32 in [0, 1], low resolution
    layer: str = ""
    settings: dict[str, Any] = field(default_factory=dict)  # the methods' settings, e.g. {"variant": "official"}

    def top(self, i: int, k: int = 5) -> list[tuple[int, float]]:
        """The k most probable classes of image i as ``(index, probability)``."""
        return top_classes(self.probs[i], k)


def top_classes(probs: np.ndarray, k: int = 5) -> list[tuple[int, float]]:
    """The k most probable classes of one image's ``probs`` (C,) as ``(index, probability)``."""
    order = np.argsort(-probs)[:k]
    return [(int(c), float(probs[c])) for c in order]


def class_tensor(classes, logits: torch.Tensor) -> torch.Tensor:
    """The explained class of each image: ``classes`` (None, one index or one per image; -1: the predicted
    class) checked against the (N, C) ``logits``."""
    n, c = logits.shape
    if classes is None:
        return logits.argmax(dim=1)
    idx = torch.as_tensor(classes, dtype=torch.long, device=logits.device).reshape(-1)
    if idx.numel() == 1:
        idx = idx.expand(n)
    if idx.numel() != n:
        raise UsageError(f"{idx.numel()} class indices given for {n} images")
    idx = idx.clone()
    predicted = logits.argmax(dim=1)
    idx = torch.where(idx < 0, predicted, idx)  # -1 means the predicted class, as in the paper
    if int(idx.max()) >= c:
        raise UsageError(f"class {int(idx.max())} out of range: the model has classes 0..{c - 1}")
    return idx


def explain(model: torch.nn.Module, layer: "str | torch.nn.Module", x: torch.Tensor, classes=None,
            methods=DEFAULT_METHODS, *, image: torch.Tensor | None = None, preprocess=None, progress=None,
            settings: dict | None = None, **method_settings) -> Explanation:
    """Explain a preprocessed batch ``x`` (N, 3, H, W): every method in ``methods`` from one pass.

    ``classes``: None (the predicted class), one index for all images, or one
    per image; -1 also means the predicted class.  ``methods``: names from
    :func:`campp_cli.cam.methods.list_methods`, a comma-separated string, or
    ``"all"``.  One forward pass; one backward pass to the layer when a
    requested method needs gradients.  Methods that need extra forward passes
    (Score-CAM) mask ``image`` (RGB in [0, 1], which ``preprocess`` turns into
    ``x``), calling ``progress(n)`` as they go (and first
    ``progress.planned(passes, images)`` if it has that method, for an ETA);
    without ``image`` they mask ``x`` itself.

    ``settings`` (a dict) and any other keyword are the methods' own settings
    (:func:`campp_cli.cam.methods.method_settings`): ``variant="paper"``
    (Grad-CAM++), ``score_batch=64`` (Score-CAM's images a pass)...; a name no
    method declares, or a value that does not fit, is a usage error.
    """
    names = parse_methods(methods)
    settings = check_method_settings({**(settings or {}), **method_settings}, names)  # before the pass
    logits, idx, acts, grads = _forward_backward(model, layer, x, classes, needs_any(names, "gradients"))
    extra = {"classes": idx}
    if needs_any(names, "forward passes"):
        source = image if image is not None else x
        prep = preprocess if image is not None else None
        extra.update(image=source.detach(), score=_scorer(model, prep), progress=progress)
    maps = cam_maps(grads, acts, names, settings=settings, **extra)
    logits = logits.float()
    return Explanation(
        logits=logits.cpu().numpy(),
        probs=torch.softmax(logits, dim=1).cpu().numpy(),
        classes=idx.cpu().numpy(),
        maps={m: v.cpu().numpy() for m, v in maps.items()},
        layer=layer,
        settings=settings,
    )


def _forward_backward(model: torch.nn.Module, layer, x: torch.Tensor, classes, wants_grads: bool):
    """One forward pass through ``layer``'s tap (and the backward to it when ``wants_grads``): the logits,
    the explained classes, the activations and their gradient (None without ``wants_grads``), detached."""
    grads = None
    with torch.enable_grad() if wants_grads else torch.no_grad(), FeatureTap(model, layer) as tap:
        logits = model(x)
        acts = tap.activation
        if acts is None:
            raise UsageError(f"--layer {tap.layer}: this module ran {tap.calls} times in the forward pass")
        if not torch.isfinite(logits).all():
            raise ModelError("the model produced non-finite logits (NaN or inf); are the weights broken?")
        idx = class_tensor(classes, logits.detach())
        if wants_grads:
            score = logits.gather(1, idx[:, None]).sum()  # images are independent in eval mode
            (grads,) = torch.autograd.grad(score, acts, allow_unused=True)
            if grads is None:  # the target does not reach the logits
                grads = torch.zeros_like(acts)
            grads = grads.detach()
    return logits.detach(), idx, acts.detach(), grads


def _scorer(model: torch.nn.Module, preprocess):
    """``score(images, classes)``: softmax probability of each class, no autograd, parameters untouched."""
    def score(images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = model(preprocess(images) if preprocess is not None else images).float()
            return torch.softmax(logits, dim=1).gather(1, classes[:, None])[:, 0]
    return score
