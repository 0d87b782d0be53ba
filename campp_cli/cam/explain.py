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
from .methods import (
    DEFAULT_METHODS,
    MethodInput,
    check_method_settings,
    eigen_smoothing,
    get_method,
    needs_any,
    nonzero,
    parse_methods,
    uses_any,
)
from .outputs import LogitsOutput
from .taps import BiasTap, FeatureTap, FrozenParameters, LayerSwap, layer_name, split_layers
from .targets import probabilities, target_scores

# --------------------------------------------------------------------------- the maps


def normalise(combination: torch.Tensor) -> torch.Tensor:
    """``relu(combination)`` divided by its maximum per image (an all-zero map stays 0)."""
    cam = torch.relu(combination)
    peak = cam.amax(dim=(1, 2), keepdim=True)
    return cam / nonzero(peak)


#: LayerCAM's scaling of each layer's map before the fusion (Jiang et al. 2021, eq. 9: tanh(gamma M / max M)).
FUSION_GAMMA = 2.0


def fuse_layers(maps: list) -> torch.Tensor:
    """Several layers' maps of one method, (N, h_l, w_l) each in [0, 1] (divided by their maximum), as one:
    LayerCAM's rule (Jiang et al., IEEE TIP 2021, eq. 9, as torchcam fuses them): each map scaled to
    tanh(2 M), upsampled to the finest grid (bilinear, half-pixel centres, as the figures draw maps), the
    element-wise maximum over the layers, divided by its maximum; computed in float64, returned in the
    maps' dtype."""
    import torch.nn.functional as F

    size = max((tuple(m.shape[-2:]) for m in maps), key=lambda hw: hw[0] * hw[1])
    fused = None
    for m in maps:
        scaled = torch.tanh(FUSION_GAMMA * m.double())
        if tuple(scaled.shape[-2:]) != size:
            scaled = F.interpolate(scaled[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        fused = scaled if fused is None else torch.maximum(fused, scaled)
    return normalise(fused).to(maps[0].dtype)


def cam_maps(grads: torch.Tensor | None, acts: torch.Tensor, methods=DEFAULT_METHODS, *, classes=None,
             image: torch.Tensor | None = None, score=None, progress=None, settings: dict | None = None,
             head=None, hvp: torch.Tensor | None = None, relayer=None, biases=None,
             own_grads: dict | None = None, **method_settings) -> dict[str, torch.Tensor]:
    """Every requested map from one (A, g) pair, computed in float64, returned as float32 (float64 for a
    float64 layer); differentiable functions of A and g: a graph they carry, the maps carry too.

    ``classes``, ``image``, ``score``, ``progress``: what methods that need forward passes take (see
    :class:`campp_cli.cam.methods.MethodInput`); ``head`` ((W, b)), ``hvp``, ``relayer``, ``biases``: what some methods
    use (:data:`campp_cli.cam.methods.USES`); ``own_grads``: method name -> the gradient of that method's
    own target.  ``settings`` and any other keyword: the methods' own settings (``variant="paper"``),
    checked, the others at their defaults.
    """
    import dataclasses

    names = parse_methods(methods)
    checked = check_method_settings({**(settings or {}), **method_settings}, names)
    inp = MethodInput(acts=acts.double(), grads=None if grads is None else grads.double(), classes=classes,
                      image=image, score=score, progress=progress, settings=checked,
                      head=None if head is None else tuple(head),
                      hvp=None if hvp is None else hvp.double(), relayer=relayer,
                      biases=biases)
    dtype = torch.promote_types(acts.dtype, torch.float32)
    out = {}
    for name in names:
        method = get_method(name)
        mine = inp
        if method.target is not None:
            own = (own_grads or {}).get(name)
            if own is None:
                raise UsageError(f"method {name} needs the gradient of its own target; none was computed")
            mine = dataclasses.replace(inp, grads=own.double())
        elif method.needs == "gradients" and inp.grads is None:
            raise UsageError(f"method {name} needs the gradient; none was computed")
        missing = [use for use in method.uses if getattr(mine, use) is None]
        if missing:
            raise UsageError(f"method {name} uses {', '.join(missing)}; none was given")
        with eigen_smoothing(checked["eigen_smooth"]):
            out[name] = normalise(method.compute(mine)).to(dtype)
    return out


# --------------------------------------------------------------------------- the pass


@dataclass
class Explanation:
    """Result of :func:`explain` for a batch of N images (all arrays on the CPU)."""

    logits: np.ndarray  # (N, C) float32, pre-softmax
    probs: np.ndarray  # (N, C) float32, softmax (activation="sigmoid": each label's sigmoid)
    classes: np.ndarray  # (N,) explained class per image
    # method -> (N, h, w) in [0, 1], low resolution, float32 (float64 for a float64 layer); with
    # differentiable=True, torch tensors on the model's device that carry gradients to its weights
    maps: dict[str, np.ndarray]
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
            score: str = "logit", activation: str = "softmax", output_key: "str | int | None" = None,
            differentiable: bool = False, settings: dict | None = None, **method_settings) -> Explanation:
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

    ``score``: what the gradient methods differentiate
    (:data:`campp_cli.cam.targets.SCORES`): the class's ``"logit"`` (the
    papers'), its ``"probability"`` or its ``"log_probability"``.
    ``activation``: ``"softmax"`` (one class per image) or ``"sigmoid"`` (a
    multi-label model: ``probs`` and the scores are each label's sigmoid).

    ``output_key``: where the logits are when the model's forward returns a
    dict, Hugging Face ``ModelOutput``, tuple or dataclass
    (:func:`campp_cli.cam.outputs.logits_of`; default ``logits``, or a
    tuple's first).  ``x`` is cast to the model's floating dtype (a
    half-precision model); the maps are computed in float64 whatever it is.
    It runs as well inside the caller's ``torch.no_grad()`` or
    ``torch.inference_mode()``.

    ``differentiable=True``: the maps are returned as torch tensors (on the
    model's device) that carry gradients to the model's weights (the
    gradient g itself is differentiated: a double backward), for training
    with a loss on the explanation; only methods of activations and
    gradients have such maps.
    """
    (explained,) = _explain(model, layer, x, classes, None, methods, image=image, preprocess=preprocess,
                            progress=progress, score=score, activation=activation, output_key=output_key,
                            differentiable=differentiable, settings={**(settings or {}), **method_settings})
    return explained


def explain_top(model: torch.nn.Module, layer: "str | torch.nn.Module", x: torch.Tensor, k: int = 3,
                methods=DEFAULT_METHODS, *, image: torch.Tensor | None = None, preprocess=None, progress=None,
                score: str = "logit", activation: str = "softmax", output_key: "str | int | None" = None,
                differentiable: bool = False, settings: dict | None = None, **method_settings) -> list[Explanation]:
    """Each image's ``k`` most probable classes explained, from one forward pass: a list of ``k``
    :class:`Explanation` s, the most probable class first (``[0]`` is :func:`explain` 's default).

    The gradients of the ``k`` scores come from one batched backward pass to the layer
    (``torch.func.vmap`` over ``torch.autograd.grad``; ``k`` passes of the head where an operation has
    no batched rule); class-agnostic maps (Eigen-CAM) are made once.  Keywords: as :func:`explain`.
    """
    import numbers

    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise UsageError("give the number of classes, 1 or more", param="top", value=k)
    k = int(k)
    return _explain(model, layer, x, None, k, methods, image=image, preprocess=preprocess, progress=progress,
                    score=score, activation=activation, output_key=output_key, differentiable=differentiable,
                    settings={**(settings or {}), **method_settings})


def explain_labels(model: torch.nn.Module, layer: "str | torch.nn.Module", x: torch.Tensor,
                   threshold: float = 0.5, methods=DEFAULT_METHODS, **keywords) -> tuple[list[Explanation], list[int]]:
    """A multi-label model's labels explained: every label whose sigmoid probability reaches ``threshold``
    (at least each image's most probable one), from one forward pass and one batched backward pass.

    Returns ``(ranked, counts)``: one :class:`Explanation` per rank, as :func:`explain_top` for the most
    labels any image has (probabilities are each label's sigmoid), and how many of them are image i's
    (``counts[i]``; its ranks beyond are not its labels).  Keywords: as :func:`explain`.
    """
    from .targets import labels_above

    if not 0 <= threshold <= 1:
        raise UsageError("give a probability, 0..1", param="threshold", value=threshold)
    counts: list[int] = []

    def top(logits: torch.Tensor) -> int:
        counts.extend(labels_above(torch.sigmoid(logits.float()).cpu().numpy(), threshold))
        return max(counts)

    if keywords.pop("activation", "sigmoid") != "sigmoid":
        raise UsageError("a multi-label model's labels are its sigmoid's", param="activation")
    settings = {**(keywords.pop("settings", None) or {})}
    known = {"image", "preprocess", "progress", "score", "output_key", "differentiable"}
    settings.update({k: keywords.pop(k) for k in list(keywords) if k not in known})
    ranked = _explain(model, layer, x, None, top, methods, activation="sigmoid", settings=settings, **keywords)
    return ranked, counts


def _explain(model, layer, x, classes, top, methods, *, image=None, preprocess=None, progress=None,
             score="logit", activation="softmax", output_key=None, differentiable=False,
             settings=None) -> list[Explanation]:
    """:func:`explain` of ``classes``, or of each image's ``top`` most probable classes: one Explanation per
    target, from one forward pass and one (batched) backward pass."""
    from .targets import check_activation, check_score, probabilities

    names = parse_methods(methods)
    settings = check_method_settings(dict(settings or {}), names)  # before the pass
    check_score(score)
    check_activation(activation)
    if settings["aug_smooth"] or settings["noise_samples"]:
        if differentiable:
            raise UsageError("smoothed maps (aug_smooth, noise_samples) are not differentiable",
                             param="differentiable")
        return _smoothed(model, layer, x, classes, top, names, image=image, preprocess=preprocess,
                         progress=progress, score=score, activation=activation, output_key=output_key,
                         settings=settings)
    if differentiable and needs_any(names, "forward passes"):
        costly = [n for n in names if get_method(n).needs == "forward passes"]
        raise UsageError(f"{', '.join(costly)}: maps from extra forward passes are not differentiable; "
                         f"choose methods of activations and gradients", param="differentiable")
    full = uses_any(names, "biases")
    if differentiable and full:
        raise UsageError("fullgrad: its maps are not differentiable; choose methods of the layer's activations "
                         "and gradients", param="differentiable")
    if differentiable and not x.requires_grad and not any(p.requires_grad for p in model.parameters()):
        raise UsageError("no parameter of the model (nor the input) requires grad, so the maps cannot carry "
                         "gradients", param="differentiable")
    own = [(n, get_method(n).target) for n in names if get_method(n).target is not None]
    second = uses_any(names, "hvp")
    with torch.inference_mode(False), LogitsOutput(model, output_key), \
            _twice_differentiable(differentiable or second):
        x = model_input(model, x)
        layers = split_layers(layer)
        pass_ = _forward_backward(model, layers, x, classes, needs_any(names, "gradients"), differentiable,
                                  score, top, activation, own=[(n, fn, settings) for n, fn in own], hvp=second,
                                  full=full)
        logits, idx, acts, grads = pass_[:4]
        own_grads, hvps, biases = pass_[4], pass_[5], pass_[6]
        common = {}
        if needs_any(names, "forward passes"):
            source = image if image is not None else x
            prep = preprocess if image is not None else None
            common.update(image=source.detach(), score=_scorer(model, prep, activation),
                          progress=None if progress is None else _ImagesOnce(progress))
        extras = []  # what each layer's methods use
        for where, a in zip(layers, acts):
            extra = dict(common)
            if uses_any(names, "head"):
                extra["head"] = class_weights(model, a, logits, where, keep_graph=differentiable)
            if uses_any(names, "relayer"):
                extra["relayer"] = _relayer(model, where, x.detach(), score, activation)
            extras.append(extra)
        agnostic = [n for n in names if not get_method(n).class_specific]
        layer_free = [n for n in names if "biases" in get_method(n).uses]  # FullGrad: every layer already
        out, shared = [], {}
        with torch.enable_grad() if differentiable else torch.no_grad():
            for t in range(idx.shape[1]):
                wanted = [n for n in names if n not in shared]
                per_layer = []
                for j, (a, extra) in enumerate(zip(acts, extras)):
                    mine = wanted if j == 0 else [n for n in wanted if n not in layer_free]
                    per_layer.append(cam_maps(
                        None if grads is None else grads[j][t], a, mine, classes=idx[:, t], settings=settings,
                        hvp=None if hvps is None else hvps[j][t],
                        biases=None if biases is None or j else biases[t],
                        own_grads={n: g[j][t] for n, g in own_grads.items()}, **extra))
                made = per_layer[0] if len(layers) == 1 else \
                    {n: per_layer[0][n] if n in layer_free else fuse_layers([m[n] for m in per_layer]) for n in wanted}
                shared.update({n: made[n] for n in agnostic if n in made})
                out.append({n: made[n] if n in made else shared[n] for n in names})
        if len(layers) > 1:
            layer = ",".join(layer_name(model, one) for one in layers)
    logits = logits.float()
    probs = probabilities(logits, activation).cpu().numpy()
    logits = logits.cpu().numpy()
    return [Explanation(logits=logits, probs=probs, classes=idx[:, t].cpu().numpy(),
                        maps=maps if differentiable else {m: v.cpu().numpy() for m, v in maps.items()},
                        layer=layer, settings=settings)
            for t, maps in enumerate(out)]


def _twice_differentiable(differentiable: bool):
    """For differentiable maps, attention by its plain formula (PyTorch's math kernel): the fused CPU and
    CUDA kernels have no double backward, which the gradient of a map needs; else nothing."""
    import contextlib

    if not differentiable:
        return contextlib.nullcontext()
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # an older torch: its attention has no fused kernels to avoid
        return contextlib.nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


def model_input(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` as the model takes it: in the dtype of its floating parameters (a half-precision model), and an
    ordinary tensor where it was made under ``torch.inference_mode()`` (which autograd cannot record).
    Every pass campp runs feeds the model through it (the explaining pass, Score-CAM's, guided
    backpropagation, evaluate's perturbations, the dry runs)."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), x.dtype)
    if x.is_floating_point() and x.dtype != dtype:
        x = x.to(dtype)
    return x.clone() if x.is_inference() and not torch.is_inference_mode_enabled() else x


def _forward_backward(model: torch.nn.Module, layers: list, x: torch.Tensor, classes, wants_grads: bool,
                      differentiable: bool = False, score: str = "logit", top: int | None = None,
                      activation: str = "softmax", own=(), hvp: bool = False, full: bool = False):
    """One forward pass through the taps of ``layers`` (and the backward to them when ``wants_grads``): the
    logits, the explained classes (N, T) (``classes``, or each image's ``top`` most probable: a number, or
    a function of the logits that gives it), each layer's activations and each layer's gradient of each
    target's ``score`` (T, N, K, h, w) (None without ``wants_grads``), detached unless ``differentiable``
    (then the activations keep their graph and the gradient has one); then ``{name: [(T, N, K, h, w) per
    layer]}``, the gradients of the methods' own targets (``own``: (name, target, settings) each), from the
    same batched backward pass, and with ``hvp`` each layer's Hessian-vector products H A of each target's
    score (T, N, K, h, w), else None; last, with ``full`` (FullGrad), each target's ``(x * dS/dx, [b * dS/dz
    for each layer of BiasTap])``, from the backward carried on to the input (the activations stay in the
    graph of what came before them), else None.  Of several layers, the first the forward pass reaches is
    the gradient leaf and the others stay in its graph, so that one backward pass reaches them all."""
    import contextlib

    grads, own_grads, hvps, biases = None, {}, None, None
    grad_mode = torch.enable_grad() if wants_grads or differentiable else torch.no_grad()
    frozen = FrozenParameters(model) if full else contextlib.nullcontext()
    if full:  # the model gets a copy of the leaf: it may change its input in place
        leaf = x.detach().requires_grad_(True)
        x = leaf.clone()
    with grad_mode, frozen, contextlib.ExitStack() as stack:
        taps = [stack.enter_context(FeatureTap(model, one, keep_graph=differentiable or full, chain=len(layers) > 1))
                for one in layers]
        bias_tap = stack.enter_context(BiasTap(model, x.shape[0])) if full else None
        logits = model(x)
        acts = [tap.activation for tap in taps]
        for tap in taps:
            if tap.activation is None:
                raise UsageError(f"--layer {tap.layer}: this module ran {tap.calls} times in the forward pass")
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ModelError(f"the model's output is {shape}, not (N, classes) logits")
        if not torch.isfinite(logits).all():
            raise ModelError("the model produced non-finite logits (NaN or inf); are the weights broken?")
        if callable(classes):  # smoothing: a function of the logits gives the (N, T) classes, the photos' own
            idx = classes(logits.detach())
        elif top is None:
            idx = class_tensor(classes, logits.detach())[:, None]
        else:  # a number, or what a function of the logits says (a multi-label model's labels)
            idx = top_tensor(top(logits.detach()) if callable(top) else top, logits.detach())
        if wants_grads:
            t = idx.shape[1]
            columns = [target_scores(logits, idx, score, activation)]
            for _, target, settings in own:  # each method's own score of each target class
                columns += [target(logits, idx[:, j], settings)[:, None] for j in range(t)]
            # H A is zero where the scores are piecewise linear in the activations: then no graph of the
            # backward and no second backward
            curved = hvp and not piecewise_linear(columns[0], acts)
            every = _target_grads(torch.cat(columns, dim=1), acts, differentiable or curved, keep=full)
            grads = [e[:t] for e in every]
            own_grads = {name: [e[t * (m + 1): t * (m + 2)] for e in every] for m, (name, _, _) in enumerate(own)}
            if full:
                biases = _BiasGradients(columns[0], leaf, bias_tap)
            if hvp:
                hvps = [_hessian_products(g, a, differentiable) if curved else torch.zeros_like(g)
                        for g, a in zip(grads, acts)]
            if not differentiable:
                grads = [g.detach() for g in grads]
                own_grads = {name: [g.detach() for g in gs] for name, gs in own_grads.items()}
    if differentiable:
        return logits.detach(), idx, acts, grads, own_grads, hvps, biases
    return logits.detach(), idx, [a.detach() for a in acts], grads, own_grads, hvps, biases


class _BiasGradients:
    """FullGrad's terms of each column ``j`` of ``scores`` (N, T), made when asked for (``self[j]``), so
    that a run of T targets holds one target's terms at a time: ``(x * dS/dx, [b * dS/dz for each output z
    that ``tap`` holds])``, detached; one backward through the whole model per target, from ``leaf``,
    the input's gradient leaf (the model was given a copy of it, which it may change in place)."""

    def __init__(self, scores: torch.Tensor, leaf: torch.Tensor, tap: "BiasTap"):
        self.scores, self.leaf, self.outputs, self.biases = scores, leaf, tap.outputs, tap.biases

    def __getitem__(self, j: int):
        with torch.enable_grad():  # the maps are made under no_grad: the column's sum must be recorded
            try:
                found = list(torch.autograd.grad(self.scores[:, j].sum(), [self.leaf, *self.outputs],
                                                 retain_graph=True, allow_unused=True))
            except RuntimeError as exc:
                if "use_reentrant" not in str(exc):
                    raise
                raise UsageError("fullgrad: the model checkpoints a block with torch.utils.checkpoint("
                                 "use_reentrant=True), whose backward cannot reach the input; checkpoint with "
                                 "use_reentrant=False, or choose another method", param="methods") from None
        # Each gradient replaced by its term as it goes, so that at most one more is held: not in place, as
        # two outputs summed (a residual) may be handed the very same gradient tensor
        for k, (z, b) in enumerate(zip(self.outputs, self.biases), start=1):
            found[k] = torch.zeros_like(z) if found[k] is None else (found[k] * b[None, :, None, None]).detach()
        inputs = torch.zeros_like(self.leaf) if found[0] is None else (found[0] * self.leaf.detach()).detach()
        return inputs, found[1:]


#: Autograd nodes that are linear, or piecewise linear, in every input (structure, sums, pools, ReLU-like
#: activations): a score computed from A through these alone has H A = 0.
PIECEWISE_LINEAR = frozenset({
    "AddBackward0", "SubBackward0", "NegBackward0", "CloneBackward0", "ToCopyBackward0", "ViewBackward0",
    "UnsafeViewBackward0", "ReshapeAliasBackward0", "AsStridedBackward0", "AsStridedBackward1",
    "PermuteBackward0", "TransposeBackward0", "TBackward0", "ExpandBackward0", "SqueezeBackward0",
    "SqueezeBackward1", "UnsqueezeBackward0", "SliceBackward0", "SelectBackward0", "IndexBackward0",
    "GatherBackward0", "CatBackward0", "StackBackward0", "SplitBackward0", "UnbindBackward0", "SumBackward0",
    "SumBackward1", "MeanBackward0", "MeanBackward1", "AvgPool2DBackward0", "AdaptiveAvgPool2DBackward0",
    "MaxPool2DWithIndicesBackward0", "AdaptiveMaxPool2DBackward0", "ReluBackward0", "ThresholdBackward0",
    "HardtanhBackward0", "LeakyReluBackward0", "ClampBackward1", "ClampMinBackward0", "ClampMaxBackward0",
    "MaximumBackward0", "MinimumBackward0", "AmaxBackward0", "AminBackward0", "MaxBackward0", "MaxBackward1",
    "AddBackward1", "SubBackward1", "RsubBackward1", "MulBackward1", "DivBackward1",  # with a number
})
#: Nodes that are linear in each input when the others are constants (products, convolutions, linear
#: layers with frozen weights; campp's sparse-gradient linear): linear where only one input depends on A.
PRODUCTS = frozenset({"MmBackward0", "AddmmBackward0", "BmmBackward0", "MulBackward0", "ConvolutionBackward0",
                      "LinearBackward0", "_LinearSparseInputGradBackward", "NativeBatchNormBackward0"})


def piecewise_linear(scores: torch.Tensor, acts: list) -> bool:
    """Whether every operation that takes ``acts`` to ``scores`` is (piecewise) linear in them, read from
    the autograd graph: then the Hessian of each score with respect to A is zero (ReLU's and max-pooling's
    second derivatives are zero wherever they are defined, as autograd's double backward computes them).
    Unknown operations, products of two A-dependent inputs, a division by one and a batch norm in training
    mode count as curved."""
    ends = {a.grad_fn for a in acts if a.grad_fn is not None}
    leaves = {id(a) for a in acts if a.grad_fn is None}
    depends: dict = {}

    def children(node):
        return [child for child, _ in node.next_functions if child is not None]

    order, opened, stack = [], set(), [scores.grad_fn]
    while stack:  # post-order, without recursion (a graph that runs back to the input is deep)
        node = stack.pop()
        if node is None or node in depends:
            continue
        if node in ends or type(node).__name__ == "AccumulateGrad":
            depends[node] = node in ends or id(getattr(node, "variable", None)) in leaves
            continue
        if node in opened:
            depends[node] = any(depends.get(c, False) for c in children(node))
            continue
        opened.add(node)
        order.append(node)
        stack.append(node)
        stack.extend(c for c in children(node) if c not in depends)
    for node in order:
        if not depends.get(node):
            continue
        name = type(node).__name__
        live = [depends.get(c, False) for c in children(node)]
        if name in PIECEWISE_LINEAR:
            continue
        if name in PRODUCTS and sum(live) <= 1 and getattr(node, "_saved_training", False) is False:
            continue
        if name == "DivBackward0" and live[1:] == [False] * (len(live) - 1):
            continue
        return False
    return True


def _hessian_products(grads: torch.Tensor, acts: torch.Tensor, differentiable: bool) -> torch.Tensor:
    """H A for each target: the derivative of ``grads[t]`` (which carries its graph) along ``acts``, i.e.
    the Hessian of the target's score with respect to A applied to A (zero where the head is linear in A
    beyond the layer, piecewise: ReLU and max-pooling have no curvature)."""
    out = []
    for g in grads:
        if not g.requires_grad:  # the score is linear in A: no curvature
            out.append(torch.zeros_like(acts))
            continue
        (h,) = torch.autograd.grad(g, acts, grad_outputs=acts.detach(), retain_graph=True, allow_unused=True,
                                   create_graph=differentiable)
        out.append(torch.zeros_like(acts) if h is None else h)
    hvps = torch.stack(out)
    return hvps if differentiable else hvps.detach()


def top_tensor(k: int, logits: torch.Tensor) -> torch.Tensor:
    """Each image's ``k`` most probable classes (N, k), the most probable first (ties: the lower index)."""
    c = logits.shape[1]
    if k > c:
        raise UsageError(f"the model has {c} classes", param="top", value=k)
    order = torch.sort(-logits, dim=1, stable=True).indices  # stable: equal logits keep index order
    return order[:, :k]


def _target_grads(scores: torch.Tensor, acts: list, differentiable: bool, keep: bool = False) -> list:
    """The gradient of each column of ``scores`` (N, T) with respect to each of ``acts``: (T, N, K, h, w) per
    layer.  Images are independent in eval mode, so a column's sum gives each image its own gradient; the
    T columns go in one batched backward pass (vmap over the grad outputs) where every operation has a
    batched rule; ``keep``: the graph is kept for another backward."""
    n, t = scores.shape
    if t == 1:
        found = torch.autograd.grad(scores.sum(), acts, allow_unused=True, retain_graph=keep or None,
                                    create_graph=differentiable)
        grads = [None if g is None else g[None] for g in found]
    else:
        eye = torch.eye(t, dtype=scores.dtype, device=scores.device)[:, None, :].expand(t, n, t)

        def backward(grad_output):
            found = torch.autograd.grad(scores, acts, grad_outputs=grad_output, allow_unused=True,
                                        retain_graph=True, create_graph=differentiable)
            return tuple(a.new_zeros(a.shape) if g is None else g for g, a in zip(found, acts))

        try:
            grads = list(torch.func.vmap(backward)(eye))
        except (RuntimeError, NotImplementedError):  # an operation without a batched backward: one pass per target
            parts = [torch.autograd.grad(scores[:, j].sum(), acts, allow_unused=True, retain_graph=True,
                                         create_graph=differentiable) for j in range(t)]
            grads = [None if parts[0][k] is None else torch.stack([p[k] for p in parts]) for k in range(len(acts))]
    # a target that does not reach the logits, or a layer it does not pass through: zero
    grads = [a.new_zeros((t, *a.shape)) if g is None else g for g, a in zip(grads, acts)]
    return grads if differentiable else [g.detach() for g in grads]


def _scorer(model: torch.nn.Module, preprocess, activation: str = "softmax"):
    """``score(images, classes)``: each class's probability (softmax, or a multi-label model's sigmoid), no
    autograd, parameters untouched."""
    def score(images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = model(model_input(model, preprocess(images) if preprocess is not None else images)).float()
            return probabilities(logits, activation).gather(1, classes[:, None])[:, 0]
    return score


def class_weights(model: torch.nn.Module, acts: torch.Tensor, logits: torch.Tensor, layer,
                  keep_graph: bool = False) -> tuple:
    """The (W, b) of the model's head when it is a global average pool of ``layer``'s output and one linear
    layer (CAM's setting): the last ``nn.Linear`` of K inputs and C outputs whose map of A's spatial means
    gives the pass's logits (within float rounding); a usage error, in one line, where no such layer does.
    ``keep_graph`` (differentiable maps): W itself, so that the maps carry gradients to it."""
    n, k = acts.shape[:2]
    c = logits.shape[1]
    low = acts.dtype in (torch.float16, torch.bfloat16)
    # In the pass's precision (at least float32): the logits were made so, and the whole weight is not copied
    # into float64 (CAM casts only the explained classes' rows).
    dtype = torch.float32 if low else acts.dtype
    means = acts.detach().to(dtype).mean(dim=(2, 3))
    target = logits.detach().to(dtype)
    tolerance = (1e-2 if low else 1e-4) * (1.0 + float(target.abs().amax()))
    for module in reversed(list(model.modules())):
        if isinstance(module, torch.nn.Linear) and module.in_features == k and module.out_features == c:
            weight = module.weight.detach().to(dtype)
            bias = torch.zeros(c, dtype=dtype, device=weight.device) if module.bias is None \
                else module.bias.detach().to(dtype)
            if float((torch.addmm(bias, means.to(weight.device), weight.T) - target.to(weight.device))
                     .abs().amax()) <= tolerance:
                return (module.weight.to(dtype), bias) if keep_graph else (weight, bias)
    raise UsageError(f"cam: the model's head after layer {layer_name(model, layer)} is not a global average "
                     f"pool and one linear layer ({k} -> {c}), so it has no class weights; choose gradcam, "
                     f"which equals CAM where CAM applies", param="methods")



def _relayer(model: torch.nn.Module, layer, x: torch.Tensor, score: str, activation: str):
    """``relayer(grids, rows, classes)``: the ``score`` of ``classes`` when the model runs on ``x[rows]``
    with ``layer``'s output replaced by ``grids`` (no autograd, parameters untouched)."""
    swap = LayerSwap(model, layer)

    def relayer(grids: torch.Tensor, rows, classes: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), swap:
            logits = swap.run(model, x[rows], grids).double()
            return target_scores(logits, classes[:, None].to(logits.device), score, activation)[:, 0]
    return relayer


# --------------------------------------------------------------------------- smoothing


#: ``aug_smooth``'s brightness factors (pytorch-grad-cam's, which it applies with ttach), each with and
#: without a horizontal flip.
BRIGHTNESS = (0.9, 1.0, 1.1)


def _copies(image: torch.Tensor, settings: dict) -> list[tuple[torch.Tensor, bool, bool]]:
    """The copies of the (N, 3, S, S) ``image`` that smoothing explains: (copy, mirrored, counted) each, the
    image itself first (``counted``: whether its maps go into the mean).

    ``aug_smooth``: the image and its mirror image, each at :data:`BRIGHTNESS` times its values;
    ``noise_samples`` n: n copies (of each of those) with Gaussian noise of standard deviation
    ``noise_sigma`` times each image's range (SmoothGrad's noise level), drawn on the CPU from a fixed seed,
    the same samples for every image (so an image's maps do not depend on its batch).  The image itself is
    in the batch to give the explained classes: with ``aug_smooth`` alone it is one of the copies, else its
    maps are left out of the mean.
    """
    base = [(image, False)]
    if settings["aug_smooth"]:
        base = [((torch.flip(image, dims=(-1,)) if mirrored else image) * factor, mirrored)
                for mirrored in (False, True) for factor in BRIGHTNESS if (factor, mirrored) != (1.0, False)]
        base.insert(0, (image, False))
    n = settings["noise_samples"]
    if not n:
        return [(copy, mirrored, True) for copy, mirrored in base]
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn((n, *image.shape[1:]), generator=generator, dtype=torch.float32)
    flat = image.flatten(1)
    spread = (flat.amax(dim=1) - flat.amin(dim=1)).reshape(-1, 1, 1, 1) * settings["noise_sigma"]
    noisy = [(copy + spread * noise[i].to(device=image.device, dtype=image.dtype), mirrored, True)
             for copy, mirrored in base for i in range(n)]
    return [(image, False, False)] + noisy


#: At most this many rows (copies x images) go through the model in one smoothing pass, unless one copy of
#: the batch is more (then one copy of every image a pass, the run's own batch).
SMOOTH_ROWS = 32


class _ImagesOnce:
    """A run's progress, told of one batch's passes by each method and layer that runs its own: the passes
    add up, the batch's images count once (so that the ETA's passes per image are the batch's total)."""

    def __init__(self, progress):
        self.progress, self.told = progress, False

    def __call__(self, n: int) -> None:
        self.progress(n)

    def planned(self, passes: int, images: int) -> None:
        planned = getattr(self.progress, "planned", None)
        if planned is not None:
            planned(passes, 0 if self.told else images)
        self.told = True


class _PerPhoto:
    """A run's progress, told of smoothing's passes: the images planned are the photos, not their copies
    (so that the ETA counts every copy's passes as the photo's)."""

    def __init__(self, progress, copies: int):
        self.progress, self.copies = progress, copies

    def __call__(self, n: int) -> None:
        self.progress(n)

    def planned(self, passes: int, images: int) -> None:
        planned = getattr(self.progress, "planned", None)
        if planned is not None:
            planned(passes, images / self.copies)


def _smoothed(model, layer, x, classes, top, names, *, image, preprocess, progress, score, activation,
              output_key, settings) -> list[Explanation]:
    """Every map as the mean of the maps of the image's copies (:func:`_copies`), each relu'd and divided by
    its maximum and mirrored back where its copy was mirrored, then divided by the mean's maximum.  The
    copies are made of ``image`` (RGB, which ``preprocess`` turns into the model's input) where both are
    given, else of ``x`` (and an ``image`` without ``preprocess``, which Score-CAM masks, gets the same
    copies); the explained classes are the image's own, whatever a copy predicts: from the image's
    own rows where it is one of the copies (``aug_smooth``), else from one forward pass of it.  Copies go
    through the model together, at most :data:`SMOOTH_ROWS` rows (or one copy of the batch) a pass."""
    from .targets import probabilities

    # The model's copies: of the photo, which preprocess turns into x, where both are given; else of x
    # itself, and then an image given without its preprocess (what Score-CAM masks) gets the same copies
    from_image = image is not None and preprocess is not None
    copies = _copies((image if from_image else x).detach(), settings)
    masked = None if image is None or from_image else _copies(image.detach(), settings)
    n = x.shape[0]
    known: dict = {}

    def photo_targets(logits: torch.Tensor) -> torch.Tensor:  # the image's own classes, from its own rows
        if "idx" not in known:
            first = logits[:n]
            known["logits"] = first.detach()
            known["idx"] = class_tensor(classes, first)[:, None] if top is None else \
                top_tensor(top(first) if callable(top) else top, first)
        return known["idx"].repeat(logits.shape[0] // n, 1)

    if not copies[0][2]:  # the image itself is not one of the copies: one forward pass gives its classes
        with torch.inference_mode(False), LogitsOutput(model, output_key), torch.no_grad():
            photo_targets(model(model_input(model, x)).detach())
        copies = copies[1:]
        masked = masked and masked[1:]
    inner = {**settings, "aug_smooth": False, "noise_samples": 0}
    told = None if progress is None else _PerPhoto(progress, len(copies))
    per = max(1, SMOOTH_ROWS // n)
    parts: list[dict[str, list]] = []
    for start in range(0, len(copies), per):
        chunk = copies[start:start + per]
        batch = torch.cat([c for c, _, _ in chunk])
        xs = preprocess(batch) if from_image else batch
        shown = batch if from_image else None if masked is None else \
            torch.cat([c for c, _, _ in masked[start:start + per]])
        ranked = _explain(model, layer, xs, photo_targets, None, names, image=shown, preprocess=preprocess,
                          progress=told, score=score, activation=activation, output_key=output_key,
                          settings=inner)
        parts = parts or [{name: [] for name in names} for _ in ranked]
        for t, expl in enumerate(ranked):
            for name, stack in expl.maps.items():
                for piece, (_, mirrored, _) in zip(stack.reshape(len(chunk), n, *stack.shape[1:]), chunk):
                    parts[t][name].append(piece[..., ::-1] if mirrored else piece)
    logits = known["logits"].float()
    probs = probabilities(logits, activation).cpu().numpy()
    out = []
    for t, made in enumerate(parts):
        maps = {}
        for name, pieces in made.items():
            mean = np.mean(pieces, axis=0)
            peak = mean.max(axis=(1, 2), keepdims=True)
            maps[name] = (mean / np.where(peak > 0, peak, 1)).astype(pieces[0].dtype)
        out.append(Explanation(logits=logits.cpu().numpy(), probs=probs, classes=known["idx"][:, t].cpu().numpy(),
                               maps=maps, layer=layer, settings=settings))
    return out
