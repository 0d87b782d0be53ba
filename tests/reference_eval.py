"""Independent reference implementations of evaluation quantities, written from the papers' definitions.

Nothing here is taken from campp_cli/: each function is written from the published definition
cited in its docstring, plainly (loops, dense linear algebra), for use as a check in the tests.
Only numpy and the standard library are used.

    road_impute          ROAD's noisy linear imputation (Rong et al., ICML 2022)
    gini                 Gini index sparseness (Chalasani et al., ICML 2020; Hurley & Rickard 2009)
    entropy_complexity   entropy complexity (Bhatt, Weller, Moura, IJCAI 2020)
    average_ranks        ranks with ties given their average rank (1-based)
    spearman             Spearman rank correlation (Pearson correlation of average ranks)
    removal_mask         the MoRF / LeRF removal mask of a fraction of the pixels
"""

from __future__ import annotations

import math

import numpy as np

# The 8 neighbours (row offset, column offset) and their ROAD weights:
# 1/6 for the horizontal and vertical ones, 1/12 for the diagonal ones (they sum to 1).
NEIGHBOUR_WEIGHTS = (
    ((-1, 0), 1.0 / 6.0),
    ((1, 0), 1.0 / 6.0),
    ((0, -1), 1.0 / 6.0),
    ((0, 1), 1.0 / 6.0),
    ((-1, -1), 1.0 / 12.0),
    ((-1, 1), 1.0 / 12.0),
    ((1, -1), 1.0 / 12.0),
    ((1, 1), 1.0 / 12.0),
)


def _neighbours(r: int, c: int, h: int, w: int):
    """The (row, column, weight) of the neighbours of pixel (r, c) that lie inside an h x w image."""
    out = []
    for (dr, dc), weight in NEIGHBOUR_WEIGHTS:
        rr, cc = r + dr, c + dc
        if 0 <= rr < h and 0 <= cc < w:
            out.append((rr, cc, weight))
    return out


def _check_every_removed_region_touches_a_kept_pixel(removed: np.ndarray) -> None:
    """Raise ValueError if some 8-connected region of removed pixels has no kept neighbour.

    Such a region's equations only refer to each other, so the linear system has no unique solution
    (for example when every pixel is removed).
    """
    h, w = removed.shape
    seen = np.zeros_like(removed, dtype=bool)
    for r0 in range(h):
        for c0 in range(w):
            if not removed[r0, c0] or seen[r0, c0]:
                continue
            # Walk the 8-connected region of removed pixels containing (r0, c0).
            stack = [(r0, c0)]
            seen[r0, c0] = True
            touches_kept = False
            while stack:
                r, c = stack.pop()
                for rr, cc, _ in _neighbours(r, c, h, w):
                    if not removed[rr, cc]:
                        touches_kept = True
                    elif not seen[rr, cc]:
                        seen[rr, cc] = True
                        stack.append((rr, cc))
            if not touches_kept:
                raise ValueError(
                    f"the removed region containing pixel ({r0}, {c0}) has no kept neighbour: "
                    "its imputation is not determined"
                )


