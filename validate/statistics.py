"""Trait statistics of one image population, with seeded bootstrap confidence intervals.

Per population: the mean and (unbiased) variance on each trait axis, the total
variance (trace of the feature covariance in the standardised feature space),
the mean caption alignment (NaN for embedders without a text side) and the
Fréchet distance to the reference population in the full feature space (FID's
formula, on whichever embedder was chosen).

The excess kurtosis per axis (``kurtosis``) is what the fit needs for the standard
error of a log variance: traits are heavy-tailed, and the SE of a sample variance is
``sqrt((kurtosis + 2) / (n - 1)) * var``, not the Gaussian ``sqrt(2 / (n - 1)) * var``.

Per caption (:func:`grouped_statistics`): the same moments within each caption, and
their within-caption summary. CFG selects within a caption (one concept, one p_c),
so that is where the theory's trait moments live; pooled over captions the
between-caption spread hides the within-caption collapse.
"""

from __future__ import annotations

import warnings

import numpy as np

from qtm.random import check_random_state
from validate.errors import ValidateError
from validate.intervals import bca_interval, moments_jackknife, studentised_log_interval


def frechet_distance(mean1, cov1, mean2, cov2):
    """Fréchet distance between N(mean1, cov1) and N(mean2, cov2) (FID's formula).

    ``|m1 - m2|² + tr(C1) + tr(C2) - 2 tr((C1^½ C2 C1^½)^½)``, computed through
    symmetric eigendecompositions, which stay real for singular covariances. A float; with
    a stack of first Gaussians (``mean1`` (b, d), ``cov1`` (b, d, d)), an array (b,).

    Examples
    --------
    >>> frechet_distance([0.0], [[1.0]], [3.0], [[4.0]])  # 9 + 1 + 4 - 2*2
    10.0
    """
    mean1, mean2 = (
        np.atleast_1d(np.asarray(mean1, dtype=float)),
        np.atleast_1d(np.asarray(mean2, dtype=float)),
    )
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, dtype=float)), np.atleast_2d(np.asarray(cov2, dtype=float))
    values, vectors = np.linalg.eigh(cov1)
    root1 = (vectors * np.sqrt(np.clip(values, 0, None))[..., None, :]) @ np.swapaxes(vectors, -1, -2)
    middle = np.linalg.eigvalsh(root1 @ cov2 @ root1)
    cross = np.sqrt(np.clip(middle, 0, None)).sum(axis=-1)
    distance = (
        np.sum((mean1 - mean2) ** 2, axis=-1)
        + np.trace(cov1, axis1=-2, axis2=-1)
        + np.trace(cov2, axis1=-2, axis2=-1)
        - 2.0 * cross
    )
    return _at_least_zero(distance)


