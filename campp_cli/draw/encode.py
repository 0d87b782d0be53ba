"""Figures as file bytes: JPEG (Pillow) and PNG (OpenCV); :mod:`campp_cli.io.formats` names them by --format."""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image


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

