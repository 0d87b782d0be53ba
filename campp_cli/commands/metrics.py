"""Faithfulness metrics for explanation maps.

* Average Drop and Increase in Confidence (the Grad-CAM++ paper's Table 1):
  the explanation map E = map x image (pixel by pixel, RGB in [0, 1] before
  normalisation) is shown to the model; Y is the probability of the explained
  class on the image, O on E.  Average Drop % = 100 mean(max(0, Y - O) / Y);
  Increase in Confidence % = 100 x share of images with O > Y.
* Win % (the paper's Section 4.1 (iii)): for methods X and Z, 100 x the share of
  images where X's drop in confidence max(0, Y - O) / Y is lower than Z's,
  ties counting half to each (so win[X][Z] + win[Z][X] = 100).
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

from ..cam.explain import model_input
from ..cam.targets import probabilities
from ..draw.geometry import upsample

#: RISE's insertion baseline: a Gaussian blur of the image (kernel 11, sigma 5 at 224 pixels).
BLUR_KERNEL = 11
BLUR_SIGMA = 5.0


def class_probability(model: torch.nn.Module, preprocess, rgb01: torch.Tensor, classes: torch.Tensor,
                      chunk: int = 32, activation: str = "softmax") -> np.ndarray:
    """Softmax probability of ``classes[i]`` for each RGB image ``rgb01[i]`` (in [0, 1]); a multi-label
    model's (``activation="sigmoid"``): that label's sigmoid."""
    out = []
    with torch.no_grad():
        for start in range(0, rgb01.shape[0], chunk):
            logits = model(model_input(model, preprocess(rgb01[start:start + chunk]))).float()
            probs = probabilities(logits, activation)
            out.append(probs.gather(1, classes[start:start + chunk, None]).squeeze(1))
    return torch.cat(out).cpu().numpy()


def upsample_maps(maps: np.ndarray, size: int) -> np.ndarray:
    """(N, h, w) maps in [0, 1] -> (N, size, size), bilinear, as the figures show them."""
    return np.stack([upsample(m, size) for m in maps])


def average_drop(y: np.ndarray, o: np.ndarray) -> float:
    """100 x mean over images of max(0, Y - O) / Y."""
    y, o = np.asarray(y, np.float64), np.asarray(o, np.float64)
    return float(100.0 * np.mean(np.maximum(0.0, y - o) / y))


def increase_in_confidence(y: np.ndarray, o: np.ndarray) -> float:
    """100 x share of images where O > Y."""
    return float(100.0 * np.mean(np.asarray(o) > np.asarray(y)))


def win_percent(drops: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Pairwise Win %: ``{X: {Z: 100 x share of images where X's drop < Z's, ties half}}`` for X != Z.

    ``drops[m]``: each image's drop in confidence max(0, Y - O) / Y for method m, the images in one order.
    """
    out: dict[str, dict[str, float]] = {}
    for x, dx in drops.items():
        out[x] = {}
        for z, dz in drops.items():
            if x == z:
                continue
            dx_, dz_ = np.asarray(dx, np.float64), np.asarray(dz, np.float64)
            wins = np.sum(dx_ < dz_) + 0.5 * np.sum(dx_ == dz_)
            out[x][z] = float(100.0 * wins / len(dx_)) if len(dx_) else float("nan")
    return out


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


@dataclass
class ImageScores:
    """Per image and method: what the paper's, RISE's, ROAD's and the complexity metrics need."""

    y: float  # probability of the class on the image
    o: float  # ... on the explanation map x image
    deletion: np.ndarray  # curve, (steps + 1,)
    insertion: np.ndarray
    gini: float = float("nan")  # sparseness of the map (complexity.gini)
    entropy: float = float("nan")  # complexity of the map (complexity.entropy)
    morf: np.ndarray | None = None  # ROAD: the class probability after each fraction removed, most relevant first
    lerf: np.ndarray | None = None  # ... least relevant first
    morf_kept: np.ndarray | None = None  # ROAD: whether the class stayed the model's first after each fraction
    lerf_kept: np.ndarray | None = None

    @property
    def drop(self) -> float:
        return 100.0 * max(0.0, self.y - self.o) / self.y

    @property
    def deletion_auc(self) -> float:
        return float(auc(self.deletion))

    @property
    def insertion_auc(self) -> float:
        return float(auc(self.insertion))


