"""Decoding, cropping, colour maps, overlays, titled panels and safe JPEG writing.

Pillow decodes (and applies EXIF orientation); OpenCV resizes and colours.
Images are ``uint8`` RGB arrays of shape (H, W, 3) throughout.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import os
import re
import secrets
import signal
import stat
import struct
import sys
import threading
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

try:
    import fcntl
except ImportError:  # Windows: no flock; recovery falls back to process ids
    fcntl = None

from .errors import InputError, OutputError
from .inputs import is_stream
from .models.preprocessing import INTERPOLATIONS, input_frame, square_region
from .settings import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE, DISPLAYS, MIN_PANEL_SIDE  # noqa: F401 (re-exported)

# Pillow allocates a large image in 16 MB blocks, which glibc serves from per-thread heaps that keep
# the memory after the image is freed: four decoding threads then hold four images' worth.  Blocks
# above glibc's largest mmap threshold (32 MB) are mapped and given back on free (measured: 4 decodes
# of 10000x10000 RGBA on 4 threads peak at 1.75 GB RSS with 16 MB blocks, 1.29 GB with 64 MB).
try:
    Image.core.set_block_size(64 << 20)
except (AttributeError, ValueError):  # another Pillow build: its own allocator
    pass


def max_file_bytes(max_pixels: int) -> int:
    """The largest file an image of ``max_pixels`` pixels can need: 16-bit RGBA, uncompressed."""
    return 8 * max_pixels + (16 << 20)


class PixelBudget:
    """Bounds the pixels being decoded at once across worker threads (memory stays bounded).

    An image bigger than the whole budget waits until it is alone.
    """

    def __init__(self, limit: int):
        self.limit = max(1, int(limit))
        self.used = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int):
        with self._cond:
            while self.used > 0 and self.used + pixels > self.limit:
                self._cond.wait()
            self.used += pixels
        try:
            yield
        finally:
            with self._cond:
                self.used -= pixels
                self._cond.notify_all()


def load_rgb(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS,
             budget: PixelBudget | None = None) -> np.ndarray:
    """:func:`open_photo` as an RGB ``uint8`` array ``(H, W, 3)``."""
    return np.asarray(open_photo(path, max_pixels, budget))


def open_photo(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS,
               budget: PixelBudget | None = None, use=None):
    """Decode any image Pillow reads into an RGB Pillow image at its full resolution; one clear error
    otherwise.

    EXIF orientation is applied; transparency is composited on white; the
    first frame of an animation is used; 16-bit images are scaled to 8 bits.
    Truncated files are refused rather than half-explained.  The file's size
    and the image's header are checked before any pixel is decoded, and
    conversions run in strips, so a large image is held once (plus its RGB
    copy), never as float arrays.  ``budget`` bounds the pixels decoded at
    once across threads; ``use``, a function of the image, runs while the
    budget is held and its result is returned instead of the image.  The
    model's input and every figure are made from this one full-resolution
    image (:func:`frame_photo`), so what the model sees never depends on how
    the figures are drawn.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an image file")
    if not path.is_file():  # a FIFO or a device would block or never end
        raise InputError(f"{path}: not a regular file")
    try:
        size = path.stat().st_size
        if size == 0:
            raise InputError(f"{path}: empty file")
        if size > max_file_bytes(max_pixels):
            raise InputError(f"{path}: refused: {size / 1e9:.1f} GB is more than any image of --max-pixels "
                             f"{max_pixels} pixels needs")
        with open(path, "rb") as fh:
            return _decode(fh, str(path), max_pixels, budget, use)
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None


