"""Framing a photo for the model and for the panels: crops, resampling, the dimmed whole photo, map upsampling.

Pillow resamples the photo (as torchvision's transforms do); OpenCV resizes arrays.  Images are ``uint8``
RGB arrays of shape (H, W, 3), or RGB Pillow images.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from ..io.decode import photo_of
from ..models.preprocessing import INTERPOLATIONS, input_frame, square_region
from ..settings import DEFAULT_MAX_SIDE, MIN_PANEL_SIDE


def frame_photo(photo: Image.Image, side: int, resize_mode: str = "crop",
                interpolation: str = "bilinear") -> Image.Image:
    """The ``side`` x ``side`` square the model's input is made of (or the panels, at their side): the part
    of ``photo`` that :func:`campp_cli.preprocessing.square_region` names, resampled in one step from the
    full-resolution photo with Pillow's ``interpolation`` filter (antialiased when shrinking, as
    torchvision's and timm's transforms on Pillow images; "area" averages boxes to shrink and is bilinear to
    enlarge); ``pad`` letterboxes the whole photo on black (:func:`campp_cli.preprocessing.input_frame`)."""
    width, height = photo.size
    filt = resampling(interpolation, shrinking=max(width, height) > side)
    if resize_mode == "pad":
        scale_x, scale_y, left, top = input_frame(width, height, side, "pad")
        inner = photo.resize((round(width * scale_x), round(height * scale_y)), filt)
        out = Image.new("RGB", (side, side))
        out.paste(inner, (round(left), round(top)))
        return out
    left, top, region_w, region_h = square_region(width, height, resize_mode)
    # Cropped first, then resized: bit for bit what torchvision's transforms do to a Pillow image (Pillow's
    # resize(box=...) rounds its coefficients otherwise).
    square = photo if (region_w, region_h) == (width, height) else photo.crop(
        (left, top, left + region_w, top + region_h))
    return square if square.size == (side, side) else square.resize((side, side), filt)


def resampling(interpolation: str, shrinking: bool = True) -> Image.Resampling:
    """Pillow's filter for one of :data:`campp_cli.preprocessing.INTERPOLATIONS`."""
    if interpolation == "area" and not shrinking:
        return Image.Resampling.BILINEAR
    return getattr(Image.Resampling, INTERPOLATIONS[interpolation])


def model_input(photo, size: int, resize_mode: str = "crop", interpolation: str = "bilinear") -> np.ndarray:
    """What the model sees of a photo (an RGB Pillow image or uint8 array): float32 RGB in [0, 1],
    ``(3, size, size)``; :func:`frame_photo` rounded to 8 bits, divided by 255."""
    square = np.asarray(frame_photo(photo_of(photo), size, resize_mode, interpolation))
    return np.ascontiguousarray(square.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)


def center_square(rgb: np.ndarray) -> np.ndarray:
    """Crop the central square (side = the short side), as the paper's ``load_image`` does."""
    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return rgb[top:top + side, left:left + side]


def resize_to(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize to ``width`` x ``height``: area averaging when shrinking, bilinear when enlarging."""
    if rgb.shape[0] == height and rgb.shape[1] == width:
        return rgb
    interp = cv2.INTER_AREA if rgb.shape[0] > height else cv2.INTER_LINEAR
    return cv2.resize(rgb, (width, height), interpolation=interp)


#: --display full: how bright the photo stays outside the part the model saw.
DIM = 0.35


def display_side(photo: Image.Image, resize_mode: str = "crop", max_side: int = DEFAULT_MAX_SIDE) -> int:
    """The side panels of the model's square are drawn at: that square's side in the photo's pixels, at
    least :data:`MIN_PANEL_SIDE`, at most ``max_side``."""
    _, _, region_w, region_h = square_region(*photo.size, resize_mode)
    side = max(region_w, region_h) if resize_mode == "pad" else min(region_w, region_h)
    return min(max(side, MIN_PANEL_SIDE), max_side)


def display_square(photo, resize_mode: str = "crop", max_side: int = DEFAULT_MAX_SIDE) -> np.ndarray:
    """The square the model sees (:func:`frame_photo`), at the resolution panels are drawn at."""
    photo = photo_of(photo)
    return np.asarray(frame_photo(photo, display_side(photo, resize_mode, max_side), resize_mode, "area"))


def display_full(photo, resize_mode: str = "crop",
                 max_side: int = DEFAULT_MAX_SIDE) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """(the whole photo at the resolution panels are drawn at (its long side as :func:`display_side`
    sizes a side), the part of it the model saw as ``(left, top, width, height)`` in its pixels; for
    ``pad`` the part reaches past the photo)."""
    photo = photo_of(photo)
    w, h = photo.size
    long = max(h, w)
    scale = min(max(long, MIN_PANEL_SIDE), max_side) / long
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    shown = photo if size == (w, h) else photo.resize(size, resampling("area", shrinking=scale < 1))
    left, top, rw, rh = square_region(w, h, resize_mode)
    return np.asarray(shown), (round(left * scale), round(top * scale), max(1, round(rw * scale)),
                               max(1, round(rh * scale)))


def _overlap(region: tuple[int, int, int, int], shape) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """Where ``region`` (left, top, width, height) and an image of ``shape`` overlap: (the image's rows and
    columns, the region's), or None."""
    x, y, rw, rh = region
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + rw, shape[1]), min(y + rh, shape[0])
    if x1 <= x0 or y1 <= y0:
        return None
    return (slice(y0, y1), slice(x0, x1)), (slice(y0 - y, y1 - y), slice(x0 - x, x1 - x))


def region_pixels(photo: np.ndarray, region: tuple[int, int, int, int]) -> np.ndarray:
    """The part ``region`` of ``photo``, black where it reaches past the photo."""
    out = np.zeros((region[3], region[2], 3), np.uint8)
    both = _overlap(region, photo.shape)
    if both is not None:
        out[both[1]] = photo[both[0]]
    return out


def dimmed(photo: np.ndarray) -> np.ndarray:
    """The photo at :data:`DIM` of its brightness (what --display full shows outside the model's part)."""
    return np.round(photo.astype(np.float32) * DIM).astype(np.uint8)


def on_region(base: np.ndarray, region: tuple[int, int, int, int], inside: np.ndarray) -> np.ndarray:
    """A copy of ``base`` (the :func:`dimmed` photo) with ``inside``, an image the size of ``region``, put in
    place of ``region``."""
    out = base.copy()
    both = _overlap(region, base.shape)
    if both is not None:
        out[both[0]] = inside[both[1]]
    return out


def upsample(cam: np.ndarray, side: int, height: int | None = None) -> np.ndarray:
    """A low-resolution map, bilinearly upsampled to ``side`` x ``side`` (or ``side`` wide and ``height``
    high), in [0, 1]."""
    up = cv2.resize(cam.astype(np.float32), (side, height or side), interpolation=cv2.INTER_LINEAR)
    return np.clip(up, 0.0, 1.0)
