"""A ready model: :func:`load_classifier` builds it, loads its weights, picks its layer, moves it to its device.

Weights about to replace every tensor are not preceded by a random initialisation: the model is built on
the ``meta`` device and given the file's tensors themselves (mapped, not copied) where it can be.
"""

from __future__ import annotations

import dataclasses
import os
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from ..cam.outputs import keep_logits_output
from ..errors import CamppError, ModelError, UsageError, WeightsError, first_line
from .fast.packing import pack_convolutions
from .fast.sparse_linear import sparse_linear_backward
from .layers import target_layer
from .precision import check_precision, set_precision
from .preprocessing import Overrides, Preprocessing, check_preprocessing, final_preprocessing
from .spec import ArchSpec, model_spec, with_head
from .weights import check_fits, find_weights, read_weights, tensor_bytes


@dataclass
class Classifier:
    """A ready model: eval mode, on its device, with what explaining it needs."""

    arch: str
    module: torch.nn.Module
    layer: str
    preprocessing: Preprocessing
    categories: list[str]
    device: torch.device
    input_size: int = 224
    weights_source: str = ""
    num_classes: int | None = None  # the head it was built with, when not the architecture's own
    recipe: dict | None = None  # load_classifier's arguments that rebuild it elsewhere (a Ray actor)


def prepare_module(module: torch.nn.Module, device: torch.device | str, prepack: bool = True) -> torch.nn.Module:
    """Eval mode, on ``device``, weights in channels-last layout, CPU fast paths swapped in.

    Channels-last lets oneDNN (CPU) and cuDNN pick their fastest convolutions;
    on the CPU the convolutions also keep oneDNN's reordered copy of their
    weights (:mod:`campp_cli.models.fast.packing`) and the linear layers back-propagate
    through the weight rows that matter only (:mod:`campp_cli.models.fast.sparse_linear`).
    Results agree to float rounding.  ``prepack=False`` leaves the convolutions plain: reordering VGG16's
    weights costs about 0.10 s, more than it saves on a single pass (one photo, one call).
    """
    module = module.eval().to(device, memory_format=torch.channels_last)
    if torch.device(device).type == "cuda":
        # Faithful maps: float32 convolutions and products, not TensorFloat-32 (PyTorch lets cuDNN use it
        # on Ampere and later, which moves maps by more than float32 rounding).
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    if torch.device(device).type == "cpu":
        if prepack:
            pack_convolutions(module)
        sparse_linear_backward(module)
    return module


def _empty_module(spec: ArchSpec) -> torch.nn.Module | None:
    """``spec``'s model built on the ``meta`` device: shapes, no values, no random initialisation (which the
    weights would overwrite: a second for VGG16); None where it cannot be built so (your own model, a
    builder that needs values)."""
    if spec.weights_optional:
        return None
    try:
        with torch.device("meta"):
            module = spec.build()
    except CamppError:
        raise
    except Exception:  # a builder that computes with its tensors: built the ordinary way
        return None
    tensors = [*module.parameters(), *module.buffers()]
    if not isinstance(module, torch.nn.Module) or any(t.device.type != "meta" for t in tensors):
        return None
    return module.eval()


def _assign_weights(module: torch.nn.Module, state: dict) -> torch.nn.Module | None:
    """``module`` (built on ``meta``) holding ``state``'s tensors themselves (mapped from the file, not
    copied), in the dtype the architecture declares; None when some tensor of it is not in the state dict
    (a non-persistent buffer): then it is built and loaded the ordinary way."""
    expected = module.state_dict()
    fitted = {}
    for key, value in state.items():
        want = expected[key].dtype
        value = value if value.dtype == want else value.to(want)
        fitted[key] = value if value.is_contiguous() else value.contiguous()
    module.load_state_dict(fitted, assign=True)
    if any(t.device.type == "meta" for t in [*module.parameters(), *module.buffers()]):
        return None
    return module


def _copy_weights(module: torch.nn.Module, state: dict) -> torch.nn.Module:
    module.load_state_dict(state)
    return module


