"""The layer a map is computed at: every feature map of a dry run, the default one, a given one checked."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..cam.explain import model_input
from ..cam.taps import grid_layout, split_layer, to_grid
from ..errors import ModelError, UsageError, suggest
from .spec import ArchSpec, raised


@dataclass(frozen=True)
class FeatureMap:
    """One module output seen in a dry run: its layer spec, its grid's shape (C, H, W) and layout."""

    layer: str  # "name", or "name@k" for the k-th call of a module that runs several times
    shape: tuple[int, int, int]
    layout: str = "nchw"  # or "nhwc" (channels last), "tokens", "tokens+P" (P prefix tokens dropped)


def _grid_outputs(module: torch.nn.Module, size: int, device) -> tuple[list, dict[str, int]]:
    """``([(module name, grid shape, layout label)...], calls per module name)`` of one forward pass."""
    seen: list[tuple[str, tuple[int, ...], str]] = []
    names = {m: n for n, m in module.named_modules() if n}
    calls: dict[str, int] = {}

    def hook(mod, inputs, output):
        if isinstance(output, torch.Tensor):
            layout = grid_layout(tuple(output.shape))
            if layout is not None:
                kind, prefix = layout
                label = kind if kind != "tokens" or not prefix else f"tokens+{prefix}"
                seen.append((names[mod], tuple(to_grid(output, layout).shape[1:]), label))
        calls[names[mod]] = calls.get(names[mod], 0) + 1

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        with torch.no_grad():
            module(model_input(module, torch.zeros(1, 3, size, size, device=device)))
    except Exception as exc:
        raise ModelError(f"a {size}x{size} input fails in the model: {raised(exc)} "
                         f"(its input size? give {{input_size}})", also=("input_size",)) from exc
    finally:
        for h in handles:
            h.remove()
    return seen, calls


def feature_maps(module: torch.nn.Module, size: int, device: torch.device | str = "cpu") -> list[FeatureMap]:
    """Every module output of a forward pass at ``size`` that is a grid (a CNN's feature maps, a
    transformer's tokens: see :func:`campp_cli.cam.grid_layout`), in the order they finish."""
    seen, calls = _grid_outputs(module, size, device)
    counter: dict[str, int] = {}
    result = []
    for name, shape, layout in seen:
        k = counter.get(name, 0)
        counter[name] = k + 1
        result.append(FeatureMap(f"{name}@{k}" if calls[name] > 1 else name, shape, layout))
    return result


#: A transformer's default layer: the first norm of its last block (what pytorch-grad-cam recommends; the
#: tokens after it still mix in the attention that follows, the class token's only way to see them).
TRANSFORMER_LAYER_SUFFIXES = ("norm1", "ln_1", "layernorm_before")


def default_layer(spec: ArchSpec, module: torch.nn.Module, device: torch.device | str = "cpu",
                  size: int | None = None) -> str:
    """The arch's own choice; for a transformer the first norm of its last block; else the last feature
    map that is still spatial (before global pooling)."""
    if spec.default_layer:
        return spec.default_layer
    maps = feature_maps(module, size or spec.input_size, device)
    spatial = [f for f in maps if f.shape[1] * f.shape[2] > 1]
    if any(f.layout != "nchw" for f in spatial):
        norms = [f for f in spatial if f.layer.split("@")[0].endswith(TRANSFORMER_LAYER_SUFFIXES)]
        if norms:
            return norms[-1].layer
    spatial = [f for f in spatial if f.layout == "nchw"] or spatial
    if not spatial:
        raise UsageError(f"{spec.name}: no spatial feature map found; give one with --layer")
    return spatial[-1].layer


def check_layer(module: torch.nn.Module, layer: str, spec: ArchSpec, device: torch.device | str = "cpu",
                size: int | None = None) -> None:
    """A usage error, with the closest names, unless ``layer`` is a feature map (or tokens) of the model."""
    maps = feature_maps(module, size or spec.input_size, device)
    valid = [f.layer for f in maps]
    if layer in valid:
        return
    name, call = split_layer(layer)
    several = [v for v in valid if v.startswith(name + "@")]
    if call is None and several:
        raise UsageError(f"this module runs {len(several)} times per forward pass; pick one call: "
                         f"{', '.join(several)}", param="layer", value=layer)
    names = dict(module.named_modules())
    if name in names and not several and call is None:
        raise UsageError("its output is neither a feature map (N, C, H, W) nor tokens (N, T, C) on a square grid",
                         param="layer", value=layer)
    hint = f"campp layers --arch {spec.name}" if not spec.weights_optional else f"campp layers --model {spec.name}"
    raise UsageError(f"{spec.name} has no such feature map{suggest(layer, valid, n=3)} (see '{hint}')",
                     param="layer", value=layer)


def target_layer(spec: ArchSpec, module: torch.nn.Module, layer: str | None, size: int, device: str) -> str:
    """``layer`` once checked (each of several, comma-separated, whose maps are fused), or the default one
    (a dry run on ``device`` where the spec names none)."""
    from ..cam.taps import split_layers

    if layer is None:
        return default_layer(spec, module, device=device, size=size)
    parts = split_layers(layer)
    for part in parts:
        check_layer(module, part, spec, device=device, size=size)
    return ",".join(parts)
