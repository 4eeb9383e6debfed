"""Confidence intervals that contain their point estimate: BCa for smooth statistics, subsampling for set metrics.

A percentile bootstrap interval lies where the resampled statistic lies; for a biased
statistic (a log variance, a ratio, a slope with noise in x) that can be beside the point
estimate. Two remedies, one per kind of statistic:

- :func:`bca_interval`: the bias-corrected and accelerated interval (Efron 1987) of smooth
  statistics (means, variances, their logs, ratios and slopes), from bootstrap replicates and the
  jackknife; scipy.stats.bootstrap's ``method="BCa"`` formulas, for replicates the caller has
  already drawn (stratified, several independent sets at once, by multiplicities), which
  scipy's interface cannot take. Its bias correction z0 moves the interval toward the point estimate.
- :func:`studentised_log_interval`: the bootstrap-t interval of a positive statistic on the log scale, where
  BCa's percentiles of a variance are too narrow with few images (the within-caption variance).
- :func:`subsample_indices`, :func:`subsample_interval` and :func:`subsample_normal_interval`: the set
  metrics (precision, recall, density, coverage, Vendi) count distinct points, and a resample drawn with
  replacement holds copies that shrink Vendi and the kNN radii. They are resampled without replacement
  instead: each resample is ``size`` of the ``n`` images, all distinct (subsampling, Politis and Romano
  1994), and the spread of the resampled metric is rescaled to the full set by :func:`subsample_scale`.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.special import ndtr, ndtri

from qtm.random import check_random_state


def bca_interval(point, replicates, jackknife, *, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """The BCa interval of each statistic from its bootstrap replicates and its jackknife values.

    Parameters
    ----------
    point : array_like, shape (...)
        The point estimates.
    replicates : array_like, shape (B, ...)
        Bootstrap replicates; non-finite ones (a resample of identical images) are left out, column by column.
    jackknife : list of array_like, each (n_j, ...)
        Leave-one-out values of the statistic, one array per independently resampled stratum (a caption
        of one image set): the acceleration adds their third and second moments, as scipy does for
        several samples. An empty list gives acceleration 0 (the bias-corrected interval).
    level : float
        Coverage.

    Returns
    -------
    (low, high) : arrays of the shape of ``point``
        NaN where fewer than two replicates are finite. Where the bias correction puts both ends on one side
        of the point (at least ``(1 + level) / 2`` of the replicates on one side), the interval is stretched to
        reach it, so that it always contains the point estimate.

    Examples
    --------
    >>> x = np.random.default_rng(0).standard_normal(40)
    >>> boot = np.array([x[i].mean() for i in np.random.default_rng(1).integers(0, 40, (500, 40))])
    >>> jack = [(x.sum() - x) / 39]
    >>> low, high = bca_interval(x.mean(), boot, jack)
    >>> bool(low < x.mean() < high)
    True
    """
    point = np.asarray(point, dtype=float)
    boot = np.asarray(replicates, dtype=float).reshape(-1, *point.shape)
    if len(boot) == 0:
        return np.full(point.shape, np.nan), np.full(point.shape, np.nan)
    boot = np.where(np.isfinite(boot), boot, np.nan)
    finite = np.isfinite(boot).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        below = (np.sum(boot < point, axis=0) + np.sum(boot <= point, axis=0)) / (2 * finite)
        z0 = ndtri(below)
        a = _acceleration(jackknife, point.shape)
        z = ndtri((1 - level) / 2)
        quantiles = [ndtr(z0 + (z0 + side) / (1 - a * (z0 + side))) for side in (z, -z)]
    low, high = (_quantile(boot, q, finite) for q in quantiles)
    low, high = np.fmin(low, point), np.fmax(high, point)
    missing = finite < 2
    return np.where(missing, np.nan, low), np.where(missing, np.nan, high)


def studentised_log_interval(point, se, replicates, replicate_se, plug_in, *,
                             level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """The bootstrap-t interval of a positive statistic, on the log scale (Efron and Tibshirani 1993, ch. 12).

    ``se`` is the standard error of ln ``point``; ``replicates`` (B, ...) and ``replicate_se`` the bootstrap
    values and their own standard errors, computed as the point's are; ``plug_in`` the statistic of the
    distribution the bootstrap samples from (for an unbiased variance, the variance with divisor n), which
    the replicates scatter about. The quantiles of t* = (ln θ* - ln plug_in) / se* replace the normal's, so
    the interval follows how the standard error moves with the estimate: a variance's percentile interval
    is too narrow with few images, because a sample's kurtosis, which sets its spread, is estimated low. The
    interval is widened to contain ``point`` where the quantiles would leave it out.

    Examples
    --------
    >>> low, high = studentised_log_interval(1.0, 0.1, np.exp([-0.1, 0.0, 0.1]), np.full(3, 0.1), 1.0,
    ...                                      level=0.5)
    >>> round(float(low), 3), round(float(high), 3)
    (0.951, 1.051)
    """
    point, se, plug_in = (np.asarray(value, dtype=float) for value in (point, se, plug_in))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (np.log(np.asarray(replicates, dtype=float)) - np.log(plug_in)) / np.asarray(replicate_se, dtype=float)
    t = np.where(np.isfinite(t), t, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a statistic without finite replicates: NaN
        t_low, t_high = np.nanquantile(t, [(1 - level) / 2, (1 + level) / 2], axis=0)
        low, high = point * np.exp(-t_high * se), point * np.exp(-t_low * se)
    return np.minimum(low, point), np.maximum(high, point)


def _acceleration(jackknife, shape) -> np.ndarray:
    """The BCa acceleration from leave-one-out values (scipy.stats.bootstrap's formula, summed over strata)."""
    num, den = np.zeros(shape), np.zeros(shape)
    for values in jackknife:
        values = np.asarray(values, dtype=float).reshape(-1, *shape)
        n = len(values)
        if n < 2:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a column without any finite value: no acceleration
            u = (n - 1) * (np.nanmean(values, axis=0) - values)
        num = num + np.nansum(u**3, axis=0) / n**3
        den = den + np.nansum(u**2, axis=0) / n**2
    return np.where(den > 0, num / np.where(den > 0, den, 1.0) ** 1.5 / 6, 0.0)


def _quantile(values, q, count) -> np.ndarray:
    """np.percentile's linear quantile ``q`` (per column) of the finite values of each column."""
    values = np.sort(values, axis=0)  # NaN sorts last: the first ``count`` of a column are its values
    q = np.clip(np.nan_to_num(q, nan=0.5), 0.0, 1.0)
    position = q * np.maximum(count - 1, 0)
    lower = np.floor(position).astype(np.intp)
    upper = np.minimum(lower + 1, np.maximum(count - 1, 0))
    first = np.take_along_axis(values, lower[None, ...], axis=0)[0]
    second = np.take_along_axis(values, upper[None, ...], axis=0)[0]
    return first + (position - lower) * (second - first)


def moments_jackknife(x) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-out means and unbiased variances of the columns of ``x`` (n, k), each (n, k), in closed form.

    Examples
    --------
    >>> means, variances = moments_jackknife(np.array([[0.0], [1.0], [5.0]]))
    >>> means.ravel().tolist(), variances.ravel().tolist()
    ([3.0, 2.5, 0.5], [8.0, 12.5, 0.5])
    """
    x = np.asarray(x, dtype=float)
    n = len(x)
    z = x - x.mean(axis=0)
    means = x.mean(axis=0) - z / (n - 1)
    squares = (z**2).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        variances = (squares - n / (n - 1) * z**2) / (n - 2)
    return means, variances


def multiplicities(index, size) -> np.ndarray:
    """How often each of ``size`` points occurs in each row of ``index`` (b, n): (b, size).

    Examples
    --------
    >>> multiplicities(np.array([[0, 0, 2]]), 3).tolist()
    [[2, 0, 1]]
    """
    rows = np.arange(len(index))[:, None] * size
    return np.bincount((index + rows).ravel(), minlength=len(index) * size).reshape(len(index), size)


def subsample_indices(n: int, size: int, count: int, random_state=None) -> np.ndarray:
    """``count`` subsamples of ``size`` distinct indices of ``range(n)`` each, drawn without replacement: (count, size).

    Examples
    --------
    >>> rows = subsample_indices(10, 5, 3, random_state=0)
    >>> rows.shape, all(len(set(row)) == 5 for row in rows.tolist())
    ((3, 5), True)
    """
    rng = check_random_state(random_state)
    return np.argsort(rng.random((count, n)), axis=1)[:, :size]


def subsample_size(n: int, minimum: int = 1) -> int:
    """The subsample size for a set of ``n``: half of it (half-sampling), at least ``minimum`` and at most ``n``.

    Examples
    --------
    >>> subsample_size(40), subsample_size(9, minimum=6)
    (20, 6)
    """
    return min(n, max(n // 2, minimum))


def subsample_scale(n: int, size: int) -> float:
    """The factor that turns the spread of a statistic over subsamples of ``size`` into its spread at ``n``.

    ``sqrt(size / (n - size))``, the delete-d jackknife's factor (Shao and Wu 1989): subsampling's
    ``sqrt(size / n)`` with the finite-population correction that sampling without replacement needs
    when ``size`` is a fixed fraction of ``n``; for a mean it is exact, and it is 1 for half-samples.
    NaN when ``size == n`` (no spread to rescale).

    Examples
    --------
    >>> subsample_scale(40, 20), round(subsample_scale(40, 10), 4)
    (1.0, 0.5774)
    """
    return float(np.sqrt(size / (n - size))) if size < n else float("nan")


def quadratic_subsample_scale(half, quarter, n: int, sizes: tuple[int, int]) -> np.ndarray:
    """The factor that turns the spread of subsample values ``half`` (B, ...) into the spread at ``n``, for a
    statistic whose variance need not fall as 1 / size: estimated from a second, smaller subsample size.

    A smooth function of means, f(x̄) ≈ f + g·δ + δ'Hδ, has over subsamples of b of the n points the variance
    a x + c x², x = 1/b - 1/n; the set itself has a/n - c/n² (a carries the quadratic term's own spread at the
    observed δ, 2c/n in expectation). ``half`` and ``quarter`` (subsamples of ``sizes`` = (b1, b2), b2 < b1)
    give a and c. Near a maximum (the Vendi score of nearly isotropic features: g ≈ 0) the half-samples spread
    up to sqrt(3) times as far as the estimate; where g dominates the factor is the delete-d jackknife's
    :func:`subsample_scale`, its upper end. Kept within those two ends, which the noise of the two spreads can
    leave.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal(400)
    >>> half, quarter = (np.array([rng.permutation(400)[:b] for _ in range(1000)]) for b in (200, 100))
    >>> round(float(quadratic_subsample_scale(x[half].mean(1), x[quarter].mean(1), 400, (200, 100))), 1)  # a mean
    1.0
    >>> round(float(quadratic_subsample_scale(x[half].mean(1) ** 2, x[quarter].mean(1) ** 2, 400, (200, 100))), 2)
    0.58
    """
    first, second = (1.0 / size - 1.0 / n for size in sizes)
    v1, v2 = np.var(half, axis=0, ddof=1), np.var(quarter, axis=0, ddof=1)
    c = (v2 / second - v1 / first) / (second - first)
    a = v1 / first - c * first
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (a / n - c / n**2) / v1
    lowest, highest = (1.0 / n**2) / (2.0 * first / n + first**2), 1.0 / (n * first)
    return np.sqrt(np.clip(np.where(v1 > 0, ratio, highest), lowest, highest))


def subsample_normal_interval(point, deviations, *, level: float = 0.95, counts=None) -> tuple[np.ndarray, np.ndarray]:
    """``point`` ± z times the standard deviation of the rescaled subsample values ``deviations`` (B, ...).

    For shares of points (precision, recall, coverage), whose subsample distribution is discrete and piles up at
    a bound: near 1 nearly every half-sample gives 1, so the reflected interval of :func:`subsample_interval`
    has no width on the side the truth lies (a precision of 0.98 got [0.98, 1.0] while its expectation was
    0.99). The spread alone survives the pile-up; the interval is symmetric about ``point`` and contains it.

    ``counts``, the number of points each share counts: a share of exactly 1 (or 0) can have no spread at all
    (every half gives 1), and its interval then reaches at least the one-sided Clopper-Pearson bound for no miss
    among them, ``(1 - level)^(1/N)`` (1 - 3/N at 95 %, the rule of three): a share of 0.999 was otherwise
    outside [1, 1] in 54-58 % of sets.

    Examples
    --------
    >>> low, high = subsample_normal_interval(0.9, np.array([0.9, 1.0, 1.0, 1.0]), level=0.95)
    >>> round(float(low), 3), round(float(high), 3)
    (0.802, 0.998)
    >>> low, high = subsample_normal_interval(1.0, np.ones(4), counts=60)
    >>> round(float(low), 4), float(high)
    (0.9513, 1.0)
    """
    point = np.asarray(point, dtype=float)
    deviations = np.asarray(deviations, dtype=float)
    if len(deviations) < 2 or not np.isfinite(deviations).all():
        return np.full(point.shape, np.nan), np.full(point.shape, np.nan)
    half = ndtri(0.5 + level / 2) * deviations.std(axis=0, ddof=1)
    low, high = point - half, point + half
    if counts is not None:
        bound = (1.0 - level) ** (1.0 / np.asarray(counts, dtype=float))
        low = np.where(point == 1.0, np.minimum(low, bound), low)
        high = np.where(point == 0.0, np.maximum(high, 1.0 - bound), high)
    return low, high


def subsample_interval(point, deviations, *, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """The basic (reflected) interval of ``point`` from rescaled subsample values ``deviations`` (B, ...).

    ``deviations`` are the subsample values times :func:`subsample_scale`; they are centred on their
    median, so that a metric's dependence on the set size (Vendi and recall grow with it) does not shift
    the interval: the interval is for the metric at the full sets' sizes, and always contains ``point``.

    Examples
    --------
    >>> low, high = subsample_interval(2.0, np.array([0.0, 1.0, 2.0, 3.0, 10.0]), level=0.5)
    >>> float(low), float(high)
    (1.0, 3.0)
    """
    point = np.asarray(point, dtype=float)
    deviations = np.asarray(deviations, dtype=float)
    if len(deviations) == 0 or not np.isfinite(deviations).all():
        return np.full(point.shape, np.nan), np.full(point.shape, np.nan)
    tail = 100 * (1 - level) / 2
    low, centre, high = np.percentile(deviations, [tail, 50, 100 - tail], axis=0)
    return point - (high - centre), point - (low - centre)