def frechet_distance_samples(x, y):
    """The Fréchet distance between the Gaussians fitted to samples ``x`` (n1, d) and ``y`` (n2, d).

    The same number as :func:`frechet_distance` on their means and (unbiased)
    covariances, computed without any d x d matrix: with centred samples A and B,
    the nonzero eigenvalues of ``C1 C2`` are the squared singular values of
    ``A Bᵀ / sqrt((n1-1)(n2-1))``, so ``tr((C1^½ C2 C1^½)^½)`` is the sum of those
    singular values. Costs O(n1 n2 d) instead of O(d³), which matters for
    1280-d features and a bootstrap; with fewer features than samples the
    covariance route is taken instead. A float; for samples ``x`` (n1, b, d) of b
    sets (a bootstrap's resamples, image by image), an array (b,) computed in one go.

    Examples
    --------
    >>> x = np.array([[0.0], [2.0]])
    >>> y = np.array([[3.0], [7.0]])
    >>> frechet_distance_samples(x, y) == frechet_distance([1.0], [[2.0]], [5.0], [[8.0]])
    True
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    n, d = len(x), x.shape[-1]
    # Images along axis 0: the means add image after image, as for one (n, d) sample.
    mean = x.mean(axis=0)
    a = np.moveaxis(x - mean, 0, -2)  # (n, d), or (b, n, d) views
    if d <= min(n, len(y)):  # few features: the d x d route is the cheaper one
        # The covariance as np.cov computes it, for every sample at once.
        cov = np.swapaxes(a, -1, -2) @ a
        cov *= np.true_divide(1, n - 1)
        return frechet_distance(mean, cov, y.mean(axis=0), np.cov(y, rowvar=False))
    b = y - y.mean(axis=0)
    scale = np.sqrt((n - 1) * (len(y) - 1))
    cross = np.linalg.svd(a @ b.T, compute_uv=False).sum(axis=-1) / scale
    distance = (
        np.sum((mean - y.mean(axis=0)) ** 2, axis=-1)
        + np.sum(np.ascontiguousarray(a) ** 2, axis=(-2, -1)) / (n - 1)
        + np.sum(b**2) / (len(y) - 1)
        - 2.0 * cross
    )
    return _at_least_zero(distance)


def _at_least_zero(distance):
    """A distance (float) or a stack of them (array), each at least 0."""
    # Rounding can leave identical populations a hair below zero; the distance itself is >= 0.
    distance = np.maximum(distance, 0.0)
    return float(distance) if distance.ndim == 0 else distance


def excess_kurtosis(values) -> np.ndarray:
    """Excess kurtosis per column, ``m4 / m2² - 3`` with central sample moments (0 for a Gaussian, NaN if constant).

    ``values`` is (n, k), or (n, ..., k) for several samples of n.

    Examples
    --------
    >>> excess_kurtosis(np.array([[-1.0], [1.0]])).tolist()
    [-2.0]
    """
    x = np.asarray(values, dtype=float)
    x = x - x.mean(axis=0)
    m2 = (x**2).mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x**4).mean(axis=0) / m2**2 - 3.0


def population_statistics(projected, standardised, alignment, reference_standardised) -> dict:
    """Point estimates for one population.

    Parameters
    ----------
    projected : array, shape (n, k)
        Trait coordinates.
    standardised : array, shape (n, d)
        Features in the reference's standardised units.
    alignment : array, shape (n,)
        Per-image caption alignment (NaN when unmeasured).
    reference_standardised : array, shape (m, d)
        The reference population, for the Fréchet distance.

    Examples
    --------
    >>> x = np.array([[0.0], [2.0]])
    >>> s = population_statistics(x, x, np.array([0.5, 0.7]), x)
    >>> s["mean"].tolist(), s["var"].tolist(), s["total_var"], round(s["alignment"], 3), s["frechet"]
    ([1.0], [2.0], 2.0, 0.6, 0.0)
    """
    projected = np.asarray(projected, dtype=float)
    standardised = np.asarray(standardised, dtype=float)
    reference = np.asarray(reference_standardised, dtype=float)
    alignment = np.asarray(alignment, dtype=float)
    return {
        "mean": projected.mean(axis=0),
        "var": projected.var(axis=0, ddof=1),
        "kurtosis": excess_kurtosis(projected),
        "total_var": float(standardised.var(axis=0, ddof=1).sum()),
        "alignment": float(np.nanmean(alignment)) if np.isfinite(alignment).any() else float("nan"),
        "frechet": frechet_distance_samples(standardised, reference),
    }


def bootstrap_statistics(
    projected,
    standardised,
    alignment,
    reference_standardised,
    *,
    n_boot: int = 200,
    level: float = 0.95,
    random_state=None,
) -> list[dict]:
    """Tidy rows (statistic, axis, value, ci_low, ci_high) with bootstrap intervals.

    The images are resampled with replacement ``n_boot`` times (the reference is
    held fixed). ``axis`` is -1 for statistics of the whole population. The mean,
    variance, kurtosis, total variance and alignment have BCa intervals
    (:func:`validate.intervals.bca_interval`, the acceleration from the closed-form
    jackknife), which contain the point estimate. The Fréchet distance keeps its
    percentile interval: it is biased upward by resampling, so the interval may lie
    above the point estimate; it shows the spread, not a corrected value.

    Examples
    --------
    >>> x = np.random.default_rng(0).standard_normal((50, 2))
    >>> rows = bootstrap_statistics(x, x, np.full(50, np.nan), x, n_boot=20, random_state=0)
    >>> [(r["statistic"], r["axis"]) for r in rows][:3]
    [('mean', 0), ('mean', 1), ('var', 0)]
    """
    rng = check_random_state(random_state)
    projected = np.asarray(projected, dtype=float)
    standardised = np.asarray(standardised, dtype=float)
    alignment = np.asarray(alignment, dtype=float)
    n, k = projected.shape
    point = population_statistics(projected, standardised, alignment, reference_standardised)
    # One draw per resample, as they have always been drawn; then all resamples at once, image by image
    # along axis 0 (n, n_boot, ...), so that every sum adds the images in the order one resample's sum does.
    picks = np.array([rng.integers(0, n, size=n) for _ in range(n_boot)], dtype=np.intp).reshape(n_boot, n).T
    resampled, features, chosen = projected[picks], standardised[picks], alignment[picks.T]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # resamples without any alignment: NaN
        alignments = np.where(np.isfinite(chosen).any(axis=1), np.nanmean(chosen, axis=1), np.nan)
    samples = {
        "mean": resampled.mean(axis=0),
        "var": resampled.var(axis=0, ddof=1),
        "kurtosis": excess_kurtosis(resampled),
        "total_var": features.var(axis=0, ddof=1).sum(axis=1),
        "alignment": alignments,
        "frechet": frechet_distance_samples(features, reference_standardised),
    }
    jackknife = _population_jackknife(projected, standardised, alignment)
    tail = 100 * (1 - level) / 2
    rows = []

    def interval(name):
        if not n_boot:
            return np.full(np.shape(point[name]), np.nan), np.full(np.shape(point[name]), np.nan)
        if name == "frechet":
            return _nan_interval(samples[name], tail)
        return bca_interval(point[name], samples[name], [jackknife[name]], level=level)

    for name in ("mean", "var", "kurtosis"):
        low, high = interval(name)
        rows += [
            {
                "statistic": name,
                "axis": a,
                "value": float(point[name][a]),
                "ci_low": float(low[a]),
                "ci_high": float(high[a]),
            }
            for a in range(k)
        ]
    for name in ("total_var", "alignment", "frechet"):
        low, high = interval(name)
        rows.append(
            {
                "statistic": name,
                "axis": -1,
                "value": float(point[name]),
                "ci_low": float(low),
                "ci_high": float(high),
            }
        )
    return rows


def _population_jackknife(projected, standardised, alignment) -> dict[str, np.ndarray]:
    """Leave-one-out values of the smooth statistics of :func:`population_statistics`, in closed form."""
    n = len(projected)
    means, variances = moments_jackknife(projected)
    z = standardised - standardised.mean(axis=0)
    squares = np.sum(z**2, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        totals = (squares.sum() - n / (n - 1) * squares) / (n - 2)
        measured = np.isfinite(alignment)
        left = np.where(measured, measured.sum() - 1, measured.sum())
        alignments = (np.nansum(alignment) - np.where(measured, alignment, 0.0)) / left
    return {
        "mean": means,
        "var": variances,
        "kurtosis": _kurtosis_jackknife(projected),
        "total_var": totals,
        "alignment": np.where(left > 0, alignments, np.nan),
    }


#: Fewest images per caption for per-caption statistics: an unbiased variance needs 2, a bootstrap of
#: 2 images is half the time a zero variance, so 3 is the least that says anything.
MIN_GROUP_SIZE = 3
#: ``caption`` value of the rows that pool the captions: the whole population, and the within-caption summary.
ALL_CAPTIONS = "(all)"
WITHIN_CAPTIONS = "(within)"


def group_indices(labels, *, min_size: int = MIN_GROUP_SIZE, what: str = "population") -> dict[str, np.ndarray]:
    """Indices of each distinct label (sorted by label); a ValidateError when a group is smaller than ``min_size``.

    Examples
    --------
    >>> {k: v.tolist() for k, v in group_indices(["b", "a", "b", "a", "a", "b"]).items()}
    {'a': [1, 3, 4], 'b': [0, 2, 5]}
    """
    labels = np.asarray([str(label) for label in labels])
    groups = {}
    for label in sorted(set(labels.tolist())):
        index = np.flatnonzero(labels == label)
        if len(index) < min_size:
            raise ValidateError(
                f"{what}: caption {label!r} has {len(index)} image(s); per-caption statistics need at least "
                f"{min_size} per caption; generate more images per caption or use --group none"
            )
        groups[label] = index
    return groups


def grouped_statistics(
    projected,
    standardised,
    labels,
    *,
    n_boot: int = 200,
    level: float = 0.95,
    random_state=None,
    what: str = "population",
) -> list[dict]:
    """Per-caption trait statistics and their within-caption summary, as tidy rows with bootstrap intervals.

    For each caption: the mean and (unbiased) variance on each trait axis and the total
    variance of the standardised features. Then the within-caption summary (``caption``
    :data:`WITHIN_CAPTIONS`): the mean over captions of the per-caption variance, per axis
    (``var``) and in total (``total_var``). The bootstrap resamples images *within* each
    caption (a stratified bootstrap: caption sizes stay fixed), so the intervals of the
    summary reflect only within-caption sampling noise. Each row carries ``caption`` and
    ``n_images`` (the caption's images; all images for the summary).

    The sums of squares of a resample come from the multiplicities of its images
    (``c · |x|² - |c · x|² / n``, on the Gram matrix for the total variance), so the
    bootstrap never copies the (possibly 1280-d) features.

    Examples
    --------
    >>> x = np.array([[0.0], [1.0], [2.0], [10.0], [10.0], [13.0]])
    >>> rows = grouped_statistics(x, x, ["a"] * 3 + ["b"] * 3, n_boot=0)
    >>> [(r["caption"], r["statistic"], r["value"]) for r in rows if r["statistic"] == "var"]
    [('a', 'var', 1.0), ('b', 'var', 3.0), ('(within)', 'var', 2.0)]
    """
    rng = check_random_state(random_state)
    projected = np.asarray(projected, dtype=float)
    standardised = np.asarray(standardised, dtype=float)
    groups = group_indices(labels, what=what)
    k = projected.shape[1]

    def interval(point, samples, jackknife):  # samples: (n_boot, ...) -> (low, high)
        if n_boot == 0:
            return np.full(np.shape(point), np.nan), np.full(np.shape(point), np.nan)
        # nan-aware: a resample of identical images has no kurtosis (the moments have no NaN).
        return bca_interval(point, samples, jackknife, level=level)

    def row(caption, statistic, axis, value, low, high, n):
        return {
            "caption": caption,
            "statistic": statistic,
            "axis": axis,
            "value": float(value),
            "ci_low": float(low),
            "ci_high": float(high),
            "n_images": int(n),
        }

    rows, boot_var, boot_total, point_var, point_total = [], [], [], [], []
    # Each caption's spread of its squared deviations over their mean squared (kurtosis + 2 on an axis): the
    # standard error of the within-caption summary (:func:`_within_interval`).
    spread_var, spread_total, boot_spread_var, boot_spread_total, sizes = [], [], [], [], []
    for caption, index in groups.items():
        n = len(index)
        # Centred within the caption: the variances are shift-free and the sums of squares stay well conditioned.
        x = projected[index]
        centre = x.mean(axis=0)
        x = x - centre
        z = standardised[index] - standardised[index].mean(axis=0)
        gram = z @ z.T
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)  # (n_boot, n)
        sums = counts @ x
        means = centre + sums / n
        variances = (counts @ x**2 - sums**2 / n) / (n - 1)
        kurtoses = _kurtosis_from_counts(counts, x)
        totals, total_spreads = _resampled_totals(counts, gram)
        var = x.var(axis=0, ddof=1)
        total = float(np.trace(gram) / (n - 1))
        jack_means, jack_variances = moments_jackknife(x)
        with np.errstate(invalid="ignore", divide="ignore"):
            jack_totals = (np.trace(gram) - n / (n - 1) * np.diag(gram)) / (n - 2)
        kurtosis = excess_kurtosis(x)
        for statistic, point, samples, jackknife in (
            ("mean", centre, means, centre + jack_means),
            ("var", var, variances, jack_variances),
            ("kurtosis", kurtosis, kurtoses, _kurtosis_jackknife(x)),
        ):
            low, high = interval(point, samples, [jackknife])
            rows += [row(caption, statistic, a, point[a], low[a], high[a], n) for a in range(k)]
        low, high = interval(total, totals, [jack_totals])
        rows.append(row(caption, "total_var", -1, total, low, high, n))
        boot_var.append(variances)
        boot_total.append(totals[:, None])
        point_var.append(var)
        point_total.append([total])
        spread_var.append(kurtosis + 2.0)
        boot_spread_var.append(kurtoses + 2.0)
        spread_total.append(_resampled_totals(np.ones((1, n)), gram)[1])
        boot_spread_total.append(total_spreads[:, None])
        sizes.append(n)
    n_all = len(projected)
    for statistic, points, samples, spreads, boot_spreads in (
        ("var", point_var, boot_var, spread_var, boot_spread_var),
        ("total_var", point_total, boot_total, spread_total, boot_spread_total),
    ):
        within = np.mean(points, axis=0)
        if n_boot == 0:
            low, high = np.full_like(within, np.nan), np.full_like(within, np.nan)
        else:
            low, high = _within_interval(np.array(points), np.array(samples), np.array(spreads),
                                         np.array(boot_spreads), np.array(sizes), level)
        axes = range(k) if statistic == "var" else [-1]
        rows += [row(WITHIN_CAPTIONS, statistic, a, within[i], low[i], high[i], n_all) for i, a in enumerate(axes)]
    return rows


def _within_interval(points, samples, spreads, boot_spreads, sizes, level):
    """The studentised interval of the mean over captions of their variances (``points`` (C, k), ``samples``
    (C, B, k) of a stratified bootstrap).

    A caption's variance s² of n images has variance s⁴ r / (n - 1) (exact for a Gaussian, where r = 2, and
    to O(1/n²) otherwise), r the spread of the squared deviations over their mean squared (``spreads``: kurtosis
    + 2 on an axis), pooled over captions, since 30 images estimate it poorly; each resample's own standard
    error comes from its own pooled r. With the quantiles of the bootstrap-t (:func:`studentised_log_interval`)
    the 95 % interval held the truth in 92.5 and 91.7 % of Gaussian and 90.5 and 89.0 % of t5 populations
    (8 captions of 30 images, 400 populations each on development seeds 2027 and 31), where BCa's held it in
    91.5 and 89.2 %, 89.5 and 86.5 % of the same populations: its percentiles inherit the too low kurtosis
    of small samples, which the bootstrap-t corrects only in part.
    """
    pooled, boot_pooled = (_pooled(values, sizes) for values in (spreads, boot_spreads))
    divisor = (sizes - 1.0)[:, None]
    within, boot_within = points.mean(axis=0), samples.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        se = np.sqrt(np.sum(points**2 / divisor, axis=0) * pooled) / len(points) / within
        boot_se = np.sqrt(np.sum(samples**2 / divisor[:, :, None], axis=0) * boot_pooled) / len(points) / boot_within
    plug_in = np.mean(points * divisor / sizes[:, None], axis=0)
    return studentised_log_interval(within, se, boot_within, boot_se, plug_in, level=level)


def _pooled(spreads, sizes):
    """The mean over captions (axis 0) of ``spreads`` weighted by their sizes, leaving out a resample's
    caption of identical images (whose spread is 0 / 0)."""
    weights = np.where(np.isnan(spreads), 0.0, sizes.reshape((-1,) + (1,) * (spreads.ndim - 1)))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sum(weights * np.nan_to_num(spreads), axis=0) / weights.sum(axis=0)


def _resampled_totals(counts: np.ndarray, gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The total variance (divisor n - 1) of each resample (rows of multiplicities ``counts``) of points whose
    centred Gram matrix is ``gram``, and the spread of its squared distances to its mean: their variance over
    their mean squared (kurtosis + 2 in one dimension). A point's squared distance to the resample's mean is
    g_ii - 2 g_i·c / n + c·G·c / n²; one product G c serves both."""
    n = counts.sum(axis=1, keepdims=True)
    pulls = counts @ gram / n
    squared = np.diag(gram)[None, :] - 2 * pulls + (pulls * counts).sum(axis=1, keepdims=True) / n
    mean = (counts * squared).sum(axis=1, keepdims=True) / n
    variance = (counts * (squared - mean) ** 2).sum(axis=1, keepdims=True) / n
    # A resample of one image repeated has no spread: its rounded mean (about 1e-16 of the data's) is no divisor.
    degenerate = mean[:, 0] <= 1e-12 * np.mean(np.diag(gram))
    with np.errstate(divide="ignore", invalid="ignore"):
        return (mean * n / (n - 1))[:, 0], np.where(degenerate, np.nan, (variance / mean**2)[:, 0])


