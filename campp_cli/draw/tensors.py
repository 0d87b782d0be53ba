"""Heatmaps and overlays as torch operations on a batch, on whichever device the tensors are (the GPU path).

The same pixels as :mod:`campp_cli.draw.panels` and :func:`campp_cli.draw.geometry.upsample` draw with
OpenCV: the map upsampled bilinearly with half-pixel centres (``cv2.INTER_LINEAR``), clipped to [0, 1],
rounded to 256 levels and looked up in OpenCV's own JET table, then blended over the photo as
``cv2.addWeighted`` does (rounded to the nearest, saturated).  Run on CPU tensors, they are tested
against the OpenCV path (``tests/test_tensor_render.py``); on CUDA they keep a batch's upsampling,
colouring and blending on the GPU.  JPEG encoding goes through one function, :func:`encode_jpegs`: CUDA
tensors by torchvision's encoder (nvJPEG; torchvision deprecates its image codecs from 0.29 in favour of
TorchCodec, which the GPU machine does not have: when torchvision drops them, only this function changes),
CPU ones by Pillow, as every figure.
Nothing in campp's run calls these yet: ``benchmarks/gpu.py render`` measures them against the CPU's
drawing on the GPU machine first.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.cache
def _jet_rgb() -> np.ndarray:
    """OpenCV's JET colour map as a (256, 3) uint8 RGB table."""
    import cv2

    levels = np.arange(256, dtype=np.uint8)[:, None]
    return cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)[:, 0]


def upsample_maps(cams, height: int, width: int):
    """(N, h, w) maps -> (N, height, width) float32, bilinear with half-pixel centres, clipped to [0, 1]."""
    import torch.nn.functional as F

    up = F.interpolate(cams.float()[:, None], size=(height, width), mode="bilinear", align_corners=False)
    return up[:, 0].clamp(0.0, 1.0)


def colorize_maps(cams01):
    """(N, H, W) maps in [0, 1] -> (N, H, W, 3) uint8 RGB, JET (blue 0, red 1) as OpenCV's table has it; NaN
    drawn as 0 (what the CPU path's cast gives), values beyond [0, 1] clipped."""
    import torch

    table = torch.from_numpy(_jet_rgb()).to(cams01.device)
    levels = torch.round(torch.nan_to_num(cams01.float(), nan=0.0).clamp(0.0, 1.0) * 255.0).long()  # NaN: 0, as cv2
    return table[levels]


def overlay_images(rgb, heat, alpha: float):
    """``alpha * heat + (1 - alpha) * rgb`` of uint8 (..., 3) images as ``cv2.addWeighted`` computes it: the
    weights in float32, ``heat * alpha`` added to the float32 ``rgb * (1 - alpha)`` with one rounding (a
    fused multiply-add, here exact in float64 and rounded once to float32), then to the nearest integer
    (half to even) and saturated."""
    import torch

    weight, rest = float(np.float32(alpha)), float(np.float32(1.0 - alpha))
    mixed = (heat.double() * weight + (rgb.float() * rest).double()).float()
    return torch.round(mixed).clamp(0, 255).to(torch.uint8)


def heatmaps_and_overlays(cams, rgb, alpha: float):
    """Each method's heatmap and overlay of one photo: ``cams`` (M, h, w) maps in [0, 1], ``rgb`` the panel
    (H, W, 3) uint8, on one device -> (heat (M, H, W, 3), blended (M, H, W, 3)) uint8 on that device."""
    height, width = rgb.shape[:2]
    heat = colorize_maps(upsample_maps(cams, height, width))
    return heat, overlay_images(rgb[None], heat, alpha)


def encode_jpegs(images, quality: int = 92) -> list[bytes]:
    """(H, W, 3) uint8 RGB tensors (a list or a batch) -> their JPEG files' bytes; on CUDA by the GPU's
    encoder (torchvision's nvJPEG, all at once), on the CPU by Pillow, as every figure campp writes."""
    images = list(images)
    if images and images[0].device.type == "cuda":
        return torchvision_jpegs(images, quality)
    from .encode import encode_jpeg

    return [encode_jpeg(np.ascontiguousarray(image.cpu().numpy()), quality) for image in images]


def torchvision_jpegs(images: list, quality: int = 92) -> list[bytes]:
    """:func:`encode_jpegs` 's GPU encoder, torchvision's ``encode_jpeg`` of a list, on any device (the CPU's
    libjpeg-turbo where the tensors are on the CPU, as the tests run it)."""
    import warnings

    with warnings.catch_warnings():  # deprecated from torchvision 0.29 (see the module's text)
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import encode_jpeg

        found = encode_jpeg([image.permute(2, 0, 1).contiguous() for image in images], quality=quality)
    return [data.cpu().numpy().tobytes() for data in found]
