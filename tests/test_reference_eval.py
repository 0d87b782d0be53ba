"""Checks of tests/reference_eval.py on cases whose answers are known independently of the code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
from reference_eval import (
    average_ranks,
    entropy_complexity,
    gini,
    removal_mask,
    road_impute,
    spearman,
)

SIDE = 1.0 / 6.0
DIAG = 1.0 / 12.0


def _image(channels=3, h=7, w=8, seed=0):
    return np.random.default_rng(seed).normal(size=(channels, h, w))


def _linear_image(h, w, channels=3):
    """Channel k: c_k + a_k * x + b_k * y, x the column and y the row."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    coefficients = [(0.5, 2.0, -3.0), (-1.25, -0.75, 0.4), (3.0, 0.0, 1.5)][:channels]
    return np.stack([c + a * x + b * y for c, a, b in coefficients])


# ---------------------------------------------------------------------------------------------
# road_impute


def test_single_interior_pixel_is_weighted_mean_of_its_8_neighbours():
    image = _image()
    removed = np.zeros((7, 8), dtype=bool)
    removed[3, 4] = True
    out = road_impute(image, removed)
    x = image
    expected = (
        SIDE * (x[:, 2, 4] + x[:, 4, 4] + x[:, 3, 3] + x[:, 3, 5])
        + DIAG * (x[:, 2, 3] + x[:, 2, 5] + x[:, 4, 3] + x[:, 4, 5])
    )  # the weights sum to 4/6 + 4/12 = 1
    np.testing.assert_allclose(out[:, 3, 4], expected, rtol=0, atol=1e-12)


def test_removed_corner_pixel_uses_its_3_neighbours_renormalised():
    image = _image()
    h, w = 7, 8
    for (r, c), side_a, side_b, diag in [
        ((0, 0), (0, 1), (1, 0), (1, 1)),
        ((0, w - 1), (0, w - 2), (1, w - 1), (1, w - 2)),
        ((h - 1, 0), (h - 2, 0), (h - 1, 1), (h - 2, 1)),
        ((h - 1, w - 1), (h - 2, w - 1), (h - 1, w - 2), (h - 2, w - 2)),
    ]:
        removed = np.zeros((h, w), dtype=bool)
        removed[r, c] = True
        out = road_impute(image, removed)
        expected = (
            SIDE * image[:, side_a[0], side_a[1]] + SIDE * image[:, side_b[0], side_b[1]]
            + DIAG * image[:, diag[0], diag[1]]
        ) / (2 * SIDE + DIAG)
        np.testing.assert_allclose(out[:, r, c], expected, rtol=0, atol=1e-12)


def test_removed_edge_pixel_uses_its_5_neighbours_renormalised():
    image = _image()
    removed = np.zeros((7, 8), dtype=bool)
    removed[0, 3] = True
    out = road_impute(image, removed)
    x = image
    expected = (
        SIDE * (x[:, 0, 2] + x[:, 0, 4] + x[:, 1, 3]) + DIAG * (x[:, 1, 2] + x[:, 1, 4])
    ) / (3 * SIDE + 2 * DIAG)
    np.testing.assert_allclose(out[:, 0, 3], expected, rtol=0, atol=1e-12)


def test_two_adjacent_removed_pixels_solved_jointly_by_hand():
    # (2, 2) and (2, 3) are interior and horizontal neighbours of each other:
    #   v1 = A1 + v2 / 6,  v2 = A2 + v1 / 6,  A = weighted sum of the kept neighbours,
    # so v1 = (A1 + A2 / 6) / (1 - 1/36) and v2 = (A2 + A1 / 6) / (1 - 1/36).
    image = _image(channels=2, h=5, w=6, seed=3)
    x = image
    removed = np.zeros((5, 6), dtype=bool)
    removed[2, 2] = removed[2, 3] = True
    a1 = SIDE * (x[:, 1, 2] + x[:, 3, 2] + x[:, 2, 1]) + DIAG * (x[:, 1, 1] + x[:, 1, 3] + x[:, 3, 1] + x[:, 3, 3])
    a2 = SIDE * (x[:, 1, 3] + x[:, 3, 3] + x[:, 2, 4]) + DIAG * (x[:, 1, 2] + x[:, 1, 4] + x[:, 3, 2] + x[:, 3, 4])
    out = road_impute(image, removed)
    np.testing.assert_allclose(out[:, 2, 2], (a1 + a2 / 6) / (1 - 1 / 36), rtol=0, atol=1e-12)
    np.testing.assert_allclose(out[:, 2, 3], (a2 + a1 / 6) / (1 - 1 / 36), rtol=0, atol=1e-12)


