"""Checks against analytic quantitative genetics.

Breeder's equation, Gaussian and truncation selection, mutation-selection balance
and the Bulmer effect, each simulated and set against its closed form.

Examples
--------
>>> from qtm.verify.base import CHECKS
>>> [name for name in CHECKS if CHECKS[name].compute.__module__ == __name__]
['breeders_equation', 'gaussian_selection', 'truncation', 'mutation_selection', 'bulmer']
"""

from __future__ import annotations

import math

import numpy as np

from qtm.verify.base import Comparison, from_rows, mean_se, register, scaled_count, var_se


def _rejection_sample(rng, n: int, mean: float, var: float, log_fitness) -> np.ndarray:
    """Draw ``n`` proposals from ``N(mean, var)`` and keep each with probability ``W(z) / max W``.

    The kept points are an iid sample of the selected distribution ``W(z) N(z; mean, var)``
    (normalised), whatever ``W`` is, as long as it is bounded; its maximum is found
    numerically, so no analytic result enters the sample.
    """
    from scipy import optimize

    sd = math.sqrt(var)
    found = optimize.minimize_scalar(lambda z: -log_fitness(z), bracket=(mean - sd, mean + sd))
    log_max = -found.fun
    z = rng.normal(mean, sd, n)
    keep = np.log(rng.random(n)) < log_fitness(z) - log_max
    return z[keep]


def _moment_rows(label: str, sample, expected_mean: float, expected_var: float):
    """Rows (label, observed, se, expected) for the mean and variance of a sample."""
    mean, mean_error = mean_se(sample)
    var, var_error = var_se(sample)
    return [(f"{label} mean", mean, mean_error, expected_mean), (f"{label} var", var, var_error, expected_var)]


# --------------------------------------------------------------------------- checks


@register("breeders_equation", "Breeder's equation R = h^2 S in the particle engine (fidelity plays h^2)")
def _breeders_equation(*, size: float, rng) -> Comparison:
    """The particle engine's classic loop with phenotype ``z = g + e``: selection on ``z``, offspring inherit ``g``.

    One generation of stabilizing and of truncation selection. The response ``R`` of
    the mean is predicted by :func:`qtm.gaussian.inherit` with fidelity ``h^2`` from the
    selection differential ``S`` of the selection operators; the variance of ``g``
    among the selected, ``V_g - h^4 (V_z - V_z^sel)``, from the same operators. The
    engine's self-normalised weights and order statistics bias it by ``O(1/N)``, far
    below the standard errors at these sizes. Standard errors from the replicates.
    """
    from qtm.gaussian import inherit, stabilizing_selection, truncation_selection
    from qtm.particles import Fitness, QGSetup, simulate_qg

    n = scaled_count(50_000, size, 2_000)
    replicates = scaled_count(100, size, 20)
    mean, genetic_var, env_var = 0.5, 0.8, 1.2
    var = genetic_var + env_var
    h2 = genetic_var / var
    cases = {
        "stabilizing": (Fitness("stabilizing", theta=2.0, omega2=3.0),
                        stabilizing_selection(mean, var, optimum=2.0, width2=3.0)),
        "truncation": (Fitness("truncation", keep=0.2), truncation_selection(mean, var, keep=0.2)),
    }  # fmt: skip
    rows = []
    for name, (fitness, selected) in cases.items():
        setup = QGSetup(population=n, generations=1, data_mean=mean, data_var=genetic_var, fitness=fitness,
                        environmental_var=env_var, resampling="systematic")
        result = simulate_qg(setup, replicates=replicates, seed=int(rng.integers(2**31)))
        response = float(inherit(mean, var, selected.mean, selected.var, fidelity=h2).mean) - mean
        observed, se = mean_se(result.mean[:, 0, 0])
        rows.append((f"{name} R", observed - mean, se, response))
        observed, se = mean_se(result.var[:, 0, 0])
        rows.append((f"{name} Var g", observed, se, genetic_var - h2**2 * (var - float(selected.var))))
    note = f"N={n}, {replicates} replicates, g ~ N({mean}, {genetic_var}), V_E={env_var} (h2={h2:g})"
    return from_rows(rows, dof=replicates - 1, note=note)


