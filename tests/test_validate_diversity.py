"""Precision, recall, density, coverage and the Vendi score on point sets whose answers are known.

All checks are deterministic (fixed seeds, exact answers): no false failures.
"""

from __future__ import annotations

import numpy as np
import pytest

from validate.diversity import RANGES, STATISTICS, diversity_metrics, prdc
from validate.errors import ValidateError
from validate.statistics import ALL_CAPTIONS, WITHIN_CAPTIONS
from validate.vendi import vendi_score


def reference_prdc(real, generated, k):
    """The ``prdc`` package's formulas with loops: a ball reaches the (k+1)-th smallest distance, self's 0 included."""

    def radii(points):
        return [sorted(np.linalg.norm(points - p, axis=1))[k] for p in points]

    r_real, r_gen = radii(real), radii(generated)
    d = [[np.linalg.norm(x - y) for y in generated] for x in real]
    n, m = len(real), len(generated)
    return {
        "precision": np.mean([any(d[i][j] < r_real[i] for i in range(n)) for j in range(m)]),
        "recall": np.mean([any(d[i][j] < r_gen[j] for j in range(m)) for i in range(n)]),
        "density": np.mean([sum(d[i][j] < r_real[i] for i in range(n)) for j in range(m)]) / k,
        "coverage": np.mean([min(d[i]) < r_real[i] for i in range(n)]),
    }


def test_identical_sets_give_one_and_far_disjoint_sets_zero():
    x = np.random.default_rng(1).standard_normal((40, 5))
    same = prdc(x, x.copy(), k=5)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    far = prdc(x, x + 1e3, k=5)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_hand_computed_example():
    # k=1. Real 0, 1, 3: radii 1, 1, 2. Generated 0.5, 2.9, 10: radii 2.4, 2.4, 7.1.
    # Real balls hold 0.5 (twice: from 0 and 1) and 2.9 (from 3), not 10: precision 2/3, density 3/3,
    # every real ball holds one: coverage 1; every real point lies in the balls of 0.5 or 2.9: recall 1.
    real, generated = np.array([[0.0], [1.0], [3.0]]), np.array([[0.5], [2.9], [10.0]])
    assert prdc(real, generated, k=1) == pytest.approx(
        {"precision": 2 / 3, "recall": 1.0, "density": 1.0, "coverage": 1.0}
    )
    # Swapped: real 0.5, 2.9, 10 (radii 2.4, 2.4, 7.1) hold 0 (in 1 ball), 1 (in 2) and 3 (in 2, 10's at
    # distance 7): precision 1, density 5/3;
    # only 0.5 and 2.9 lie in the generated balls (radii 1, 1, 2): recall 2/3; 10's ball holds 3: coverage 1.
    assert prdc(generated, real, k=1) == pytest.approx(
        {"precision": 1.0, "recall": 2 / 3, "density": 5 / 3, "coverage": 1.0}
    )


@pytest.mark.parametrize("k", [1, 3, 5])
def test_agrees_with_the_prdc_formulas(k):
    rng = np.random.default_rng(k)
    real, generated = rng.standard_normal((30, 4)), 0.6 * rng.standard_normal((25, 4)) + 0.4
    assert prdc(real, generated, k=k) == pytest.approx(reference_prdc(real, generated, k))


def test_vendi_of_identical_and_orthogonal_points():
    for count in (1, 3, 7):
        assert vendi_score(np.tile([[0.3, -1.0, 2.0]], (count, 1))) == pytest.approx(1.0)
        assert vendi_score(np.eye(count) * 4.0) == pytest.approx(count)
        assert vendi_score(np.tile([[0.3, -1.0]], (count, 1)), kernel="rbf", bandwidth=1.0) == pytest.approx(1.0)
    # Far apart under the RBF kernel: K is the identity to rounding.
    assert vendi_score(np.eye(6) * 100.0, kernel="rbf", bandwidth=1.0) == pytest.approx(6.0)


def test_vendi_hand_computed():
    # Two unit vectors at cosine 1/2: K/2 has eigenvalues 3/4 and 1/4.
    points = np.array([[1.0, 0.0], [0.5, np.sqrt(3) / 2]])
    assert vendi_score(points) == pytest.approx(np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25))))


def captioned_sets():
    rng = np.random.default_rng(5)
    shift = np.array([5.0, 0.0, 0.0])
    real = np.concatenate([rng.standard_normal((20, 3)) + shift, rng.standard_normal((15, 3)) - shift])
    # Caption "b" collapses: its generated images sit in a tenth of the real spread.
    generated = np.concatenate([rng.standard_normal((30, 3)) + shift, 0.1 * rng.standard_normal((30, 3)) - shift])
    return real, generated, ["a"] * 20 + ["b"] * 15, ["a"] * 30 + ["b"] * 30


def table(rows):
    return {(row["caption"], row["statistic"]): row for row in rows}