@pytest.mark.parametrize("pattern", ["block", "block_and_scattered", "checkerboard", "random_half"])
def test_linear_image_reproduced_exactly_at_removed_interior_pixels(pattern):
    h, w = 10, 11
    image = _linear_image(h, w)
    removed = np.zeros((h, w), dtype=bool)
    if pattern == "block":
        removed[2:7, 3:9] = True  # a connected 5 x 6 block, every pixel's equations coupled
    elif pattern == "block_and_scattered":
        removed[1:8, 1:5] = True
        removed[3, 7] = removed[8, 9] = removed[5, 8] = True
    elif pattern == "checkerboard":
        for r in range(1, h - 1):
            for c in range(1, w - 1):
                removed[r, c] = (r + c) % 2 == 0
    else:
        inner = np.random.default_rng(7).random((h - 2, w - 2)) < 0.5
        removed[1:-1, 1:-1] = inner
    assert not removed[0].any() and not removed[-1].any() and not removed[:, 0].any() and not removed[:, -1].any()
    out = road_impute(image, removed)
    np.testing.assert_allclose(out, image, rtol=0, atol=1e-10)


def test_constant_image_reproduced_everywhere_even_on_the_border():
    h, w = 6, 7
    image = np.stack([np.full((h, w), 2.5), np.full((h, w), -1.0)])
    removed = np.random.default_rng(1).random((h, w)) < 0.6
    removed[0, 0] = removed[0, 1] = removed[h - 1, w - 1] = True
    removed[3, 3] = False  # at least one kept pixel
    out = road_impute(image, removed)
    np.testing.assert_allclose(out, image, rtol=0, atol=1e-12)


def test_solution_satisfies_the_defining_equations_on_a_mask_touching_the_border():
    h, w = 6, 7
    image = _image(channels=3, h=h, w=w, seed=5)
    removed = np.random.default_rng(2).random((h, w)) < 0.5
    removed[0, 0] = removed[h - 1, 3] = True
    removed[2, 2] = False
    out = road_impute(image, removed)
    offsets = [((-1, 0), SIDE), ((1, 0), SIDE), ((0, -1), SIDE), ((0, 1), SIDE),
               ((-1, -1), DIAG), ((-1, 1), DIAG), ((1, -1), DIAG), ((1, 1), DIAG)]
    for r in range(h):
        for c in range(w):
            if not removed[r, c]:
                continue
            numerator = np.zeros(3)
            denominator = 0.0
            for (dr, dc), weight in offsets:
                if 0 <= r + dr < h and 0 <= c + dc < w:
                    numerator += weight * out[:, r + dr, c + dc]
                    denominator += weight
            np.testing.assert_allclose(out[:, r, c], numerator / denominator, rtol=0, atol=1e-10)


def test_kept_pixels_unchanged_and_input_not_modified():
    image = _image(seed=4)
    original = image.copy()
    removed = np.random.default_rng(3).random((7, 8)) < 0.4
    out = road_impute(image, removed)
    assert out is not image
    np.testing.assert_array_equal(image, original)
    np.testing.assert_array_equal(out[:, ~removed], image[:, ~removed])
    assert out.dtype == np.float64 and out.shape == image.shape


def test_nothing_removed_returns_an_equal_copy():
    image = _image()
    out = road_impute(image, np.zeros((7, 8), dtype=bool))
    assert out is not image
    np.testing.assert_array_equal(out, image)


def test_noise_only_touches_removed_pixels_with_the_right_standard_deviation():
    h, w = 60, 60
    image = _image(channels=3, h=h, w=w, seed=6)
    removed = np.random.default_rng(8).random((h, w)) < 0.5
    clean = road_impute(image, removed)
    sigma = 0.3
    noisy = road_impute(image, removed, noise=sigma, rng=np.random.default_rng(9))
    difference = noisy - clean
    np.testing.assert_array_equal(difference[:, ~removed], 0.0)
    samples = difference[:, removed].ravel()  # about 3 * 1800 values
    assert abs(samples.std() - sigma) < 0.05 * sigma
    assert abs(samples.mean()) < 4 * sigma / math.sqrt(samples.size)
    assert np.all(samples != 0.0)
    # Seeded: reproducible.
    again = road_impute(image, removed, noise=sigma, rng=np.random.default_rng(9))
    np.testing.assert_array_equal(again, noisy)


def test_a_removed_region_without_kept_neighbours_is_refused():
    image = _image(h=4, w=4)
    with pytest.raises(ValueError):
        road_impute(image, np.ones((4, 4), dtype=bool))


