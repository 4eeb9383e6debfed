"""The data workflows against the peers' analytic results: Shumailov's refit, replace against accumulate, π²/6.

A Gaussian model refitted by maximum likelihood to its own samples (Shumailov et al. 2024)
and the particle engine's neutral classic loop (resampling the training set, which at CFG 1
is Wright-Fisher) share one exact account of the mean and the variance, because in both the
newest set of ``N`` draws has, given the training set ``P`` (``M`` individuals, mean ``mu``,
sum of squares ``S``), mean ``mu`` plus an error of variance ``S / (M N)`` and an expected
sum of squares about ``mu`` of ``N S / M``. With ``q = (N-1)/N`` and ``sigma^2`` the real
data's variance (docs/theory.md, "Data workflows"):

- ``replace``: ``E[S_t] / N = q^(t+1) sigma^2`` and the model's mean error
  ``E[(mu_t - m)^2] = (sigma^2 / N) (1 + q + ... + q^t)``: linear growth, ``(t+1) sigma^2 / N``
  while ``t << N``;
- ``accumulate`` (the pool of ``D_0`` and ``G_0 .. G_{t-1}``, ``(t+1) N`` individuals):
  ``E[S_{t+1}] = E[S_t] ((t+2)/(t+1) - 1/((t+1)(t+2) N))`` from ``E[S_0] = (N-1) sigma^2``, and
  ``E[(mu_t - m)^2] = (sigma^2 / N) (1 + sum_{s<t} c_s / (s+2)^2)`` with
  ``c_s = E[S_s] / ((s+1) N sigma^2)``; as ``N`` grows ``c_s -> 1`` and the sum tends to
  ``sum_{k>=1} 1/k^2 = pi^2/6`` (Dey & Donoho; Kazdan, Schaeffer et al.): bounded error.

Examples
--------
>>> model_mean_error(3, population=10**9, workflow="accumulate").round(6).tolist()  # 1, 1 + 1/4, 1 + 1/4 + 1/9
[1.0, 1.25, 1.361111]
>>> model_mean_error(3, population=10, workflow="replace").round(3).tolist()
[1.0, 1.9, 2.71]
"""

from __future__ import annotations

import math

import numpy as np

from qtm.params import PARAMETERS
from qtm.validation import check_int
from qtm.verify.base import Comparison, from_series, mean_se, register, scaled_count


def training_spread(iterations: int, *, population: int, workflow: str) -> np.ndarray:
    """``E[S_t] / (M_t sigma^2)``: the expected ML variance of the training set of iteration t, over sigma^2.

    ``M_t`` is ``N`` under ``replace`` and ``(t+1) N`` under ``accumulate`` (D_0 and every generation).

    Examples
    --------
    >>> training_spread(2, population=4, workflow="replace").tolist()
    [0.75, 0.5625]
    """
    iterations = check_int(iterations, "iterations", minimum=1)
    n = check_int(population, "population", minimum=2)
    if PARAMETERS["data_workflow"].check(workflow) == "accumulate-subsample":
        raise ValueError("the closed forms cover replace and accumulate")
    q = (n - 1) / n
    if workflow == "replace":
        return q ** np.arange(1, iterations + 1)
    spread = np.empty(iterations)
    total = (n - 1) / n  # E[S_0] / (N sigma^2)
    for t in range(iterations):
        spread[t] = total / (t + 1)
        total *= (t + 2) / (t + 1) - 1.0 / ((t + 1) * (t + 2) * n)
    return spread


def model_mean_error(iterations: int, *, population: int, workflow: str) -> np.ndarray:
    """``N E[(mu_t - m)^2] / sigma^2`` for t = 0 .. iterations-1: the error of the mean of the training set of t.

    Examples
    --------
    >>> round(float(model_mean_error(200_000, population=10**12, workflow="accumulate")[-1]), 4)
    1.6449
    """
    spread = training_spread(iterations, population=population, workflow=workflow)
    if workflow == "replace":
        return np.concatenate([[1.0], 1.0 + np.cumsum(spread[:-1])])
    weights = spread[:-1] / np.arange(2, iterations + 1) ** 2
    return np.concatenate([[1.0], 1.0 + np.cumsum(weights)])


#: Sizes of the check: population, iterations and the real data N(mean, var).
POPULATION, ITERATIONS, DATA_MEAN, DATA_VAR = 50, 20, 1.0, 2.0


