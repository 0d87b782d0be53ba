"""Faithfulness metrics for explanation maps.

* Average Drop and Increase in Confidence (the Grad-CAM++ paper's Table 1):
  the explanation map E = map x image (pixel by pixel, RGB in [0, 1] before
  normalisation) is shown to the model; Y is the probability of the explained
  class on the image, O on E.  Average Drop % = 100 mean(max(0, Y - O) / Y);
  Increase in Confidence % = 100 x share of images with O > Y.
* Deletion and insertion (RISE, Petsiuk et al. 2018): pixels are removed (set
  to a baseline, black) or inserted (into a blurred copy) in decreasing order of
  the map, in ``steps`` equal steps; the probability of the class after each
  step gives a curve over the fraction of pixels changed, in [0, 1], whose area
  (trapezoids) is the score.  Low deletion and high insertion AUC are good.

Everything works on batches at the model's input resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
import torch

#: RISE's insertion baseline: a Gaussian blur of the image (kernel 11, sigma 5 at 224 pixels).
BLUR_KERNEL = 11
BLUR_SIGMA = 5.0


def class_probability(model: torch.nn.Module, preprocess, rgb01: torch.Tensor, classes: torch.Tensor,
                      chunk: int = 32) -> np.ndarray:
    """Softmax probability of ``classes[i]`` for each RGB image ``rgb01[i]`` (in [0, 1])."""
    out = []
    with torch.no_grad():
        for start in range(0, rgb01.shape[0], chunk):
            logits = model(preprocess(rgb01[start:start + chunk])).float()
            probs = torch.softmax(logits, dim=1)
            out.append(probs.gather(1, classes[start:start + chunk, None]).squeeze(1))
    return torch.cat(out).cpu().numpy()


def upsample_maps(maps: np.ndarray, size: int) -> np.ndarray:
    """(N, h, w) maps in [0, 1] -> (N, size, size), bilinear, as the figures show them."""
    return np.stack([np.clip(cv2.resize(m.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR),
                             0.0, 1.0) for m in maps])


def average_drop(y: np.ndarray, o: np.ndarray) -> float:
    """100 x mean over images of max(0, Y - O) / Y."""
    y, o = np.asarray(y, np.float64), np.asarray(o, np.float64)
    return float(100.0 * np.mean(np.maximum(0.0, y - o) / y))


def increase_in_confidence(y: np.ndarray, o: np.ndarray) -> float:
    """100 x share of images where O > Y."""
    return float(100.0 * np.mean(np.asarray(o) > np.asarray(y)))


def auc(curve: np.ndarray) -> np.ndarray:
    """Area under curves sampled at 0, 1/steps, ..., 1 (trapezoids); (..., steps + 1) -> (...)."""
    curve = np.asarray(curve, np.float64)
    steps = curve.shape[-1] - 1
    return (curve[..., 1:] + curve[..., :-1]).sum(axis=-1) / (2.0 * steps)


def blurred(rgb01: torch.Tensor) -> torch.Tensor:
    """RISE's insertion start: each image Gaussian-blurred (kernel and sigma scaled to its size)."""
    size = rgb01.shape[-1]
    k = max(3, int(round(BLUR_KERNEL * size / 224)) | 1)
    sigma = BLUR_SIGMA * size / 224
    arr = rgb01.permute(0, 2, 3, 1).cpu().numpy()
    out = np.stack([cv2.GaussianBlur(a, (k, k), sigma) for a in arr])
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(rgb01.device, rgb01.dtype)


def _orders(maps_up: np.ndarray) -> np.ndarray:
    """Pixel indices per image, most important first (ties: lower index first, deterministic)."""
    flat = maps_up.reshape(maps_up.shape[0], -1)
    return np.argsort(-flat, axis=1, kind="stable")