# ---------------------------------------------------------------------------------------------
# gini


@pytest.mark.parametrize("n", [1, 2, 5, 100])
def test_gini_of_one_hot_map_is_1_minus_1_over_n(n):
    for position in {0, n // 2, n - 1}:
        a = np.zeros(n)
        a[position] = -3.7
        assert gini(a) == pytest.approx(1 - 1 / n, abs=1e-12)


@pytest.mark.parametrize("shape", [(1,), (7,), (4, 5), (3, 8, 8)])
def test_gini_of_constant_map_is_0(shape):
    assert gini(np.full(shape, 0.37)) == pytest.approx(0.0, abs=1e-12)


def test_gini_of_all_zero_map_is_0():
    assert gini(np.zeros((3, 4))) == 0.0


def test_gini_hand_example():
    # |a| sorted = 0, 1, 2, 3; ||a||_1 = 6; sum = (1*2.5 + 2*1.5 + 3*0.5) / (6*4) = 7/24; G = 1 - 14/24.
    assert gini([3.0, 0.0, -1.0, 2.0]) == pytest.approx(5 / 12, abs=1e-12)


def test_gini_equals_mean_absolute_difference_form():
    # Hurley & Rickard's G equals the classical Gini coefficient sum_ij |x_i - x_j| / (2 n^2 mean).
    rng = np.random.default_rng(10)
    for n in [2, 3, 10, 57]:
        x = np.abs(rng.normal(size=n)) * (rng.random(n) < 0.7)
        x[0] = 1.0
        classical = np.abs(x[:, None] - x[None, :]).sum() / (2 * n * n * x.mean())
        assert gini(x) == pytest.approx(classical, abs=1e-12)


def test_gini_invariant_to_scaling_sign_and_permutation():
    rng = np.random.default_rng(11)
    a = rng.normal(size=(6, 7))
    g = gini(a)
    for scale in [1e-6, 0.5, 3.0, 1e6, -2.0]:
        assert gini(scale * a) == pytest.approx(g, abs=1e-12)
    assert gini(rng.permutation(a.ravel())) == pytest.approx(g, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# entropy_complexity


@pytest.mark.parametrize("n", [1, 2, 10, 256])
def test_entropy_of_uniform_map_is_ln_n(n):
    assert entropy_complexity(np.full(n, 0.25)) == pytest.approx(math.log(n), abs=1e-12)
    signs = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    assert entropy_complexity(0.25 * signs) == pytest.approx(math.log(n), abs=1e-12)


def test_entropy_of_one_hot_map_is_0():
    a = np.zeros((4, 5))
    a[2, 3] = -9.0
    assert entropy_complexity(a) == 0.0


def test_entropy_hand_example_and_zeros_contribute_nothing():
    assert entropy_complexity([1.0, -3.0]) == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), abs=1e-12)
    assert entropy_complexity([1.0, 0.0, -1.0, 0.0]) == pytest.approx(math.log(2), abs=1e-12)


def test_entropy_against_scipy():
    rng = np.random.default_rng(12)
    a = rng.normal(size=(3, 9, 9))
    assert entropy_complexity(a) == pytest.approx(scipy.stats.entropy(np.abs(a).ravel()), abs=1e-12)


def test_entropy_invariant_to_scaling():
    a = np.random.default_rng(13).normal(size=(5, 5))
    e = entropy_complexity(a)
    for scale in [1e-6, 0.5, 7.0, 1e6, -1.0]:
        assert entropy_complexity(scale * a) == pytest.approx(e, abs=1e-12)


def test_entropy_of_all_zero_map_is_refused():
    with pytest.raises(ValueError):
        entropy_complexity(np.zeros(4))


# ---------------------------------------------------------------------------------------------
# spearman


def test_average_ranks_by_hand_and_against_scipy():
    np.testing.assert_array_equal(average_ranks([10, 20, 20, 30]), [1, 2.5, 2.5, 4])
    np.testing.assert_array_equal(average_ranks([5, 5, 5]), [2, 2, 2])
    np.testing.assert_array_equal(average_ranks([3, 1, 2, 1]), [4, 1.5, 3, 1.5])
    x = np.random.default_rng(14).integers(0, 6, size=50)
    np.testing.assert_array_equal(average_ranks(x), scipy.stats.rankdata(x, method="average"))