@register("gaussian_selection", "Gaussian selection and the CFG tilt: moments and shape")
def _gaussian_selection(*, size: float, rng) -> Comparison:
    """Rejection sampling of ``W(z) p(z)`` against the closed-form Gaussian results."""
    from scipy import stats

    from qtm.gaussian import cfg_tilt, stabilizing_selection

    n = scaled_count(600_000, size, 4_000)
    cond, uncond = (1.0, 0.5), (0.0, 1.5)
    cases = {
        "stabilizing": (
            (0.5, 2.0),
            lambda z: -((z - 1.5) ** 2) / (2 * 0.8),
            stabilizing_selection(0.5, 2.0, optimum=1.5, width2=0.8)[:2],
        ),
    }
    for w in (3.0, 0.5):
        # W = (p_c / p_u)^(w - 1), applied to a proposal wider than both branches so W stays bounded.
        proposal = (0.0, 4.0)

        def log_w(z, w=w, proposal=proposal):
            log_c = stats.norm.logpdf(z, cond[0], math.sqrt(cond[1]))
            log_u = stats.norm.logpdf(z, uncond[0], math.sqrt(uncond[1]))
            return w * log_c + (1 - w) * log_u - stats.norm.logpdf(z, proposal[0], math.sqrt(proposal[1]))

        cases[f"tilt w={w:g}"] = (proposal, log_w, cfg_tilt(*cond, *uncond, cfg=w))
    rows, pvalues = [], {}
    for name, ((mean, var), log_fitness, expected) in cases.items():
        sample = _rejection_sample(rng, n, mean, var, log_fitness)
        e_mean, e_var = float(expected[0]), float(expected[1])
        rows += _moment_rows(name, sample, e_mean, e_var)
        pvalues[f"{name} KS normal"] = float(stats.kstest(sample, "norm", args=(e_mean, math.sqrt(e_var))).pvalue)
    note = f"{n} proposals per case; p_c=N{cond}, p_u=N{uncond}; stabilizing theta=1.5 omega2=0.8 on N(0.5, 2)"
    return from_rows(rows, pvalues=pvalues, note=note)


@register("truncation", "Truncation selection: one-sided and central")
def _truncation(*, size: float, rng) -> Comparison:
    """Keep the points beyond the analytic threshold; compare kept share, mean and variance."""
    from scipy import stats

    from qtm.gaussian import central_truncation, truncation_selection

    n = scaled_count(1_000_000, size, 4_000)
    mean, var = -1.0, 3.0
    sd = math.sqrt(var)
    z = rng.normal(mean, sd, n)
    rows = []
    for keep in (0.5, 0.05):
        expected = truncation_selection(mean, var, keep=keep)
        kept = z > mean + sd * stats.norm.isf(keep)
        rows += _moment_rows(f"top {keep:g}", z[kept], float(expected.mean), float(expected.var))
        rows.append((f"top {keep:g} kept share", kept.mean(), math.sqrt(keep * (1 - keep) / n), keep))
    half_width = 1.2
    expected = central_truncation(mean, var, half_width=half_width)
    kept = np.abs(z - mean) <= half_width * sd
    q = float(expected.mean_fitness)
    rows += _moment_rows(f"central a={half_width:g}", z[kept], float(expected.mean), float(expected.var))
    rows.append((f"central a={half_width:g} kept share", kept.mean(), math.sqrt(q * (1 - q) / n), q))
    return from_rows(rows, note=f"n={n} draws of N({mean}, {var})")


