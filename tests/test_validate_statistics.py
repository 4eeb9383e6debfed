"""Image statistics, trait axes and population statistics against hand-computed values."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from validate.axes import fit_axes
from validate.embed_stats import (
    FEATURES,
    StatsEmbedder,
    brightness,
    colourfulness,
    contrast,
    hf_fraction,
    saturation,
    sharpness,
)
from validate.errors import ValidateError
from validate.intervals import studentised_log_interval
from validate.statistics import (
    WITHIN_CAPTIONS,
    bootstrap_statistics,
    frechet_distance,
    frechet_distance_samples,
    group_indices,
    grouped_statistics,
    population_statistics,
)


def grey(values):
    """An (H, W, 3) image with equal channels."""
    values = np.asarray(values, dtype=float)
    return np.repeat(values[..., None], 3, axis=-1)


CHECKERBOARD = grey(np.indices((4, 4)).sum(axis=0) % 2)


def test_brightness_and_contrast_of_a_checkerboard():
    # Half the pixels are 0, half 1: mean 1/2, population standard deviation 1/2.
    assert brightness(CHECKERBOARD) == pytest.approx(0.5)
    assert contrast(CHECKERBOARD) == pytest.approx(0.5)


def test_brightness_uses_rec601_weights():
    pure = np.zeros((2, 2, 3))
    for channel, weight in enumerate((0.299, 0.587, 0.114)):
        image = pure.copy()
        image[..., channel] = 1.0
        assert brightness(image) == pytest.approx(weight)


def test_saturation_by_hand():
    # Red: (1-0)/1 = 1; (0.5, 0.25, 0.25): 0.25/0.5 = 0.5; black: 0 by definition; grey: 0.
    image = np.array([[[1.0, 0.0, 0.0], [0.5, 0.25, 0.25]], [[0.0, 0.0, 0.0], [0.3, 0.3, 0.3]]])
    assert saturation(image) == pytest.approx((1 + 0.5 + 0 + 0) / 4)


def test_colourfulness_by_hand():
    # Two pixels, pure red and pure green: rg = (1, -1), yb = (0.5, 0.5).
    # sd(rg) = 1, sd(yb) = 0, mean(rg) = 0, mean(yb) = 0.5 -> 1 + 0.3 * 0.5.
    image = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    assert colourfulness(image) == pytest.approx(1.15)
    assert colourfulness(grey(np.random.default_rng(0).random((5, 5)))) == pytest.approx(0.0)


def test_hf_fraction_separates_fine_from_coarse_patterns():
    assert hf_fraction(CHECKERBOARD) == pytest.approx(1.0)  # all energy at (0.5, 0.5) cycles/pixel
    x = np.arange(16)
    slow = grey(np.tile(np.cos(2 * np.pi * x / 16), (16, 1)))  # 1/16 cycle per pixel
    assert hf_fraction(slow) == pytest.approx(0.0, abs=1e-12)
    # Half the energy at 1/16, half at 3/8 (> 1/4) cycles per pixel.
    mixed = grey(np.tile(np.cos(2 * np.pi * x / 16) + np.cos(2 * np.pi * 6 * x / 16), (16, 1)))
    assert hf_fraction(mixed) == pytest.approx(0.5)
    assert hf_fraction(grey(np.full((4, 4), 0.3))) == 0.0


def test_sharpness_is_laplacian_variance():
    # Interior Laplacian of a 0/1 checkerboard is 4 - 8v = +-4 in equal numbers: variance 16.
    assert sharpness(CHECKERBOARD) == pytest.approx(16.0)
    ramp = grey(np.add.outer(np.arange(5.0), np.arange(5.0)) / 10)  # linear: Laplacian 0
    assert sharpness(ramp) == pytest.approx(0.0, abs=1e-12)


def test_stats_embedder_reads_pil_images_in_feature_order():
    array = (CHECKERBOARD * 255).astype(np.uint8)
    features = StatsEmbedder().embed([Image.fromarray(array)])
    assert features.shape == (1, len(FEATURES))
    assert features[0].tolist() == pytest.approx([0.5, 0.5, 0.0, 0.0, 1.0, 16.0])


def test_frechet_distance_closed_forms():
    assert frechet_distance([0.0], [[1.0]], [3.0], [[4.0]]) == pytest.approx(10.0)
    cov = np.diag([1.0, 4.0])
    assert frechet_distance([1.0, 2.0], cov, [1.0, 2.0], cov) == pytest.approx(0.0, abs=1e-12)
    # Diagonal covariances: sum of the 1-D distances.
    expected = (1 - 0) ** 2 + 1 + 9 - 2 * 3 + (0 - 2) ** 2 + 4 + 1 - 2 * 2
    assert frechet_distance([1.0, 0.0], np.diag([1.0, 4.0]), [0.0, 2.0], np.diag([9.0, 1.0])) == pytest.approx(expected)
    # A singular covariance (fewer samples than features) stays real and finite.
    x = np.random.default_rng(0).standard_normal((3, 10))
    assert np.isfinite(frechet_distance(x.mean(0), np.cov(x, rowvar=False), np.zeros(10), np.eye(10)))


@pytest.mark.parametrize(("n1", "n2", "d"), [(40, 30, 5), (6, 9, 50)])
def test_frechet_from_samples_equals_the_covariance_formula(n1, n2, d):
    rng = np.random.default_rng(d)
    x = rng.standard_normal((n1, d)) * np.linspace(0.5, 2, d)
    y = rng.standard_normal((n2, d)) + 0.3
    direct = frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    # The eigendecomposition route loses about sqrt(eps) on each zero eigenvalue of a singular covariance.
    assert frechet_distance_samples(x, y) == pytest.approx(direct, rel=1e-7)


def test_population_statistics_by_hand():
    projected = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0]])
    stats = population_statistics(projected, projected, np.array([0.2, np.nan, 0.4]), projected)
    assert stats["mean"].tolist() == pytest.approx([2.0, 2.0])
    assert stats["var"].tolist() == pytest.approx([4.0, 3.0])  # unbiased
    assert stats["total_var"] == pytest.approx(7.0)
    assert stats["alignment"] == pytest.approx(0.3)  # NaN entries ignored
    assert stats["frechet"] == pytest.approx(0.0, abs=1e-9)


def test_bootstrap_is_seeded_and_covers_the_point_estimate():
    x = np.random.default_rng(1).standard_normal((60, 2))
    first = bootstrap_statistics(x, x, np.full(60, np.nan), x, n_boot=50, random_state=3)
    again = bootstrap_statistics(x, x, np.full(60, np.nan), x, n_boot=50, random_state=3)
    assert pd.DataFrame(first).equals(pd.DataFrame(again))  # NaN-aware equality
    for row in first:
        if row["statistic"] == "alignment":
            assert np.isnan(row["value"]) and np.isnan(row["ci_low"])
        else:
            assert row["ci_low"] <= row["ci_high"]
    var0 = next(r for r in first if r["statistic"] == "var" and r["axis"] == 0)
    assert var0["ci_low"] < var0["value"] < var0["ci_high"]


def test_bootstrap_interval_covers_the_true_variance():
    """The 95% interval of a N(0, 4) sample's variance contains 4 in at least 40 of 50 seeded samples.

    Expected coverage is about 0.93 (percentile bootstrap, n=100); a binomial(50, 0.93)
    falls below 40 with probability < 1e-3, the test's false-failure rate.
    """
    rng = np.random.default_rng(7)
    covered = 0
    for _ in range(50):
        x = 2.0 * rng.standard_normal((100, 1))
        rows = bootstrap_statistics(x, x, np.full(100, np.nan), x, n_boot=200, random_state=rng)
        var = next(r for r in rows if r["statistic"] == "var")
        covered += var["ci_low"] <= 4.0 <= var["ci_high"]
    assert covered >= 40


def test_pca_axes_find_the_dominant_direction_and_standardise():
    rng = np.random.default_rng(0)
    data = rng.standard_normal((400, 3)) * [5.0, 1.0, 0.2] + [10.0, 0.0, 0.0]
    axes = fit_axes(data, 2)
    assert abs(axes.components[0, 0]) == pytest.approx(1.0, abs=1e-3)
    assert axes.explained[0] > 0.9
    projected = axes.project(data)
    assert projected.mean(axis=0) == pytest.approx([0.0, 0.0], abs=1e-9)
    assert projected[:, 0].var(ddof=1) == pytest.approx(data[:, 0].var(ddof=1), rel=1e-3)
    # Standardised: every feature has unit variance, so no axis dominates by units alone.
    scaled = fit_axes(data, 3, standardize=True)
    assert scaled.explained.sum() == pytest.approx(1.0)
    assert scaled.explained.max() < 0.5


def test_pca_axes_bad_requests():
    with pytest.raises(ValidateError, match="--axes 5"):
        fit_axes(np.zeros((10, 3)), 5)
    with pytest.raises(ValidateError, match="at least 2 reference images"):
        fit_axes(np.zeros((1, 3)), 1)
    constant = np.ones((5, 2))  # a constant feature must not divide by zero
    assert np.isfinite(fit_axes(constant, 1, standardize=True).project(constant)).all()


def test_grouped_statistics_by_hand():
    # Caption a: axis 0 values 0, 1, 2 (mean 1, var 1); caption b: 10, 10, 13 (mean 11, var 3).
    projected = np.array([[0.0, 5.0], [10.0, 1.0], [1.0, 5.0], [10.0, 2.0], [2.0, 8.0], [13.0, 3.0]])
    labels = ["a", "b", "a", "b", "a", "b"]
    rows = pd.DataFrame(grouped_statistics(projected, projected, labels, n_boot=0))
    table = rows.set_index(["caption", "statistic", "axis"])["value"]
    assert table[("a", "mean", 0)] == pytest.approx(1.0)
    assert table[("b", "mean", 0)] == pytest.approx(11.0)
    assert table[("a", "var", 0)] == pytest.approx(1.0)
    assert table[("b", "var", 0)] == pytest.approx(3.0)
    assert table[("a", "var", 1)] == pytest.approx(3.0)  # 5, 5, 8
    assert table[("b", "var", 1)] == pytest.approx(1.0)  # 1, 2, 3
    assert table[("a", "total_var", -1)] == pytest.approx(4.0)
    assert table[("b", "total_var", -1)] == pytest.approx(4.0)
    # The within-caption summary is the mean over captions of the within-caption variance, far below
    # the pooled variance of axis 0 (the captions lie 10 apart).
    assert table[(WITHIN_CAPTIONS, "var", 0)] == pytest.approx(2.0)
    assert table[(WITHIN_CAPTIONS, "var", 1)] == pytest.approx(2.0)
    assert table[(WITHIN_CAPTIONS, "total_var", -1)] == pytest.approx(4.0)
    assert projected[:, 0].var(ddof=1) > 25
    assert rows.groupby("caption")["n_images"].first().to_dict() == {"a": 3, "b": 3, WITHIN_CAPTIONS: 6}
    assert rows["ci_low"].isna().all()  # no bootstrap asked for


def test_grouped_bootstrap_resamples_within_captions():
    """The multiplicity formulas give exactly what resampling the images themselves gives: the within-caption
    summary's studentised interval (issue 21), each resample's standard error from its own images' spread of
    squared deviations, pooled over captions."""
    rng = np.random.default_rng(5)
    projected = rng.standard_normal((7, 2)) + np.repeat([[0.0, 0.0], [50.0, -50.0]], [3, 4], axis=0)
    standardised = rng.standard_normal((7, 9))
    labels = ["a"] * 3 + ["b"] * 4
    rows = grouped_statistics(projected, standardised, labels, n_boot=40, random_state=11, level=0.5)
    within = pd.DataFrame(rows).set_index(["caption", "statistic", "axis"])

    def spread(images):  # the squared distances to the mean: their variance over their mean squared
        if len(np.unique(images, axis=0)) == 1:
            return np.nan  # one image repeated
        squared = ((images - images.mean(axis=0)) ** 2).sum(axis=1)
        return squared.var() / squared.mean() ** 2

    def summary(captions):  # the mean of the captions' variances and the standard error of its log
        sizes = np.array([len(c) for c in captions])
        variances = np.array([c.var(axis=0, ddof=1).sum() for c in captions])
        spreads = np.array([spread(c) for c in captions])
        weights = np.where(np.isnan(spreads), 0, sizes)  # a resample of one image repeated has no spread
        pooled = np.nansum(weights * spreads) / weights.sum() if weights.sum() else np.nan
        return variances.mean(), np.sqrt(np.sum(variances**2 / (sizes - 1)) * pooled) / 2 / variances.mean()

    # Redraw the same multiplicities and recompute by brute force, per axis and for the total variance.
    again = np.random.default_rng(11)
    picks = []
    for index in (np.arange(3), np.arange(3, 7)):
        counts = again.multinomial(len(index), np.full(len(index), 1 / len(index)), size=40)
        picks.append([np.repeat(index, c) for c in counts])
    for statistic, axis, features in (("var", 1, projected[:, [1]]), ("total_var", -1, standardised)):
        point, se = summary([features[:3], features[3:]])
        boot = np.array([summary([features[a], features[b]]) for a, b in zip(*picks, strict=True)])
        plug_in = np.mean([features[:3].var(axis=0).sum(), features[3:].var(axis=0).sum()])
        expected = studentised_log_interval(point, se, boot[:, 0], boot[:, 1], plug_in, level=0.5)
        assert within.loc[(WITHIN_CAPTIONS, statistic, axis), ["ci_low", "ci_high"]].tolist() == pytest.approx(
            [float(expected[0]), float(expected[1])])
    # The captions' 50-apart means never leak into the within-caption intervals.
    assert within.loc[(WITHIN_CAPTIONS, "var", 0), "ci_high"] < 10
    # Three images per caption still give finite, ordered intervals.
    for row in rows:
        assert np.isfinite(row["ci_low"]) and row["ci_low"] <= row["ci_high"]


def test_grouped_statistics_refuses_captions_with_fewer_than_three_images():
    x = np.zeros((5, 1))
    with pytest.raises(ValidateError, match=r"iter 2: caption 'b' has 2 image\(s\).*at least 3.*--group none"):
        grouped_statistics(x, x, ["a", "a", "a", "b", "b"], n_boot=0, what="iter 2")
    assert list(group_indices(["x"] * 3)) == ["x"]
