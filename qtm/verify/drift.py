"""The drift check: finite samples refitted generation by generation, and Wright-Fisher resampling.

Examples
--------
>>> from qtm.verify.base import CHECKS
>>> CHECKS["drift"].title.split(":")[0]
'Drift'
"""

from __future__ import annotations

import math

import numpy as np

from qtm.verify.base import Comparison, from_series, mean_se, register, scaled_count, var_se


@register("drift", "Drift: repeated refits and Wright-Fisher resampling against the expected refit")
def _drift(*, size: float, rng) -> Comparison:
    """Finite samples lose variance by ``(N-1)/N`` per generation (maximum-likelihood refit).

    Two simulations of ``N = 10``:

    - each generation fits a Gaussian (maximum likelihood) to ``N`` draws of the previous
      fit; the fitted variance's expectation ``V_0 ((N-1)/N)^t`` comes from the moments
      engine (:func:`qtm.recursion.simulate_moments` with ``population=N`` at CFG 1,
      fidelity 1), and the variance of the fitted mean across replicates is
      ``sum_{s<t} E[V_s] / N``;
    - the particle engine's neutral classic loop with multinomial resampling
      (Wright-Fisher): its population variance after generation ``t`` has the
      expectation of ``t + 2`` refits (:func:`qtm.gaussian.refit_expectation`: the
      initial sample and ``t + 1`` resamplings).
    """
    from qtm.gaussian import refit_expectation
    from qtm.particles import QGSetup, simulate_qg
    from qtm.recursion import simulate_moments

    replicates = scaled_count(20_000, size, 2_000)
    population, generations, data_mean, data_var = 10, 25, 0.5, 2.0
    mean = np.full(replicates, data_mean)
    var = np.full(replicates, data_var)
    fitted_var = np.empty((replicates, generations))
    mean_spread = np.empty((generations, 2))
    for t in range(generations):
        # Iteration t reports the model fitted to D_t; D_0 is the real distribution itself.
        fitted_var[:, t] = var
        mean_spread[t] = var_se(mean) if t > 0 else (0.0, math.nan)
        draws = rng.normal(mean[:, None], np.sqrt(var)[:, None], (replicates, population))
        mean, var = draws.mean(axis=1), draws.var(axis=1)
    trajectory = simulate_moments(
        cond_mean=data_mean, cond_var=data_var, uncond_mean=data_mean, uncond_var=data_var,
        data_mean=data_mean, data_var=data_var, cfg=1.0, sampler="tilt", fidelity=1.0,
        population=population, iterations=generations,
    )  # fmt: skip
    expected_var = trajectory.var
    expected_spread = np.concatenate([[0.0], np.cumsum(expected_var)[:-1] / population])
    observed_var, se_var = mean_se(fitted_var, axis=0)

    setup = QGSetup(population=population, generations=generations, data_mean=data_mean, data_var=data_var,
                    resampling="multinomial")  # fmt: skip
    engine = simulate_qg(setup, replicates=replicates, seed=int(rng.integers(2**31)))
    engine_var, engine_se = mean_se(engine.var[:, :, 0], axis=0)
    engine_expected = np.empty(generations)
    refitted = refit_expectation(data_mean, data_var, population=population).var
    for t in range(generations):
        refitted = refit_expectation(data_mean, refitted, population=population).var
        engine_expected[t] = refitted

    t = np.arange(generations)
    later = t[1:]
    series = {
        "refit: E[fitted var]": (observed_var[1:], se_var[1:], expected_var[1:], later),
        "refit: var of fitted mean": (mean_spread[1:, 0], mean_spread[1:, 1], expected_spread[1:], later),
        "particle engine (Wright-Fisher): E[var]": (engine_var, engine_se, engine_expected, t),
    }
    return from_series(
        series, note=f"N={population}, {replicates} replicates, N({data_mean}, {data_var}), {generations} generations"
    )