def passes_per_image(methods: int, steps: int, road_fractions: int = 0) -> int:
    """Forward passes :func:`score_all` runs per image: the black and the blurred image (shared by every
    method), and per method O and the deletion and insertion steps 1..steps-1 (step 0 of deletion and the
    last of insertion are the image itself, whose probability the explaining pass gave), and with ROAD its
    MoRF and LeRF images at each fraction (at most: an imputed image two methods share is passed once)."""
    return 2 + methods * (2 * steps - 1 + 2 * road_fractions)


@dataclass(frozen=True)
class RoadSettings:
    """ROAD's removal ``fractions`` and its noise's standard deviation per RGB channel (``noise``)."""

    fractions: tuple[float, ...]
    noise: tuple[float, ...]


def score_all(model: torch.nn.Module, preprocess: Callable, rgb01: torch.Tensor, maps: dict[str, np.ndarray],
              classes: np.ndarray, steps: int, y: np.ndarray, eval_batch: int = 32,
              deletion_baseline: Callable[[torch.Tensor], torch.Tensor] = torch.zeros_like,
              insertion_baseline: Callable[[torch.Tensor], torch.Tensor] = blurred,
              road: RoadSettings | None = None, activation: str = "softmax") -> dict[str, list[ImageScores]]:
    """Every metric of every method's low-resolution maps for one batch of images.  ``activation``: how the
    logits become the class probabilities the metrics read (``"sigmoid"``: a multi-label model's labels).

    All the perturbed images (O, deletion and insertion steps, ROAD's imputed images, across images and
    methods) go through the model in batches of ``eval_batch`` under ``torch.inference_mode``; see
    :func:`passes_per_image`.  ``y``: the class probabilities on the images, from the explaining pass.
    """
    from . import complexity

    n = rgb01.shape[0]
    names = list(maps)
    frames = _Frames(rgb01, maps, steps, deletion_baseline(rgb01), insertion_baseline(rgb01), road)
    specs = [(("black",), i) for i in range(n)] + [(("blur",), i) for i in range(n)]
    for m in names:
        specs += [((m, "o"), i) for i in range(n)]
        specs += [((m, kind, k), i) for kind in ("del", "ins") for k in range(1, steps) for i in range(n)]
    fractions = range(len(road.fractions)) if road is not None else range(0)
    for m in names:  # last: their imputations run on threads while the model passes the others
        specs += [((m, order, k), i) for order in ("morf", "lerf") for k in fractions for i in range(n)]
    cls = torch.as_tensor(classes, dtype=torch.long, device=rgb01.device)
    try:
        probs, kept = _probabilities(model, preprocess, frames, specs, cls, eval_batch, activation)
    finally:
        frames.close()
    out = {}
    for m in names:
        scores = []
        ginis, entropies = complexity.gini(frames.ups[m]), complexity.entropy(frames.ups[m])
        for i in range(n):
            yi = float(y[i])
            deletion = [yi] + [probs[((m, "del", k), i)] for k in range(1, steps)] + [probs[(("black",), i)]]
            insertion = [probs[(("blur",), i)]] + [probs[((m, "ins", k), i)] for k in range(1, steps)] + [yi]
            curves = {f"{order}{suffix}": np.array([table[((m, order, k), i)] for k in fractions])
                      for order in ("morf", "lerf") for suffix, table in (("", probs), ("_kept", kept))} \
                if road is not None else {}
            scores.append(ImageScores(yi, probs[((m, "o"), i)], np.array(deletion), np.array(insertion),
                                      float(ginis[i]), float(entropies[i]), **curves))
        out[m] = scores
    return out


