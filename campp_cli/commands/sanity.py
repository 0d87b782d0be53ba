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
    """``a`` scaled into [0, 1] (min-max; a flat map is all 0)."""
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _ranks(a: np.ndarray) -> np.ndarray | None:
    """``a``'s values' ranks (ties averaged, as Spearman's rank correlation ranks them), None where ``a`` is
    flat (no rank correlation)."""
    from scipy.stats import rankdata

    return rankdata(a.ravel()) if np.ptp(a) > 0 else None


def _pearson(a: np.ndarray | None, b: np.ndarray | None) -> float:
    return float(np.corrcoef(a, b)[0, 1]) if a is not None and b is not None else float("nan")


def _hog(a: np.ndarray) -> np.ndarray | None:
    from skimage.feature import hog

    h = hog(_unit(a), orientations=9, pixels_per_cell=(16, 16), cells_per_block=(3, 3), feature_vector=True)
    return h if np.ptp(h) > 0 else None


class Features:
    """What the measures need of one (H, W) map, made once: its ranks (signed and of absolute values), its
    absolute values scaled into [0, 1] and their HOG.  The intact model's maps are compared with every
    step's, so theirs are made once per image; a map with no negative value (a CAM) ranks once."""

    def __init__(self, a: np.ndarray):
        magnitude = np.abs(a)
        self.ranks = _ranks(a)
        self.ranks_abs = self.ranks if not (a < 0).any() else _ranks(magnitude)
        self.unit_abs = _unit(magnitude)
        self.hog = _hog(magnitude)


def compare(a: Features, b: Features) -> dict[str, float]:
    """:data:`MEASURES` of two maps' :class:`Features` (see :func:`similarity`)."""
    from skimage.metrics import structural_similarity

    return {"spearman": _pearson(a.ranks, b.ranks), "spearman_abs": _pearson(a.ranks_abs, b.ranks_abs),
            "ssim": float(structural_similarity(a.unit_abs, b.unit_abs, data_range=1.0)),
            "hog": _pearson(a.hog, b.hog)}


def similarity(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """:data:`MEASURES` of two (H, W) maps: Spearman of the signed maps and of their absolute values (the
    Pearson correlation of their ranks, ties averaged), SSIM of their absolute values scaled into [0, 1] (as
    the paper shows maps), and the Pearson correlation of those maps' HOGs; NaN where a map (or its HOG) is
    flat."""
    return compare(Features(a), Features(b))


def check(clf, rgb01: torch.Tensor, intact: dict[str, np.ndarray], classes: np.ndarray, methods, settings: dict,
          modes=MODES, progress: Callable[[int], None] | None = None, score: str = "logit",
          activation: str = "softmax") -> list[dict]:
    """Each image's similarities: ``[{mode: {map: {measure: [value per step]}}}]``, for the images of
    ``rgb01`` whose intact maps (:func:`flat_maps`) are ``intact``.  Runs one pass with the gradient and one
    guided backward per step and mode; the measures run on a thread per core (ranks, HOG and SSIM are
    NumPy's, which releases the GIL; beside the passes they only slow them), the intact maps' :class:`Features`
    made once."""
    from concurrent.futures import ThreadPoolExecutor

    from ..cam.explain import explain
    from ..cam.guided import guided_backprop

    n, size = rgb01.shape[0], rgb01.shape[-1]
    pairs = [(i, name) for i in range(n) for name in intact]
    out: list[dict] = [{mode: {name: {m: [] for m in MEASURES} for name in intact} for mode in modes}
                       for _ in range(n)]
    x = clf.preprocessing(rgb01)
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        reference = dict(zip(pairs, pool.map(lambda p: Features(intact[p[1]][p[0]]), pairs)))
        for mode in modes:
            for _, model in randomised_models(clf.module, mode):
                expl = explain(model, clf.layer, x, classes=list(map(int, classes)), methods=methods,
                               image=rgb01, preprocess=clf.preprocessing, score=score, activation=activation,
                               **settings)
                guided = guided_backprop(model, rgb01, classes, clf.preprocessing, score=score, activation=activation)
                now = flat_maps(expl.maps, guided, size)
                measured = pool.map(lambda p, now=now: compare(reference[p], Features(now[p[1]][p[0]])), pairs)
                for (i, name), values in zip(pairs, measured):
                    for measure, value in values.items():
                        out[i][mode][name][measure].append(value)
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
