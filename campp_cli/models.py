"""Architectures, weights, preprocessing and devices.

Weights are looked for in a fixed, documented order (see :func:`find_weights`)
and always read with ``torch.load(..., weights_only=True)``: a checkpoint can
hold tensors, never code.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision

from .errors import UsageError, WeightsError

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
            return cls(
                mean=tuple(float(v) for v in d["mean"]),
                std=tuple(float(v) for v in d["std"]),
                scale=float(d["scale"]),
                bgr=bool(d["bgr"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightsError(f"the weights file's preprocessing entry is malformed ({exc})") from None


@dataclass(frozen=True)
class ArchSpec:
    """What campp needs to know about one architecture."""

    name: str
    weights_enum: str  # attribute of torchvision.models, e.g. "VGG16_Weights"
    default_layer: str  # dotted module name of the explained feature map
    input_size: int = 224

    def build(self) -> torch.nn.Module:
        return getattr(torchvision.models, self.name)(weights=None)

    @property
    def weights(self):
        return getattr(torchvision.models, self.weights_enum).IMAGENET1K_V1

    @property
    def categories(self) -> list[str]:
        return list(self.weights.meta["categories"])

    @property
    def weights_filename(self) -> str:
        return os.path.basename(self.weights.url)


ARCHS: dict[str, ArchSpec] = {
    # The paper explains the ReLU after conv5_3 (14x14 at 224): features.29.
    "vgg16": ArchSpec("vgg16", "VGG16_Weights", "features.29"),
}


def get_arch(name: str) -> ArchSpec:
    try:
        return ARCHS[name]
    except KeyError:
        raise UsageError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHS))}") from None


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
    extra: dict = field(default_factory=dict)


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
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    return [folder / spec.weights_filename, folder / f"{spec.name}.pth", cache / spec.weights_filename]


def _download(spec: ArchSpec) -> Path:
    """torchvision's own download into its cache, with its progress bar."""
    torch.hub.load_state_dict_from_url(spec.weights.url, progress=True, check_hash=True, map_location="cpu")
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
    if download:
        try:
            return _download(spec)
        except Exception as exc:  # URLError, HTTPError, hash mismatch, disk full...
            reason = f"download from {spec.weights.url} failed ({type(exc).__name__}: {exc})"
    else:
        reason = "downloads are off (--offline or CAMPP_OFFLINE=1)"
    raise WeightsError(
        f"no {spec.name} weights found: looked for {looked}; {reason}. "
        f"Fix: copy {spec.weights_filename} into {models_dir()}/ or pass --weights PATH, "
        f"or run once with network access to fill the torch cache"
    )


def read_checkpoint(path: Path) -> tuple[dict, dict]:
    """Read a ``.pth`` safely; return ``(state_dict, metadata)``.

    Accepts a plain state_dict or ``{"state_dict": ..., "preprocessing": ...}``
    (what ``campp convert`` writes).
    """
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; our message says it all
            warnings.simplefilter("ignore", UserWarning)
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
    return obj, meta


def read_weights(path: Path) -> tuple[dict, dict]:
    """A ``.pth`` state_dict, or the paper's ``vgg16.npy`` through a restricted unpickler."""
    if path.suffix.lower() == ".npy":
        from .npy_weights import load_npy_weights

        return load_npy_weights(path)
    return read_checkpoint(path)


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


def check_fits(module: torch.nn.Module, state: dict, arch: str, path: Path) -> None:
    """Name the first keys that do not fit instead of torch's wall of text."""
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
        raise WeightsError(f"{path}: these weights do not fit {arch}: " + "; ".join(problems))


_CACHE: dict[tuple, Classifier] = {}


def load_classifier(
    arch: str = "vgg16",
    weights: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    layer: str | None = None,
    download: bool | None = None,
) -> Classifier:
    """Build ``arch``, load its weights (see :func:`find_weights`), move it to ``device``.

    The last model loaded is kept, so repeated calls from a notebook or a test
    do not re-read hundreds of megabytes.
    """
    spec = get_arch(arch)
    device = torch.device(device)
    if download is None:
        download = os.environ.get("CAMPP_OFFLINE", "") in ("", "0")
    path = find_weights(spec, weights, download=download)
    stat = path.stat()
    key = (arch, str(path.absolute()), stat.st_size, stat.st_mtime_ns, str(device), layer)
    if key in _CACHE:
        return _CACHE[key]
    state, meta = read_weights(path)
    module = spec.build()
    check_fits(module, state, arch, path)
    module.load_state_dict(state)
    module.eval().to(device)
    preprocessing = Preprocessing.from_dict(meta["preprocessing"]) if "preprocessing" in meta else Preprocessing()
    target = layer or spec.default_layer
    module_names = dict(module.named_modules())
    if target not in module_names:
        raise UsageError(f"--layer {target}: {arch} has no such module")
    clf = Classifier(
        arch=arch,
        module=module,
        layer=target,
        preprocessing=preprocessing,
        categories=spec.categories,
        device=device,
        input_size=spec.input_size,
        weights_source=str(path),
    )
    _CACHE.clear()
    _CACHE[key] = clf
    return clf