def perturbation_curves(model: torch.nn.Module, preprocess, rgb01: torch.Tensor, maps_up: np.ndarray,
                        classes: torch.Tensor, steps: int, start: torch.Tensor, end: torch.Tensor) -> np.ndarray:
    """Probability of each image's class as its pixels go from ``start`` to ``end`` in map order.

    Step k shows ``end`` at the round(k/steps x H x W) most important pixels and
    ``start`` elsewhere.  Returns (N, steps + 1).
    """
    n, _, h, w = rgb01.shape
    orders = torch.from_numpy(_orders(maps_up)).to(rgb01.device)
    ranks = torch.empty_like(orders)  # rank of each pixel in the map's order
    ranks.scatter_(1, orders, torch.arange(h * w, device=rgb01.device).expand(n, -1))
    counts = torch.tensor([round(k * h * w / steps) for k in range(steps + 1)], device=rgb01.device)
    curves = np.zeros((n, steps + 1))
    for i in range(n):
        masks = (ranks[i][None, :] < counts[:, None]).to(rgb01.dtype).view(steps + 1, 1, h, w)
        frames = start[i][None] * (1 - masks) + end[i][None] * masks
        curves[i] = class_probability(model, preprocess, frames, classes[i].repeat(steps + 1))
    return curves


@dataclass
class ImageScores:
    """Per image and method: what the paper's and RISE's metrics need."""

    y: float  # probability of the class on the image
    o: float  # ... on the explanation map x image
    deletion: np.ndarray  # curve, (steps + 1,)
    insertion: np.ndarray

    @property
    def drop(self) -> float:
        return 100.0 * max(0.0, self.y - self.o) / self.y

    @property
    def deletion_auc(self) -> float:
        return float(auc(self.deletion))

    @property
    def insertion_auc(self) -> float:
        return float(auc(self.insertion))


def score_batch(model: torch.nn.Module, preprocess: Callable, rgb01: torch.Tensor, maps: np.ndarray,
                classes: np.ndarray, steps: int,
                deletion_baseline: Callable[[torch.Tensor], torch.Tensor] = torch.zeros_like,
                insertion_baseline: Callable[[torch.Tensor], torch.Tensor] = blurred,
                y: np.ndarray | None = None) -> list[ImageScores]:
    """Every metric for one method's low-resolution ``maps`` of a batch.

    ``y``: the class probabilities on the images, when the explaining pass has them already.
    """
    size = rgb01.shape[-1]
    maps_up = upsample_maps(maps, size)
    cls = torch.as_tensor(classes, dtype=torch.long, device=rgb01.device)
    if y is None:
        y = class_probability(model, preprocess, rgb01, cls)
    explained = rgb01 * torch.from_numpy(maps_up).to(rgb01.device, rgb01.dtype)[:, None]
    o = class_probability(model, preprocess, explained, cls)
    deletion = perturbation_curves(model, preprocess, rgb01, maps_up, cls, steps,
                                   start=rgb01, end=deletion_baseline(rgb01))
    insertion = perturbation_curves(model, preprocess, rgb01, maps_up, cls, steps,
                                    start=insertion_baseline(rgb01), end=rgb01)
    return [ImageScores(float(y[i]), float(o[i]), deletion[i], insertion[i]) for i in range(len(classes))]


def bootstrap_ci(values: np.ndarray, statistic: Callable[[np.ndarray], float], resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of ``statistic`` over images (rows of ``values``)."""
    values = np.asarray(values)
    if len(values) < 2:
        v = statistic(values)
        return v, v
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(resamples, len(values)))
    stats = np.array([statistic(values[i]) for i in idx])
    return float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


def summarise(scores: list[ImageScores], resamples: int = 2000) -> dict:
    """n, the four metrics and their 95 % bootstrap intervals."""
    yo = np.array([[s.y, s.o] for s in scores])
    dele = np.array([s.deletion_auc for s in scores])
    ins = np.array([s.insertion_auc for s in scores])
    out = {"n": len(scores)}
    stats = {
        "average_drop": (yo, lambda v: average_drop(v[:, 0], v[:, 1])),
        "increase_in_confidence": (yo, lambda v: increase_in_confidence(v[:, 0], v[:, 1])),
        "deletion_auc": (dele, lambda v: float(np.mean(v))),
        "insertion_auc": (ins, lambda v: float(np.mean(v))),
    }
    for name, (values, fn) in stats.items():
        out[name] = fn(values) if len(values) else float("nan")
        out[f"{name}_ci95"] = list(bootstrap_ci(values, fn, resamples)) if len(values) else [float("nan")] * 2
    return out
