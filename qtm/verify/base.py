"""The verification suite's building blocks: comparisons, verdicts, the registry of checks, sample statistics.

Every check family (:mod:`qtm.verify.quantgen`, :mod:`qtm.verify.drift`,
:mod:`qtm.verify.engines`) registers its checks here with :func:`register`; a
package above ``qtm`` (e.g. :mod:`chain.verify_sampler`) builds its own
:class:`Check` and runs it with :func:`qtm.verify.run_checks` (``registry=``).

Examples
--------
>>> c = Comparison(("mean",), np.array([0.3]), np.array([0.1]), np.array([0.0]))
>>> evaluate(c).passed
True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from qtm.errors import QTMError
from qtm.validation import check_unit_interval

#: Designed chance that one check fails although simulator and formula are right.
FALSE_FAILURE_RATE = 1e-3


@dataclass(frozen=True)
class Comparison:
    """Simulated estimates set against analytic values.

    Parameters
    ----------
    labels : tuple of str
        One name per compared quantity.
    observed, standard_error, expected : numpy.ndarray
        The simulated estimates, their Monte-Carlo standard errors and the analytic values.
    x : numpy.ndarray, optional
        Position of each quantity on a trajectory (e.g. its iteration); given, the
        plot shows trajectories, otherwise a QQ-plot of the z-scores.
    series : tuple of str, optional
        The trajectory each quantity belongs to (with ``x``).
    pvalues : dict of str to float
        Further test statistics as p-values (e.g. a KS test of a distribution's shape).
    dof : int, optional
        Degrees of freedom of the standard errors when they come from few replicates:
        the z-scores are then read as Student t statistics.
    note : str
        What was simulated, in a line (sizes, parameters).

    Examples
    --------
    >>> c = Comparison(("mean",), np.array([0.1]), np.array([0.05]), np.array([0.0]))
    >>> c.zscores().tolist()
    [2.0]
    """

    labels: tuple
    observed: np.ndarray
    standard_error: np.ndarray
    expected: np.ndarray
    x: np.ndarray | None = None
    series: tuple | None = None
    pvalues: dict = field(default_factory=dict)
    dof: int | None = None
    note: str = ""

    def zscores(self) -> np.ndarray:
        """``(observed - expected) / standard_error`` per quantity (inf or NaN where the error is 0)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return (np.asarray(self.observed) - np.asarray(self.expected)) / np.asarray(self.standard_error)

    def all_pvalues(self) -> np.ndarray:
        """Two-sided p-values of the z-scores followed by the extra p-values."""
        # Imported here, as in the checks: scipy.stats took 0.75 s of every qtm command's start.
        from scipy import stats

        z = np.abs(self.zscores())
        from_z = 2.0 * (stats.norm.sf(z) if self.dof is None else stats.t.sf(z, self.dof))
        return np.concatenate([from_z, np.fromiter(self.pvalues.values(), float, len(self.pvalues))])


@dataclass(frozen=True)
class Verdict:
    """The outcome of one comparison at a designed false-failure rate.

    Attributes
    ----------
    max_abs_z : float
        The largest ``|z|`` (NaN when the comparison has only p-values).
    min_pvalue : float
        The smallest p-value of all ``count`` statistics.
    adjusted_pvalue : float
        ``min(1, count * min_pvalue)`` (Bonferroni); the check fails when it is
        below ``false_failure_rate``.
    """

    max_abs_z: float
    min_pvalue: float
    adjusted_pvalue: float
    count: int
    false_failure_rate: float
    passed: bool


def evaluate(comparison: Comparison, *, false_failure_rate: float = FALSE_FAILURE_RATE) -> Verdict:
    """Decide a comparison: fail when the Bonferroni-adjusted smallest p-value is below the rate.

    Examples
    --------
    >>> c = Comparison(("a", "b"), np.array([0.0, 5.0]), np.array([1.0, 1.0]), np.array([0.0, 0.0]))
    >>> v = evaluate(c, false_failure_rate=1e-3)
    >>> v.max_abs_z, v.passed
    (5.0, False)
    """
    rate = float(check_unit_interval(false_failure_rate, "false_failure_rate", closed_left=False))
    p = comparison.all_pvalues()
    if p.size == 0 or not np.all(np.isfinite(p)):
        raise QTMError(f"comparison {comparison.labels} has no finite statistic; check its standard errors")
    z = np.abs(comparison.zscores())
    adjusted = min(1.0, p.size * float(p.min()))
    return Verdict(
        max_abs_z=float(z.max()) if z.size else math.nan,
        min_pvalue=float(p.min()),
        adjusted_pvalue=adjusted,
        count=int(p.size),
        false_failure_rate=rate,
        passed=adjusted >= rate,
    )


@dataclass(frozen=True)
class Check:
    """One check of the suite: ``compute(size=..., rng=...)`` returns a :class:`Comparison`."""

    name: str
    title: str
    compute: Callable[..., Comparison]
    #: Whether the check needs something optional; a callable returning None (available) or why not.
    unavailable: Callable[[], str | None] = lambda: None


@dataclass(frozen=True)
class CheckResult:
    """What :func:`run_checks` reports for one check."""

    name: str
    title: str
    status: str  # "pass", "fail", "error" (the check could not run; see note) or "skipped"
    verdict: Verdict | None
    comparison: Comparison | None
    plot: str | None
    note: str


CHECKS: dict[str, Check] = {}


def register(name: str, title: str, *, unavailable=None):
    """Add the decorated ``compute(size=..., rng=...)`` to :data:`CHECKS` as check ``name``."""

    def register(compute):
        CHECKS[name] = Check(name, title, compute, unavailable or (lambda: None))
        return compute

    return register


# --------------------------------------------------------------------------- sample statistics


def scaled_count(base: int, size: float, minimum: int) -> int:
    """A sample size: ``base`` scaled by ``size``, never below ``minimum``."""
    return max(round(base * size), minimum)


def mean_se(values, axis=None):
    """Mean and standard error of the mean of independent values."""
    values = np.asarray(values, dtype=float)
    n = values.size if axis is None else values.shape[axis]
    return values.mean(axis=axis), values.std(axis=axis, ddof=1) / math.sqrt(n)


def var_se(sample):
    """Unbiased variance of an iid sample and its standard error (from the fourth central moment)."""
    sample = np.asarray(sample, dtype=float)
    n = sample.size
    centred = sample - sample.mean()
    var = centred.var(ddof=1)
    m4 = np.mean(centred**4)
    return var, math.sqrt(max(m4 - var**2 * (n - 3) / (n - 1), 0.0) / n)


def from_rows(rows, **extra) -> Comparison:
    labels, observed, se, expected = zip(*rows, strict=True)
    return Comparison(tuple(labels), np.array(observed), np.array(se), np.array(expected), **extra)


def from_series(series, *, note: str) -> Comparison:
    """A comparison of named series, each ``(observed, se, expected, x)`` arrays along ``x`` (a plotted line each)."""
    return Comparison(
        tuple(f"{name} t={i}" for name, (*_, x) in series.items() for i in x),
        np.concatenate([v[0] for v in series.values()]),
        np.concatenate([v[1] for v in series.values()]),
        np.concatenate([v[2] for v in series.values()]),
        x=np.concatenate([v[3] for v in series.values()]),
        series=tuple(name for name, (*_, x) in series.items() for _ in x),
        note=note,
    )