class _Frames:
    """The perturbed images of a batch, made on demand from their keys: ("black",), ("blur",), (m, "o"),
    (m, "del", k), (m, "ins", k), and ROAD's (m, "morf", k) and (m, "lerf", k), each with its image's index.

    ROAD's images are imputed on threads (:meth:`prefetch`), each solved once per image, order and removed
    set: two methods whose maps remove the very same pixels share it."""

    def __init__(self, rgb01: torch.Tensor, maps: dict[str, np.ndarray], steps: int, black: torch.Tensor,
                 blur: torch.Tensor, road: RoadSettings | None = None):
        n, _, h, w = rgb01.shape
        self.rgb01, self.black, self.blur, self.h, self.w = rgb01, black, blur, h, w
        self.road = road
        self.imputed: dict = {}  # (image, order, removed pixels' bytes) -> Future of the imputed image
        self.keys: dict = {}  # spec -> its key in self.imputed, until its image is taken
        self.pool = None
        if road is not None:
            from concurrent.futures import ThreadPoolExecutor

            from .road import removal_counts

            self.road_counts = removal_counts(road.fractions, h * w)
            self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="campp-road")
            self.images = rgb01.detach().cpu().numpy()
        self.ups = {m: upsample_maps(maps[m], h) for m in maps}
        self.ranks = {}
        for m in maps:
            orders = torch.from_numpy(_orders(self.ups[m])).to(rgb01.device)
            r = torch.empty_like(orders)
            r.scatter_(1, orders, torch.arange(h * w, device=rgb01.device).expand(n, -1))
            self.ranks[m] = r
        self.counts = [round(k * h * w / steps) for k in range(steps + 1)]

    def prefetch(self, spec) -> None:
        """Start imputing ROAD's image of ``spec`` (a spec whose image is already coming waits for it)."""
        key = self._road_key(spec)
        if key not in self.imputed:
            import zlib

            from . import road

            i, order, removed = key
            image = self.images[i]
            seed = [zlib.crc32(image.tobytes()), zlib.crc32(removed), ("morf", "lerf").index(order)]
            mask = np.frombuffer(removed, dtype=bool).reshape(self.h, self.w)
            self.imputed[key] = [self.pool.submit(road.impute, image, mask, np.asarray(self.road.noise),
                                                  np.random.default_rng(seed)), 0]
        self.imputed[key][1] += 1

    def _road_key(self, spec) -> tuple:
        """The image, order and removed pixels of ``spec`` (built once: prefetch and _road both ask)."""
        key = self.keys.get(spec)
        if key is None:
            from . import road

            (m, order, k), i = spec
            ranks = self.ranks[m][i].view(self.h, self.w).cpu().numpy()
            key = self.keys[spec] = (i, order, road.removed_mask(ranks, self.road_counts[k], order).tobytes())
        return key

    def _road(self, spec) -> np.ndarray:
        """ROAD's imputed image of ``spec``, dropped once every spec that shares it has had it."""
        key = self._road_key(spec)
        if key not in self.imputed:
            self.prefetch(spec)
        del self.keys[spec]
        entry = self.imputed[key]
        entry[1] -= 1
        if entry[1] <= 0:
            del self.imputed[key]
        return entry[0].result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def __call__(self, spec) -> torch.Tensor:
        key, i = spec
        rgb01 = self.rgb01
        if key == ("black",):
            return self.black[i]
        if key == ("blur",):
            return self.blur[i]
        m = key[0]
        if key[1] in ("morf", "lerf"):
            return torch.from_numpy(self._road(spec)).to(rgb01.device, rgb01.dtype)
        if key[1] == "o":
            return rgb01[i] * torch.from_numpy(self.ups[m][i]).to(rgb01.device, rgb01.dtype)[None]
        mask = (self.ranks[m][i] < self.counts[key[2]]).to(rgb01.dtype).view(1, self.h, self.w)
        if key[1] == "del":
            return rgb01[i] * (1 - mask) + self.black[i] * mask
        return self.blur[i] * (1 - mask) + rgb01[i] * mask


def _is_road(spec) -> bool:
    return spec[0][1:2] in (("morf",), ("lerf",))


#: ROAD images imputed ahead of the model, at most (their threads work while it passes the others).
ROAD_AHEAD = 64


