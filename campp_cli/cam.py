"""Grad-CAM and Grad-CAM++ from one forward and one backward pass.

Every method here is a way of weighting the K channels of the target feature
map A from the gradient g = dS/dA of the class logit S (pre-softmax).  They
all share one pass and one combination step::

    cam = relu(sum_k weight_k * A_k) / max(...)

The pass is cheap because the model's parameters are frozen while it runs:
autograd records nothing before the target layer, and the backward pass
stops at A (no gradient for any weight or for the input).  Its cost is a
forward pass plus the backward of the classifier head.

Grad-CAM++ variants (paper arXiv:1710.11063):

* ``official``: what the authors' code computes (``misc/utils.py``,
  ``grad_CAM_plus``): eq. 19's alphas, then per channel renormalised to sum
  to 1 over the positions where g > 0.
* ``paper``: eq. 19 as printed, no renormalisation; alpha = 0 where g = 0.
  This is what pytorch-grad-cam's ``GradCAMPlusPlus`` and torchcam's
  ``GradCAMpp`` compute.

The paper writes the derivatives of exp(S); the exp(S) factors cancel out of
alpha and only scale the weights, which the max-normalisation removes, so
exp(S) is never evaluated (it overflows float32 past S ~ 88).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import ModelError, UsageError

METHODS = ("gradcam", "gradcampp")
VARIANTS = ("official", "paper")

#: Human-readable method names, used in figure titles.
METHOD_TITLES = {"gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++"}


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


class FeatureTap:
    """Context manager that exposes one layer's output as a gradient leaf.

    On entry it freezes the model's parameters (their ``requires_grad`` flags
    are restored on exit, whatever happens) and hooks ``layer``; the hook
    replaces the layer's output with a detached copy that requires grad, so
    autograd records only what comes after it.  The hook is always removed.

    ``layer`` is a dotted module name, or ``name@k`` for the k-th call (from 0)
    of a module the forward pass runs several times.
    """

    def __init__(self, model: torch.nn.Module, layer: str):
        name, self.call = split_layer(layer)
        modules = dict(model.named_modules())
        if name not in modules:
            raise UsageError(f"--layer {layer}: the model has no such module")
        self.model = model
        self.layer = layer
        self.module = modules[name]
        self.activation: torch.Tensor | None = None
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
        # A copy: the next module may work in place, which a leaf cannot allow.
        self.activation = output.detach().clone().requires_grad_(True)
        return self.activation

    def __enter__(self) -> "FeatureTap":
        self._frozen.__enter__()
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._frozen.__exit__(*exc)


# --------------------------------------------------------------------------- channel weights


def _safe(x: torch.Tensor) -> torch.Tensor:
    """Replace exact zeros by one (the official code's guard against 0/0)."""
    return torch.where(x != 0, x, torch.ones_like(x))


def gradcam_weights(grads: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al.): the spatial mean of the gradient, ``(N, K)``."""
    return grads.mean(dim=(2, 3))


def gradcampp_alphas(grads: torch.Tensor, acts: torch.Tensor, variant: str = "official") -> torch.Tensor:
    """Grad-CAM++ pixel weights alpha (eq. 19 with the exp(S) factors cancelled)."""
    if variant not in VARIANTS:
        raise UsageError(f"unknown Grad-CAM++ variant {variant!r}; choose from {', '.join(VARIANTS)}")
    g2 = grads * grads
    g3 = g2 * grads
    act_sum = acts.sum(dim=(2, 3), keepdim=True)
    alpha = g2 / _safe(2.0 * g2 + act_sum * g3)  # alpha = 0 wherever g = 0
    if variant == "official":
        norm = (alpha * (grads > 0)).sum(dim=(2, 3), keepdim=True)
        alpha = alpha / _safe(norm)
    return alpha


def gradcampp_weights(grads: torch.Tensor, acts: torch.Tensor, variant: str = "official") -> torch.Tensor:
    """Grad-CAM++: ``sum_ij alpha_kij relu(g_kij)``, ``(N, K)``."""
    alpha = gradcampp_alphas(grads, acts, variant)
    return (alpha * torch.relu(grads)).sum(dim=(2, 3))


def combine(weights: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """``relu(sum_k w_k A_k)`` divided by its maximum per image (an all-zero map stays 0)."""
    cam = torch.relu(torch.einsum("nk,nkhw->nhw", weights, acts))
    peak = cam.amax(dim=(1, 2), keepdim=True)
    return cam / _safe(peak)


def cam_maps(grads: torch.Tensor, acts: torch.Tensor, variant: str = "official",
             methods=METHODS) -> dict[str, torch.Tensor]:
    """Every requested map from one (A, g) pair, computed in float64."""
    grads = grads.double()
    acts = acts.double()
    weighting = {
        "gradcam": lambda: gradcam_weights(grads, acts),
        "gradcampp": lambda: gradcampp_weights(grads, acts, variant),
    }
    unknown = [m for m in methods if m not in weighting]
    if unknown:
        raise UsageError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    return {m: combine(weighting[m](), acts).float() for m in methods}


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
        order = np.argsort(-self.probs[i])[:k]
        return [(int(c), float(self.probs[i, c])) for c in order]


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


def explain(model: torch.nn.Module, layer: str, x: torch.Tensor, classes=None,
            variant: str = "official", methods=METHODS) -> Explanation:
    """Explain a preprocessed batch ``x`` (N, 3, H, W) with one forward and one backward pass.

    ``classes``: None (the predicted class), one index for all images, or one
    per image; -1 also means the predicted class.
    """
    if variant not in VARIANTS:
        raise UsageError(f"unknown Grad-CAM++ variant {variant!r}; choose from {', '.join(VARIANTS)}")
    with torch.enable_grad(), FeatureTap(model, layer) as tap:
        logits = model(x)
        acts = tap.activation
        if acts is None:
            raise UsageError(f"--layer {layer}: this module ran {tap.calls} times in the forward pass")
        if not torch.isfinite(logits).all():
            raise ModelError("the model produced non-finite logits (NaN or inf); are the weights broken?")
        idx = _class_tensor(classes, logits.detach())
        score = logits.gather(1, idx[:, None]).sum()  # images are independent in eval mode
        (grads,) = torch.autograd.grad(score, acts, allow_unused=True)
    if grads is None:  # the target does not reach the logits
        grads = torch.zeros_like(acts)
    maps = cam_maps(grads.detach(), acts.detach(), variant, methods)
    logits = logits.detach().float()
    return Explanation(
        logits=logits.cpu().numpy(),
        probs=torch.softmax(logits, dim=1).cpu().numpy(),
        classes=idx.cpu().numpy(),
        maps={m: v.cpu().numpy() for m, v in maps.items()},
        layer=layer,
        variant=variant,
    )


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
