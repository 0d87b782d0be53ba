"""Hooks and layer addressing: a layer's output as a gradient leaf, layer names, token grids.

:class:`FeatureTap` hooks one layer (a dotted name, ``name@k`` for the k-th
call of a module that runs several times, or the module itself) and exposes
its output as an (N, C, H, W) grid, whatever the layer's layout: a CNN's
feature map, Swin's channels-last map or a transformer's tokens
(:func:`grid_layout`, :func:`to_grid`).  While it is active the model's
parameters are frozen (:class:`FrozenParameters`), so autograd records
nothing before the layer.
"""

from __future__ import annotations

import math

import torch

from ..errors import ModelError, UsageError


class FrozenParameters:
    """Parameters' requires_grad off for the duration (restored on exit)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self._flags = []

    def __enter__(self):
        params = list(self.model.parameters())
        if any(p.is_inference() for p in params):
            raise UsageError("the model's parameters were made under torch.inference_mode(), which autograd "
                             "cannot use: build or load the model outside it (or clone its parameters)",
                             param="model")
        self._flags = [(p, p.requires_grad) for p in params]
        for p, _ in self._flags:
            p.requires_grad_(False)
        return self

    def __exit__(self, *exc):
        for p, flag in self._flags:  # each one, whatever the others do
            try:
                p.requires_grad_(flag)
            except RuntimeError:
                pass


def split_layer(spec: str) -> tuple[str, int | None]:
    """``"name@k"`` (the k-th call of a module that runs several times) -> ``("name", k)``."""
    name, sep, call = spec.partition("@")
    if not sep:
        return spec, None
    if not call.isdigit():
        raise UsageError(f"--layer {spec}: after '@' give the call number (0, 1, ...)")
    return name, int(call)


def split_layers(layer) -> list:
    """The layers of ``layer``: a dotted name, several of them separated by commas (``"layer3,layer4"``), a
    module, or a list of names and modules; each once, in the order given."""
    if isinstance(layer, str):
        parts = [part.strip() for part in layer.split(",")]
        if not all(parts):
            raise UsageError(f"--layer {layer}: give dotted module names separated by commas")
    elif isinstance(layer, (list, tuple)):
        parts = list(layer)
        if not parts:
            raise UsageError("give at least one layer", param="layer")
    else:
        parts = [layer]
    names = [part if isinstance(part, str) else id(part) for part in parts]
    if len(set(names)) != len(names):
        raise UsageError(f"--layer {layer}: give each layer once")
    return parts


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


def from_grid(grid: torch.Tensor, layout: tuple[str, int], output: torch.Tensor,
              keep_graph: bool = False) -> torch.Tensor:
    """The inverse of :func:`to_grid`: ``grid`` in the layout of ``output`` (whose prefix tokens it takes,
    detached unless ``keep_graph``)."""
    kind, prefix = layout
    if kind == "nhwc":
        return grid.permute(0, 2, 3, 1)
    if kind == "tokens":
        n, c = grid.shape[:2]
        patches = grid.permute(0, 2, 3, 1).reshape(n, -1, c)
        head = output[:, :prefix, :] if keep_graph else output[:, :prefix, :].detach()
        return torch.cat([head, patches], dim=1) if prefix else patches
    return grid


class FeatureTap:
    """Context manager that exposes one layer's output as a gradient leaf.

    On entry it freezes the model's parameters (their ``requires_grad`` flags
    are restored on exit, whatever happens) and hooks ``layer``; the hook
    exposes the layer's output, detached and requiring grad, so autograd
    records only what comes after it.  The model goes on with a copy of it, so
    that an in-place module after the layer (``ReLU(inplace=True)``) changes
    neither the exposed activation nor a leaf.  The hook is always removed.

    ``keep_graph=True`` (differentiable maps): the parameters are left as they
    are and the activation stays in the graph of what came before it, so maps
    made from it carry gradients to the model's weights.  ``chain=True`` (one
    of several taps): an output that already carries a graph (from the tap of
    a layer before it) stays in it, so that one backward pass reaches both.

    ``layer`` is a dotted module name, or ``name@k`` for the k-th call (from 0)
    of a module the forward pass runs several times, or the module object itself.
    A transformer's tokens (or Swin's channels-last map) are seen as the
    (N, C, H, W) grid :func:`to_grid` makes of them; the model goes on with
    the same values in its own layout.
    """

    def __init__(self, model: torch.nn.Module, layer: "str | torch.nn.Module", keep_graph: bool = False,
                 chain: bool = False):
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
        self.keep_graph = keep_graph
        self.chain = chain
        self._frozen = None if keep_graph else FrozenParameters(model)

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
        if self.keep_graph or (self.chain and output.requires_grad):
            self.activation = to_grid(output, self.layout)
            if not self.activation.requires_grad:  # a frozen backbone: the maps still depend on the head
                self.activation = self.activation.detach().requires_grad_(True)
        else:
            self.activation = to_grid(output.detach(), self.layout).requires_grad_(True)
        # The model goes on with a copy: the next module may work in place, which neither the activation
        # (its values are the map's) nor a leaf (autograd refuses) may undergo.
        return from_grid(self.activation, self.layout, output, self.keep_graph or self.chain).clone()

    def __enter__(self) -> "FeatureTap":
        if self._frozen is not None:
            self._frozen.__enter__()
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self._frozen is not None:
            self._frozen.__exit__(*exc)


class LayerSwap:
    """Context manager: every forward pass of the model meanwhile has ``layer``'s output replaced by
    ``self.grid`` (an (N, C, H, W) grid, as :class:`FeatureTap` exposes it), in the layer's own layout.

    The pass is what the model computes once the layer has given that output (Ablation-CAM's channels set
    to zero): what comes before the layer still runs, and the hook is always removed.
    """

    def __init__(self, model: torch.nn.Module, layer: "str | torch.nn.Module"):
        layer = layer_name(model, layer)
        name, self.call = split_layer(layer)
        modules = dict(model.named_modules())
        if name not in modules:
            raise UsageError(f"--layer {layer}: the model has no such module")
        self.module = modules[name]
        self.grid: torch.Tensor | None = None
        self._calls = 0
        self._handle = None

    def _hook(self, module, inputs, output):
        index, self._calls = self._calls, self._calls + 1
        if index != (self.call or 0) or self.grid is None:
            return None
        layout = grid_layout(tuple(output.shape))
        # A copy: the next module may work in place (ReLU(inplace=True), a residual's +=), which must not
        # change the caller's grid (Ablation-CAM hands in views of the activations themselves).
        return from_grid(self.grid.to(output.dtype), layout, output).clone()

    def run(self, model: torch.nn.Module, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """``model(x)`` with the layer's output replaced by ``grid`` (one row per row of ``x``)."""
        self.grid, self._calls = grid, 0
        try:
            return model(x)
        finally:
            self.grid = None

    def __enter__(self) -> "LayerSwap":
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def bias_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The layers whose bias FullGrad reads, in the order of ``model.modules()``: every ``nn.Conv2d`` with a
    bias and every ``nn.BatchNorm2d`` (a subclass too, unless it overrides ``forward``: timm's
    ``BatchNormAct2d`` applies its activation inside, so its output is not the normalisation's).  A batch
    norm without running statistics is listed too: :class:`BiasTap` refuses it where the pass reaches it."""
    from torch.nn.modules.batchnorm import _BatchNorm

    out = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d) and module.bias is not None:
            out.append((name, module))
        elif isinstance(module, torch.nn.BatchNorm2d) and type(module).forward is _BatchNorm.forward:
            out.append((name, module))
    return out


def effective_bias(module: torch.nn.Module) -> torch.Tensor:
    """What a layer adds at every position whatever its input: a convolution's bias; a batch norm's, in eval
    mode, beta - running_mean * gamma / sqrt(running_var + eps) (gamma 1 and beta 0 without affine)."""
    if isinstance(module, torch.nn.Conv2d):
        return module.bias.detach()
    scale = torch.rsqrt(module.running_var.detach() + module.eps)
    gamma = module.weight.detach() if module.weight is not None else torch.ones_like(scale)
    beta = module.bias.detach() if module.bias is not None else torch.zeros_like(scale)
    return beta - module.running_mean.detach() * gamma * scale


class BiasTap:
    """Context manager: the outputs z of every layer of :func:`bias_layers` as the forward pass makes them
    (``self.outputs``, in graph) and each one's :func:`effective_bias` (``self.biases``), for FullGrad's
    bias-gradients b * dS/dz.  The model goes on with a copy of each output, so that an in-place module
    after the layer (VGG16's ``ReLU(inplace=True)``) leaves z, and its gradient, the layer's own.  A layer
    that runs several times gives one output per call.  The hooks are always removed."""

    def __init__(self, model: torch.nn.Module, rows: int):
        self.layers = bias_layers(model)
        self.names = {id(module): name for name, module in self.layers}
        self.rows = rows  # the images of the batch: every tapped output has one row per image
        self.outputs: list[torch.Tensor] = []
        self.biases: list[torch.Tensor] = []
        self._handles = []

    def _hook(self, module, inputs, output):
        if not isinstance(output, torch.Tensor) or output.dim() != 4 or not output.requires_grad:
            return None
        name = self.names.get(id(module), type(module).__name__)
        if isinstance(module, torch.nn.BatchNorm2d) and module.training:
            raise UsageError(f"fullgrad: batch norm {name} is in training mode, where its bias is the batch's, "
                             f"not a constant; put the model in eval mode (model.eval())", param="methods")
        if isinstance(module, torch.nn.BatchNorm2d) and module.running_mean is None:
            raise UsageError(f"fullgrad: batch norm {name} keeps no running statistics "
                             f"(track_running_stats=False), so it normalises with the batch's even in eval mode "
                             f"and its bias is not a constant; choose another method", param="methods")
        if output.shape[0] != self.rows:
            raise UsageError(f"fullgrad: layer {name} gives {output.shape[0]} rows for {self.rows} images (a "
                             f"model that folds patches or crops into the batch), so its terms are not any one "
                             f"image's; choose another method", param="methods")
        self.outputs.append(output)
        self.biases.append(effective_bias(module).to(output.dtype))
        return output.clone()

    def __enter__(self) -> "BiasTap":
        self._handles = [module.register_forward_hook(self._hook) for _, module in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