def _load_state(module: torch.nn.Module, state: dict, spec: ArchSpec, path: Path, lean: bool,
                num_classes: int | None) -> torch.nn.Module:
    """``module`` holding ``state`` (checked first); for a ``lean`` one (built on ``meta``), the state's
    tensors themselves where it can."""
    check_fits(module, state, spec.name, path, num_classes)
    try:
        if lean:
            return _assign_weights(module, state) or _copy_weights(spec.build().eval(), state)
        return _copy_weights(module, state)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise WeightsError(f"{path}: these weights do not load into {spec.name}: {first_line(exc)}") from None


_CACHE: "OrderedDict[tuple, Classifier]" = OrderedDict()  # the models kept, least recently used first
_KEEP = {"models": 1, "bytes": None}  # how many load_classifier keeps, and their tensors' bytes at most


def keep_models(models: int = 1, max_bytes: int | None = None) -> None:
    """How many models :func:`load_classifier` keeps for the next calls (default 1: the last one), and the
    most their tensors may take together (``None``: no bound; the newest is always kept).  The daemon keeps
    a few (``campp daemon start --models``)."""
    if models < 1:
        raise ValueError("keep at least one model")
    _KEEP.update(models=models, bytes=max_bytes)
    _trim_cache()


def kept_models() -> list[Classifier]:
    """The models kept, least recently used first."""
    return list(_CACHE.values())


def _remember(key: tuple, clf: Classifier) -> Classifier:
    _CACHE[key] = clf
    _CACHE.move_to_end(key)
    _trim_cache()
    return clf


def _trim_cache() -> None:
    while len(_CACHE) > _KEEP["models"]:
        _CACHE.popitem(last=False)
    if _KEEP["bytes"] is not None:
        while len(_CACHE) > 1 and sum(tensor_bytes(c.module) for c in _CACHE.values()) > _KEEP["bytes"]:
            _CACHE.popitem(last=False)


def _cache_key(arch, model, weights, device, layer, num_classes, labels, preprocessing, prepack) -> tuple:
    """What makes two load_classifier calls the same model (the weight file by path, size and time)."""
    identity = id(model) if isinstance(model, torch.nn.Module) else model
    stat = Path(weights).stat() if weights is not None and Path(weights).is_file() else None  # else find_weights says
    return (arch, identity, str(Path(weights).absolute()) if weights else None,
            stat and (stat.st_size, stat.st_mtime_ns), str(device), layer if isinstance(layer, str) else id(layer),
            num_classes, tuple(labels) if labels else None, repr(preprocessing), prepack)


#: Your own modules (``model=`` an ``nn.Module``) loaded so far, and the precision each was loaded in.
_LOADED_PRECISION: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()