def road_impute(image, removed, noise=0.0, rng=None):
    """ROAD's noisy linear imputation of the removed pixels.

    Source: Rong, Leemann, Borisov, Kasneci, Kasneci, "A Consistent and Efficient Evaluation
    Strategy for Attribution Methods", ICML 2022, Section 4 (and their code's NoisyLinearImputer).

    image:   float array (C, H, W).
    removed: bool array (H, W), True where the pixel is removed.
    noise:   standard deviation of the Gaussian noise added to the imputed pixels (0: none).
    rng:     a numpy Generator for the noise (numpy.random.default_rng() when None and noise > 0).

    Every removed pixel p takes, in each channel, the weighted mean of its neighbours q among the 8
    that lie inside the image, weight w_q = 1/6 for the 4 horizontal/vertical ones and 1/12 for the 4
    diagonal ones, divided by the sum of the weights of those inside the image:

        v_p = sum_q w_q v_q / sum_q w_q.

    Neighbours that are themselves removed are unknowns, so all removed pixels are solved jointly: one
    dense linear system A v = b (A shared by the channels, one right-hand side per channel), solved
    exactly with numpy.linalg.solve. Row p of A is 1 at p and -w_q / W_p at each removed neighbour q;
    b_p is the sum of w_q / W_p * image[q] over its kept neighbours q.

    Then, if noise > 0, independent N(0, noise^2) values are added to the imputed values only, drawn
    as rng.normal(0.0, noise, size=(C, number of removed pixels)), pixels in row-major order.
    Kept pixels are returned unchanged. A new float64 array is returned; the input is not modified.

    Raises ValueError if a connected region of removed pixels has no kept neighbour (for example all
    pixels removed), since then the system has no unique solution.
    """
    image = np.asarray(image, dtype=np.float64)
    removed = np.asarray(removed)
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {image.shape}")
    channels, h, w = image.shape
    if removed.shape != (h, w):
        raise ValueError(f"removed must be (H, W) = {(h, w)}, got shape {removed.shape}")
    if removed.dtype != bool:
        raise ValueError(f"removed must be a bool array, got {removed.dtype}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")

    out = image.copy()
    # Unknowns: the removed pixels, numbered in row-major order.
    unknowns = [(r, c) for r in range(h) for c in range(w) if removed[r, c]]
    if not unknowns:
        return out
    _check_every_removed_region_touches_a_kept_pixel(removed)
    number = {pixel: i for i, pixel in enumerate(unknowns)}

    n = len(unknowns)
    a = np.zeros((n, n))
    b = np.zeros((n, channels))
    for i, (r, c) in enumerate(unknowns):
        neighbours = _neighbours(r, c, h, w)
        total_weight = sum(weight for _, _, weight in neighbours)
        a[i, i] = 1.0
        for rr, cc, weight in neighbours:
            share = weight / total_weight
            if removed[rr, cc]:
                a[i, number[(rr, cc)]] -= share
            else:
                b[i, :] += share * image[:, rr, cc]

    values = np.linalg.solve(a, b)  # (n, C)

    if noise > 0:
        if rng is None:
            rng = np.random.default_rng()
        values = values + rng.normal(0.0, noise, size=(channels, n)).T

    for i, (r, c) in enumerate(unknowns):
        out[:, r, c] = values[i, :]
    return out


def gini(a):
    """Gini index sparseness of an attribution map.

    Source: Chalasani, Chen, Chowdhury, Wu, Jha, "Concise Explanations of Neural Networks using
    Adversarial Training", ICML 2020, following Hurley & Rickard, "Comparing Measures of Sparsity",
    IEEE Trans. Inf. Theory 2009.

    With the absolute values flattened and sorted ascending, a_(1) <= ... <= a_(n):

        G = 1 - 2 * sum_{k=1..n} (a_(k) / ||a||_1) * ((n - k + 1/2) / n).

    G is 0 for a constant map and 1 - 1/n for a one-hot map of n entries.
    Convention: an all-zero map returns 0.0 (the formula divides by ||a||_1 = 0 there).
    """
    values = np.sort(np.abs(np.asarray(a, dtype=np.float64)).ravel())
    n = values.size
    if n == 0:
        raise ValueError("gini of an empty map")
    l1 = values.sum()
    if l1 == 0:
        return 0.0
    total = 0.0
    for k in range(1, n + 1):
        total += (values[k - 1] / l1) * ((n - k + 0.5) / n)
    return float(1.0 - 2.0 * total)


