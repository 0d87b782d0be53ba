"""PNG figures: fast settings, still lossless."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from campp_cli.draw.encode import PNG_PARAMS, encode_png


@pytest.mark.parametrize("shape", [(1, 1, 3), (37, 53, 3), (480, 640, 3)])
def test_png_figures_decode_to_the_same_pixels(shape):
    rng = np.random.default_rng(shape[0])
    noisy = rng.integers(0, 256, size=shape, dtype=np.uint8)
    smooth = np.broadcast_to(np.linspace(0, 255, shape[1], dtype=np.uint8)[None, :, None], shape).copy()
    for rgb in (noisy, smooth):
        data = encode_png(rgb)
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        back = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)[..., ::-1]
        assert np.array_equal(back, rgb)


def test_png_is_encoded_at_zlib_level_1():
    settings = dict(zip(PNG_PARAMS[::2], PNG_PARAMS[1::2]))
    assert settings[cv2.IMWRITE_PNG_COMPRESSION] == 1