def _probabilities(model: torch.nn.Module, preprocess: Callable, frames: _Frames, specs: list, cls: torch.Tensor,
                   eval_batch: int, activation: str = "softmax") -> tuple[dict, dict]:
    """({spec: the explained class's probability on that frame}, {spec: whether it stayed the model's first
    class}), the frames in batches of ``eval_batch``; ROAD's imputed ahead."""
    probs: dict = {}
    kept: dict = {}
    device = cls.device
    road = [spec for spec in specs if _is_road(spec)]
    ahead = done = 0
    with torch.inference_mode():
        for start in range(0, len(specs), eval_batch):
            chunk = specs[start:start + eval_batch]
            while ahead < len(road) and ahead < done + ROAD_AHEAD + len(chunk):
                frames.prefetch(road[ahead])
                ahead += 1
            done += sum(1 for spec in chunk if _is_road(spec))
            logits = model(model_input(model, preprocess(torch.stack([frames(spec) for spec in chunk])))).float()
            idx = torch.tensor([i for _, i in chunk], device=device)
            p = probabilities(logits, activation).gather(1, cls[idx][:, None]).squeeze(1).cpu().numpy()
            first = (logits.argmax(dim=1) == cls[idx]).cpu().numpy()
            probs.update({spec: float(v) for spec, v in zip(chunk, p)})
            kept.update({spec: bool(v) for spec, v in zip(chunk, first)})
    return probs, kept


def score_batch(model: torch.nn.Module, preprocess: Callable, rgb01: torch.Tensor, maps: np.ndarray,
                classes: np.ndarray, steps: int,
                deletion_baseline: Callable[[torch.Tensor], torch.Tensor] = torch.zeros_like,
                insertion_baseline: Callable[[torch.Tensor], torch.Tensor] = blurred,
                y: np.ndarray | None = None, eval_batch: int = 32) -> list[ImageScores]:
    """Every metric for one method's low-resolution ``maps`` of a batch (see :func:`score_all`).

    ``y``: the class probabilities on the images, when the explaining pass has them already.
    """
    cls = torch.as_tensor(classes, dtype=torch.long, device=rgb01.device)
    if y is None:
        y = class_probability(model, preprocess, rgb01, cls)
    return score_all(model, preprocess, rgb01, {"m": maps}, classes, steps, y, eval_batch,
                     deletion_baseline, insertion_baseline)["m"]


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
        "deletion_auc": (dele, mean),
        "insertion_auc": (ins, mean),
    }
    stats["sparseness_gini"] = (np.array([s.gini for s in scores]), mean)
    stats["complexity_entropy"] = (np.array([s.entropy for s in scores]), mean)
    road = [s for s in scores if s.morf is not None]
    if road:  # each image's mean over the fractions: the area under its curve, up to the fractions' spacing
        stats["road_morf"] = (np.array([np.mean(s.morf) for s in road]), mean)
        stats["road_lerf"] = (np.array([np.mean(s.lerf) for s in road]), mean)
    for name, (values, fn) in stats.items():
        out[name], out[f"{name}_ci95"] = with_interval(values, fn, resamples)
    if road:
        out["road"] = {}
        for order in ("morf", "lerf"):
            curves = np.array([getattr(s, order) for s in road])
            kept = np.array([getattr(s, f"{order}_kept") for s in road], dtype=np.float64)
            out["road"][order] = [float(v) for v in curves.mean(axis=0)]
            out["road"][f"{order}_ci95"] = [with_interval(curves[:, k], mean, resamples)[1]
                                            for k in range(curves.shape[1])]
            out["road"][f"{order}_kept"] = [float(v) for v in kept.mean(axis=0)]
    return out


def mean(values: np.ndarray) -> float:
    return float(np.mean(values))


def with_interval(values: np.ndarray, statistic: Callable[[np.ndarray], float] = mean,
                  resamples: int = 2000) -> tuple[float, list[float]]:
    """``statistic`` of ``values`` and its 95 % bootstrap interval; NaN for no values."""
    if not len(values):
        return float("nan"), [float("nan")] * 2
    return statistic(values), list(bootstrap_ci(values, statistic, resamples))
