"""Decoding, cropping, colour maps, overlays, titled panels and safe JPEG writing.

Pillow decodes (and applies EXIF orientation); OpenCV resizes and colours.
Images are ``uint8`` RGB arrays of shape (H, W, 3) throughout.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from .errors import InputError, OutputError
from .settings import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE, MIN_PANEL_SIDE


def load_rgb(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode any image Pillow reads into RGB ``uint8``; one clear error otherwise.

    EXIF orientation is applied; transparency is composited on white; the
    first frame of an animation is used; 16-bit images are scaled to 8 bits.
    Truncated files are refused rather than half-explained.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an image file")
    if not path.is_file():  # a FIFO or a device would block or never end
        raise InputError(f"{path}: not a regular file")
    try:
        if path.stat().st_size == 0:
            raise InputError(f"{path}: empty file")
        with open(path, "rb") as fh:
            data = fh.read()
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return decode_rgb(data, str(path), max_pixels)


def decode_rgb(data: bytes, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """:func:`load_rgb` for bytes already in memory."""
    try:
        with warnings.catch_warnings():
            # Our max_pixels check replaces Pillow's bomb warning; its notes on corrupt
            # metadata (EXIF, TIFF tags) are no concern of someone explaining a photo.
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise InputError(
                    f"{name}: refused: {width}x{height} pixels exceeds --max-pixels {max_pixels} "
                    f"(a decompression bomb or a very large image)"
                )
            if width == 0 or height == 0:
                raise InputError(f"{name}: the image has no pixels ({width}x{height})")
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except InputError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own ceiling, checked inside open()
        raise InputError(f"{name}: refused: exceeds --max-pixels {max_pixels} ({exc})") from None
    except UnidentifiedImageError:
        raise InputError(f"{name}: not an image format campp can read") from None
    except Exception as exc:  # decoders of hostile bytes raise anything; one line for all
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "truncated" in reason.lower():
            reason = "truncated image data"
        raise InputError(f"{name}: cannot decode image: {reason}") from None


def _to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if arr.ndim == 3:
            arr = arr[..., 0]
        top = float(np.nanmax(arr)) if arr.size else 0.0
        if mode == "F" and top <= 1.0:
            arr = arr * 255.0
        elif top > 255.0:
            arr = arr / 257.0  # 16-bit range to 8-bit
        grey = np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def center_square(rgb: np.ndarray) -> np.ndarray:
    """Crop the central square (side = the short side), as the paper's ``load_image`` does."""
    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return rgb[top:top + side, left:left + side]


def resize(rgb: np.ndarray, side: int) -> np.ndarray:
    """Square resize: area averaging when shrinking, bilinear when enlarging."""
    if rgb.shape[0] == side and rgb.shape[1] == side:
        return rgb
    interp = cv2.INTER_AREA if rgb.shape[0] > side else cv2.INTER_LINEAR
    return cv2.resize(rgb, (side, side), interpolation=interp)


def display_square(rgb: np.ndarray, max_side: int = DEFAULT_MAX_SIDE) -> np.ndarray:
    """The central square at the resolution panels are drawn at."""
    square = center_square(rgb)
    side = square.shape[0]
    target = min(max(side, MIN_PANEL_SIDE), max_side)
    return resize(square, target)


def model_input(square: np.ndarray, size: int) -> np.ndarray:
    """The square as float32 RGB in [0, 1], ``(3, size, size)``."""
    small = resize(square, size)
    return np.ascontiguousarray(small.transpose(2, 0, 1), dtype=np.float32) / 255.0


def upsample(cam: np.ndarray, side: int) -> np.ndarray:
    """A low-resolution map, bilinearly upsampled to ``side`` x ``side``, in [0, 1]."""
    up = cv2.resize(cam.astype(np.float32), (side, side), interpolation=cv2.INTER_LINEAR)
    return np.clip(up, 0.0, 1.0)


def colorize(cam01: np.ndarray) -> np.ndarray:
    """JET colour map of a map in [0, 1] (blue = 0, red = 1) as RGB."""
    u8 = np.round(np.clip(cam01, 0.0, 1.0) * 255.0).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def overlay(rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The heatmap blended over the image."""
    return cv2.addWeighted(heat, alpha, rgb, 1.0 - alpha, 0.0)


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
        text = line
        # Shorten rather than overflow a narrow panel.
        while len(text) > 4 and draw.textlength(text, font=face) > w - 8:
            text = text[:-2].rstrip() + "…" if not text.endswith("…") else text[:-2] + "…"
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


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place.

    Readers see either no file or the whole file, never a partial one; on any
    failure (disk full, interruption) the temporary file is removed.
    """
    write_all_atomic({Path(path): data})


def write_all_atomic(files: dict[Path, bytes]) -> None:
    """Write several files all or nothing: every one to a temporary name first, then the renames.

    A failure while writing (disk full, permissions) leaves none of them and no
    temporary file behind.
    """
    temps: dict[Path, str] = {}
    current = None  # the output being written, named in the error rather than its temporary file
    try:
        for current, data in files.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{current.name}.", suffix=".part", dir=current.parent)
            temps[current] = tmp
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        for current, tmp in temps.items():
            os.replace(tmp, current)
    except OSError as exc:
        raise OutputError(f"{current}: cannot write ({exc.strerror or exc})") from None
    finally:
        for tmp in temps.values():
            if os.path.exists(tmp):
                os.unlink(tmp)