def decode_rgb(data: bytes, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """:func:`load_rgb` for bytes already in memory."""
    return np.asarray(_decode(io.BytesIO(data), name, max_pixels, None))


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _embedded_sizes(fh) -> list[tuple[int, int]]:
    """Sizes of the images inside an icon file, from their own headers, before Pillow opens it.

    Pillow decodes an ICO's largest frame while opening it, and the directory's
    16x16 may hide a 13000x13000 PNG: so ICO and CUR entries are read here
    (each a PNG or a DIB), and for ICNS every embedded PNG is found.
    """
    fh.seek(0)
    head = fh.read(6)
    sizes = []
    if len(head) == 6 and head[:4] in (b"\0\0\1\0", b"\0\0\2\0"):
        (count,) = struct.unpack("<H", head[4:6])
        directory = fh.read(16 * count)
        for k in range(len(directory) // 16):
            (offset,) = struct.unpack("<I", directory[16 * k + 12:16 * k + 16])
            fh.seek(offset)
            frame = fh.read(24)
            if frame[:8] == _PNG_SIGNATURE and len(frame) >= 24:
                sizes.append(struct.unpack(">II", frame[16:24]))
            elif len(frame) >= 12:
                width, height = struct.unpack("<ii", frame[4:12])
                sizes.append((abs(width), abs(height) // 2))
    elif head[:4] == b"icns":
        fh.seek(0)
        data = fh.read()
        start = data.find(_PNG_SIGNATURE)
        while start >= 0:
            if len(data) >= start + 24:
                sizes.append(struct.unpack(">II", data[start + 16:start + 24]))
            start = data.find(_PNG_SIGNATURE, start + 1)
    fh.seek(0)
    return sizes


def _decode(fh, name: str, max_pixels: int, budget: PixelBudget | None, use=None):
    try:
        with warnings.catch_warnings():
            # Our max_pixels check replaces Pillow's bomb warning; its notes on corrupt
            # metadata (EXIF, TIFF tags) are no concern of someone explaining a photo.
            warnings.simplefilter("ignore")
            for w, h in _embedded_sizes(fh):
                if w * h > max_pixels:
                    raise InputError(f"{name}: refused: an image inside it has {w}x{h} pixels, more than "
                                     f"--max-pixels {max_pixels} (a decompression bomb)")
            img = Image.open(fh)
            width, height = img.size
            if width * height > max_pixels:
                raise InputError(
                    f"{name}: refused: {width}x{height} pixels exceeds --max-pixels {max_pixels} "
                    f"(a decompression bomb or a very large image)"
                )
            if width == 0 or height == 0:
                raise InputError(f"{name}: the image has no pixels ({width}x{height})")
            with budget.hold(width * height) if budget is not None else contextlib.nullcontext():
                img.seek(0)
                img.load()
                orientation = _orientation(img)
                rgb = _to_rgb(img)
                del img
                if orientation is not None:
                    rgb = rgb.transpose(orientation)
                return use(rgb) if use is not None else rgb
    except InputError:
        raise
    except MemoryError:
        raise InputError(f"{name}: not enough memory to decode this image") from None
    except Image.DecompressionBombError as exc:  # Pillow's own ceiling, checked inside open()
        raise InputError(f"{name}: refused: exceeds --max-pixels {max_pixels} ({exc})") from None
    except UnidentifiedImageError:
        raise InputError(f"{name}: not an image format campp can read") from None
    except Exception as exc:  # decoders of hostile bytes raise anything; one line for all
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "truncated" in reason.lower():
            reason = "truncated image data"
        raise InputError(f"{name}: cannot decode image: {reason}") from None


#: EXIF orientation -> the transposition that shows the image as a viewer does (as ImageOps.exif_transpose).
_ORIENTATIONS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                 4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
                 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def _orientation(img: Image.Image) -> Image.Transpose | None:
    """How to turn the decoded pixels upright, from the EXIF orientation (None: as stored)."""
    try:
        return _ORIENTATIONS.get(img.getexif().get(0x0112, 1))
    except Exception:  # unreadable EXIF: shown as stored, as viewers do
        return None


_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _to_rgb(img: Image.Image, rows: int = 256) -> Image.Image:
    """The image as RGB, converted in strips of ``rows`` rows (a large image is not copied whole in
    another mode, nor as floats): transparency on white, 16-bit and float images scaled to 8 bits."""
    if img.mode == "RGB":
        return img
    scale = None
    if img.mode in _WIDE_MODES:  # one scale for the whole image, from its extrema
        top = img.getextrema()[1]
        scale = 255.0 if img.mode == "F" and top <= 1.0 else (1 / 257 if top > 255 else 1.0)
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info)
    width, height = img.size
    out = Image.new("RGB", img.size)
    for top in range(0, height, rows):
        strip = img.crop((0, top, width, min(top + rows, height)))
        if scale is not None:
            arr = np.asarray(strip, dtype=np.float64)
            if arr.ndim == 3:
                arr = arr[..., 0]
            grey = np.clip(np.nan_to_num(arr * scale), 0, 255).round().astype(np.uint8)
            strip = Image.fromarray(grey).convert("RGB")
        elif has_alpha:
            rgba = strip.convert("RGBA")
            strip = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
        else:
            strip = strip.convert("RGB")
        out.paste(strip, (0, top))
    return out


def photo_of(image) -> Image.Image:
    """An RGB uint8 array ``(H, W, 3)`` (or an RGB Pillow image) as the Pillow image the framing takes."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else _to_rgb(image)
    return Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB")


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


def colorize(cam01: np.ndarray) -> np.ndarray:
    """JET colour map of a map in [0, 1] (blue = 0, red = 1) as RGB."""
    u8 = np.round(np.clip(cam01, 0.0, 1.0) * 255.0).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


#: The heatmap's weight in an overlay (``--alpha``).
DEFAULT_ALPHA = 0.5


def overlay(rgb: np.ndarray, heat: np.ndarray, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """The heatmap blended over the image: ``alpha * heat + (1 - alpha) * rgb``."""
    return cv2.addWeighted(heat, alpha, rgb, 1.0 - alpha, 0.0)


def colour_bar(height: int, width: int) -> np.ndarray:
    """The colour map as a vertical bar: 1 (red) at the top, 0 (blue) at the bottom."""
    ramp = np.linspace(1.0, 0.0, height)[:, None].repeat(width, axis=1)
    return colorize(ramp)


def with_colour_bar(image: np.ndarray, blank: bool = False) -> np.ndarray:
    """The image with the colour bar at its right, after a white gap holding its scale: "max" beside its top
    (red, the map's maximum) and "0" beside its bottom (blue), each with a tick; ``blank``: the same width left
    white, so that panels line up."""
    h, w = image.shape[:2]
    bar_w = tick = max(6, w // 40)
    face = font(max(9, min(18, w // 30)))
    labels = Image.new("RGB", (1, 1))
    label_w = int(np.ceil(max(ImageDraw.Draw(labels).textlength(t, font=face) for t in ("max", "0"))))
    gap = tick // 2 + label_w + tick // 2 + tick
    out = np.full((h, w + gap + bar_w, 3), 255, np.uint8)
    out[:, :w] = image
    if blank:
        return out
    out[:, w + gap:] = colour_bar(h, bar_w)
    strip = Image.fromarray(out[:, w:w + gap].copy())
    draw = ImageDraw.Draw(strip)
    right = gap - tick // 2 - tick  # labels end here, ticks run from here to the bar
    for text, y in (("max", 0), ("0", h - 1)):
        draw.line([(gap - tick, y), (gap - 1, y)], fill=(60, 60, 60), width=max(1, h // 200))
        left, top, end, bottom = draw.textbbox((0, 0), text, font=face)  # no anchors: bitmap fonts lack them
        draw.text((right - end, -top if y == 0 else h - bottom), text, fill=(60, 60, 60), font=face)
    out[:, w:w + gap] = np.asarray(strip)
    return out


def captioned(figure: np.ndarray, text: str) -> np.ndarray:
    """The figure with a thin white strip below it holding one line of small grey text."""
    h, w = figure.shape[:2]
    size = max(11, min(18, w // 70))
    strip = int(size * 1.6)
    canvas = Image.new("RGB", (w, h + strip), (255, 255, 255))
    canvas.paste(Image.fromarray(figure), (0, 0))
    draw = ImageDraw.Draw(canvas)
    face = font(size)
    draw.text((4, h + (strip - size) // 2), _fit(draw, text, face, w - 8), fill=(90, 90, 90), font=face)
    return np.asarray(canvas)


def gradient_image(grad_hwc: np.ndarray) -> np.ndarray:
    """A signed gradient as a viewable RGB image: zero is mid-grey, 0.1 std per unit."""
    g = grad_hwc.astype(np.float64)
    g = (g - g.mean()) / (g.std() + 1e-12) * 0.1 + 0.5
    return np.round(np.clip(g, 0.0, 1.0) * 255.0).astype(np.uint8)


def font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


#: Longest text a figure's title line measures: no panel shows more characters than this legibly, and a
#: 20,000-character class name must not cost minutes of measuring.
MAX_TITLE_CHARS = 400


def _fit(draw: ImageDraw.ImageDraw, text: str, face, width: float) -> str:
    """``text``, shortened with an ellipsis rather than wider than ``width``.

    Text past :data:`MAX_TITLE_CHARS` is cut first; then a binary search over the length kept, so a line
    costs O(log n) measurements, not one per character dropped.
    """
    if len(text) > MAX_TITLE_CHARS:
        text = text[:MAX_TITLE_CHARS - 1].rstrip() + "…"
    if len(text) <= 4 or draw.textlength(text, font=face) <= width:
        return text
    stem = text[:-1] if text.endswith("…") else text

    def shortened(n: int) -> str:
        return stem[:n].rstrip() + "…"

    lo, hi = 3, len(stem) - 1  # the longest prefix that fits lies in [lo, hi]; 3 characters are always kept
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if draw.textlength(shortened(mid), font=face) <= width:
            lo = mid
        else:
            hi = mid - 1
    return shortened(lo)


def titled(rgb: np.ndarray, lines: list[str]) -> np.ndarray:
    """The image with a white band above it holding ``lines`` of text."""
    h, w = rgb.shape[:2]
    size = max(12, w // 22)
    face = font(size)
    line_h = int(size * 1.25)
    band = line_h * len(lines) + size // 2
    canvas = Image.new("RGB", (w, h + band), (255, 255, 255))
    canvas.paste(Image.fromarray(rgb), (0, band))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        text = _fit(draw, line, face, w - 8)
        tw = draw.textlength(text, font=face)
        draw.text(((w - tw) / 2, size // 4 + i * line_h), text, fill=(0, 0, 0), font=face)
    return np.asarray(canvas)


#: Panels per row of the comparison figure at most: 10 panels make two rows of five.
MAX_COLUMNS = 5


def grid_shape(n: int, max_cols: int = MAX_COLUMNS) -> tuple[int, int]:
    """(rows, columns) for n panels: one row up to ``max_cols``, then rows as even as they come."""
    rows = max(1, -(-n // max_cols))
    return rows, -(-n // rows)


def side_by_side(panels: list[np.ndarray], gap: int = 8, max_cols: int = MAX_COLUMNS) -> np.ndarray:
    """Panels in a grid (one row for up to ``max_cols``), separated by white gaps."""
    rows, cols = grid_shape(len(panels), max_cols)
    h = max(p.shape[0] for p in panels)
    w = max(p.shape[1] for p in panels)
    used = min(cols, len(panels))
    out = np.full((rows * h + gap * (rows - 1), used * w + gap * (used - 1), 3), 255, dtype=np.uint8)
    for k, p in enumerate(panels):
        r, c = divmod(k, cols)
        y, x = r * (h + gap), c * (w + gap)
        out[y: y + p.shape[0], x: x + p.shape[1]] = p
    return out


def encode_jpeg(rgb: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


#: Lossless PNG at zlib level 1 with every row "up"-filtered: half the time of level 3 with adaptive
#: filters (OpenCV's default), 5 % larger files (benchmarks/png.py); level 1 alone where OpenCV has no
#: filter setting.
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1] + (
    [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP] if hasattr(cv2, "IMWRITE_PNG_FILTER") else [])


def encode_png(rgb: np.ndarray) -> bytes:
    """Lossless, fast rather than smallest (see :data:`PNG_PARAMS`)."""
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]), PNG_PARAMS)
    if not ok:
        raise ValueError("PNG encoding failed")
    return data.tobytes()


#: How figures are encoded, by --format (see campp_cli.settings.FORMATS).
ENCODERS = {"jpeg": encode_jpeg, "png": encode_png}


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()

#: Every temporary or journal file campp makes starts with this, then its process id and a random token.
TEMP_PREFIX = ".campp-"
_PENDING = "pending"


def _new_token() -> str:
    """This process's own mark in its temporary names: a process id alone is no identity (in a container
    every campp may be PID 1, and ids are reused)."""
    return secrets.token_hex(4)


_TOKEN = _new_token()


def _refresh_token() -> None:
    global _TOKEN
    _TOKEN = _new_token()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_refresh_token)


def _own_prefix() -> str:
    """The start of every temporary name this process makes: ``.campp-PID-TOKEN``."""
    return f"{TEMP_PREFIX}{os.getpid()}-{_TOKEN}"


def temp_name(tail: str) -> str:
    """A temporary name of this process, ``.campp-PID-TOKEN-tail``, that :func:`recover` knows."""
    return f"{_own_prefix()}-{tail}"


def _tag(text: str) -> str:
    """A short name for a long one: keeps temporary names far below the 255-byte file-name limit."""
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot sync a folder; the files themselves were synced
    finally:
        os.close(fd)


def _lock(fd: int) -> bool:
    """Hold an exclusive ``flock`` on ``fd`` (waiting for a recovery that holds it for a moment); False
    where the filesystem or the system has no such locks."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    except OSError:
        return False


def create_locked(path: str | os.PathLike) -> int:
    """A new file at ``path`` (never an existing one, never through a link), open for writing and locked
    by this process until the descriptor is closed: what :func:`recover` sees as alive.  The kernel
    drops the lock when the process dies, however it dies."""
    for _ in range(5):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666 & ~_UMASK)
        if not _lock(fd):
            return fd
        try:  # a recovery may have removed the name between its creation and the lock: then again
            if os.path.samestat(os.lstat(path), os.fstat(fd)):
                return fd
        except OSError:
            pass
        os.close(fd)
    raise OSError(11, "temporary file removed while it was being created")


def _write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(28, "No space left on device")
        view = view[n:]


def _write_synced(folder: Path, name: str, data: bytes) -> tuple[str, int]:
    """``data`` in a new file ``folder/name`` (see :func:`create_locked`), synced; (its path, its open and
    locked descriptor, for the caller to close once the file is where it belongs)."""
    tmp = os.path.join(folder, name)
    fd = create_locked(tmp)
    try:
        _write_fd(fd, data)
        os.fsync(fd)
    except BaseException:
        _unlink(tmp)
        os.close(fd)
        raise
    return tmp, fd


def _unlink(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


_FD_LINK = re.compile(r"/(?:proc/(?:self|\d+)|dev)/fd/(\d+)")
_STD_NAMES = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}


def _descriptor_of(path: str | os.PathLike) -> int | None:
    """The descriptor of this process that ``path`` names (``/dev/stdout``, ``/dev/fd/N``,
    ``/proc/self/fd/N``, or a link to one of them), or None."""
    current = os.path.abspath(path)
    for _ in range(40):
        if current in _STD_NAMES:
            return _STD_NAMES[current]
        match = _FD_LINK.fullmatch(current)
        if match and (current.startswith("/dev/") or current.startswith(("/proc/self/", f"/proc/{os.getpid()}/"))):
            return int(match.group(1))
        if not os.path.islink(current):
            return None
        current = os.path.normpath(os.path.join(os.path.dirname(current), os.readlink(current)))
    return None


def write_in_place(path: str | os.PathLike, data: bytes) -> None:
    """``data`` written into the stream ``path`` (see :func:`is_stream`), which stays what it is.  A name of
    one of this process's descriptors (``/dev/stdout``) is written through that descriptor, after what
    Python holds for it: the output lands where the shell's redirection points, after the lines before it."""
    own = _descriptor_of(path)
    if own == 2:  # the console script moves the real stderr off descriptor 2 (see cli._silence_library_chatter)
        try:
            own = sys.stderr.fileno()
        except (AttributeError, OSError, ValueError):
            pass
    if own is not None:
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None and stream.fileno() == own:
                    stream.flush()
            except (AttributeError, OSError, ValueError):
                pass
        _write_fd(own, data)
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_NOCTTY", 0))
    try:
        _write_fd(fd, data)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, synced, then rename it into place.

    Readers see either no file or the whole file, never a partial one; on any
    failure (disk full, interruption) the temporary file is removed.  A
    device, a FIFO or ``/dev/stdout`` is written into, never renamed over
    (:func:`is_stream`).
    """
    if is_stream(path):
        try:
            write_in_place(path, data)
        except OSError as exc:
            raise OutputError(f"cannot write {path} ({exc.strerror or exc})") from None
        return
    write_all_atomic({Path(path): data})


_counter = itertools.count()


def _check_replaceable(path: Path) -> None:
    """An OSError unless ``path`` is missing, a regular file or a link (a link is replaced, not followed)."""
    try:
        st = os.lstat(path)
    except OSError:
        return
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        raise OSError(21 if stat.S_ISDIR(st.st_mode) else 1,
                      "refused: not a regular file (campp never replaces a folder, device, FIFO or socket)")


def write_all_atomic(files: dict[Path, bytes], source: str | None = None) -> None:
    """Write a set of files in one folder all or nothing, even if the process is killed half-way.

    1. every file to a temporary name (``.campp-PID-TOKEN-...part``), synced;
    2. a journal listing the final names (``.campp-PID-TOKEN-pending-....json``), synced with the folder;
    3. the renames, then the folder synced; 4. the journal removed.

    Each temporary file and the journal are ``flock``-ed by this process until
    the set is whole (the kernel releases the locks when a process dies, and
    a process id proves nothing where processes share a folder across PID
    namespaces).  A failure while writing (disk full, permissions) leaves none
    of them and no temporary file.  A kill between two renames leaves the
    journal, unlocked: :func:`recover` (run at the start of every run) then
    removes that set's files and the temporaries, so only complete sets remain
    and ``--skip-existing`` redoes exactly the interrupted ones.  A final name
    that is a folder, a device or a FIFO is refused, never renamed over.
    ``source`` (the input image) is named in errors.
    """
    if not files:
        return
    folders = {p.parent for p in files}
    if len(folders) != 1:
        raise ValueError("write_all_atomic writes the files of one folder")
    folder = folders.pop()
    names = [p.name for p in files]
    key = _tag("/".join(names) + f"|{next(_counter)}")
    temps: dict[Path, str] = {}
    fds: list[int] = []
    journal = None
    current = None  # the output being written, named in the error rather than its temporary file
    try:
        for current in files:
            _check_replaceable(current)
        for k, (current, data) in enumerate(files.items()):
            tmp, fd = _write_synced(folder, temp_name(f"{key}-{k}.part"), data)
            temps[current] = tmp
            fds.append(fd)
        current = folder
        if len(files) > 1:
            journal, fd = _write_synced(folder, temp_name(f"{_PENDING}-{key}.json"),
                                        json.dumps(names).encode("utf-8", "surrogateescape"))
            fds.append(fd)
        _fsync_dir(folder)
        for current, tmp in temps.items():
            _maybe_die_for_tests()
            os.replace(tmp, current)
        _fsync_dir(folder)
        if journal is not None:
            os.unlink(journal)
            journal = None
    except OSError as exc:
        where = f"{source}: " if source else ""
        raise OutputError(f"{where}cannot write {current} ({exc.strerror or exc})") from None
    finally:
        for tmp in temps.values():
            _unlink(tmp)  # after the renames, nothing is left to remove
        if journal is not None:  # the set is not whole: none of it stays
            for final in files:
                _unlink(final)
            _unlink(journal)
        for fd in fds:  # the locks go last: until here a recovery leaves all of it alone
            _close(fd)


def _maybe_die_for_tests() -> None:
    """The attack harness's hook: ``CAMPP_TEST_KILL_AT_RENAME=k`` SIGKILLs this process at rename k."""
    target = os.environ.get("CAMPP_TEST_KILL_AT_RENAME")
    if not target:
        return
    global _renames
    _renames += 1
    if _renames == int(target):
        os.kill(os.getpid(), signal.SIGKILL)


_renames = 0


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _try_lock(path: str) -> tuple[int | None, bool | None]:
    """(an open descriptor holding the lock, or None; whether a live process holds the file: True, False,
    or None where this filesystem cannot say)."""
    if fcntl is None:
        return None, None
    flags = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, os.O_RDWR | flags)  # NFS grants exclusive locks to writers only
    except PermissionError:
        try:
            fd = os.open(path, os.O_RDONLY | flags)
        except OSError:
            return None, None
    except OSError:
        return None, None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None, True
    except OSError:  # no locks here (some network filesystems)
        os.close(fd)
        return None, None
    return fd, False


def recover(folder: str | os.PathLike) -> int:
    """Undo what a killed campp left in ``folder``: half-renamed sets and temporary files.

    Only files that no live process holds are touched: a running campp keeps
    a ``flock`` on each of its temporary files and journals (see
    :func:`write_all_atomic`), so another run's files in flight are left alone,
    whatever the process ids say.  Where the filesystem has no locks, the
    process id in the name decides, as a last resort.  Returns how many files
    were removed.
    """
    folder = Path(folder)
    removed = 0
    own = _own_prefix() + "-"
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(TEMP_PREFIX) and not e.name.startswith(own)]
    except OSError:
        return 0
    for entry in entries:
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
        except OSError:
            continue
        fd, held = _try_lock(entry.path)
        if held is None:
            pid_text = entry.name[len(TEMP_PREFIX):].split("-", 1)[0]
            held = not pid_text.isdigit() or _alive(int(pid_text))
        if held:
            continue
        try:
            if f"-{_PENDING}-" in entry.name and entry.name.endswith(".json"):
                try:
                    names = json.loads(Path(entry.path).read_bytes().decode("utf-8", "surrogateescape"))
                except (OSError, ValueError):
                    names = []
                for name in names if isinstance(names, list) else []:
                    if isinstance(name, str) and "/" not in name and name not in (".", ".."):
                        target = folder / name
                        if target.is_file() and not target.is_symlink():
                            _unlink(target)
                            removed += 1
            _unlink(entry.path)
            removed += 1
        finally:
            if fd is not None:
                os.close(fd)
    return removed


def is_complete(path: str | os.PathLike) -> bool:
    """Whether an output file is whole: a JPEG from its start marker to its end marker, a .npy whose
    size matches its header, any other file non-empty.  Links do not count."""
    path = Path(path)
    try:
        if path.is_symlink() or not path.is_file():
            return False
        size = path.stat().st_size
        if size == 0:
            return False
        suffix = path.suffix.lower()
        with open(path, "rb") as fh:
            if suffix in (".jpeg", ".jpg"):
                head = fh.read(2)
                fh.seek(-2, os.SEEK_END)
                return head == b"\xff\xd8" and fh.read(2) == b"\xff\xd9"
            if suffix == ".npy":
                version = np.lib.format.read_magic(fh)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(fh)
                return fh.tell() + int(np.prod(shape)) * dtype.itemsize == size
            if suffix == ".png":
                fh.seek(-12, os.SEEK_END)
                return fh.read(12)[4:8] == b"IEND"
    except (OSError, ValueError):
        return False
    return True
