"""The GPU path's drawing (campp_cli.draw.tensors) run on CPU tensors: the same pixels as the OpenCV path."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from campp_cli.draw import tensors
from campp_cli.draw.encode import encode_jpeg
from campp_cli.draw.geometry import upsample
from campp_cli.draw.panels import colorize, overlay


def _maps(n: int, h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cams = rng.random((n, h, w)).astype(np.float32)
    cams[:, 0, 0] = 0.0  # the ends of the scale, and values either side of a level's rounding
    cams[:, -1, -1] = 1.0
    cams[:, 0, -1] = 0.5 / 255
    return cams


def test_the_colour_table_is_opencvs_jet_level_by_level():
    levels = np.arange(256, dtype=np.float32)[None, None, :] / 255.0
    expected = colorize(levels[0])
    got = tensors.colorize_maps(torch.from_numpy(levels))[0].numpy()
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("size", [(7, 7, 224, 224), (14, 14, 300, 451), (2, 3, 17, 640)])
def test_upsampled_heatmaps_are_opencvs(size):
    """Bilinear with half-pixel centres as cv2.INTER_LINEAR: float32 values within rounding of OpenCV's,
    and the JET heatmaps equal but where a value sits on a level's rounding edge (at most one level off)."""
    h, w, height, width = size
    cams = _maps(3, h, w, seed=height)
    up = tensors.upsample_maps(torch.from_numpy(cams), height, width).numpy()
    expected = np.stack([upsample(c, width, height) for c in cams])
    np.testing.assert_allclose(up, expected, atol=2e-6, rtol=0)
    heat = tensors.colorize_maps(torch.from_numpy(up)).numpy()
    reference = np.stack([colorize(e) for e in expected])
    assert np.mean(np.any(heat != reference, axis=-1)) < 1e-3
    levels = np.round(up * 255) - np.round(expected * 255)
    assert np.abs(levels).max() <= 1


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 0.77, 1.0])
def test_overlays_are_cv2_add_weighted(alpha):
    rng = np.random.default_rng(int(alpha * 10))
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    heat = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    got = tensors.overlay_images(torch.from_numpy(rgb), torch.from_numpy(heat), alpha).numpy()
    expected = overlay(rgb, heat, alpha)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)


def test_a_photos_heatmaps_and_overlays_are_the_figures_the_cpu_draws():
    """What render() draws for each method of one photo (heatmap and overlay at panel size), from one batch
    of tensor operations."""
    rng = np.random.default_rng(5)
    seen = rng.integers(0, 256, (230, 310, 3), dtype=np.uint8)
    cams = _maps(4, 14, 14, seed=6)
    heat, blended = tensors.heatmaps_and_overlays(torch.from_numpy(cams), torch.from_numpy(seen), 0.5)
    for m, cam in enumerate(cams):
        reference = colorize(upsample(cam, 310, 230))
        assert np.mean(np.any(heat[m].numpy() != reference, axis=-1)) < 1e-3
        np.testing.assert_array_equal(blended[m].numpy(), overlay(seen, heat[m].numpy(), 0.5))


def _decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def test_jpegs_from_the_gpu_encoder_equal_pillows_within_jpeg_rounding():
    """torchvision's encoder (the one CUDA tensors go to), here on CPU tensors, against Pillow's files of the
    same figures: the decoded pixels within JPEG rounding; CPU tensors themselves go to Pillow, byte for
    byte campp's figures."""
    rng = np.random.default_rng(7)
    small = rng.integers(0, 256, (3, 12, 16, 3), dtype=np.uint8)
    figures = [np.array(Image.fromarray(s).resize((160, 120), Image.BILINEAR)) for s in small]
    batch = [torch.from_numpy(f) for f in figures]
    assert tensors.encode_jpegs(batch) == [encode_jpeg(f) for f in figures]
    for figure, data in zip(figures, tensors.torchvision_jpegs(batch)):
        assert data[:2] == b"\xff\xd8"  # a JPEG file
        gpu, cpu = _decoded(data), _decoded(encode_jpeg(figure))
        assert gpu.shape == cpu.shape == figure.shape
        assert np.abs(gpu - cpu).mean() < 1.0 and np.abs(gpu - figure.astype(int)).mean() < 4.0


def test_a_nan_or_inf_in_a_map_is_drawn_at_an_end_of_the_scale():
    """NaN as the colour scale's 0 (what NumPy's cast of NaN to uint8 gives the CPU path on x86), inf clipped
    to 1, -inf to 0: no index out of the table (on CUDA that would be a device-side assert)."""
    cam = np.array([[0.0, np.nan], [np.inf, -np.inf]], dtype=np.float32)
    got = tensors.colorize_maps(torch.from_numpy(cam)[None])[0].numpy()
    np.testing.assert_array_equal(got, colorize(np.array([[0.0, 0.0], [1.0, 0.0]], dtype=np.float32)))
