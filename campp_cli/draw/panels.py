"""Panels: colour maps, overlays, colour bars, titles, captions and the grid of the comparison figure.

OpenCV colours and blends; Pillow draws the text.  Images are ``uint8`` RGB arrays of shape (H, W, 3).
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont


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


def stacked(rows: list[np.ndarray], gap: int = 8) -> np.ndarray:
    """Figures one above the other (the widest sets the width), separated by white gaps; one is itself."""
    if len(rows) == 1:
        return rows[0]
    width = max(r.shape[1] for r in rows)
    out = np.full((sum(r.shape[0] for r in rows) + gap * (len(rows) - 1), width, 3), 255, dtype=np.uint8)
    y = 0
    for r in rows:
        out[y: y + r.shape[0], : r.shape[1]] = r
        y += r.shape[0] + gap
    return out
