"""How a photo becomes the model's input: the square it is framed to, its size, its normalisation.

Nothing here imports torch at module level: the command line parses and
checks ``--input-size``, ``--mean``, ``--std`` and ``--resize`` before the
slow imports.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..errors import UsageError, WeightsError

#: Largest value a normalised input may reach (or a mean or std be): float32, which the model computes in,
#: ends at 3.4e38, and a model fed values near it gives infinities.
MAX_INPUT = 1e30


def _overflow(mean, std, scale: float) -> str | None:
    """Why ``(x * scale - mean) / std`` for x in [0, 1] is not a finite float32 input, or None."""
    if any(abs(v) > MAX_INPUT for v in [*mean, *std, scale]):
        return f"values beyond {MAX_INPUT:g} do not fit the model's float32 input"
    top = max((abs(scale) + abs(m)) / abs(s) for m, s in zip(mean, std))
    if top > MAX_INPUT:
        return f"normalised inputs would reach {top:.3g}, beyond what float32 holds"
    return None


#: How a photo that is not square becomes the model's square input.
RESIZE_MODES = {
    "crop": "the central square, as the paper (the rest is not seen)",
    "squash": "the whole photo, resized to a square (shapes are stretched)",
    "pad": "the whole photo, centred on a black square",
}


#: How the square is resampled to the input size: name -> Pillow's filter (``PIL.Image.Resampling``), which
#: widens its support when shrinking (antialiasing), as torchvision's and timm's transforms do on Pillow images.
#: "area" averages boxes to shrink and is bilinear to enlarge (campp's default before 0.2).
INTERPOLATIONS = {"bilinear": "BILINEAR", "bicubic": "BICUBIC", "area": "BOX", "nearest": "NEAREST",
                  "lanczos": "LANCZOS"}


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB image in [0, 1] becomes the model's input tensor.

    ``x' = ((x * scale)[channels] - mean) / std``; torchvision models use
    scale 1 and RGB, the paper's Caffe VGG16 uses scale 255, BGR and no std.
    ``size`` (None: the architecture's own) and ``resize`` (see
    :data:`RESIZE_MODES`) say how the photo is framed before that.
    """

    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    scale: float = 1.0
    bgr: bool = False
    size: int | None = None
    resize: str = "crop"
    interpolation: str = "bilinear"  # INTERPOLATIONS: torchvision's weights and timm's configurations name one

    def __call__(self, rgb01):
        """Normalise an ``(N, 3, H, W)`` RGB batch in [0, 1] (a torch tensor)."""
        import torch

        x = rgb01 * self.scale if self.scale != 1.0 else rgb01
        if self.bgr:
            x = x.flip(1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def as_dict(self) -> dict:
        out = {"mean": list(self.mean), "std": list(self.std), "scale": self.scale, "bgr": self.bgr,
               "resize": self.resize, "interpolation": self.interpolation}
        if self.size is not None:
            out["size"] = self.size
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        """What ``campp convert`` stored (older files have no size or resize)."""
        try:
            out = cls(
                mean=tuple(float(v) for v in d["mean"]),
                std=tuple(float(v) for v in d["std"]),
                scale=float(d["scale"]),
                bgr=bool(d["bgr"]),
                size=None if d.get("size") is None else int(d["size"]),
                resize=str(d.get("resize", "crop")),
                interpolation=str(d.get("interpolation", "bilinear")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightsError(f"the weights file's preprocessing entry is malformed ({exc})") from None
        problem = out.problem()
        if problem:
            raise WeightsError(f"the weights file's preprocessing entry is malformed: {problem}")
        return out

    def problem(self) -> str | None:
        """What is wrong with these settings, or None."""
        if len(self.mean) != 3 or len(self.std) != 3:
            return f"mean and std need 3 values each (R, G, B), not {len(self.mean)} and {len(self.std)}"
        values = [*self.mean, *self.std, self.scale]
        if not all(math.isfinite(v) for v in values):
            return "mean, std and scale must be finite numbers"
        if any(s == 0 for s in self.std) or self.scale == 0:
            return "std and scale must not be 0"
        overflow = _overflow(self.mean, self.std, self.scale)
        if overflow:
            return f"std {', '.join(f'{s:g}' for s in self.std)}: {overflow}"
        if self.interpolation not in INTERPOLATIONS:
            return f"interpolation {self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}"
        if self.resize not in RESIZE_MODES:
            return f"resize {self.resize!r} is not one of {', '.join(RESIZE_MODES)}"
        if self.size is not None and not 8 <= self.size <= 8192:
            return f"input size {self.size} is not between 8 and 8192"
        return None

    def replace(self, **changes) -> "Preprocessing":
        return dataclasses.replace(self, **changes)


#: Named normalisations --mean accepts.
PRESETS = {
    "imagenet": Preprocessing(),
    "inception": Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3),
    # The paper's Caffe VGG16: RGB [0, 1] * 255, to BGR, minus the BGR mean, no std.
    "caffe": Preprocessing(mean=(103.939, 116.779, 123.68), std=(1.0,) * 3, scale=255.0, bgr=True),
    "none": Preprocessing(mean=(0.0,) * 3, std=(1.0,) * 3),
}

#: TensorFlow EfficientNet-Lite's normalisation, (x * 255 - 127) / 128, and its reference preprocessing's
#: bicubic resize (timm's ``tf_efficientnet_lite*`` configurations say the same).
TF_LITE_PREPROCESSING = Preprocessing(mean=(127 / 255,) * 3, std=(128 / 255,) * 3, interpolation="bicubic")


def _triple(param: str, text: str) -> tuple[float, float, float]:
    parts = [p.strip() for p in text.replace(";", ",").split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise UsageError(f"give three numbers R,G,B (e.g. 0.485,0.456,0.406) or a preset: {', '.join(PRESETS)}",
                         param=param, value=text) from None
    if len(values) != 3:
        raise UsageError(f"give three numbers R,G,B, not {len(values)}", param=param, value=text)
    if not all(math.isfinite(v) for v in values):
        raise UsageError("the numbers must be finite", param=param, value=text)
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class Overrides:
    """What the command line changes in a model's own preprocessing (None: keep the model's)."""

    size: int | None = None
    resize: str | None = None
    preset: str | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def apply(self, base: Preprocessing) -> Preprocessing:
        out = PRESETS[self.preset] if self.preset is not None else base
        out = out.replace(size=base.size, resize=base.resize, interpolation=base.interpolation)
        if self.mean is not None:
            out = out.replace(mean=self.mean)
        if self.std is not None:
            out = out.replace(std=self.std)
        if self.size is not None:
            out = out.replace(size=self.size)
        if self.resize is not None:
            out = out.replace(resize=self.resize)
        return out

    def __bool__(self) -> bool:
        return any(v is not None for v in dataclasses.astuple(self))


def parse_overrides(input_size: int | None = None, mean: str | None = None, std: str | None = None,
                    resize: str | None = None) -> Overrides:
    """``--input-size``, ``--mean R,G,B|PRESET``, ``--std R,G,B``, ``--resize MODE`` checked, before any import."""
    if input_size is not None and not 8 <= input_size <= 8192:
        raise UsageError("give a side between 8 and 8192 pixels", param="input_size", value=input_size)
    if resize is not None and resize not in RESIZE_MODES:
        raise UsageError(f"use one of {', '.join(RESIZE_MODES)}", param="resize", value=resize)
    preset = None
    mean_values = None
    if mean is not None:
        if mean.strip().lower() in PRESETS:
            preset = mean.strip().lower()
        else:
            mean_values = _triple("mean", mean)
    std_values = _triple("std", std) if std is not None else None
    if std_values is not None and any(v == 0 for v in std_values):
        raise UsageError("a standard deviation of 0 would divide by zero", param="std", value=std)
    # The scale and the mean may come from the model: bound them by the largest a preset has (Caffe's 255).
    if mean_values is not None and _overflow(mean_values, (1.0,) * 3, 255.0):
        raise UsageError(_overflow(mean_values, (1.0,) * 3, 255.0), param="mean", value=mean)
    if std_values is not None:
        overflow = _overflow(mean_values or (255.0,) * 3, std_values, 255.0)
        if overflow:
            raise UsageError(f"{overflow}; give standard deviations such as 0.229,0.224,0.225", param="std",
                             value=std)
    return Overrides(input_size, resize, preset, mean_values, std_values)


def check_preprocessing(given: "Preprocessing | Overrides | None") -> None:
    """A usage error unless ``given`` is None, :class:`Overrides` or a sound :class:`Preprocessing`."""
    if isinstance(given, Preprocessing):
        problem = given.problem()
        if problem:
            raise UsageError(problem, param="preprocessing")
    elif given is not None and not isinstance(given, Overrides):
        raise UsageError(f"give a Preprocessing, Overrides or None, not {type(given).__name__}",
                         param="preprocessing")


def final_preprocessing(base: Preprocessing, given: "Preprocessing | Overrides | None") -> Preprocessing:
    """``given`` itself, or ``base`` changed by ``given``'s overrides."""
    check_preprocessing(given)
    if isinstance(given, Preprocessing):
        return given
    return given.apply(base) if given is not None else base


def square_region(width: int, height: int, resize: str = "crop") -> tuple[int, int, int, int]:
    """``(left, top, region_width, region_height)``: the part of a ``width`` x ``height`` photo that
    becomes the model's square input (it reaches past the photo, on black, for ``pad``)."""
    if resize == "crop":
        side = min(width, height)
        return (width - side) // 2, (height - side) // 2, side, side
    if resize == "squash":
        return 0, 0, width, height
    if resize == "pad":
        side = max(width, height)
        return -((side - width) // 2), -((side - height) // 2), side, side
    raise UsageError(f"resize {resize!r}: use one of {', '.join(RESIZE_MODES)}")


def input_frame(width: int, height: int, size: int, resize: str = "crop") -> tuple[float, float, float, float]:
    """``(scale_x, scale_y, left, top)``: a point ``(x, y)`` of a ``width`` x ``height`` photo (in pixel
    units, 0 at its top-left corner) lands at ``(x * scale_x + left, y * scale_y + top)`` in the model's
    ``size`` x ``size`` input.  ``crop`` and ``squash`` resample :func:`square_region` onto the input;
    ``pad`` letterboxes: the photo resized to fit (its long side to ``size``, the other rounded to whole
    pixels) and centred on black, offsets rounded down."""
    if resize == "pad":
        scale = size / max(width, height)
        inner_w, inner_h = max(1, round(width * scale)), max(1, round(height * scale))
        return inner_w / width, inner_h / height, float((size - inner_w) // 2), float((size - inner_h) // 2)
    left, top, region_w, region_h = square_region(width, height, resize)
    scale_x, scale_y = size / region_w, size / region_h
    return scale_x, scale_y, -left * scale_x, -top * scale_y
