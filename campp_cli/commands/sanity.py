"""The model-parameter randomisation sanity check (Adebayo, Gilmer, Muelly, Goodfellow, Hardt and Kim, "Sanity
Checks for Saliency Maps", NeurIPS 2018).

A map that explains the model must change when the model's learned weights are destroyed.  *Cascading*
randomisation re-initialises the model's layers from the logits down to the input, one more at each step;
*independent* randomisation re-initialises one layer at a time, the others kept.  After each step every map
is made again, for the class the intact model explained, and compared with the intact model's map of the
same image: Spearman rank correlation (of the signed maps and of their absolute values), SSIM (Wang et al.
2004, scikit-image's) and the Pearson correlation of their HOG features (Dalal and Triggs 2005, scikit-image's
``hog``), as the paper measures.  The paper's finding: guided backpropagation and guided Grad-CAM stay similar
to the intact model's maps while the model is randomised (they do not depend on what it learned); Grad-CAM's
do not.

A step is a layer with a weight matrix or kernel (a convolution, a linear layer) together with the
parameter-holding layers that follow it up to the next one (its batch norm): re-initialised with the
layer's own ``reset_parameters`` (PyTorch's initialisation), seeded.  The randomised models are copies: the
model itself is never touched.

Every map is compared at the model's input resolution as one (H, W) map: a CAM upsampled as the figures
show it, a guided map's channels summed (signed), its absolute value for the "abs" measures.
"""

from __future__ import annotations

import copy
import functools
import os
from typing import Callable

import numpy as np
import torch

#: The similarity measures, in the order the curves list them.
MEASURES = ("spearman", "spearman_abs", "ssim", "hog")
MODES = ("cascade", "independent")
GUIDED_BACKPROP = "guided_backprop"
SEED = 0


