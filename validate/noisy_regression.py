"""Least squares through points that are set statistics with sampling noise (the decomposition's regressions).

Each point is a caption and trait axis of one iteration, its coordinates differences of set means or log
variances; rows of the arrays are the point estimate and bootstrap resamples. :func:`origin_slope` and
:func:`line` subtract the sampling noise that x and y share (a set on both sides), and
:func:`pair_jackknife_se` gives a standard error from the scatter of the points, leaving out one caption-axis
pair at a time.
"""

from __future__ import annotations

import numpy as np


def origin_slope(x, y, shared_noise=None) -> np.ndarray:
    """Least-squares slope through the origin of y on x, per bootstrap row (x, y: (B+1, ...)).

    ``shared_noise``: the sampling variance of a term that x and y share, as the CFG-1 set's mean at t is in both
    the selection differential S = m_guided - m_t and the response R = m_{t+1} - m_t. It adds to both E[Σxy] and
    E[Σx²] and pulls the slope toward 1, h² = Σ R S / Σ S² up by 0.14-0.25 of its SD at 40 images per caption;
    it is subtracted from both (at most half of Σx², where the noise would be most of x's spread). The guided
    set's own noise is no error: the model is finetuned on that very sample and responds to it.
    """
    x, y = np.broadcast_arrays(x, y)
    shape = x.shape
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = np.where(ok, x, 0.0), np.where(ok, y, 0.0)
    sxx = (x * x).sum(axis=1)
    shared = np.minimum(_noise_sum(shared_noise, shape, ok), 0.5 * sxx)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((x * y).sum(axis=1) - shared) / (sxx - shared)


def line(x, y, shared_noise=None) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares slope and intercept of y on x, per bootstrap row.

    ``shared_noise``: the sampling variance of a term that x and y share, as the prior's ln var is in
    ``ln v_D - ln v_prior`` and ``ln v - ln v_prior``. It enters both sums of squares and pulls the slope toward 1
    (by (1 - slope) noise / var(x): +0.036, 0.45 of its SD, at 40 images per caption); it is subtracted from
    both (at most half of x's, where the noise would be most of x's spread), and the intercept takes x's mean
    without the shared term's bias (ln of a sample variance is low by about half its sampling variance).
    """
    x, y = np.broadcast_arrays(x, y)
    shape = x.shape
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)
    ok = np.isfinite(x) & np.isfinite(y)
    count = ok.sum(axis=1)
    noise = _noise_sum(shared_noise, shape, ok)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = np.where(ok, x, 0.0).sum(axis=1) / count
        my = np.where(ok, y, 0.0).sum(axis=1) / count
        dx, dy = np.where(ok, x - mx[:, None], 0.0), np.where(ok, y - my[:, None], 0.0)
        sxx = (dx * dx).sum(axis=1)
        shared = np.minimum(noise * (1.0 - 1.0 / count), 0.5 * sxx)
        slope = ((dx * dy).sum(axis=1) - shared) / (sxx - shared)
        return slope, my - slope * (mx - 0.5 * noise / count)


def _noise_sum(noise, shape, ok) -> np.ndarray:
    """A sampling variance ``noise`` (broadcast to the regression's points, ``shape``) summed per bootstrap row
    over the points that row uses (``ok``, (rows, points)); zeros without noise."""
    if noise is None:
        return np.zeros(len(ok))
    noise = np.broadcast_to(noise, shape).reshape(len(ok), -1)
    return np.where(ok & np.isfinite(noise), noise, 0.0).sum(axis=1)


def pair_jackknife_se(statistic, x, y, noise, block: int) -> tuple[float, int]:
    """The standard error of the point estimate of a regression ``statistic(x, y, noise)`` (row 0 of x and y),
    by the jackknife over the regression's caption-axis pairs, and the number of pairs: pair ``j`` holds the
    points ``j, j + block, j + 2 block, ...`` (one per iteration in a pooled regression), which share sets and
    so noise. The interval takes Student's t with one degree of freedom fewer than pairs: with 16 pairs the
    normal quantile covered 92 % on development seeds (2027 and 31 of the benchmark, 400 populations each),
    the t quantile 93.5-97 %.

    The bootstrap's spread of a log variance follows the sample's kurtosis, which 30-40 images per caption
    estimate low when the tails are heavy: its BCa intervals for rho_v covered 86 % of the truth with t5 traits
    (benchmarks/interval_calibration.py). The jackknife reads the noise off the scatter of the points about the
    line, as a heteroskedasticity-robust (HC3) standard error does. It also counts a caption's own departure
    from the line as uncertainty, so it speaks for captions like these rather than for these captions alone.
    That is small beside a log variance's noise, but not beside a mean's: for h2_mean, whose points leave the
    line by design (each caption's response carries its own distance from the base model), it made the
    interval 1.6 times too wide, and for rho it covered 89-92 % (development seeds), so those keep the
    bootstrap's.

    Examples
    --------
    >>> x = np.array([[0.0, 1.0, 2.0, 3.0, 0.5, 1.5, 2.5, 3.5]])  # 4 pairs, 2 iterations
    >>> y = 2.0 * x + np.array([[0.1, -0.1, 0.1, -0.1, -0.1, 0.1, -0.1, 0.1]])
    >>> se, pairs = pair_jackknife_se(origin_slope, x, y, None, 4)
    >>> round(se, 4), pairs
    (0.004, 4)
    """
    return jackknife_se(pair_left_out(statistic, x, y, noise, block))


def pair_left_out(statistic, x, y, noise, block: int) -> np.ndarray:
    """``statistic`` of the point estimate's regression (row 0) with each caption-axis pair left out in turn (see
    :func:`pair_jackknife_se`): (pairs,), or (m, pairs) for a statistic of m values such as :func:`line`'s slope
    and intercept, which then come from one pass; empty with fewer than 3 pairs."""
    x, y = np.broadcast_arrays(x, y)
    shape = x.shape[1:]
    x, y = x[:1].reshape(1, -1), y[:1].reshape(1, -1)
    if noise is not None:
        noise = np.broadcast_to(noise, (1, *shape)).reshape(1, -1)
    pairs = np.arange(x.shape[1]) % block
    used = np.unique(pairs[np.isfinite(x[0]) & np.isfinite(y[0])])
    if len(used) < 3:
        return np.empty(0)
    left_out = pairs[None, :] == used[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(statistic(np.where(left_out, np.nan, x), np.where(left_out, np.nan, y), noise))


def jackknife_se(values) -> tuple[float, int]:
    """The jackknife standard error from leave-one-out ``values`` (their finite ones) and how many there are."""
    values = values[np.isfinite(values)]
    if len(values) < 3:
        return np.nan, 0
    return float(np.sqrt((len(values) - 1) / len(values) * ((values - values.mean()) ** 2).sum())), len(values)
