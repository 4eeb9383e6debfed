"""Exact Gaussian operators of quantitative genetics, one trait axis at a time.

A trait distribution is ``N(mean, var)``. Each operator returns the exact moments
of the distribution it produces; selection operators also return the mean fitness
``E[W(z)]`` of the population before selection. Every function broadcasts over
numpy arrays, so independent trait axes and whole parameter grids go through in
one call, and returns float arrays of the common broadcast shape.

================================  =================================================
operator                          result for ``N(mu, v)``
================================  =================================================
``stabilizing_selection``         ``W = exp(-(z-theta)^2 / (2 omega^2))``:
                                  ``v' = v omega^2 / (v + omega^2)``,
                                  ``mu' = (mu omega^2 + theta v) / (v + omega^2)``
``directional_selection``         ``W = exp(beta z)``: ``mu' = mu + beta v``, ``v' = v``
``truncation_selection``          keep the top fraction ``q``: ``mu' = mu + i sigma``,
                                  ``v' = v (1 - i (i - x))``, ``x = Phi^-1(1-q)``,
                                  ``i = phi(x) / q``
``central_truncation``            keep ``|z - mu| <= a sigma``: ``mu' = mu``,
                                  ``v' = v (1 - 2 a phi(a) / (2 Phi(a) - 1))``
``cfg_tilt``                      ``p_c (p_c / p_u)^(w-1)``: precision
                                  ``w / v_c + (1-w) / v_u``
``inherit``                       move the fraction ``rho`` from prior to data (the
                                  variance optionally in log space, ``rho_v``)
``add_mutation``                  ``v' = v + v_m``
``mix``                           moments of ``(1-m) N1 + m N2``
``refit_expectation``             expected moments of a fit to ``N`` samples
================================  =================================================
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import special

from qtm.errors import ImproperDistributionError
from qtm.validation import (
    as_float_array,
    check_choice,
    check_int,
    check_nonnegative,
    check_positive,
    check_unit_interval,
)

REFIT_ESTIMATORS = ("mle", "unbiased")


class Moments(NamedTuple):
    """Mean and variance of a Gaussian trait distribution (arrays of one shape)."""

    mean: np.ndarray
    var: np.ndarray


class SelectionResult(NamedTuple):
    """Moments after selection and the mean fitness of the population before it."""

    mean: np.ndarray
    var: np.ndarray
    mean_fitness: np.ndarray


def _moments(mean, var) -> Moments:
    return Moments(*_common(mean, var))


def _selection(mean, var, mean_fitness) -> SelectionResult:
    return SelectionResult(*_common(mean, var, mean_fitness))


def _common(*arrays):
    # Copies, so callers get writable arrays that share nothing with the inputs.
    return [np.array(a, dtype=float) for a in np.broadcast_arrays(*arrays)]


def stabilizing_selection(mean, var, *, optimum=0.0, width2) -> SelectionResult:
    """Gaussian stabilizing selection ``W(z) = exp(-(z - optimum)^2 / (2 width2))``.

    The product of two Gaussians is Gaussian: precisions add
    (``1/v' = 1/v + 1/width2``) and the mean is the precision-weighted mean of the
    population mean and the optimum.

    Parameters
    ----------
    mean, var : array_like
        Moments of the population before selection (``var >= 0``).
    optimum : array_like
        The optimum ``theta``.
    width2 : array_like
        The width ``omega^2 > 0`` of the fitness function (weaker selection when larger).

    Returns
    -------
    SelectionResult
        ``mean_fitness = sqrt(width2 / (var + width2)) exp(-(mean - optimum)^2 / (2 (var + width2)))``.

    Examples
    --------
    >>> r = stabilizing_selection(1.0, 1.0, width2=1.0)
    >>> float(r.mean), float(r.var), round(float(r.mean_fitness), 4)
    (0.5, 0.5, 0.5507)
    """
    mean = as_float_array(mean, "mean")
    var = check_nonnegative(var, "var")
    optimum = as_float_array(optimum, "optimum")
    width2 = check_positive(width2, "width2")
    total = var + width2
    new_mean = (mean * width2 + optimum * var) / total
    fitness = np.sqrt(width2 / total) * np.exp(-((mean - optimum) ** 2) / (2 * total))
    return _selection(new_mean, var * width2 / total, fitness)


def directional_selection(mean, var, *, beta) -> SelectionResult:
    """Directional (exponential) selection ``W(z) = exp(beta z)``.

    Tilting a Gaussian exponentially shifts its mean by ``beta var`` and leaves the
    variance unchanged; the mean fitness is the moment generating function.

    Parameters
    ----------
    mean, var : array_like
        Moments before selection (``var >= 0``).
    beta : array_like
        Selection gradient (any sign).

    Returns
    -------
    SelectionResult
        ``mean_fitness = exp(beta mean + beta^2 var / 2)``.

    Examples
    --------
    >>> r = directional_selection(0.0, 2.0, beta=0.5)
    >>> float(r.mean), float(r.var), round(float(r.mean_fitness), 4)
    (1.0, 2.0, 1.284)
    """
    mean = as_float_array(mean, "mean")
    var = check_nonnegative(var, "var")
    beta = as_float_array(beta, "beta")
    return _selection(mean + beta * var, var, np.exp(beta * mean + beta**2 * var / 2))


def truncation_selection(mean, var, *, keep) -> SelectionResult:
    """One-sided truncation selection: keep the top fraction ``keep`` of the population.

    With the standardised threshold ``x = Phi^-1(1 - q)`` and the selection intensity
    ``i = phi(x) / q``, the kept part has mean ``mean + i sigma`` and variance
    ``var (1 - i (i - x))`` (moments of a truncated normal).

    Parameters
    ----------
    mean, var : array_like
        Moments before selection (``var >= 0``).
    keep : array_like
        Kept fraction ``q`` in ``(0, 1)``.

    Returns
    -------
    SelectionResult
        ``mean_fitness = keep`` (fitness 1 above the threshold, 0 below).

    Examples
    --------
    >>> r = truncation_selection(0.0, 1.0, keep=0.5)
    >>> round(float(r.mean), 4), round(float(r.var), 4), float(r.mean_fitness)
    (0.7979, 0.3634, 0.5)
    """
    mean = as_float_array(mean, "mean")
    var = check_nonnegative(var, "var")
    keep = check_unit_interval(keep, "keep", closed_left=False, closed_right=False)
    from scipy import stats  # here, not at the top: importing scipy.stats costs every command 0.35 s

    # isf keeps full precision for small q, where 1 - q would round.
    x = stats.norm.isf(keep)
    intensity = stats.norm.pdf(x) / keep
    return _selection(mean + intensity * np.sqrt(var), var * (1 - intensity * (intensity - x)), keep)


def central_truncation(mean, var, *, half_width) -> SelectionResult:
    """Two-sided central truncation: keep ``|z - mean| <= half_width * sigma``.

    The kept fraction is ``q = 2 Phi(a) - 1``; the mean is unchanged and the
    variance shrinks by ``1 - 2 a phi(a) / q`` (a symmetric truncated normal).

    Parameters
    ----------
    mean, var : array_like
        Moments before selection (``var >= 0``).
    half_width : array_like
        ``a > 0`` in standard deviations.

    Returns
    -------
    SelectionResult
        ``mean_fitness = q``.

    Examples
    --------
    >>> r = central_truncation(3.0, 4.0, half_width=1.0)
    >>> float(r.mean), round(float(r.var), 4), round(float(r.mean_fitness), 4)
    (3.0, 1.1645, 0.6827)
    """
    mean = as_float_array(mean, "mean")
    var = check_nonnegative(var, "var")
    a = check_positive(half_width, "half_width")
    from scipy import stats  # imported here for the reason truncation_selection gives

    kept = special.erf(a / np.sqrt(2))
    return _selection(mean, var * (1 - 2 * a * stats.norm.pdf(a) / kept), kept)


def cfg_tilt(cond_mean, cond_var, uncond_mean, uncond_var, *, cfg) -> Moments:
    """The idealised classifier-free-guidance distribution ``p_c (p_c / p_u)^(w-1)``.

    For ``p_c = N(m_c, v_c)`` and ``p_u = N(m_u, v_u)``, ``p_c^w p_u^(1-w)`` is
    Gaussian with precision ``P = w / v_c + (1-w) / v_u`` and mean
    ``(w m_c / v_c + (1-w) m_u / v_u) / P``; read as selection, the fitness is
    ``(p_c / p_u)^(w-1)`` (``w > 1`` narrows, ``w < 1`` widens, ``w = 1`` is neutral).

    Parameters
    ----------
    cond_mean, cond_var : array_like
        The conditional distribution (``cond_var > 0``).
    uncond_mean, uncond_var : array_like
        The unconditional distribution (``uncond_var > 0``).
    cfg : array_like
        The guidance scale ``w`` (any real number).

    Returns
    -------
    Moments

    Raises
    ------
    ImproperDistributionError
        Where ``P <= 0`` (e.g. ``w > 1`` with ``v_c >= v_u w / (w-1)``): then
        ``p_c^w p_u^(1-w)`` cannot be normalised. The message names the first
        offending ``w``, ``v_c`` and ``v_u``.

    Examples
    --------
    >>> m = cfg_tilt(1.0, 1.0, 0.0, 2.0, cfg=3.0)
    >>> float(m.mean), float(m.var)
    (1.5, 0.5)
    """
    cond_mean = as_float_array(cond_mean, "cond_mean")
    cond_var = check_positive(cond_var, "cond_var")
    uncond_mean = as_float_array(uncond_mean, "uncond_mean")
    uncond_var = check_positive(uncond_var, "uncond_var")
    w = as_float_array(cfg, "cfg")
    precision = w / cond_var + (1 - w) / uncond_var
    _check_tilt_precision(precision, w, cond_var, uncond_var)
    mean = (w * cond_mean / cond_var + (1 - w) * uncond_mean / uncond_var) / precision
    return _moments(mean, 1 / precision)


def _check_tilt_precision(precision, cfg, cond_var, uncond_var, *, where: str = "") -> None:
    """Raise :class:`ImproperDistributionError` naming the first point where ``precision <= 0``.

    ``where`` is added to the message (e.g. the iteration of a chain). Shared with
    :mod:`qtm.equilibria`, whose tilt chain has the same failure.
    """
    precision, w, v_c, v_u = np.broadcast_arrays(precision, cfg, cond_var, uncond_var)
    bad = np.flatnonzero(~(precision > 0))
    if bad.size == 0:
        return
    k = bad[0]
    w, v_c, v_u, p = (float(a.ravel()[k]) for a in (w, v_c, v_u, precision))
    if w > 1:
        hint = f"with cfg w > 1 it needs cond_var < uncond_var*w/(w-1) = {v_u * w / (w - 1):g}"
    else:
        hint = f"with cfg w < 0 it needs uncond_var < cond_var*(1-w)/(-w) = {v_c * (1 - w) / -w:g}"
    raise ImproperDistributionError(
        f"the CFG tilt p_c^w p_u^(1-w) is improper{where} at cfg w={w:g}, cond_var v_c={v_c:g}, "
        f"uncond_var v_u={v_u:g}: its precision w/v_c + (1-w)/v_u = {p:g} is not positive; {hint}"
    )


def inherit(prior_mean, prior_var, data_mean, data_var, *, fidelity, var_fidelity=None, var_shift=0.0) -> Moments:
    """Finetuning as inheritance: move the fraction ``fidelity`` from the prior to the data.

    ``mean = prior_mean + rho (data_mean - prior_mean)`` and likewise for ``var``.
    ``rho`` plays the heritability ``h^2`` of the breeder's equation ``R = h^2 S``:
    when the prior is the population before selection and the data are the selected
    parents, ``S = data_mean - prior_mean`` is the selection differential and the
    response of the next generation's mean is ``R = rho S``. (The same linear move
    of the variance is the model's assumption about finetuning, fitted by ``validate``.)

    With ``var_fidelity`` rho_v the variance moves in log space instead, the structure
    measured on real chains (docs/theory.md): ``ln var = ln prior_var + rho_v (ln data_var
    - ln prior_var) + var_shift``, computed as ``prior_var^(1-rho_v) data_var^rho_v
    exp(var_shift)`` so that a zero variance stays finite. ``var_shift`` mu, the log-space
    finetuning error, multiplies the linear variance by ``exp(mu)`` too.

    Parameters
    ----------
    prior_mean, prior_var : array_like
        The model before finetuning (base or previous model; ``prior_var >= 0``).
    data_mean, data_var : array_like
        Moments of the finetuning data (``data_var >= 0``).
    fidelity : array_like
        ``rho`` in ``[0, 1]``: 0 keeps the prior, 1 copies the data.
    var_fidelity : None or array_like
        ``rho_v`` in ``[0, 1]`` for the log-space move of the variance; ``None`` (or NaN
        entries, a grid's gaps) moves it linearly with ``fidelity``.
    var_shift : array_like
        ``mu``, any real number (0: no error).

    Returns
    -------
    Moments

    Examples
    --------
    >>> m = inherit(0.0, 1.0, 2.0, 0.5, fidelity=0.25)
    >>> float(m.mean), float(m.var)
    (0.5, 0.875)
    >>> float(inherit(0.0, 1.0, 2.0, 0.25, fidelity=0.25, var_fidelity=0.5).var)
    0.5
    >>> round(float(inherit(0.0, 1.0, 2.0, 0.25, fidelity=0.25, var_fidelity=0.5, var_shift=np.log(2)).var), 12)
    1.0
    """
    prior_mean = as_float_array(prior_mean, "prior_mean")
    prior_var = check_nonnegative(prior_var, "prior_var")
    data_mean = as_float_array(data_mean, "data_mean")
    data_var = check_nonnegative(data_var, "data_var")
    rho = check_unit_interval(fidelity, "fidelity")
    var = prior_var + rho * (data_var - prior_var)
    if var_fidelity is not None:
        rho_v = np.asarray(var_fidelity, dtype=float)
        linear = np.isnan(rho_v)
        check_unit_interval(rho_v[~linear], "var_fidelity")
        var = np.where(linear, var, prior_var ** (1 - rho_v) * data_var**rho_v)
    var = var * np.exp(as_float_array(var_shift, "var_shift"))
    return _moments(prior_mean + rho * (data_mean - prior_mean), var)


def add_mutation(mean, var, *, mutation_var) -> Moments:
    """Mutation: add independent noise of variance ``mutation_var`` (the mean is unchanged).

    Parameters
    ----------
    mean, var : array_like
        Moments before mutation (``var >= 0``).
    mutation_var : array_like
        ``v_m >= 0``.

    Returns
    -------
    Moments

    Examples
    --------
    >>> m = add_mutation(1.0, 0.5, mutation_var=0.25)
    >>> float(m.mean), float(m.var)
    (1.0, 0.75)
    """
    mean = as_float_array(mean, "mean")
    var = check_nonnegative(var, "var")
    mutation_var = check_nonnegative(mutation_var, "mutation_var")
    return _moments(mean, var + mutation_var)


def mix(mean, var, other_mean, other_var, *, rate) -> Moments:
    """Moments of the mixture ``(1 - m) N(mean, var) + m N(other_mean, other_var)``.

    Exact (the law of total variance): ``var' = (1-m) var + m other_var
    + m (1-m) (mean - other_mean)^2``. The mixture itself is not Gaussian; these are
    its first two moments, which is what the moment recursion carries on.

    Parameters
    ----------
    mean, var : array_like
        The first component (``var >= 0``).
    other_mean, other_var : array_like
        The second component, e.g. real data or a mutation source (``other_var >= 0``).
    rate : array_like
        ``m`` in ``[0, 1]``, the weight of the second component.

    Returns
    -------
    Moments

    Examples
    --------
    >>> m = mix(0.0, 1.0, 2.0, 1.0, rate=0.5)
    >>> float(m.mean), float(m.var)
    (1.0, 2.0)
    """
    mean = as_float_array(mean, "mean")
    var = check_nonnegative(var, "var")
    other_mean = as_float_array(other_mean, "other_mean")
    other_var = check_nonnegative(other_var, "other_var")
    m = check_unit_interval(rate, "rate")
    new_var = (1 - m) * var + m * other_var + m * (1 - m) * (mean - other_mean) ** 2
    return _moments((1 - m) * mean + m * other_mean, new_var)


def refit_expectation(mean, var, *, population, estimator: str = "mle") -> Moments:
    """Expected moments of a Gaussian refitted to ``population`` samples of ``N(mean, var)``.

    The sample mean is unbiased; the maximum-likelihood variance has expectation
    ``var (N-1) / N`` (the genetic-drift loss per generation), the unbiased one ``var``.

    Parameters
    ----------
    mean, var : array_like
        The distribution sampled (``var >= 0``).
    population : int, array_like of int or None
        Sample size ``N >= 2``; ``None`` means infinitely many samples.
    estimator : {"mle", "unbiased"}
        How the model's variance is fitted.

    Returns
    -------
    Moments

    Examples
    --------
    >>> m = refit_expectation(0.0, 1.0, population=4)
    >>> float(m.mean), float(m.var)
    (0.0, 0.75)
    >>> float(refit_expectation(0.0, 1.0, population=4, estimator="unbiased").var)
    1.0
    """
    mean = as_float_array(mean, "mean")
    var = check_nonnegative(var, "var")
    check_choice(estimator, "estimator", REFIT_ESTIMATORS)
    if population is None or estimator == "unbiased":
        factor = 1.0
        if population is not None:
            _check_population(population)
    else:
        n = _check_population(population)
        factor = (n - 1) / n
    return _moments(mean, var * factor)


def _check_population(population) -> np.ndarray:
    n = as_float_array(population, "population")
    for value in np.unique(n):
        check_int(float(value), "population", minimum=2)
    return n