@register("mutation_selection", "Mutation-selection balance in the particle engine (stabilizing selection)")
def _mutation_selection(*, size: float, rng) -> Comparison:
    """The particle engine's classic loop: stabilizing selection, resampling, mutation, for many generations.

    The variance after mutation, averaged over the generations after a burn-in and
    over replicates, against :func:`qtm.equilibria.stabilizing_mutation_equilibrium`
    (``h^2 = 1``). Drift biases the simulation by ``O(1/N)``; ``N`` is large enough
    that this stays well below the standard error. Both cases relax fast (slope of
    the variance map 0.53 and 0.29 per generation), so after the burn-in the start's
    trace is far below the standard error too. Standard errors from the replicates.
    """
    from qtm.equilibria import stabilizing_mutation_equilibrium
    from qtm.particles import Fitness, QGSetup, simulate_qg

    n = scaled_count(200_000, size, 2_000)
    replicates = scaled_count(32, size, 8)
    burn_in, generations = 15, 35
    rows = []
    for width2, mutation_var in ((1.0, 0.1), (0.5, 0.2)):
        setup = QGSetup(population=n, generations=generations, fitness=Fitness("stabilizing", omega2=width2),
                        mutation=mutation_var, resampling="systematic")
        result = simulate_qg(setup, replicates=replicates, seed=int(rng.integers(2**31)))
        observed, se = mean_se(result.var[:, burn_in:, 0].mean(axis=1))
        expected = float(stabilizing_mutation_equilibrium(width2=width2, mutation_var=mutation_var))
        rows.append((f"omega2={width2:g} v_m={mutation_var:g} equilibrium var", observed, se, expected))
    note = f"N={n}, {replicates} replicates, generations {burn_in}..{generations - 1} averaged, start N(0, 1)"
    return from_rows(rows, dof=replicates - 1, note=note)


@register("bulmer", "Bulmer effect: repeated stabilizing selection in the infinitesimal model")
def _bulmer(*, size: float, rng) -> Comparison:
    """Selected parents mate at random; a child is the midparent breeding value plus segregation noise.

    Selection on the phenotype ``z = g + e`` builds up negative linkage
    disequilibrium that lowers the additive variance generation by generation until
    Bulmer's equilibrium. With Gaussian stabilizing selection every distribution
    stays Gaussian, so Bulmer's recursion is exact in expectation::

        V_A' = (V_A - h^4 (V_z - V_z^sel)) / 2 + V_0 / 2,   mean' = mean + h^2 (mean_z^sel - mean_z)

    with the selected phenotype moments from :func:`qtm.gaussian.stabilizing_selection`.
    The standard errors come from the replicates (Student t).
    """
    from qtm.gaussian import stabilizing_selection

    n = scaled_count(100_000, size, 2_000)
    replicates = 20 if size >= 0.5 else 8
    generations, genic_var, env_var, optimum, width2 = 8, 1.0, 1.0, 1.0, 1.0
    means = np.empty((replicates, generations))
    variances = np.empty((replicates, generations))
    for r in range(replicates):
        g = rng.normal(0.0, math.sqrt(genic_var), n)
        for t in range(generations):
            means[r, t], variances[r, t] = g.mean(), g.var(ddof=1)
            z = g + rng.normal(0.0, math.sqrt(env_var), n)
            chosen = g[rng.random(n) < np.exp(-((z - optimum) ** 2) / (2 * width2))]
            mother, father = rng.integers(0, chosen.size, (2, n))
            g = (chosen[mother] + chosen[father]) / 2 + rng.normal(0.0, math.sqrt(genic_var / 2), n)
    expected_mean, expected_var = np.empty(generations), np.empty(generations)
    mean, var = 0.0, genic_var
    for t in range(generations):
        expected_mean[t], expected_var[t] = mean, var
        h2 = var / (var + env_var)
        selected = stabilizing_selection(mean, var + env_var, optimum=optimum, width2=width2)
        mean = mean + h2 * (float(selected.mean) - mean)
        var = (var - h2**2 * (var + env_var - float(selected.var))) / 2 + genic_var / 2
    observed_mean, se_mean = mean_se(means, axis=0)
    observed_var, se_var = mean_se(variances, axis=0)
    iterations = np.arange(generations)
    return Comparison(
        tuple(f"{kind} t={t}" for kind in ("mean g", "V_A") for t in iterations),
        np.concatenate([observed_mean, observed_var]),
        np.concatenate([se_mean, se_var]),
        np.concatenate([expected_mean, expected_var]),
        x=np.concatenate([iterations, iterations]),
        series=("mean g",) * generations + ("V_A",) * generations,
        dof=replicates - 1,
        note=f"N={n}, {replicates} replicates; V_0={genic_var}, V_E={env_var}, theta={optimum}, omega2={width2}",
    )