def steps(module: torch.nn.Module) -> list[tuple[str, list[torch.nn.Module]]]:
    """The randomisation steps, from the logits down: ``(name, modules)``, ``name`` the layer with a weight
    of two or more dimensions that opens the step, ``modules`` it and the modules holding parameters of their
    own after it (in the model's order) up to the next such layer."""
    leaves = [(n, m) for n, m in module.named_modules() if any(True for _ in m.parameters(recurse=False))]
    out: list[tuple[str, list[torch.nn.Module]]] = []
    group: list[torch.nn.Module] = []
    for name, m in reversed(leaves):
        group.insert(0, m)
        weight = getattr(m, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() >= 2:
            out.append((name, group))
            group = []
    if group and out:
        out[-1][1][:0] = group  # parameter layers before the first convolution go with it
    elif group:
        out.append(("(parameters)", group))
    return out


def randomise(modules: list[torch.nn.Module], seed: int) -> None:
    """Re-initialise ``modules`` in place, as PyTorch initialises them (``reset_parameters``; a module
    without one has each parameter drawn from a normal of its own mean and deviation), seeded."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for m in modules:
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
                continue
            for p in m.parameters(recurse=False):
                std = float(p.float().std()) if p.numel() > 1 else 1.0
                p.copy_(torch.randn_like(p) * std + float(p.float().mean()))


def _copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy whose parameters and buffers are its own (writable, not the mapped weights file)."""
    twin = copy.deepcopy(module)
    with torch.no_grad():
        for t in [*twin.parameters(), *twin.buffers()]:
            t.data = t.data.clone()
    return twin


def randomised_models(module: torch.nn.Module, mode: str):
    """``(step name, model)`` for each step of ``mode`` ("cascade" or "independent"), one at a time (each
    model is only valid until the next is asked for)."""
    twin = _copy(module)
    plan = steps(twin)
    for k, (name, modules) in enumerate(plan):
        saved = [copy.deepcopy(m.state_dict()) for m in modules] if mode == "independent" else None
        randomise(modules, SEED + k)
        yield name, twin
        if saved is not None:
            for m, state in zip(modules, saved):
                m.load_state_dict(state)


# ----------------------------------------------------------------------------- the maps and their similarity


def flat_maps(cams: dict[str, np.ndarray], guided: np.ndarray | None, size: int) -> dict[str, np.ndarray]:
    """Every map of a batch as (N, size, size) float64: each CAM upsampled; with ``guided`` (N, 3, H, W),
    guided backpropagation's channels summed and each method's guided map (guided x CAM)."""
    from .metrics import upsample_maps

    out = {m: upsample_maps(v, size).astype(np.float64) for m, v in cams.items()}
    if guided is not None:
        g = np.asarray(guided, np.float64)
        out[GUIDED_BACKPROP] = g.sum(axis=1)
        for m in cams:
            out[f"guided_{m}"] = (g * out[m][:, None]).sum(axis=1)
    return out


def _unit(a: np.ndarray) -> np.ndarray:
    """Each (H, W) map of ``a`` (M, H, W) scaled into [0, 1] (min-max; a flat map is all 0)."""
    lo = a.min(axis=(1, 2), keepdims=True)
    span = a.max(axis=(1, 2), keepdims=True) - lo
    return np.divide(a - lo, span, out=np.zeros_like(a), where=span > 0)


def ranks(a: np.ndarray) -> np.ndarray:
    """(M, H, W) -> (M, H*W): each map's values' ranks from 1, ties averaged (as Spearman's rank correlation
    and SciPy's ``rankdata`` rank them), all maps at once; a flat map's row is NaN (no rank correlation)."""
    x = np.ascontiguousarray(a, np.float64).reshape(len(a), -1)
    m, size = x.shape
    order = np.argsort(x, axis=1)
    values = np.take_along_axis(x, order, axis=1)
    pos = np.arange(1, size + 1, dtype=np.float64)
    rank = np.broadcast_to(pos, (m, size)).copy()
    starts = np.ones((m, size), bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]  # where a run of equal values begins
    tied = ~starts.all(axis=1)
    if tied.any():  # each run of equal values gets the mean of the ranks it spans
        starts = starts[tied]
        ends = np.ones_like(starts)
        ends[:, :-1] = starts[:, 1:]
        first = np.maximum.accumulate(np.where(starts, pos, 0.0), axis=1)
        last = np.minimum.accumulate(np.where(ends, pos, float(size))[:, ::-1], axis=1)[:, ::-1]
        rank[tied] = (first + last) / 2
    out = np.empty_like(x)
    np.put_along_axis(out, order, rank, axis=1)
    out[values[:, 0] == values[:, -1]] = np.nan
    return out


#: HOG as the sanity check computes it (scikit-image's ``hog`` with these): 9 orientations over 180 degrees,
#: cells of 16 x 16 pixels, blocks of 3 x 3 cells, each block L2-Hys normalised (eps 1e-5, clipped at 0.2).
HOG_ORIENTATIONS, HOG_CELL, HOG_BLOCK, HOG_EPS, HOG_CLIP = 9, 16, 3, 1e-5, 0.2


@functools.lru_cache(maxsize=4)
def _cell_index(m: int, rows: int, cols: int) -> np.ndarray:
    """(m, rows * 16, cols * 16): the first histogram entry of each pixel's map and cell."""
    cell_r = np.arange(rows * HOG_CELL) // HOG_CELL
    cell_c = np.arange(cols * HOG_CELL) // HOG_CELL
    index = (np.arange(m)[:, None, None] * rows + cell_r[None, :, None]) * cols + cell_c[None, None, :]
    index = index * HOG_ORIENTATIONS
    index.flags.writeable = False
    return index


def hog(unit: np.ndarray) -> np.ndarray:
    """(M, H, W) maps -> (M, F) HOG feature vectors, all maps at once: scikit-image's ``hog(map,
    orientations=9, pixels_per_cell=(16, 16), cells_per_block=(3, 3))`` (``block_norm="L2-Hys"``), computed
    as it computes it (central differences, 0 on the border; the gradient's unsigned angle binned into
    [20 i, 20 (i + 1)) degrees; each cell's magnitudes summed per bin over its area; every 3 x 3 block of
    cells normalised), which ``tests/test_sanity.py`` holds it to (within 1e-6: scikit-image sums a cell's
    magnitudes in float32, campp in float64); a row whose features are flat is NaN."""
    from numpy.lib.stride_tricks import sliding_window_view

    m, height, width = unit.shape
    rows, cols = height // HOG_CELL, width // HOG_CELL
    if rows < HOG_BLOCK or cols < HOG_BLOCK:
        raise ValueError(f"maps of {height} x {width} are too small for HOG's {HOG_BLOCK * HOG_CELL}-pixel blocks")
    h, w = rows * HOG_CELL, cols * HOG_CELL  # the pixels the cells cover
    er, ec = min(h, height - 1), min(w, width - 1)  # central differences inside, 0 on the map's border
    g_row = np.zeros((m, h, w))
    np.subtract(unit[:, 2:er + 1, :w], unit[:, :er - 1, :w], out=g_row[:, 1:er])
    g_col = np.zeros((m, h, w))
    np.subtract(unit[:, :h, 2:ec + 1], unit[:, :h, :ec - 1], out=g_col[:, :, 1:ec])
    magnitude = np.sqrt(g_col * g_col + g_row * g_row)
    degrees = np.rad2deg(np.arctan2(g_row, g_col))  # (-180, 180]
    # ``degrees % 180`` as NumPy computes it: a negative angle plus 180 (which may round to 180 itself: such a
    # pixel falls in no bin, as in scikit-image), 180 itself 0
    angle = np.where(degrees < 0, degrees + 180, np.where(degrees == 180, 0.0, degrees))
    magnitude[angle >= 180] = 0
    width_deg = 180.0 / HOG_ORIENTATIONS
    bins = np.floor(angle / width_deg)
    bins -= angle < bins * width_deg  # the bin whose [start, end) holds the angle (the division may round up)
    index = _cell_index(m, rows, cols) + np.minimum(bins, HOG_ORIENTATIONS - 1).astype(np.int64)  # 180: weight 0
    cells = np.bincount(index.ravel(), weights=magnitude.ravel(), minlength=m * rows * cols * HOG_ORIENTATIONS)
    cells = cells.reshape(m, rows, cols, HOG_ORIENTATIONS) / (HOG_CELL * HOG_CELL)
    blocks = sliding_window_view(cells, (HOG_BLOCK, HOG_BLOCK), axis=(1, 2))  # (M, r, c, 9, 3, 3)
    blocks = blocks.transpose(0, 1, 2, 4, 5, 3)  # each block as scikit-image lays it out: rows, columns, bins
    norm = np.sqrt((blocks ** 2).sum(axis=(3, 4, 5), keepdims=True) + HOG_EPS ** 2)
    clipped = np.minimum(blocks / norm, HOG_CLIP)
    out = clipped / np.sqrt((clipped ** 2).sum(axis=(3, 4, 5), keepdims=True) + HOG_EPS ** 2)
    out = out.reshape(m, -1)
    out[np.ptp(out, axis=1) == 0] = np.nan
    return out


#: SSIM's window (scikit-image's default): 7 x 7, uniform.
SSIM_WINDOW = 7


def _window_means(t: np.ndarray) -> np.ndarray:
    """(M, H, W) -> (M, H - 6, W - 6): the mean of every 7 x 7 window that fits inside each map (running sums
    along each axis, in float64)."""
    w = SSIM_WINDOW
    for axis in (2, 1):
        c = np.cumsum(t, axis=axis)
        pad = [(0, 0)] * 3
        pad[axis] = (1, 0)
        c = np.pad(c, pad)
        n = c.shape[axis]
        t = c.take(np.arange(w, n), axis=axis) - c.take(np.arange(0, n - w), axis=axis)
    return t / (w * w)


def ssim_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One side's windowed means of x and x^2, made once for every comparison of the same maps."""
    return _window_means(x), _window_means(x * x)


def ssim(x: np.ndarray, y: np.ndarray, x_moments=None, y_moments=None) -> np.ndarray:
    """(M, H, W) and (M, H, W) maps in [0, 1] -> (M,) SSIM: scikit-image's ``structural_similarity(x, y,
    data_range=1)`` (7 x 7 uniform windows, sample covariances, K1 0.01 and K2 0.03, the mean over the
    windows that fit inside the map), all pairs at once; ``*_moments``: :func:`ssim_moments`, if made."""
    ux, uxx = x_moments or ssim_moments(x)
    uy, uyy = y_moments or ssim_moments(y)
    uxy = _window_means(x * y)
    n = SSIM_WINDOW * SSIM_WINDOW
    cov = n / (n - 1)
    vx, vy, vxy = cov * (uxx - ux * ux), cov * (uyy - uy * uy), cov * (uxy - ux * uy)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(axis=(1, 2))


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlation of (M, F) and (M, F): NaN where either row is NaN (flat)."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        r = (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    return np.clip(r, -1.0, 1.0)


class Features:
    """What the measures need of a stack of (H, W) maps (M, H, W), or of one map, made once for all of them:
    their ranks (signed and of absolute values), their absolute values scaled into [0, 1] and those maps'
    HOG.  The intact model's maps are compared with every step's, so theirs are made once per image; a map
    with no negative value (a CAM) ranks once."""

    def __init__(self, maps: np.ndarray):
        a = np.asarray(maps, np.float64)
        a = a[None] if a.ndim == 2 else a
        magnitude = np.abs(a)
        self.ranks = ranks(a)
        signed = (a < 0).any(axis=(1, 2))
        self.ranks_abs = self.ranks
        if signed.any():
            self.ranks_abs = self.ranks.copy()
            self.ranks_abs[signed] = ranks(magnitude[signed])
        self.unit_abs = _unit(magnitude)
        self.moments = ssim_moments(self.unit_abs)
        self.hog = hog(self.unit_abs)


def compare(a: Features, b: Features) -> dict[str, np.ndarray]:
    """:data:`MEASURES` of each pair of maps of two :class:`Features` of as many maps (see
    :func:`similarity`), each an (M,) array."""
    return {"spearman": _pearson(a.ranks, b.ranks), "spearman_abs": _pearson(a.ranks_abs, b.ranks_abs),
            "ssim": ssim(a.unit_abs, b.unit_abs, a.moments, b.moments), "hog": _pearson(a.hog, b.hog)}


def similarity(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """:data:`MEASURES` of two (H, W) maps: Spearman of the signed maps and of their absolute values (the
    Pearson correlation of their ranks, ties averaged), SSIM of their absolute values scaled into [0, 1] (as
    the paper shows maps), and the Pearson correlation of those maps' HOGs; NaN where a map (or its HOG) is
    flat."""
    return {k: float(v[0]) for k, v in compare(Features(a), Features(b)).items()}


def check(clf, rgb01: torch.Tensor, intact: dict[str, np.ndarray], classes: np.ndarray, methods, settings: dict,
          modes=MODES, progress: Callable[[int], None] | None = None, score: str = "logit",
          activation: str = "softmax") -> list[dict]:
    """Each image's similarities: ``[{mode: {map: {measure: [value per step]}}}]``, for the images of
    ``rgb01`` whose intact maps (:func:`flat_maps`) are ``intact``.  Runs one pass with the gradient and one
    guided backward per step and mode; each step's maps are measured in one batch per core (:class:`Features`
    and :func:`compare` are NumPy's, which releases the GIL), the intact maps' features made once."""
    from concurrent.futures import ThreadPoolExecutor

    from ..cam.explain import explain
    from ..cam.guided import guided_backprop

    n, size = rgb01.shape[0], rgb01.shape[-1]
    pairs = [(i, name) for i in range(n) for name in intact]
    out: list[dict] = [{mode: {name: {m: [] for m in MEASURES} for name in intact} for mode in modes}
                       for _ in range(n)]
    x = clf.preprocessing(rgb01)
    cores = max(1, min(os.cpu_count() or 1, len(pairs)))
    parts = [pairs[k::cores] for k in range(cores)]

    def stack(maps: dict[str, np.ndarray], part) -> np.ndarray:
        return np.stack([maps[name][i] for i, name in part])

    with ThreadPoolExecutor(cores) as pool:
        reference = list(pool.map(lambda part: Features(stack(intact, part)), parts))
        for mode in modes:
            for _, model in randomised_models(clf.module, mode):
                expl = explain(model, clf.layer, x, classes=list(map(int, classes)), methods=methods,
                               image=rgb01, preprocess=clf.preprocessing, score=score, activation=activation,
                               **settings)
                guided = guided_backprop(model, rgb01, classes, clf.preprocessing, score=score,
                                         activation=activation)
                now = flat_maps(expl.maps, guided, size)
                measured = pool.map(lambda k, now=now: compare(reference[k], Features(stack(now, parts[k]))),
                                    range(cores))
                for part, values in zip(parts, measured):
                    for k, (i, name) in enumerate(part):
                        for measure, column in values.items():
                            out[i][mode][name][measure].append(float(column[k]))
                if progress is not None:
                    progress(n)
    return out


def summarise(per_image: list[dict], step_names: list[str], resamples: int = 2000) -> dict:
    """``{"steps": names, mode: {map: {measure: {"mean": [...], "ci95": [[lo, hi], ...]}}}}``: the mean over
    images at each step, with 95 % bootstrap intervals (NaN values, a flat map, left out)."""
    from .metrics import with_interval

    out: dict = {"steps": list(step_names)}
    if not per_image:
        return out
    for mode, maps in per_image[0].items():
        out[mode] = {}
        for name, measures in maps.items():
            out[mode][name] = {}
            for measure in measures:
                values = np.array([img[mode][name][measure] for img in per_image], np.float64)
                means, cis = [], []
                for k in range(values.shape[1]):
                    column = values[:, k][np.isfinite(values[:, k])]
                    mean, ci = with_interval(column, resamples=resamples)
                    means.append(mean)
                    cis.append(ci)
                out[mode][name][measure] = {"mean": means, "ci95": cis}
    return out