@pytest.mark.parametrize("seed", range(6))
def test_spearman_against_scipy_on_random_data_with_ties(seed):
    rng = np.random.default_rng(100 + seed)
    n = [5, 12, 40, 100, 333, 1000][seed]
    a = rng.integers(0, 7, size=n).astype(float)  # many ties
    b = a * 0.5 + rng.integers(0, 5, size=n)       # correlated, also tied
    expected = scipy.stats.spearmanr(a, b).statistic
    assert spearman(a, b) == pytest.approx(expected, abs=1e-12)
    c = rng.normal(size=n).round(1)                 # a few ties
    assert spearman(a, c) == pytest.approx(scipy.stats.spearmanr(a, c).statistic, abs=1e-12)


def test_spearman_flattens_2d_arrays():
    rng = np.random.default_rng(15)
    a = rng.integers(0, 4, size=(6, 7))
    b = rng.normal(size=(6, 7))
    assert spearman(a, b) == pytest.approx(scipy.stats.spearmanr(a.ravel(), b.ravel()).statistic, abs=1e-12)


def test_spearman_monotone_cases():
    x = np.random.default_rng(16).normal(size=30)
    assert spearman(x, x) == pytest.approx(1.0, abs=1e-12)
    assert spearman(x, np.exp(3 * x)) == pytest.approx(1.0, abs=1e-12)
    assert spearman(x, -x**3) == pytest.approx(-1.0, abs=1e-12)


def test_spearman_of_a_constant_array_is_nan():
    assert math.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


# ---------------------------------------------------------------------------------------------
# removal_mask


def test_removal_mask_counts_with_bankers_rounding():
    saliency = np.random.default_rng(17).normal(size=(4, 5))  # 20 pixels
    for fraction, count in [(0.0, 0), (0.05, 1), (0.1, 2), (0.5, 10), (0.33, 7), (1.0, 20)]:
        for morf in (True, False):
            assert removal_mask(saliency, fraction, morf).sum() == count
    # round(2.5) = 2 and round(3.5) = 4: halves go to the even integer.
    assert removal_mask(np.zeros((1, 5)), 0.5).sum() == 2
    assert removal_mask(np.zeros((1, 7)), 0.5).sum() == 4
    assert removal_mask(np.zeros((2, 5)), 0.25).sum() == 2


def test_removal_mask_picks_extremes_on_distinct_values():
    rng = np.random.default_rng(18)
    saliency = rng.permutation(30).reshape(5, 6).astype(float)
    morf = removal_mask(saliency, 0.2, True)   # 6 pixels: values 24..29
    lerf = removal_mask(saliency, 0.2, False)  # 6 pixels: values 0..5
    np.testing.assert_array_equal(morf, saliency >= 24)
    np.testing.assert_array_equal(lerf, saliency <= 5)
    # With distinct values, MoRF at f and LeRF at 1 - f are complements.
    np.testing.assert_array_equal(removal_mask(saliency, 0.3, True), ~removal_mask(saliency, 0.7, False))


def test_removal_mask_tie_rule_lower_flat_index_first_in_both_orders():
    saliency = np.array([[1.0, 3.0, 3.0],
                         [2.0, 3.0, 1.0]])  # flat: 1 3 3 2 3 1
    def flat_true(mask):
        return sorted(np.flatnonzero(mask.ravel()).tolist())
    # MoRF order: 1, 2, 4 (value 3), 3 (value 2), 0, 5 (value 1).
    assert flat_true(removal_mask(saliency, 1 / 6, True)) == [1]
    assert flat_true(removal_mask(saliency, 2 / 6, True)) == [1, 2]
    assert flat_true(removal_mask(saliency, 4 / 6, True)) == [1, 2, 3, 4]
    assert flat_true(removal_mask(saliency, 5 / 6, True)) == [0, 1, 2, 3, 4]
    # LeRF order: 0, 5 (value 1), 3 (value 2), 1, 2, 4 (value 3).
    assert flat_true(removal_mask(saliency, 1 / 6, False)) == [0]
    assert flat_true(removal_mask(saliency, 3 / 6, False)) == [0, 3, 5]
    assert flat_true(removal_mask(saliency, 4 / 6, False)) == [0, 1, 3, 5]
    # A constant map: both orders take the first k row-major pixels.
    for morf in (True, False):
        mask = removal_mask(np.full((3, 4), 0.5), 5 / 12, morf)
        assert flat_true(mask) == [0, 1, 2, 3, 4]


def test_removal_masks_nest_as_the_fraction_grows():
    saliency = np.random.default_rng(19).integers(0, 4, size=(6, 6)).astype(float)
    for morf in (True, False):
        previous = np.zeros((6, 6), dtype=bool)
        for k in range(37):
            mask = removal_mask(saliency, k / 36, morf)
            assert mask.sum() == k
            assert np.all(mask[previous])
            previous = mask
