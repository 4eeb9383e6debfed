"""Intervals that contain their point estimate (issue 21 item 4): BCa for smooth statistics, subsampling for sets.

Deterministic checks use fixed seeds (no false failures); the one coverage check states its rate.
"""

import numpy as np
import pytest
from scipy import stats

from validate.decomposition import RunTraits, TraitSet, decompose
from validate.diversity import SHARES, diversity_metrics
from validate.intervals import (
    bca_interval,
    moments_jackknife,
    subsample_indices,
    subsample_interval,
    subsample_normal_interval,
)
from validate.statistics import WITHIN_CAPTIONS, bootstrap_statistics, grouped_statistics


def test_bca_matches_scipy_on_the_same_resamples():
    """scipy.stats.bootstrap's BCa with 20000 resamples and ours on 20000 of our own: equal within Monte-Carlo
    error (about 1 % at these quantiles); deterministic (fixed seeds)."""
    x = np.random.default_rng(0).exponential(size=40)
    expected = stats.bootstrap(
        (x,),
        lambda a, axis: a.var(axis=axis, ddof=1),
        method="BCa",
        n_resamples=20000,
        random_state=1,
        vectorized=True,
    ).confidence_interval
    boot = x[np.random.default_rng(2).integers(0, 40, (20000, 40))].var(axis=1, ddof=1)
    low, high = bca_interval(x.var(ddof=1), boot, [moments_jackknife(x[:, None])[1][:, 0]])
    assert [float(low), float(high)] == pytest.approx([expected.low, expected.high], rel=0.05)


def test_closed_form_jackknife_is_leave_one_out():
    x = np.random.default_rng(3).standard_normal((7, 2))
    means, variances = moments_jackknife(x)
    for i in range(7):
        rest = np.delete(x, i, axis=0)
        assert means[i] == pytest.approx(rest.mean(axis=0))
        assert variances[i] == pytest.approx(rest.var(axis=0, ddof=1))


def test_every_interval_contains_its_point_estimate():
    """Random data, skewed and heavy-tailed, fixed seeds: population, per-caption and decomposition intervals."""
    for seed in range(4):
        rng = np.random.default_rng(seed)
        x = rng.standard_t(3, (60, 2)) ** 2
        for row in bootstrap_statistics(x, x, rng.uniform(size=60), x, n_boot=100, random_state=seed):
            if row["statistic"] != "frechet":  # documented: its percentile interval may lie above it
                assert row["ci_low"] <= row["value"] <= row["ci_high"], row
        labels = np.repeat(["a", "b", "c"], 20)
        for row in grouped_statistics(x, x, labels, n_boot=100, random_state=seed):
            assert row["ci_low"] <= row["value"] <= row["ci_high"], row

        def sample(shift, scale=1.0, rng=rng):
            return TraitSet(shift + scale * rng.standard_t(4, (90, 2)), np.repeat(["a", "b", "c"], 30))

        run = RunTraits(
            "r",
            5.0,
            guided={0: sample(1.0, 0.7), 1: sample(1.5, 0.6)},
            cfg1={0: sample(0.0), 1: sample(0.5, 0.9)},
            data=sample(0.3),
            base_cond=sample(0.0),
        )
        table = decompose([run], n_boot=100, random_state=seed).dropna(subset=["lo"])
        assert len(table) and ((table.lo <= table.value) & (table.value <= table.hi)).all()


def test_subsamples_are_sets_of_distinct_images():
    rows = subsample_indices(25, 12, 300, random_state=0)
    assert rows.shape == (300, 12) and rows.min() >= 0 and rows.max() < 25
    assert all(len(set(row)) == 12 for row in rows.tolist())
    low, high = subsample_interval(np.zeros(3), np.random.default_rng(1).exponential(size=(100, 3)))
    assert (low <= 0).all() and (high >= 0).all()


def test_within_caption_variance_interval_covers_the_truth():
    """200 populations (8 captions x 30 Gaussian images, true variances known): the 95 % studentised interval of
    the within-caption variance holds the truth in 176-199 of them. benchmarks/interval_calibration.py measures
    0.937 +- 0.008 for this design (1000 populations; BCa's interval, which this replaced, 0.901); a
    binomial(200, 0.937) falls below 176 with probability about 9e-4 and a coverage of 0.95 exceeds 199 with
    probability 4e-5: the test's false-failure rate is below 1e-3 (and the seed is fixed; it covers 186)."""
    rng = np.random.default_rng(21)
    covered = 0
    for _ in range(200):
        variances = np.exp(rng.normal(0, 0.5, 8))
        x = np.concatenate([np.sqrt(v) * rng.standard_normal((30, 1)) for v in variances])
        rows = grouped_statistics(x, x, np.repeat(np.arange(8), 30), n_boot=200, random_state=rng)
        row = next(r for r in rows if r["caption"] == WITHIN_CAPTIONS and r["statistic"] == "var")
        covered += row["ci_low"] <= variances.mean() <= row["ci_high"]
    assert 176 <= covered <= 199