def test_per_caption_rows_intervals_and_the_mean_over_captions():
    real, generated, real_captions, generated_captions = captioned_sets()
    rows = table(
        diversity_metrics(
            real,
            generated,
            real_captions=real_captions,
            generated_captions=generated_captions,
            bootstrap=60,
            pooled=True,
        )
    )
    assert set(rows) == {(c, s) for c in ("a", "b", WITHIN_CAPTIONS, ALL_CAPTIONS) for s in STATISTICS}
    assert rows["b", "recall"]["value"] < rows["a", "recall"]["value"]
    assert rows["b", "vendi"]["value"] < rows["b", "vendi_real"]["value"]
    assert (rows["a", "precision"]["n_real"], rows["a", "precision"]["n_generated"]) == (20, 30)
    assert rows[WITHIN_CAPTIONS, "recall"]["value"] == pytest.approx(
        (rows["a", "recall"]["value"] + rows["b", "recall"]["value"]) / 2
    )
    for row in rows.values():
        assert row["ci_low"] <= row["ci_high"] and np.isfinite([row["ci_low"], row["ci_high"]]).all()


def test_seeded_per_caption_and_without_bootstrap():
    real, generated, real_captions, generated_captions = captioned_sets()
    options = {"real_captions": real_captions, "generated_captions": generated_captions, "bootstrap": 20}
    first = table(diversity_metrics(real, generated, **options))
    assert first == table(diversity_metrics(real, generated, **options))
    assert first != table(diversity_metrics(real, generated, **options, random_state=1))
    # A caption's stream is keyed by the caption: dropping the other caption leaves its intervals as they were.
    only_a = table(
        diversity_metrics(
            real[:20],
            generated[:30],
            **{**options, "real_captions": real_captions[:20], "generated_captions": generated_captions[:30]},
        )
    )
    assert only_a["a", "recall"] == first["a", "recall"]
    plain = diversity_metrics(real, generated, bootstrap=0)
    assert {row["caption"] for row in plain} == {ALL_CAPTIONS}
    assert all(np.isnan(row["ci_low"]) and np.isnan(row["ci_high"]) for row in plain)


def test_bootstrap_of_identical_sets_keeps_prdc_radii_free_of_copies():
    # With k=1, a resampled point's copy would be its nearest neighbour at distance 0 and its ball empty:
    # precision's interval would fall to about (0.36, 0.70) here; subsamples (issue 21) hold no copies.
    x = np.random.default_rng(2).standard_normal((50, 3))
    rows = table(diversity_metrics(x, x, k=1, bootstrap=50))
    for statistic in ("precision", "recall"):
        assert rows[ALL_CAPTIONS, statistic]["ci_low"] > 0.6 and rows[ALL_CAPTIONS, statistic]["ci_high"] > 0.9


def test_bad_inputs():
    x = np.zeros((4, 2)) + np.arange(4)[:, None]
    with pytest.raises(ValidateError, match="need more than 5 images in each set"):
        prdc(x, x)
    with pytest.raises(ValidateError, match="real features are 2-d, generated ones 3-d"):
        prdc(np.ones((9, 2)), np.ones((9, 3)), k=2)
    with pytest.raises(ValidateError, match="captions of both"):
        diversity_metrics(x, x, real_captions=["a"] * 4, k=1)
    with pytest.raises(ValidateError, match=r"real images: caption 'b' has 1 image\(s\)"):
        diversity_metrics(x, x, real_captions=["a", "a", "a", "b"], generated_captions=["a"] * 4, k=2)
    with pytest.raises(ValidateError, match="generated caption 'c' has no real images"):
        diversity_metrics(x, x, real_captions=["a"] * 4, generated_captions=["c"] * 4, k=2)
    with pytest.raises(ValidateError, match="nonzero feature vectors"):
        vendi_score(np.zeros((3, 2)))


def test_subsamples_hold_no_duplicate_image_and_intervals_contain_the_point():
    """Deterministic (fixed seeds): every subsample is a set of distinct images, every interval holds its value."""
    from validate.intervals import subsample_indices

    rows = subsample_indices(40, 20, 200, random_state=3)
    assert rows.shape == (200, 20) and all(len(set(row)) == 20 for row in rows.tolist())
    for seed in range(5):
        real, generated, real_captions, generated_captions = captioned_sets()
        shifted = generated + np.random.default_rng(seed).normal(scale=0.3, size=generated.shape)
        result = diversity_metrics(
            real, shifted, real_captions=real_captions, generated_captions=generated_captions, bootstrap=40,
            pooled=True, random_state=seed,
        )
        for row in result:
            assert row["ci_low"] <= row["value"] <= row["ci_high"], row


def test_intervals_stay_inside_each_metrics_range():
    """A generated set far from the real one: precision, recall, coverage and density are 0 and their reflected
    intervals must not go below it (they did: [-0.02, 0.004]); no share above 1, no Vendi below 1."""
    real, generated, real_captions, generated_captions = captioned_sets()
    far = generated + 50.0
    far[::3] = real[: len(far[::3])]  # a few generated images on the real ones: intervals not all zero-width
    result = diversity_metrics(real, far, real_captions=real_captions, generated_captions=generated_captions,
                               bootstrap=40, random_state=0)
    for row in result:
        low, high = RANGES[row["statistic"]]
        assert low <= row["ci_low"] <= row["value"] <= row["ci_high"] <= high, row
