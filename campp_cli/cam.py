"""The explaining pass: every requested map from one forward and (at most) one backward pass.

The methods themselves live in :mod:`campp_cli.methods` (a registry); this
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

import math
from dataclasses import dataclass

import numpy as np
import torch

from .errors import ModelError, UsageError
from .methods import DEFAULT_METHODS, MethodInput, get_method, needs_any, nonzero, parse_methods
from .methods.gradcampp import check_variant
from .settings import DEFAULT_SCORE_BATCH


class FrozenParameters:
    """Parameters' requires_grad off for the duration (restored on exit)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self._flags = []

    def __enter__(self):
        self._flags = [(p, p.requires_grad) for p in self.model.parameters()]
        for p, _ in self._flags:
            p.requires_grad_(False)
        return self

    def __exit__(self, *exc):
        for p, flag in self._flags:
            p.requires_grad_(flag)


def split_layer(spec: str) -> tuple[str, int | None]:
    """``"name@k"`` (the k-th call of a module that runs several times) -> ``("name", k)``."""
    name, sep, call = spec.partition("@")
    if not sep:
        return spec, None
    if not call.isdigit():
        raise UsageError(f"--layer {spec}: after '@' give the call number (0, 1, ...)")
    return name, int(call)


def layer_name(model: torch.nn.Module, layer: "str | torch.nn.Module") -> str:
    """``layer`` as a dotted name: a name is kept, a module of ``model`` is looked up by identity."""
    if isinstance(layer, str):
        return layer
    if isinstance(layer, torch.nn.Module):
        for name, module in model.named_modules():
            if module is layer and name:
                return name
        raise UsageError(f"layer {type(layer).__name__}: this module is not a submodule of the model")
    raise UsageError(f"layer {layer!r}: give a dotted module name or the module itself")


#: At most this many class, distillation or register tokens before the patch tokens of a transformer.
MAX_PREFIX_TOKENS = 16


def grid_layout(shape: tuple[int, ...]) -> tuple[str, int] | None:
    """How a layer output of ``shape`` lays out a square grid of positions, or None.

    ``("nchw", 0)``: a CNN feature map; ``("nhwc", 0)``: channels last (Swin's
    blocks); ``("tokens", P)``: a transformer's (N, T, C) tokens, P prefix
    tokens (class, distillation, registers) then a square grid of patches.
    """
    if len(shape) == 4:
        _, a, b, c = shape
        return ("nhwc", 0) if a == b and b != c else ("nchw", 0)
    if len(shape) == 3:
        side = math.isqrt(shape[1])
        prefix = shape[1] - side * side
        if side >= 2 and prefix <= min(MAX_PREFIX_TOKENS, 2 * side):
            return ("tokens", prefix)
    return None


def to_grid(output: torch.Tensor, layout: tuple[str, int]) -> torch.Tensor:
    """A layer output as an (N, C, H, W) grid (prefix tokens dropped)."""
    kind, prefix = layout
    if kind == "nhwc":
        return output.permute(0, 3, 1, 2)
    if kind == "tokens":
        n, t, c = output.shape
        side = math.isqrt(t - prefix)
        return output[:, prefix:, :].reshape(n, side, side, c).permute(0, 3, 1, 2)
    return output