@register("workflows", "Data workflows: Shumailov's refit, replace against accumulate and the pi^2/6 limit")
def _workflows(*, size: float, rng) -> Comparison:
    """Both workflows in a Gaussian ML refit (NumPy, running sums) and in the particle engine, against the closed forms.

    The refit keeps per replicate the training set's size, mean and sum of squares (a new set
    of ``N`` draws from the fitted Gaussian has a normal mean and a chi-square sum of squares);
    the particle engine runs its classic loop with the CFG tilt at w = 1 (neutral) and
    multinomial resampling. Series: the fitted variance (Shumailov: ``q^(t+1) sigma^2`` under
    replace), the model's mean error ``E[(mu_t - m)^2]`` (linear under replace, towards
    ``pi^2/6 sigma^2/N`` under accumulate), and for the engine, whose table holds each
    generation's mean and variance, the model's mean error estimated without bias by
    ``(mean_t - m)^2 - var_t / (N - 1)``. Standard errors from the replicates.
    """
    from qtm.particles import Fitness, QGSetup, simulate_qg

    n, iterations, sigma2 = POPULATION, ITERATIONS, DATA_VAR
    refits = scaled_count(200_000, size, 20_000)
    replicates = scaled_count(20_000, size, 2_000)
    t = np.arange(iterations)
    series = {}
    for workflow in ("replace", "accumulate"):
        spread = training_spread(iterations, population=n, workflow=workflow) * sigma2
        error = model_mean_error(iterations, population=n, workflow=workflow) * sigma2 / n
        fitted_var, fitted_error = _gaussian_refit(rng, refits, iterations, workflow=workflow)
        series[f"refit {workflow}: E[fitted var]"] = (*mean_se(fitted_var, axis=0), spread)
        series[f"refit {workflow}: E[(mean - m)^2]"] = (*mean_se(fitted_error, axis=0), error)
        setup = QGSetup(population=n, generations=iterations, data_mean=DATA_MEAN, data_var=DATA_VAR,
                        fitness=Fitness("tilt", cfg=1.0), resampling="multinomial", data_workflow=workflow)
        result = simulate_qg(setup, replicates=replicates, seed=int(rng.integers(2**31)))
        mean, var = result.mean[:, :, 0], result.var[:, :, 0]
        series[f"engine {workflow}: E[var]"] = (*mean_se(var, axis=0), spread * (n - 1) / n)
        series[f"engine {workflow}: model's E[(mean - m)^2]"] = (
            *mean_se((mean - DATA_MEAN) ** 2 - var / (n - 1), axis=0), error)
    limit = model_mean_error(iterations, population=n, workflow="accumulate")[-1]
    linear = model_mean_error(iterations, population=n, workflow="replace")[-1]
    return from_series(
        {name: (*values, t) for name, values in series.items()},
        note=(f"N={n}, {refits} refits and {replicates} engine replicates, N({DATA_MEAN}, {DATA_VAR}), "
              f"{iterations} iterations; accumulate: N E[(mean - m)^2]/sigma^2 = {limit:.4f} at t={iterations - 1} "
              f"(pi^2/6 = {math.pi**2 / 6:.4f} as N, t grow); replace: {linear:.2f} (t+1 = {iterations})"),
    )


def _gaussian_refit(rng, replicates: int, iterations: int, *, workflow: str):
    """Fitted variance and squared error of the fitted mean of each replicate's model at each iteration.

    The model of iteration t is fitted (maximum likelihood) to its training set; the set's
    running sums are all either workflow needs: count, mean and sum of squares about the mean.
    """
    n, sigma = POPULATION, math.sqrt(DATA_VAR)
    count = np.full(replicates, float(n))
    mean = DATA_MEAN + sigma / math.sqrt(n) * rng.standard_normal(replicates)
    squares = DATA_VAR * rng.chisquare(n - 1, replicates)
    fitted_var = np.empty((replicates, iterations))
    fitted_error = np.empty((replicates, iterations))
    for t in range(iterations):
        var = squares / count
        fitted_var[:, t] = var
        fitted_error[:, t] = (mean - DATA_MEAN) ** 2
        new_mean = mean + np.sqrt(var / n) * rng.standard_normal(replicates)
        new_squares = var * rng.chisquare(n - 1, replicates)
        if workflow == "replace":
            mean, squares = new_mean, new_squares
            continue
        # Chan's update: the pool's sum of squares gains the new set's and the gap between the means.
        total = count + n
        squares = squares + new_squares + count * n / total * (new_mean - mean) ** 2
        mean = mean + n / total * (new_mean - mean)
        count = total
    return fitted_var, fitted_error