def _nan_interval(samples, tail) -> tuple[np.ndarray, np.ndarray]:
    """The ``tail`` and ``100 - tail`` percentiles of ``samples`` over axis 0, NaNs left out."""
    samples = np.asarray(samples, dtype=float)
    if not np.isnan(samples).any():
        # np.nanpercentile's numbers, without its per-column loop (the moments never have NaN).
        low, high = np.percentile(samples, [tail, 100 - tail], axis=0)
        return low, high
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a column of NaN only: NaN
        return np.nanpercentile(samples, tail, axis=0), np.nanpercentile(samples, 100 - tail, axis=0)


def _kurtosis_from_counts(counts: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Excess kurtosis of each resample (rows of multiplicities ``counts``) of the centred ``x``, from power sums."""
    n = counts.sum(axis=1, keepdims=True)
    return _kurtosis_from_power_means(*((counts @ x**p) / n for p in (1, 2, 3, 4)))


def _kurtosis_jackknife(x: np.ndarray) -> np.ndarray:
    """Leave-one-out excess kurtosis (n, k) of the columns of ``x`` (n, k), from power sums."""
    z = x - x.mean(axis=0)
    n = len(z)
    return _kurtosis_from_power_means(*(((z**p).sum(axis=0) - z**p) / (n - 1) for p in (1, 2, 3, 4)))


def _kurtosis_from_power_means(s1, s2, s3, s4) -> np.ndarray:
    """Excess kurtosis from the means of the first four powers of nearly centred values."""
    m2 = s2 - s1**2
    m4 = s4 - 4 * s1 * s3 + 6 * s1**2 * s2 - 3 * s1**4
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(m2 > 1e-12 * np.maximum(s2, 1e-300), m4 / m2**2 - 3.0, np.nan)