def from_grid(grid: torch.Tensor, layout: tuple[str, int], output: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`to_grid`: ``grid`` in the layout of ``output`` (whose prefix tokens it takes)."""
    kind, prefix = layout
    if kind == "nhwc":
        return grid.permute(0, 2, 3, 1)
    if kind == "tokens":
        n, c = grid.shape[:2]
        patches = grid.permute(0, 2, 3, 1).reshape(n, -1, c)
        return torch.cat([output[:, :prefix, :].detach(), patches], dim=1) if prefix else patches
    return grid


class FeatureTap:
    """Context manager that exposes one layer's output as a gradient leaf.

    On entry it freezes the model's parameters (their ``requires_grad`` flags
    are restored on exit, whatever happens) and hooks ``layer``; the hook
    replaces the layer's output with a detached copy that requires grad, so
    autograd records only what comes after it.  The hook is always removed.

    ``layer`` is a dotted module name, or ``name@k`` for the k-th call (from 0)
    of a module the forward pass runs several times, or the module object itself.
    A transformer's tokens (or Swin's channels-last map) are seen as the
    (N, C, H, W) grid :func:`to_grid` makes of them; the model goes on with
    the same values in its own layout.
    """

    def __init__(self, model: torch.nn.Module, layer: "str | torch.nn.Module"):
        layer = layer_name(model, layer)
        name, self.call = split_layer(layer)
        modules = dict(model.named_modules())
        if name not in modules:
            raise UsageError(f"--layer {layer}: the model has no such module")
        self.model = model
        self.layer = layer
        self.module = modules[name]
        self.activation: torch.Tensor | None = None  # (N, C, H, W) whatever the layer's layout
        self.layout: tuple[str, int] | None = None
        self.calls = 0
        self._handle = None
        self._frozen = FrozenParameters(model)

    def _hook(self, module, inputs, output):
        index, self.calls = self.calls, self.calls + 1
        if self.call is None and index > 0:
            raise ModelError(f"layer {self.layer} runs more than once per forward pass; "
                             f"pick one call with --layer {self.layer}@0, @1, ...")
        if index != (self.call or 0):
            return None
        if not isinstance(output, torch.Tensor):
            raise UsageError(f"--layer {self.layer}: its output is not a single tensor")
        self.layout = grid_layout(tuple(output.shape))
        if self.layout is None:
            raise UsageError(f"--layer {self.layer}: its output {tuple(output.shape)} is neither a feature map "
                             f"(N, C, H, W) nor transformer tokens (N, T, C) on a square grid")
        # A copy: the next module may work in place, which a leaf cannot allow.
        self.activation = to_grid(output.detach(), self.layout).clone().requires_grad_(True)
        return from_grid(self.activation, self.layout, output)

    def __enter__(self) -> "FeatureTap":
        self._frozen.__enter__()
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._frozen.__exit__(*exc)


# --------------------------------------------------------------------------- the maps


def normalise(combination: torch.Tensor) -> torch.Tensor:
    """``relu(combination)`` divided by its maximum per image (an all-zero map stays 0)."""
    cam = torch.relu(combination)
    peak = cam.amax(dim=(1, 2), keepdim=True)
    return cam / nonzero(peak)


def cam_maps(grads: torch.Tensor | None, acts: torch.Tensor, variant: str = "official",
             methods=DEFAULT_METHODS, **extra) -> dict[str, torch.Tensor]:
    """Every requested map from one (A, g) pair, computed in float64, returned as float32.

    ``extra``: what methods that need forward passes take (see
    :class:`campp_cli.methods.MethodInput`: ``image``, ``score``, ``classes``...).
    """
    check_variant(variant)
    names = parse_methods(methods)
    inp = MethodInput(acts=acts.double(), grads=None if grads is None else grads.double(), variant=variant, **extra)
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
    variant: str = "official"

    def top(self, i: int, k: int = 5) -> list[tuple[int, float]]:
        """The k most probable classes of image i as ``(index, probability)``."""
        return top_classes(self.probs[i], k)


def top_classes(probs: np.ndarray, k: int = 5) -> list[tuple[int, float]]:
    """The k most probable classes of one image's ``probs`` (C,) as ``(index, probability)``."""
    order = np.argsort(-probs)[:k]
    return [(int(c), float(probs[c])) for c in order]