def load_classifier(
    arch: str = "vgg16",
    weights: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    layer: "str | torch.nn.Module | None" = None,
    download: bool | None = None,
    num_classes: int | None = None,
    labels: list[str] | None = None,
    *,
    model: "str | torch.nn.Module | None" = None,
    preprocessing: "Preprocessing | Overrides | None" = None,
    prepack: bool = True,
    output_key: "str | int | None" = None,
    precision: str = "fp32",
) -> Classifier:
    """Build a classifier, load its weights (see :func:`~campp_cli.models.weights.find_weights`), move it to
    ``device``.

    ``arch``: a torchvision name, ``efficientnet_liteN``, or ``PREFIX:NAME`` of a model source
    (``timm:NAME``; see :func:`~campp_cli.models.spec.register_source`).  ``model``: your own instead, an
    ``nn.Module`` or ``"FILE.py:FUNCTION"`` / ``"package.module:FUNCTION"`` (a function returning one;
    ``weights`` optional).  ``num_classes``: a torchvision or timm architecture built with another head (then
    ``weights`` is needed); ``labels``: the class names, one per output (default: ImageNet's, or
    "class k").  ``preprocessing``: a :class:`Preprocessing` to use, or :class:`Overrides` of the
    model's own (input size, mean, std, resize mode).  ``layer``: a name or the module itself.
    ``prepack``: keep oneDNN's copy of the convolutions' weights (CPU; it pays for itself after a few
    passes: False for one pass only, see :func:`prepare_module`).  ``output_key``: for a model whose forward
    returns a dict, tuple or dataclass, the entry holding the logits (default: ``logits``, or a tuple's
    first; see :func:`campp_cli.cam.outputs.logits_of`); the loaded module returns the logits themselves.
    ``precision``: ``fp32``, or ``bf16`` / ``fp16`` to run every forward pass of the model under autocast
    (:mod:`campp_cli.models.precision`).
    The last model loaded is kept, so repeated calls from a notebook or a test
    do not re-read hundreds of megabytes.
    """
    if num_classes is not None and weights is None:
        raise UsageError("give the weights of that head with --weights", param="num_classes", value=num_classes)
    check_preprocessing(preprocessing)  # before any model is built
    precision = check_precision(precision)
    if isinstance(model, torch.nn.Module):  # your module itself, not a copy: one precision for all its loads
        given = _LOADED_PRECISION.get(model, precision)
        if given != precision:
            raise UsageError(f"this module is loaded in {given} already, and a module has one precision; "
                             f"load a copy (copy.deepcopy) for another", param="precision", value=precision)
    device = torch.device(device)
    if download is None:
        download = os.environ.get("CAMPP_OFFLINE", "") in ("", "0")
    spec = with_head(model_spec(arch, model, preprocessing, output_key), num_classes, labels)
    path = find_weights(spec, weights, download=download)
    # The file found is part of the key: a new file renamed over the old one (campp convert, a download) is a
    # new model.  Your own code (model="FILE.py:...") is built afresh every call.
    key = _cache_key(arch, model, weights, device, layer, num_classes, labels, preprocessing, prepack) + (
        _file_identity(path), output_key, precision)
    source = str(path) if path is not None else f"as built by {spec.name}"  # as this call spelled it
    if key in _CACHE and not isinstance(model, str):
        _CACHE.move_to_end(key)
        kept = _CACHE[key]
        return kept if kept.weights_source == source else dataclasses.replace(kept, weights_source=source)
    module, target, final = _built(spec, path, layer, preprocessing, num_classes)
    prepare_module(module, device, prepack)
    if model is not None or output_key is not None:  # your own model: every pass sees its logits, whatever
        keep_logits_output(module, output_key)       # its forward returns (the sources' return tensors)
    set_precision(module, precision)
    if isinstance(model, torch.nn.Module):
        _LOADED_PRECISION[model] = precision
    recipe = dict(arch=arch, model=model, weights=str(path.absolute()) if path is not None else None, layer=target,
                  num_classes=num_classes, labels=list(spec.categories), preprocessing=final, output_key=output_key,
                  precision=precision)
    clf = Classifier(arch=spec.name, module=module, layer=target, preprocessing=final,
                     categories=list(spec.categories), device=device, input_size=final.size or spec.input_size,
                     weights_source=source,
                     num_classes=num_classes, recipe=recipe)
    return _remember(key, clf)


def _file_identity(path: Path | None) -> tuple | None:
    """A weights file as the kernel knows it: another file at the same path is another model."""
    if path is None:
        return None
    try:
        st = Path(path).stat()
    except OSError:
        return (str(path),)
    return (str(Path(path).absolute()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _built(spec: ArchSpec, path: Path | None, layer, preprocessing, num_classes: int | None):
    """``(module holding the weights at ``path``, its target layer, the final preprocessing)``, on the CPU."""
    # Weights about to replace every tensor: the model is built without them (no random initialisation).
    module = _empty_module(spec) if path is not None else None
    lean = module is not None
    if module is None:
        module = spec.build().eval()
    state, meta = read_weights(path, tensor_bytes(module)) if path is not None else (None, {})
    base = Preprocessing.from_dict(meta["preprocessing"]) if "preprocessing" in meta else spec.preprocessing
    final = final_preprocessing(base, preprocessing)
    size = final.size or spec.input_size
    if isinstance(layer, torch.nn.Module):
        from ..cam.taps import layer_name

        layer = layer_name(module, layer)
    # Layer errors before the (large) weights are loaded: shapes need no trained weights (a model built
    # without tensors is dry-run on the meta device; one whose forward pass needs values, once loaded).
    try:
        target = target_layer(spec, module, layer, size, "meta" if lean else "cpu")
    except ModelError:
        if not lean:
            raise
        target = None
    if state is not None:
        module = _load_state(module, state, spec, path, lean, num_classes)
    if target is None:
        target = target_layer(spec, module, layer, size, "cpu")
    return module, target, final
