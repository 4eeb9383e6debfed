"""Closed-form equilibria of selection + mutation and the collapse of the CFG tilt chain.

Every cycle here is one generation (one iteration of the chain): selection (or the
CFG tilt), inheritance, then mutation. Unless a function says otherwise, an
equilibrium variance is measured **after mutation**, i.e. it is the variance of the
population (model) that the next round of selection acts on; the variance right
after selection is ``v* - mutation_var``.

The chain functions follow the project's iteration convention: iteration ``t``
finetunes on ``D_t`` (``D_0`` is the real data, distributed as ``p_c``) and then
generates, and the moments reported for iteration ``t`` are those of the images
generated at iteration ``t``; with fidelity 1 that is the tilt applied ``t + 1``
times to ``p_c``.

All functions broadcast over numpy arrays (parameter grids) and return float arrays.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from qtm.gaussian import Moments, _check_tilt_precision, truncation_selection
from qtm.validation import (
    as_float_array,
    check_int,
    check_nonnegative,
    check_positive,
    check_unit_interval,
)


class TiltEquilibrium(NamedTuple):
    """The stable fixed point of the CFG tilt + mutation chain and its stability.

    Attributes
    ----------
    var : numpy.ndarray
        Equilibrium variance (after mutation); ``inf`` where none exists.
    var_slope : numpy.ndarray
        Derivative of the variance map at ``var``: deviations shrink by this factor
        per iteration (``< 1``: stable; ``1`` only where the two fixed points merge).
    mean_slope : numpy.ndarray
        The same for the mean, whose fixed point is the unconditional mean ``m_u``:
        ``> 1`` for ``cfg > 1``, i.e. the mean runs away from ``m_u`` geometrically
        even while the variance is held.
    unstable_var : numpy.ndarray
        The second, unstable fixed point (``cfg > 1`` only, else ``inf``): the
        variance converges to ``var`` from below it and grows until the tilt turns
        improper from above it.
    """

    var: np.ndarray
    var_slope: np.ndarray
    mean_slope: np.ndarray
    unstable_var: np.ndarray


def stabilizing_mutation_equilibrium(*, width2, mutation_var, heritability=1.0) -> np.ndarray:
    """Equilibrium variance of Gaussian stabilizing selection + mutation.

    One generation maps the variance ``v`` (after mutation) through stabilizing
    selection ``s = v w2 / (v + w2)``, inheritance of the fraction ``h2`` of that
    change (:func:`qtm.gaussian.inherit` from ``v`` toward ``s``) and mutation::

        v -> v - h2 v^2 / (v + w2) + v_m.

    The fixed point solves ``h2 v^2 = v_m (v + w2)``, whose positive root is
    ``v* = (v_m + sqrt(v_m^2 + 4 h2 v_m w2)) / (2 h2)`` (Lande's Gaussian result at
    ``h2 = 1``). The map is increasing with slope
    ``1 - h2 (1 - w2^2 / (v + w2)^2)`` in ``[1 - h2, 1)``, so ``v*`` is the unique,
    globally stable fixed point on ``v >= 0``.

    Parameters
    ----------
    width2 : array_like
        Width ``omega^2 > 0`` of the fitness function.
    mutation_var : array_like
        Variance ``v_m >= 0`` added each generation.
    heritability : array_like
        ``h2`` (the finetuning fidelity) in ``(0, 1]``.

    Returns
    -------
    numpy.ndarray
        ``v*`` measured after mutation (before the next selection).

    Examples
    --------
    >>> float(stabilizing_mutation_equilibrium(width2=2.0, mutation_var=1.0))
    2.0
    """
    width2 = check_positive(width2, "width2")
    v_m = check_nonnegative(mutation_var, "mutation_var")
    h2 = check_unit_interval(heritability, "heritability", closed_left=False)
    return np.array((v_m + np.sqrt(v_m**2 + 4 * h2 * v_m * width2)) / (2 * h2), dtype=float)


def truncation_mutation_equilibrium(*, keep, mutation_var) -> np.ndarray:
    """Equilibrium variance of one-sided truncation selection + mutation.

    Truncation keeping the fraction ``q`` multiplies the variance by
    ``k = 1 - i (i - x)`` whatever the variance is (see
    :func:`qtm.gaussian.truncation_selection`), so a generation is the linear map
    ``v -> k v + v_m`` with ``0 < k < 1``: its fixed point ``v* = v_m / (1 - k)`` is
    globally stable and reached geometrically at rate ``k``.

    Parameters
    ----------
    keep : array_like
        Kept fraction ``q`` in ``(0, 1)``.
    mutation_var : array_like
        Variance ``v_m >= 0`` added each generation.

    Returns
    -------
    numpy.ndarray
        ``v*`` measured after mutation.

    Examples
    --------
    >>> round(float(truncation_mutation_equilibrium(keep=0.5, mutation_var=1.0)), 4)
    1.5708
    """
    v_m = check_nonnegative(mutation_var, "mutation_var")
    factor = truncation_selection(0.0, 1.0, keep=keep).var
    return np.array(v_m / (1 - factor), dtype=float)


def cfg_tilt_mutation_equilibrium(*, cfg, uncond_var, mutation_var) -> TiltEquilibrium:
    """Fixed point of the CFG tilt chain with mutation, in closed form, with its stability.

    Each iteration the conditional model (variance ``v``, after mutation) is tilted
    with scale ``w`` against a fixed unconditional ``N(m_u, v_u)``, refitted to the
    generated data with fidelity 1 (finetuning from the previous model), and
    mutated::

        v -> g(v) + v_m,   g(v) = 1 / (w / v + (1 - w) / v_u).

    Setting ``v = g(v) + v_m`` and clearing denominators gives the quadratic
    ``v^2 - (v_u + v_m) v - w v_u v_m / (1 - w) = 0`` (``w != 1``). Its roots have
    product ``-w v_u v_m / (1 - w)``:

    * ``0 <= w < 1``: one positive root ``v* = (S + sqrt(D)) / 2`` with
      ``S = v_u + v_m``, ``D = S^2 + 4 w v_u v_m / (1 - w)``; globally stable.
    * ``w > 1``: two positive roots when ``D >= 0``; the smaller (computed as
      ``2 w v_u v_m / ((w - 1)(S + sqrt(D)))`` to avoid cancellation) is stable, the
      larger unstable. ``D < 0`` means no fixed point: mutation pushes the variance
      past ``v_u``, where the tilt widens instead of narrowing, and it grows until
      the tilt is improper.
    * ``w = 1``: ``v -> v + v_m`` grows without bound.

    Stability: ``g'(v) = w (g(v) / v)^2 = w ((v* - v_m) / v*)^2`` at the fixed point.
    The mean map ``m -> m_u + w (g(v) / v)(m - m_u)`` has fixed point ``m_u`` and
    slope ``w (v* - v_m) / v*``, which exceeds 1 for ``w > 1``.

    Parameters
    ----------
    cfg : array_like
        Guidance scale ``w >= 0``.
    uncond_var : array_like
        ``v_u > 0``, held fixed.
    mutation_var : array_like
        ``v_m > 0`` (without mutation see :func:`cfg_tilt_collapse`).

    Returns
    -------
    TiltEquilibrium
        All fields ``inf`` where no finite equilibrium exists.

    Examples
    --------
    >>> e = cfg_tilt_mutation_equilibrium(cfg=2.0, uncond_var=1.0, mutation_var=0.1)
    >>> round(float(e.var), 4), round(float(e.var_slope), 4), round(float(e.unstable_var), 4)
    (0.2298, 0.6383, 0.8702)
    """
    w = check_nonnegative(cfg, "cfg")
    v_u = check_positive(uncond_var, "uncond_var")
    v_m = check_positive(mutation_var, "mutation_var")
    w, v_u, v_m = np.broadcast_arrays(w, v_u, v_m)
    total = v_u + v_m
    with np.errstate(divide="ignore", invalid="ignore"):
        disc = total**2 + 4 * w * v_u * v_m / (1 - w)
        root = np.sqrt(disc)
        below = w < 1
        exists = below | ((w > 1) & (disc >= 0))
        var = np.where(below, (total + root) / 2, 2 * w * v_u * v_m / ((w - 1) * (total + root)))
        unstable = np.where(below, np.inf, (total + root) / 2)
        kept_fraction = (var - v_m) / var
    var = np.where(exists, var, np.inf)
    return TiltEquilibrium(
        var=var,
        var_slope=np.where(exists, w * kept_fraction**2, np.inf),
        mean_slope=np.where(exists, w * kept_fraction, np.inf),
        unstable_var=np.where(exists, unstable, np.inf),
    )


def cfg_tilt_chain(cond_mean, cond_var, uncond_mean, uncond_var, *, cfg, iterations) -> Moments:
    """Exact trajectory of the pure CFG tilt chain (fidelity 1, no mutation, fixed ``p_u``).

    Tilting ``p_c^a p_u^(1-a)`` gives ``p_c^(a w) p_u^(1 - a w)``, so after ``n``
    tilts the distribution is ``p_c^(w^n) p_u^(1 - w^n)``. In precisions: the
    recursion ``P_{n+1} = w P_n + (1 - w) / v_u`` gives
    ``P_n - 1/v_u = w^n (1/v_c - 1/v_u)``, and the precision-weighted mean obeys the
    same recursion, ``P_n (m_n - m_u) = w^n (m_c - m_u) / v_c``. Iteration ``t``
    reports ``n = t + 1``. For ``w > 1`` and ``v_c < v_u`` the variance falls to 0
    geometrically (``v_{t+1} / v_t -> 1 / w``) while the mean settles at
    ``(m_c/v_c - m_u/v_u) / (1/v_c - 1/v_u)``; for ``0 <= w < 1`` it relaxes to
    ``p_u``; ``w = 1`` is neutral. At ``v_c = v_u`` and ``w > 1`` the variance stays
    and the mean runs away from ``m_u`` as ``w^(t+1) (m_c - m_u)`` (``inf`` once that
    overflows).

    Parameters
    ----------
    cond_mean, cond_var : array_like
        The real data / first conditional model ``p_c`` (``cond_var > 0``).
    uncond_mean, uncond_var : array_like
        The fixed unconditional model ``p_u`` (``uncond_var > 0``).
    cfg : array_like
        Guidance scale ``w`` (any real number).
    iterations : int
        Number of iterations ``>= 1``.

    Returns
    -------
    Moments
        Arrays of the broadcast shape of the inputs plus a last axis of length
        ``iterations`` (iteration ``t = 0 .. iterations - 1``).

    Raises
    ------
    ImproperDistributionError
        If some iteration's tilt has a non-positive precision (``w > 1`` with
        ``v_c > v_u``, or ``w < 0``, eventually); the message names the iteration.

    Examples
    --------
    >>> m = cfg_tilt_chain(1.0, 1.0, 0.0, 2.0, cfg=3.0, iterations=3)
    >>> np.round(m.var, 4).tolist()
    [0.5, 0.2, 0.0714]
    """
    cond_mean = as_float_array(cond_mean, "cond_mean")
    cond_var = check_positive(cond_var, "cond_var")
    uncond_mean = as_float_array(uncond_mean, "uncond_mean")
    uncond_var = check_positive(uncond_var, "uncond_var")
    w = as_float_array(cfg, "cfg")
    count = check_int(iterations, "iterations", minimum=1)
    grid = np.broadcast_arrays(cond_mean, cond_var, uncond_mean, uncond_var, w)
    m_c, v_c, m_u, v_u, w = (a[..., None] for a in grid)
    tilts = np.arange(1, count + 1, dtype=float)
    gap = 1 / v_c - 1 / v_u
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        # For |w| > 1 the powers overflow long before anything of interest happens, so the
        # variance is computed from w^-n there; w^n only decides the sign of the precision.
        power = w**tilts
        inverse = w**-tilts
        precision = 1 / v_u + np.where(gap == 0, 0.0, power * gap)
        improper = ~(precision > 0)
        if np.any(improper):
            t = int(np.flatnonzero(np.any(improper.reshape(-1, count), axis=0))[0])
            where = f" at iteration {t}"
            _check_tilt_precision(precision[..., t], w[..., 0], v_c[..., 0], v_u[..., 0], where=where)
        large = np.abs(w) > 1
        scaled = inverse / v_u + gap
        var = np.where(large, np.where(gap == 0, v_u, inverse / scaled), 1 / precision)
        # power * var / v_c, written without the overflowing power where |w| > 1
        pull = np.where(large, np.where(gap == 0, power, 1 / (scaled * v_c)), power * var / v_c)
        mean = m_u + np.where(m_c == m_u, 0.0, pull * (m_c - m_u))
    return Moments(*(np.array(a, dtype=float) for a in np.broadcast_arrays(mean, var)))


def cfg_tilt_collapse(*, cfg, cond_var, uncond_var) -> np.ndarray:
    """The collapse criterion of the pure CFG tilt chain: the limit of its variance.

    From :func:`cfg_tilt_chain`, ``1/v_t = 1/v_u + w^(t+1) (1/v_c - 1/v_u)``:

    * ``w > 1`` and ``v_c < v_u``: **collapse**, the limit is 0 (geometrically, by
      ``1/w`` per iteration);
    * ``w > 1`` and ``v_c > v_u``: the precision falls and the tilt turns improper
      after finitely many iterations; reported as ``inf``;
    * ``w > 1`` and ``v_c = v_u``, or ``0 <= w < 1``: relaxation to ``v_u``;
    * ``w = 1``: neutral, ``v_c`` is kept.

    Parameters
    ----------
    cfg : array_like
        Guidance scale ``w >= 0``.
    cond_var, uncond_var : array_like
        ``v_c > 0`` and ``v_u > 0``.

    Returns
    -------
    numpy.ndarray
        ``lim v_t``: 0 exactly where the chain collapses.

    Examples
    --------
    >>> cfg_tilt_collapse(cfg=[7.5, 1.0, 0.5], cond_var=1.0, uncond_var=2.0).tolist()
    [0.0, 1.0, 2.0]
    """
    w = check_nonnegative(cfg, "cfg")
    v_c = check_positive(cond_var, "cond_var")
    v_u = check_positive(uncond_var, "uncond_var")
    w, v_c, v_u = np.broadcast_arrays(w, v_c, v_u)
    above = np.select([v_c < v_u, v_c > v_u], [0.0, np.inf], default=v_u)
    return np.array(np.select([w > 1, w == 1], [above, v_c], default=v_u), dtype=float)


def iterations_to_collapse(*, cfg, cond_var, uncond_var, threshold) -> np.ndarray:
    """First iteration whose generated variance is at most ``threshold * cond_var``.

    Solves ``1/v_t >= 1/(threshold v_c)`` with ``1/v_t = 1/v_u + w^(t+1) B``,
    ``B = 1/v_c - 1/v_u``, i.e. ``w^(t+1) B >= K = 1/(threshold v_c) - 1/v_u``. As
    ``K > B``, this is reachable only for ``w > 1, B > 0`` (collapse:
    ``t + 1 = ceil(log(K/B) / log(w))``), for ``0 < w < 1`` with ``v_u < threshold v_c``
    (relaxation toward a much narrower ``p_u``: the same formula) and for ``w = 0``
    with ``v_u <= threshold v_c`` (``t = 0``). The rounding of the logarithms is
    checked against the recursion itself.

    Parameters
    ----------
    cfg : array_like
        Guidance scale ``w >= 0``.
    cond_var, uncond_var : array_like
        ``v_c > 0`` and ``v_u > 0``.
    threshold : array_like
        Fraction of the real data's variance in ``(0, 1)``.

    Returns
    -------
    numpy.ndarray
        The iteration ``t`` (a whole number, as float), ``inf`` where never reached.

    Examples
    --------
    >>> iterations_to_collapse(cfg=[7.5, 2.0, 1.0], cond_var=1.0, uncond_var=2.0, threshold=0.01).tolist()
    [2.0, 7.0, inf]
    """
    w = check_nonnegative(cfg, "cfg")
    v_c = check_positive(cond_var, "cond_var")
    v_u = check_positive(uncond_var, "uncond_var")
    theta = check_unit_interval(threshold, "threshold", closed_left=False, closed_right=False)
    w, v_c, v_u, theta = np.broadcast_arrays(w, v_c, v_u, theta)
    gap = 1 / v_c - 1 / v_u
    target = 1 / (theta * v_c) - 1 / v_u
    shrinking = (w > 0) & (w < 1) & (gap < 0) & (target < 0)
    solvable = ((w > 1) & (gap > 0)) | shrinking
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        tilts = np.ceil(np.log(target / gap) / np.log(w))
        tilts = np.where(solvable, np.maximum(tilts, 1.0), np.inf)

        def reached(n):
            return w**n * gap >= target

        tilts = np.where(solvable & (tilts > 1) & reached(tilts - 1), tilts - 1, tilts)
        tilts = np.where(solvable & ~reached(tilts), tilts + 1, tilts)
    tilts = np.where((w == 0) & (target <= 0), 1.0, tilts)
    return np.array(tilts - 1, dtype=float)