def _class_tensor(classes, logits: torch.Tensor) -> torch.Tensor:
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
            variant: str = "official", methods=DEFAULT_METHODS, *, image: torch.Tensor | None = None,
            preprocess=None, score_batch: int = DEFAULT_SCORE_BATCH, progress=None) -> Explanation:
    """Explain a preprocessed batch ``x`` (N, 3, H, W): every method in ``methods`` from one pass.

    ``classes``: None (the predicted class), one index for all images, or one
    per image; -1 also means the predicted class.  ``methods``: names from
    :func:`campp_cli.methods.list_methods`, a comma-separated string, or
    ``"all"``.  One forward pass; one backward pass to the layer when a
    requested method needs gradients.  Methods that need extra forward passes
    (Score-CAM) mask ``image`` (RGB in [0, 1], which ``preprocess`` turns into
    ``x``), ``score_batch`` images a pass, calling ``progress(n)`` as they go
    (and first ``progress.planned(passes, images)`` if it has that method, for
    an ETA); without ``image`` they mask ``x`` itself.
    """
    check_variant(variant)  # before the pass, not after it
    names = parse_methods(methods)
    wants_grads = needs_any(names, "gradients")
    grads = None
    with torch.enable_grad() if wants_grads else torch.no_grad(), FeatureTap(model, layer) as tap:
        logits = model(x)
        acts = tap.activation
        if acts is None:
            raise UsageError(f"--layer {tap.layer}: this module ran {tap.calls} times in the forward pass")
        if not torch.isfinite(logits).all():
            raise ModelError("the model produced non-finite logits (NaN or inf); are the weights broken?")
        idx = _class_tensor(classes, logits.detach())
        if wants_grads:
            score = logits.gather(1, idx[:, None]).sum()  # images are independent in eval mode
            (grads,) = torch.autograd.grad(score, acts, allow_unused=True)
            if grads is None:  # the target does not reach the logits
                grads = torch.zeros_like(acts)
            grads = grads.detach()
    extra = {"classes": idx}
    if needs_any(names, "forward passes"):
        source = image if image is not None else x
        prep = preprocess if image is not None else None
        extra.update(image=source.detach(), score=_scorer(model, prep), score_batch=score_batch, progress=progress)
    maps = cam_maps(grads, acts.detach(), variant, names, **extra)
    logits = logits.detach().float()
    return Explanation(
        logits=logits.cpu().numpy(),
        probs=torch.softmax(logits, dim=1).cpu().numpy(),
        classes=idx.cpu().numpy(),
        maps={m: v.cpu().numpy() for m, v in maps.items()},
        layer=layer,
        variant=variant,
    )


def _scorer(model: torch.nn.Module, preprocess):
    """``score(images, classes)``: softmax probability of each class, no autograd, parameters untouched."""
    def score(images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = model(preprocess(images) if preprocess is not None else images).float()
            return torch.softmax(logits, dim=1).gather(1, classes[:, None])[:, 0]
    return score


# --------------------------------------------------------------------------- guided backpropagation


class GuidedReLU:
    """Context manager: every ``nn.ReLU`` passes gradient back only where both its
    input and the incoming gradient are positive (Springenberg et al., 2015).

    In-place ReLUs are made out-of-place while it is active (backward hooks
    cannot see in-place outputs); flags and hooks are restored on exit.
    """

    def __init__(self, model: torch.nn.Module):
        self.relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
        self._handles = []
        self._inplace: list[bool] = []

    @staticmethod
    def _hook(module, grad_input, grad_output):
        # ReLU's own backward already zeroed the gradient where its input <= 0.
        return (torch.clamp(grad_input[0], min=0.0),)

    def __enter__(self) -> "GuidedReLU":
        self._inplace = [m.inplace for m in self.relus]
        for m in self.relus:
            m.inplace = False
            self._handles.append(m.register_full_backward_hook(self._hook))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        for m, flag in zip(self.relus, self._inplace):
            m.inplace = flag


def guided_backprop(model: torch.nn.Module, rgb01: torch.Tensor, classes, preprocess=None) -> np.ndarray:
    """Guided-backpropagation gradient of each image's class logit w.r.t. the RGB image, ``(N, 3, H, W)``.

    ``rgb01`` is the batch before normalisation and ``preprocess`` the model's
    normalisation, so the gradient's channels are RGB whatever the model eats
    (the Caffe VGG16 eats BGR).  A second, full backward pass: run only when asked.
    """
    x = rgb01.detach().clone().requires_grad_(True)
    with torch.enable_grad(), FrozenParameters(model), GuidedReLU(model):
        logits = model(preprocess(x) if preprocess is not None else x)
        idx = _class_tensor(classes, logits.detach())
        (grad,) = torch.autograd.grad(logits.gather(1, idx[:, None]).sum(), x)
    return grad.detach().float().cpu().numpy()