def entropy_complexity(a):
    """Entropy complexity of an attribution map.

    Source: Bhatt, Weller, Moura, "Evaluating and Aggregating Feature-based Model Explanations",
    IJCAI 2020 (complexity, Section 4): the fractional contribution of feature i is

        P(i) = |a_i| / sum_j |a_j|,

    and complexity = -sum_i P(i) ln P(i), natural logarithm, with 0 ln 0 = 0.

    It is ln n for a uniform map of n entries and 0 for a one-hot map.
    Convention: an all-zero map (P undefined) raises ValueError.
    """
    values = np.abs(np.asarray(a, dtype=np.float64)).ravel()
    if values.size == 0:
        raise ValueError("entropy complexity of an empty map")
    total = values.sum()
    if total == 0:
        raise ValueError("entropy complexity of an all-zero map is undefined")
    result = 0.0
    for value in values:
        p = value / total
        if p > 0:
            result -= p * math.log(p)
    return float(result)


def average_ranks(x):
    """1-based ranks of the flattened x, tied values all given the average of the ranks they span."""
    values = np.asarray(x, dtype=np.float64).ravel()
    if np.isnan(values).any():
        raise ValueError("cannot rank NaN")
    n = values.size
    order = sorted(range(n), key=lambda i: values[i])
    ranks = np.zeros(n)
    start = 0
    while start < n:
        end = start  # the tied group is order[start..end]
        while end + 1 < n and values[order[end + 1]] == values[order[start]]:
            end += 1
        # Positions start..end (0-based) are ranks start+1..end+1; their average:
        mean_rank = (start + 1 + end + 1) / 2.0
        for position in range(start, end + 1):
            ranks[order[position]] = mean_rank
        start = end + 1
    return ranks


def spearman(a, b):
    """Spearman rank correlation of two arrays, flattened.

    Source: Spearman, "The proof and measurement of association between two things", 1904; the
    standard definition with ties: the Pearson correlation coefficient of the two rank vectors, tied
    values given their average rank (average_ranks above).

    Convention: if either array is constant (its ranks have zero variance) the correlation is
    undefined and float('nan') is returned. Arrays must have the same number of elements, at least 2.
    """
    ra = average_ranks(a)
    rb = average_ranks(b)
    if ra.size != rb.size:
        raise ValueError(f"arrays differ in size: {ra.size} and {rb.size}")
    if ra.size < 2:
        raise ValueError("spearman needs at least 2 elements")
    da = ra - ra.mean()
    db = rb - rb.mean()
    denominator = math.sqrt(float(np.sum(da * da)) * float(np.sum(db * db)))
    if denominator == 0:
        return float("nan")
    return float(np.sum(da * db) / denominator)


def removal_mask(saliency, fraction, most_relevant_first=True):
    """The boolean (H, W) mask of the pixels removed first at a given fraction (MoRF or LeRF).

    Source: the MoRF / LeRF removal orders of Samek et al., "Evaluating the Visualization of What a
    Deep Neural Network Has Learned", IEEE TNNLS 2017, as used by ROAD (Rong et al., ICML 2022).

    Pixels are ordered by saliency descending (most_relevant_first=True, MoRF) or ascending (False,
    LeRF), ties in both orders broken by the lower flat (row-major) index first, i.e. a stable sort
    of the row-major pixels; the first k = round(fraction * H * W) are True. round is Python's
    built-in round on the float fraction * H * W: halves go to the even integer (banker's rounding),
    e.g. 2.5 -> 2 and 3.5 -> 4.
    """
    saliency = np.asarray(saliency, dtype=np.float64)
    if saliency.ndim != 2:
        raise ValueError(f"saliency must be (H, W), got shape {saliency.shape}")
    if np.isnan(saliency).any():
        raise ValueError("saliency contains NaN")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    h, w = saliency.shape
    flat = saliency.ravel()
    n = flat.size
    k = int(round(fraction * n))
    if most_relevant_first:
        order = sorted(range(n), key=lambda i: (-flat[i], i))
    else:
        order = sorted(range(n), key=lambda i: (flat[i], i))
    mask = np.zeros(n, dtype=bool)
    for i in order[:k]:
        mask[i] = True
    return mask.reshape(h, w)
