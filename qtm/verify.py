"""The statistical verification suite: simulators against analytic quantitative genetics and each other.

Each check simulates at a sample size large enough to see small errors, compares
a few estimates with their analytic values and turns every difference into a
z-score ``(observed - expected) / standard_error`` (or takes a p-value, e.g. of a
Kolmogorov-Smirnov test of a distribution's shape). A check fails when its
smallest two-sided p-value falls below ``false_failure_rate / K`` (Bonferroni over
its ``K`` statistics), so that a correct simulator and a correct formula fail a
check with probability at most ``false_failure_rate`` (0.001 by default; at most
about 1% for the whole suite). Seeds are fixed: a run is reproducible, and the
designed rate is the chance over seeds.

=========================  ===========================================================
check                      compares
=========================  ===========================================================
``breeders_equation``      the response of an additive (``z = g + e``) population to
                           stabilizing and truncation selection with ``R = h^2 S``
                           (:func:`qtm.gaussian.inherit` with fidelity ``h^2``)
``gaussian_selection``     rejection-sampled stabilizing selection and CFG tilts
                           with :func:`qtm.gaussian.stabilizing_selection` and
                           :func:`qtm.gaussian.cfg_tilt`: moments and shape (KS test)
``truncation``             truncated samples with :func:`qtm.gaussian.truncation_selection`
                           and :func:`qtm.gaussian.central_truncation`
``mutation_selection``     a finite population under stabilizing selection and
                           mutation with the closed-form equilibrium variance
``bulmer``                 the infinitesimal model (midparent plus segregation) under
                           repeated stabilizing selection with Bulmer's recursion
``drift``                  repeated maximum-likelihood refits of ``N`` samples and the
                           particle engine's Wright-Fisher resampling with
                           :func:`qtm.gaussian.refit_expectation` and the moments engine
``sampler_map_diffusers``  diffusers' ``DDIMScheduler.step`` on a particle cloud with
                           :func:`qtm.sampler_map.guided_moments` (run in a separate
                           process by :mod:`validate.verify_sampler`, because ``qtm``
                           never imports torch; skipped when diffusers is absent)
``particles_vs_moments``   the particle engine's guided-sampler chain with the moments
                           engine, iteration by iteration
=========================  ===========================================================

Examples
--------
>>> results = run_checks(["truncation"], size=0.05, seed=0, out=None)
>>> results[0].status
'pass'
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import optimize, stats

from qtm.validation import check_positive, check_unit_interval
from qtm.errors import QTMError

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


def _check(name: str, title: str, *, unavailable=None):
    def register(compute):
        CHECKS[name] = Check(name, title, compute, unavailable or (lambda: None))
        return compute

    return register


# --------------------------------------------------------------------------- helpers


def _count(base: int, size: float, minimum: int) -> int:
    """A sample size: ``base`` scaled by ``size``, never below ``minimum``."""
    return max(round(base * size), minimum)


def _mean_se(values, axis=None):
    """Mean and standard error of the mean of independent values."""
    values = np.asarray(values, dtype=float)
    n = values.size if axis is None else values.shape[axis]
    return values.mean(axis=axis), values.std(axis=axis, ddof=1) / math.sqrt(n)


def _var_se(sample):
    """Unbiased variance of an iid sample and its standard error (from the fourth central moment)."""
    sample = np.asarray(sample, dtype=float)
    n = sample.size
    centred = sample - sample.mean()
    var = centred.var(ddof=1)
    m4 = np.mean(centred**4)
    return var, math.sqrt(max(m4 - var**2 * (n - 3) / (n - 1), 0.0) / n)


def _rejection_sample(rng, n: int, mean: float, var: float, log_fitness) -> np.ndarray:
    """Draw ``n`` proposals from ``N(mean, var)`` and keep each with probability ``W(z) / max W``.

    The kept points are an iid sample of the selected distribution ``W(z) N(z; mean, var)``
    (normalised), whatever ``W`` is, as long as it is bounded; its maximum is found
    numerically, so no analytic result enters the sample.
    """
    sd = math.sqrt(var)
    found = optimize.minimize_scalar(lambda z: -log_fitness(z), bracket=(mean - sd, mean + sd))
    log_max = -found.fun
    z = rng.normal(mean, sd, n)
    keep = np.log(rng.random(n)) < log_fitness(z) - log_max
    return z[keep]


def _moment_rows(label: str, sample, expected_mean: float, expected_var: float):
    """Rows (label, observed, se, expected) for the mean and variance of a sample."""
    mean, mean_se = _mean_se(sample)
    var, var_se = _var_se(sample)
    return [(f"{label} mean", mean, mean_se, expected_mean), (f"{label} var", var, var_se, expected_var)]


def _comparison(rows, **extra) -> Comparison:
    labels, observed, se, expected = zip(*rows, strict=True)
    return Comparison(tuple(labels), np.array(observed), np.array(se), np.array(expected), **extra)


# --------------------------------------------------------------------------- checks


@_check("breeders_equation", "Breeder's equation R = h^2 S in the particle engine (fidelity plays h^2)")
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

    n = _count(50_000, size, 2_000)
    replicates = _count(100, size, 20)
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
                        environmental_var=env_var)
        result = simulate_qg(setup, replicates=replicates, seed=int(rng.integers(2**31)))
        response = float(inherit(mean, var, selected.mean, selected.var, fidelity=h2).mean) - mean
        observed, se = _mean_se(result.mean[:, 0, 0])
        rows.append((f"{name} R", observed - mean, se, response))
        observed, se = _mean_se(result.var[:, 0, 0])
        rows.append((f"{name} Var g", observed, se, genetic_var - h2**2 * (var - float(selected.var))))
    note = f"N={n}, {replicates} replicates, g ~ N({mean}, {genetic_var}), V_E={env_var} (h2={h2:g})"
    return _comparison(rows, dof=replicates - 1, note=note)


@_check("gaussian_selection", "Gaussian selection and the CFG tilt: moments and shape")
def _gaussian_selection(*, size: float, rng) -> Comparison:
    """Rejection sampling of ``W(z) p(z)`` against the closed-form Gaussian results."""
    from qtm.gaussian import cfg_tilt, stabilizing_selection

    n = _count(600_000, size, 4_000)
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
    return _comparison(rows, pvalues=pvalues, note=note)


@_check("truncation", "Truncation selection: one-sided and central")
def _truncation(*, size: float, rng) -> Comparison:
    """Keep the points beyond the analytic threshold; compare kept share, mean and variance."""
    from qtm.gaussian import central_truncation, truncation_selection

    n = _count(1_000_000, size, 4_000)
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
    return _comparison(rows, note=f"n={n} draws of N({mean}, {var})")


@_check("mutation_selection", "Mutation-selection balance in the particle engine (stabilizing selection)")
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

    n = _count(200_000, size, 2_000)
    replicates = _count(32, size, 8)
    burn_in, generations = 15, 35
    rows = []
    for width2, mutation_var in ((1.0, 0.1), (0.5, 0.2)):
        setup = QGSetup(population=n, generations=generations, fitness=Fitness("stabilizing", omega2=width2),
                        mutation=mutation_var)
        result = simulate_qg(setup, replicates=replicates, seed=int(rng.integers(2**31)))
        observed, se = _mean_se(result.var[:, burn_in:, 0].mean(axis=1))
        expected = float(stabilizing_mutation_equilibrium(width2=width2, mutation_var=mutation_var))
        rows.append((f"omega2={width2:g} v_m={mutation_var:g} equilibrium var", observed, se, expected))
    note = f"N={n}, {replicates} replicates, generations {burn_in}..{generations - 1} averaged, start N(0, 1)"
    return _comparison(rows, dof=replicates - 1, note=note)


@_check("bulmer", "Bulmer effect: repeated stabilizing selection in the infinitesimal model")
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

    n = _count(100_000, size, 2_000)
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
    observed_mean, se_mean = _mean_se(means, axis=0)
    observed_var, se_var = _mean_se(variances, axis=0)
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


@_check("drift", "Drift: repeated refits and Wright-Fisher resampling against the expected refit")
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

    replicates = _count(20_000, size, 2_000)
    population, generations, data_mean, data_var = 10, 25, 0.5, 2.0
    mean = np.full(replicates, data_mean)
    var = np.full(replicates, data_var)
    fitted_var = np.empty((replicates, generations))
    mean_spread = np.empty((generations, 2))
    for t in range(generations):
        # Iteration t reports the model fitted to D_t; D_0 is the real distribution itself.
        fitted_var[:, t] = var
        mean_spread[t] = _var_se(mean) if t > 0 else (0.0, math.nan)
        draws = rng.normal(mean[:, None], np.sqrt(var)[:, None], (replicates, population))
        mean, var = draws.mean(axis=1), draws.var(axis=1)
    trajectory = simulate_moments(
        cond_mean=data_mean, cond_var=data_var, uncond_mean=data_mean, uncond_var=data_var,
        data_mean=data_mean, data_var=data_var, cfg=1.0, sampler="tilt", fidelity=1.0,
        population=population, iterations=generations,
    )  # fmt: skip
    expected_var = trajectory.var
    expected_spread = np.concatenate([[0.0], np.cumsum(expected_var)[:-1] / population])
    observed_var, se_var = _mean_se(fitted_var, axis=0)

    setup = QGSetup(population=population, generations=generations, data_mean=data_mean, data_var=data_var,
                    resampling="multinomial")  # fmt: skip
    engine = simulate_qg(setup, replicates=replicates, seed=int(rng.integers(2**31)))
    engine_var, engine_se = _mean_se(engine.var[:, :, 0], axis=0)
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
    return Comparison(
        tuple(f"{name} t={i}" for name, (*_, x) in series.items() for i in x),
        np.concatenate([v[0] for v in series.values()]),
        np.concatenate([v[1] for v in series.values()]),
        np.concatenate([v[2] for v in series.values()]),
        x=np.concatenate([v[3] for v in series.values()]),
        series=tuple(name for name, (*_, x) in series.items() for _ in x),
        note=f"N={population}, {replicates} replicates, N({data_mean}, {data_var}), {generations} generations",
    )


def _diffusers_missing() -> str | None:
    for module in ("diffusers", "torch", "validate"):
        if importlib.util.find_spec(module) is None:
            return f"needs {module} (pip install -e '.[chain]'); qtm alone cannot run diffusers' scheduler"
    return None


@_check(
    "sampler_map_diffusers",
    "Exact sampler map against diffusers' DDIMScheduler (DDIM, eta 0.5, DDPM)",
    unavailable=_diffusers_missing,
)
def _sampler_map_diffusers(*, size: float, rng) -> Comparison:
    """Run :mod:`validate.verify_sampler` in its own process and read its comparison.

    A separate process keeps torch out of ``qtm`` (the design's rule: ``qtm`` never
    imports torch, nor ``validate``); the module prints one JSON object.
    """
    seed = int(rng.integers(2**31))
    command = [sys.executable, "-m", "validate.verify_sampler", "--size", repr(size), "--seed", str(seed)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise QTMError(f"the diffusers check failed to run ({' '.join(command[1:])}): {last}")
    result = json.loads(done.stdout)
    return Comparison(
        tuple(result["labels"]),
        np.array(result["observed"]),
        np.array(result["standard_error"]),
        np.array(result["expected"]),
        pvalues=result["pvalues"],
        note=result["note"],
    )


#: Settings of ``particles_vs_moments``: (label, options shared by both engines).
ENGINE_CASES = (
    ("w=3 constant base", {"cfg": 3.0, "fidelity": 0.5}),
    ("w=7.5 cosine drop=0.2 continue", {"cfg": 7.5, "schedule": "cosine", "fidelity": 0.5, "drop": 0.2,
                                        "finetune": "continue"}),
    ("w=5 linear ddpm rho=1 drop=0.5", {"cfg": 5.0, "schedule": "linear", "sampler": "ddpm", "fidelity": 1.0,
                                        "drop": 0.5, "finetune": "continue"}),
    ("w=1 real=0.2 rho=0.8", {"cfg": 1.0, "fidelity": 0.8, "real_fraction": 0.2}),
)


@_check("particles_vs_moments", "Particle engine (guided-sampler chain) against the moments engine")
def _particles_vs_moments(*, size: float, rng) -> Comparison:
    """Replicate means of the particle chain's trait mean and variance against the moments engine.

    Both engines get the same model (base ``p_c = N(1, 1)``, ``p_u = N(0, 1.5)``, data
    ``N(1, 1)``), schedule, sampler, fidelities and finetuning mode; the moments engine
    takes the finite-``N`` refit in expectation (``population=N``). What remains is an
    ``O(1/N)`` nonlinearity bias, well below the standard errors at these sizes.
    Standard errors from the replicates.
    """
    from qtm.particles import ChainSetup, simulate_chain
    from qtm.recursion import simulate_moments

    n = _count(10_000, size, 500)
    replicates = _count(16, size, 8)
    iterations, steps = 5, 25
    model = {"cond_mean": 1.0, "cond_var": 1.0, "uncond_mean": 0.0, "uncond_var": 1.5, "data_mean": 1.0,
             "data_var": 1.0}
    labels, observed, se, expected, x, series = [], [], [], [], [], []
    for name, options in ENGINE_CASES:
        setup = ChainSetup.build(population=n, iterations=iterations, steps=steps, **model, **options)
        result = simulate_chain(setup, replicates=replicates, seed=int(rng.integers(2**31)))
        theory = simulate_moments(**model, **options, population=n, iterations=iterations, steps=steps)
        for stat, values, predicted in (("mean", result.mean, theory.mean), ("var", result.var, theory.var)):
            average, error = _mean_se(values[:, :, 0], axis=0)
            labels += [f"{name} {stat} t={t}" for t in range(iterations)]
            observed.append(average)
            se.append(error)
            expected.append(predicted)
            x.append(np.arange(iterations))
            series += [f"{name} {stat}"] * iterations
    return Comparison(
        tuple(labels), np.concatenate(observed), np.concatenate(se), np.concatenate(expected),
        x=np.concatenate(x), series=tuple(series), dof=replicates - 1,
        note=f"N={n}, {replicates} replicates, {iterations} iterations, {steps} steps; p_c=N(1,1), p_u=N(0,1.5)",
    )  # fmt: skip


def run_checks(
    names=None,
    *,
    size: float = 1.0,
    seed: int = 0,
    out=None,
    false_failure_rate: float = FALSE_FAILURE_RATE,
    echo: Callable[[str], None] | None = None,
) -> list[CheckResult]:
    """Run checks of the suite, write one plot per check and a ``verify.json`` summary into ``out``.

    Parameters
    ----------
    names : sequence of str, optional
        Checks to run (all of :data:`CHECKS` by default), in the suite's order.
    size : float
        Factor on every sample size (1: the full suite; small values for a smoke run,
        which keeps the false-failure rate but loses power).
    seed : int
        Each check draws from ``SeedSequence([seed, crc32(name)])``, so a check's
        result does not depend on which other checks run.
    out : path, optional
        Folder for the plots and ``verify.json``; ``None`` writes nothing.
    false_failure_rate : float
        The designed chance that one check fails with a correct simulator and formula.
    echo : callable, optional
        Receives one line per check as it finishes.

    Returns
    -------
    list of CheckResult
    """
    size = float(check_positive(size, "size"))
    check_unit_interval(false_failure_rate, "false_failure_rate", closed_left=False)
    names = list(CHECKS) if names is None else list(names)
    unknown = [name for name in names if name not in CHECKS]
    if unknown:
        raise QTMError(f"unknown check {unknown[0]!r}; choose from: {', '.join(CHECKS)}")
    out = None if out is None else Path(out)
    results = []
    for name in [n for n in CHECKS if n in names]:
        check = CHECKS[name]
        why_not = check.unavailable()
        if why_not is not None:
            result = CheckResult(name, check.title, "skipped", None, None, None, why_not)
        else:
            rng = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode())]))
            try:
                comparison = check.compute(size=size, rng=rng)
                verdict = evaluate(comparison, false_failure_rate=false_failure_rate)
            except QTMError as error:
                # One check that cannot run (e.g. its subprocess failed) must not hide the others' results.
                comparison = verdict = None
                result = CheckResult(name, check.title, "error", None, None, None, str(error))
            if verdict is not None:
                plot = None if out is None else str(plot_comparison(comparison, verdict, out / f"{name}.png",
                                                                    title=check.title))  # fmt: skip
                status = "pass" if verdict.passed else "fail"
                result = CheckResult(name, check.title, status, verdict, comparison, plot, comparison.note)
        results.append(result)
        if echo is not None:
            echo(format_result(result))
    if out is not None:
        _write_summary(results, out / "verify.json", size=size, seed=seed, false_failure_rate=false_failure_rate)
    return results


def format_result(result: CheckResult) -> str:
    """One line: name, status, the largest |z|, the adjusted p-value and the designed rate.

    Examples
    --------
    >>> format_result(CheckResult("drift", "Drift", "skipped", None, None, None, "not today"))
    'drift                    SKIPPED  not today'
    """
    if result.verdict is None:
        return f"{result.name:<24} {result.status.upper():<7}  {result.note}"
    v = result.verdict
    z = "   -  " if math.isnan(v.max_abs_z) else f"{v.max_abs_z:6.2f}"
    where = f"  -> {result.plot}" if result.plot else ""
    return (
        f"{result.name:<24} {result.status.upper():<7}  max|z| {z}  p_adj {v.adjusted_pvalue:.3g} "
        f"over {v.count} statistics (designed false-failure rate {v.false_failure_rate:g}){where}"
    )


def plot_comparison(comparison: Comparison, verdict: Verdict, path, *, title: str) -> Path:
    """Plot a comparison: trajectories and their z-scores, or a QQ-plot of the z-scores.

    With ``comparison.x`` the left panel shows each series' analytic curve (line) and
    simulated values (points, ± 2 SE) and the right panel each point's z-score with the
    check's failure bounds; without it, a QQ-plot of the z-scores against N(0, 1).

    Examples
    --------
    >>> import tempfile
    >>> c = Comparison(("a", "b"), np.array([0.1, -0.2]), np.array([0.1, 0.1]), np.array([0.0, 0.0]))
    >>> path = plot_comparison(c, evaluate(c), Path(tempfile.mkdtemp()) / "demo.png", title="demo")
    >>> path.stat().st_size > 0
    True
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qtm.io import atomic_path

    z = comparison.zscores()
    # The |z| beyond which the Bonferroni-adjusted p-value falls below the rate.
    tail = verdict.false_failure_rate / (2 * verdict.count)
    bound = float(stats.norm.isf(tail) if comparison.dof is None else stats.t.isf(tail, comparison.dof))
    if comparison.x is not None:
        fig, (ax, z_ax) = plt.subplots(1, 2, figsize=(10.0, 4.4), layout="constrained")
        series = np.asarray(comparison.series, dtype=object)
        x_all = np.asarray(comparison.x)
        for name in dict.fromkeys(comparison.series):
            pick = series == name
            x = x_all[pick]
            line = ax.plot(x, np.asarray(comparison.expected)[pick], "-", lw=1, label=name)[0]
            ax.errorbar(
                x, np.asarray(comparison.observed)[pick], yerr=2 * np.asarray(comparison.standard_error)[pick],
                fmt="o", ms=3, color=line.get_color(),
            )  # fmt: skip
            z_ax.plot(x, z[pick], "o-", ms=3, lw=0.8, color=line.get_color())
        ax.set(xlabel="iteration", ylabel="value (line: analytic, points: simulated ± 2 SE)")
        ax.legend(fontsize=6)
        z_ax.set(xlabel="iteration", ylabel="z-score (simulated - analytic) / SE")
    else:
        fig, z_ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
        ordered = np.sort(z)
        theory = stats.norm.ppf((np.arange(1, z.size + 1) - 0.5) / z.size)
        z_ax.plot(theory, ordered, "o")
        limit = max(3.0, float(np.abs(z).max(initial=0.0)), float(np.abs(theory).max(initial=0.0)))
        z_ax.plot([-limit, limit], [-limit, limit], "k--", lw=0.8, label="z ~ N(0, 1)")
        z_ax.set(xlabel="normal quantile", ylabel="z-score (simulated - analytic) / SE")
    for sign in (-1, 1):
        z_ax.axhline(sign * bound, color="C3", ls=":", lw=0.8, label="failure bound" if sign > 0 else None)
    z_ax.legend(fontsize=7)
    status = "pass" if verdict.passed else "FAIL"
    fig.suptitle(f"{title}\n{status}: p_adj={verdict.adjusted_pvalue:.3g} over {verdict.count} statistics "
                 f"(designed false-failure rate {verdict.false_failure_rate:g})", fontsize=9)  # fmt: skip
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    finally:
        plt.close(fig)
    return path


def _write_summary(results, path: Path, *, size, seed, false_failure_rate) -> None:
    from qtm.io import write_json
    from qtm.provenance import provenance

    rows = []
    for r in results:
        row = {"name": r.name, "title": r.title, "status": r.status, "note": r.note, "plot": r.plot}
        if r.comparison is not None:
            c = r.comparison
            columns = zip(c.labels, c.observed, c.standard_error, c.expected, c.zscores(), strict=True)
            row["statistics"] = [
                {"label": label, "observed": o, "standard_error": s, "expected": e, "z": z}
                for label, o, s, e, z in columns
            ]
            row["pvalues"] = dict(c.pvalues)
            row["verdict"] = r.verdict.__dict__
        rows.append(row)
    params = {"size": size, "false_failure_rate": false_failure_rate}
    write_json(path, {"checks": rows, "provenance": provenance(params, seed=seed)})
