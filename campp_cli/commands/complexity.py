"""Complexity of an explanation map: how few pixels carry it (pure functions of arrays).

* Gini sparseness (Chalasani, Chen, Chowdhury, Wu and Jha, "Concise Explanations of Neural Networks using
  Adversarial Training", ICML 2020, after Hurley and Rickard 2009): of the map's absolute values sorted
  ascending a_1 <= ... <= a_n, ``G = sum_k (2k - n - 1) a_k / (n sum_k a_k)``; 0 for a flat map, 1 - 1/n for one
  pixel (higher: sparser).
* Entropy complexity (Bhatt, Weller and Moura, "Evaluating and Aggregating Feature-based Model Explanations",
  IJCAI 2020): the entropy of the fractional contributions ``P(i) = |a_i| / sum_j |a_j|``, ``-sum_i P(i) ln P(i)``;
  ln n for a flat map, 0 for one pixel (lower: simpler).

Both are scale-free.  campp scores each map at the model's input resolution (the bilinear upsampling the
figures and the deletion and ROAD orders use), as Quantus scores the maps it is given.  A map of zeros has
no mass to spread: Gini 0, entropy ln n (as flat as it gets).
"""

from __future__ import annotations

import numpy as np


def gini(maps: np.ndarray) -> np.ndarray:
    """Gini sparseness of each map of ``maps`` (N, H, W) -> (N,)."""
    a = np.sort(np.abs(np.asarray(maps, np.float64)).reshape(len(maps), -1), axis=1)
    n = a.shape[1]
    k = np.arange(1, n + 1)
    total = a.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        g = (a * (2 * k - n - 1)).sum(axis=1) / (n * total)
    return np.where(total > 0, g, 0.0)


def entropy(maps: np.ndarray) -> np.ndarray:
    """Entropy complexity of each map of ``maps`` (N, H, W) -> (N,), in nats."""
    a = np.abs(np.asarray(maps, np.float64)).reshape(len(maps), -1)
    total = a.sum(axis=1, keepdims=True)
    p = np.where(total > 0, a / np.where(total > 0, total, 1.0), 1.0 / a.shape[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -terms.sum(axis=1)
