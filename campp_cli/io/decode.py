"""Photos decoded whole, with one clear error for anything that is not one, and decompression-bomb guards.

Pillow decodes (and applies EXIF orientation).  Images are RGB Pillow images, or ``uint8`` RGB arrays of
shape (H, W, 3).
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InputError, first_line
from ..settings import DEFAULT_MAX_PIXELS

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
    image (:func:`campp_cli.draw.geometry.frame_photo`), so what the model
    sees never depends on how the figures are drawn.
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
        reason = first_line(exc)
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