@pytest.mark.parametrize("sets", [(60, 60, 4, 0.8), (40, 80, 8, 0.6)])
def test_share_intervals_cover_their_expectation_near_one(sets):
    """200 populations of n real and m generated d-dimensional Gaussian points, the generated set narrowed
    (benchmarks/interval_calibration.py's design, then its ``--sets 40,80,8,0.6``): precision and coverage
    (expectations 0.99 and 0.98; 0.999 and 0.996) pile up at 1 in half-samples. Their 95 % intervals must hold
    the metric's expectation (the mean of the 200 estimates) in at least 176 populations each. Development runs
    of both designs on other seeds measured 0.96-1.0 for the three shares; a binomial(200, 0.93) falls below
    176 with probability about 3e-3 per share, so the false-failure rate is below 2e-2 (and the seed is fixed).
    The reflected interval this replaced covered 3-60 % of precision's and coverage's expectations here, the
    normal interval without the bound for a share of 1 42-57 % in the second design."""
    n, m, d, narrowing = sets
    rng = np.random.default_rng(2121)
    found = []
    for _ in range(200):
        real, generated = rng.standard_normal((n, d)), narrowing * rng.standard_normal((m, d))
        rows = diversity_metrics(real, generated, bootstrap=100, random_state=int(rng.integers(2**31)))
        found.append([(r["value"], r["ci_low"], r["ci_high"]) for r in rows if r["statistic"] in SHARES])
    value, low, high = np.moveaxis(np.array(found), 2, 0)
    truth = value.mean(axis=0)
    covered = ((low <= truth) & (truth <= high)).sum(axis=0)
    assert (low <= value).all() and (value <= high).all()
    assert (covered >= 176).all(), dict(zip(SHARES, covered.tolist(), strict=True))


def test_vendi_interval_is_as_wide_as_the_estimates_spread_near_its_maximum():
    """200 populations of the benchmark's design (60 real, 60 generated 4-d Gaussian points): the features are
    nearly isotropic, so the Vendi score sits near its maximum, where its half-samples spread about 1.6 times as
    far as the estimate does. Its 95 % interval must hold the expectation (the mean of the 200 estimates) in at
    least 176 populations and be at most 1.45 times as wide as 2 z times the estimates' SD. Development runs
    (seeds 2027 and 31, 300 populations, 200 resamples) measured 95-97.7 % and 1.10-1.24 here, the half-sample
    interval this replaced 97-99 % and 1.48-1.68; this seed with 100 resamples gives 193 and 1.27 (the old
    interval 200 and 1.62). A binomial(200, 0.93) falls below 176 with probability about 3e-3, and the width's
    own error over 200 populations is about 0.06 (1.45 is 3 of them above 1.27), so the false-failure rate is
    below 5e-3 (and the seed is fixed)."""
    rng = np.random.default_rng(2323)
    found = []
    for _ in range(200):
        real, generated = rng.standard_normal((60, 4)), 0.8 * rng.standard_normal((60, 4))
        rows = diversity_metrics(real, generated, bootstrap=100, random_state=int(rng.integers(2**31)))
        found.append(next((r["value"], r["ci_low"], r["ci_high"]) for r in rows if r["statistic"] == "vendi"))
    value, low, high = np.array(found).T
    covered = ((low <= value.mean()) & (value.mean() <= high)).sum()
    width = np.mean(high - low) / (2 * 1.959964 * value.std())
    assert (low <= value).all() and (value <= high).all()
    assert covered >= 176 and width <= 1.45, (covered, width)


def test_a_normal_subsample_interval_keeps_its_width_where_the_values_pile_up():
    """Half-sample values of a share at 0.98: nearly all 1. The reflected interval has no width below the point,
    where the truth lies; the normal one is symmetric about it."""
    values = np.array([1.0] * 95 + [0.98] * 5)[:, None]
    reflected = subsample_interval(np.array([0.98]), values)
    normal = subsample_normal_interval(np.array([0.98]), values)
    assert float(reflected[0][0]) == pytest.approx(0.98) and float(normal[0][0]) < 0.98 < float(normal[1][0])
    assert float(normal[0][0]) + float(normal[1][0]) == pytest.approx(2 * 0.98)


def test_a_share_of_one_reaches_the_bound_for_no_miss():
    """Every generated point at the real set's centre: precision is 1 in every half-sample, and its interval
    reaches down to 0.05^(1/m), the one-sided Clopper-Pearson bound for m points and no miss."""
    rng = np.random.default_rng(3)
    real, generated = rng.standard_normal((40, 3)), 1e-3 * rng.standard_normal((30, 3))
    row = next(r for r in diversity_metrics(real, generated, bootstrap=50) if r["statistic"] == "precision")
    assert row["value"] == row["ci_high"] == 1.0 and row["ci_low"] == pytest.approx(0.05 ** (1 / 30))


def test_examples():
    import doctest

    import validate.intervals

    assert doctest.testmod(validate.intervals).failed == 0
