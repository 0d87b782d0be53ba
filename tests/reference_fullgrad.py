"""An independent reference computation of FullGrad, written from the paper and the official code's definition.

Nothing here imports campp. torch is used only to run the given model forward and to differentiate its class
score; every post-processing step (absolute value, rescaling, bilinear upsampling, summation, the common last
step) is NumPy float64.

Source: Srinivas & Fleuret, "Full-Gradient Representation for Neural Network Visualization", NeurIPS 2019,
arXiv:1905.00780. Official code: github.com/idiap/fullgrad-saliency, saliency/fullgrad.py (class FullGrad:
fullGradientDecompose, _postProcess, saliency) and saliency/tensor_extractor.py (class FullGradExtractor).

Definition (paper, eq. "full-gradient decomposition"; official fullGradientDecompose):
  For a ReLU network with biases, the class score is exactly
      S(x) = <dS/dx, x> + sum_layers sum_{c,i,j} b_c * dS/dz_{c,i,j}
  (completeness), where z is the output of a layer whose output is affine in its input plus a bias b
  broadcast over positions. The input term is x * dS/dx; the bias term of a layer is b_c * dS/dz_{c,ij}.
  The FullGrad saliency map (paper eq. 5, official ``saliency``) is
      S_f(x) = sum_c psi(x * dS/dx)_c  +  sum_layers sum_c upsample(psi(b * dS/dz))_c
  with psi = ``_postProcess``: absolute value, then per image over ALL that term's channels and positions
  subtract the min and divide by (max + eps), eps = 1e-6, the max being taken after the min was subtracted.

Layers used (``bias_layers``), in the order of ``model.modules()``:
  * every ``nn.Conv2d`` (isinstance, so subclasses too) whose ``bias`` is not None; its bias is ``bias``;
  * every ``nn.BatchNorm2d`` (isinstance) whose class does not override ``forward`` (so that the module
    really computes the eval-mode affine map below); its bias is the effective eval-mode bias
    ``beta - running_mean * gamma / sqrt(running_var + eps)`` (official ``_extract_layer_bias``: the BN output
    is x * gamma/s + (beta - m * gamma/s)), with gamma = 1 and beta = 0 when affine=False;
  and of these only the calls whose output is 4-D (N, C, h, w). Why 4-D only: the official extractor also
  collects ``nn.Linear`` biases (needed for the completeness check), but ``FullGrad.saliency`` keeps only
  bias-gradients with as many dimensions as the image ("Select only Conv layers"), since only those have a
  spatial layout that can be upsampled onto the image. Linear-head bias terms are therefore NOT in
  ``bias_terms``; for completeness they add b[c] * dS/dlogit = b[c] (a head Linear layer), see the checks.

Choices made here (each a point where the official code is silent, loose or differs):
  * The score of image n is the raw output ``model(x)[n, classes[n]]`` (pre-softmax), as in the official
    code (-nll_loss of the raw output, reduction='sum'). The official code takes the argmax class when none is
    given; here the classes are always given. As in the official code the gradient is that of the SUM of the
    N scores; in eval mode images do not interact, so each image gets the gradient of its own score.
  * dS/dz is obtained with a zero probe: a forward hook on each layer returns ``z + d`` with d a zero tensor
    that requires grad, and dS/dz = dS/dd (torch.autograd.grad). The probe's gradient is by construction the
    gradient with respect to the layer's own output, also when an in-place op follows the layer
    (``nn.ReLU(inplace=True)`` after a conv, as in torchvision's VGG16) - the in-place op then overwrites the
    sum z + d, never d. The official code uses the deprecated ``register_backward_hook``; for a one-op module
    such as Conv2d/BatchNorm2d its grad_output is the same gradient.
  * The bias term is paired with the gradient of the same module call directly (the official code pairs the
    i-th bias with the (L-1-i)-th backward-hook firing, which assumes backward order is reversed forward
    order; that can mis-pair in branching networks and is not copied).
  * A layer whose module is never called in the forward pass has no output and gets no entry; a module called
    more than once (shared weights) is refused with ValueError (its bias would have several outputs; the
    official code would then pair biases and gradients wrongly). A BatchNorm2d in training mode, or without
    running statistics (track_running_stats=False), is refused with ValueError: its output is then not
    x * gamma/s + bias with a fixed bias.
  * A layer output that the score does not depend on gets a zero gradient (allow_unused).
  * Computation runs in the dtype of the model and of x (pass ``model.double()`` and a float64 x to get
    float64 accuracy); results, biases and all post-processing are converted to / done in float64.
  * Upsampling (official ``F.interpolate(mode='bilinear', align_corners=True)``) is written in NumPy:
    source coordinate s = i * (h_in - 1) / (h_out - 1) (s = 0 when h_out = 1), i0 = floor(s),
    i1 = min(i0 + 1, h_in - 1), weight s - i0; separably along rows and columns. The input term is not
    resized (it already has the image size).
  * The official map is (N, 1, H, W); here (N, H, W). The common last step of the tested library follows:
    relu(map) / max per image, a map whose max is 0 staying 0.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

__all__ = [
    "FULLGRAD_EPS",
    "bias_layers",
    "effective_bias",
    "fullgrad_terms",
    "postprocess",
    "upsample_bilinear_align_corners",
    "fullgrad_combination",
    "fullgrad_reference",
]

FULLGRAD_EPS = 1e-6  # official _postProcess default


def _is_plain_bn2d(m: nn.Module) -> bool:
    return isinstance(m, nn.BatchNorm2d) and type(m).forward is nn.BatchNorm2d.forward


def bias_layers(model: nn.Module) -> list[nn.Module]:
    """The candidate layers, in ``model.modules()`` order: Conv2d with a bias, and BatchNorm2d not overriding forward.

    (Only the ones whose output turns out 4-D get a bias term; see ``fullgrad_terms``.)
    """
    out = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.bias is not None:
            out.append(m)
        elif _is_plain_bn2d(m):
            out.append(m)
    return out


def effective_bias(m: nn.Module) -> np.ndarray:
    """The bias b (C,) of a layer in float64: conv.bias, or for BatchNorm2d in eval mode
    beta - running_mean * gamma / sqrt(running_var + eps) (gamma = 1, beta = 0 when affine=False).
    """
    if isinstance(m, nn.Conv2d):
        return m.bias.detach().cpu().double().numpy()
    if m.training:
        raise ValueError("FullGrad reference: BatchNorm2d must be in eval mode")
    if m.running_mean is None or m.running_var is None:
        raise ValueError("FullGrad reference: BatchNorm2d without running statistics has no fixed bias")
    mean = m.running_mean.detach().cpu().double().numpy()
    var = m.running_var.detach().cpu().double().numpy()
    C = mean.shape[0]
    gamma = m.weight.detach().cpu().double().numpy() if m.weight is not None else np.ones(C)
    beta = m.bias.detach().cpu().double().numpy() if m.bias is not None else np.zeros(C)
    return beta - mean * gamma / np.sqrt(var + float(m.eps))


def fullgrad_terms(model: nn.Module, x: torch.Tensor, classes) -> tuple[np.ndarray, list[np.ndarray]]:
    """The full-gradient decomposition of the raw class scores S_n = model(x)[n, classes[n]].

    Returns (input_term, bias_terms):
      input_term  float64 (N, 3, H, W) = x * dS/dx;
      bias_terms  list, in ``model.modules()`` order over the layers of ``bias_layers`` whose output is 4-D,
                  of float64 (N, C, h, w) = b[c] * dS/dz[n, c, i, j], z the layer's output.
    dS/dz is the gradient of a zero probe added to z by a forward hook (exact also with in-place ops after
    the layer). The model must be in eval mode; it is not modified (hooks are removed afterwards).
    """
    layers = bias_layers(model)
    N = x.shape[0]
    cls = torch.as_tensor(np.asarray(classes, dtype=np.int64).reshape(-1), device=x.device)
    if cls.numel() != N:
        raise ValueError(f"FullGrad reference: {cls.numel()} classes for {N} images")

    probes: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(layers))}

    def make_hook(i):
        def hook(module, inputs, output):
            if not isinstance(output, torch.Tensor) or output.dim() != 4:
                return None
            d = torch.zeros_like(output, requires_grad=True)
            probes[i].append(d)
            return output + d

        return hook

    handles = [m.register_forward_hook(make_hook(i)) for i, m in enumerate(layers)]
    try:
        with torch.enable_grad():
            xi = x.detach().clone().requires_grad_(True)
            out = model(xi)
            if out.dim() != 2 or out.shape[0] != N:
                raise ValueError(f"FullGrad reference: model output of shape {tuple(out.shape)}, expected (N, classes)")
            score = out[torch.arange(N, device=out.device), cls].sum()
            used = [i for i in range(len(layers)) if probes[i]]
            for i in used:
                if len(probes[i]) > 1:
                    raise ValueError(f"FullGrad reference: layer {layers[i]!r} is called {len(probes[i])} times")
            grads = torch.autograd.grad(score, [xi] + [probes[i][0] for i in used], allow_unused=True)
    finally:
        for h in handles:
            h.remove()

    def np64(t, like):
        if t is None:
            return np.zeros(tuple(like.shape), dtype=np.float64)
        return t.detach().cpu().double().numpy()

    g_x = np64(grads[0], xi)
    input_term = xi.detach().cpu().double().numpy() * g_x
    bias_terms = []
    for k, i in enumerate(used):
        g = np64(grads[1 + k], probes[i][0])
        b = effective_bias(layers[i])
        if b.shape[0] != g.shape[1]:
            raise ValueError(f"FullGrad reference: bias of {b.shape[0]} channels for an output of {g.shape[1]}")
        bias_terms.append(b[None, :, None, None] * g)
    return input_term, bias_terms


def postprocess(t: np.ndarray, eps: float = FULLGRAD_EPS) -> np.ndarray:
    """Official ``_postProcess``: |t|, then per image n (over all channels and positions of t[n])
    subtract the min, then divide by (max + eps), the max taken after the subtraction.
    """
    a = np.abs(np.asarray(t, dtype=np.float64))
    flat = a.reshape(a.shape[0], -1)
    shape = (a.shape[0],) + (1,) * (a.ndim - 1)
    a = a - flat.min(axis=1).reshape(shape)
    flat = a.reshape(a.shape[0], -1)
    return a / (flat.max(axis=1).reshape(shape) + eps)


def _align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation matrix with align_corners=True source coordinates."""
    Wm = np.zeros((n_out, n_in), dtype=np.float64)
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    for o in range(n_out):
        s = o * scale
        i0 = min(int(np.floor(s)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        lam = s - i0
        Wm[o, i0] += 1.0 - lam
        Wm[o, i1] += lam
    return Wm


def upsample_bilinear_align_corners(t: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of the last two axes of ``t`` to ``size`` = (H, W), align_corners=True
    (what ``F.interpolate(mode='bilinear', align_corners=True)`` computes), in float64.
    """
    t = np.asarray(t, dtype=np.float64)
    H, W = int(size[0]), int(size[1])
    Ry = _align_corners_matrix(t.shape[-2], H)
    Rx = _align_corners_matrix(t.shape[-1], W)
    return np.einsum("Hh,...hw,Ww->...HW", Ry, t, Rx, optimize=True)  # two matrix products, not a naive loop


def fullgrad_combination(input_term: np.ndarray, bias_terms: list[np.ndarray], eps: float = FULLGRAD_EPS) -> np.ndarray:
    """The official FullGrad map (N, H, W) BEFORE the common last step:
    sum_c psi(input_term)_c + sum_terms sum_c upsample(psi(term))_c, psi = ``postprocess``.
    """
    input_term = np.asarray(input_term, dtype=np.float64)
    H, W = input_term.shape[-2:]
    cam = postprocess(input_term, eps).sum(axis=1)
    for t in bias_terms:
        cam = cam + upsample_bilinear_align_corners(postprocess(t, eps), (H, W)).sum(axis=1)
    return cam


def _relu_max_normalised(cam: np.ndarray) -> np.ndarray:
    cam = np.maximum(np.asarray(cam, dtype=np.float64), 0.0)
    out = np.zeros_like(cam)
    for n in range(cam.shape[0]):
        m = cam[n].max()
        if m > 0:
            out[n] = cam[n] / m
    return out


def fullgrad_reference(model: nn.Module, x: torch.Tensor, classes) -> np.ndarray:
    """FullGrad saliency (N, H, W) float64: ``fullgrad_combination`` of ``fullgrad_terms``, then
    relu and division by the per-image max (a map whose max is 0 stays 0).
    """
    input_term, bias_terms = fullgrad_terms(model, x, classes)
    return _relu_max_normalised(fullgrad_combination(input_term, bias_terms))
