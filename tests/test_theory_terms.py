"""The measured structure of finetuning (issue 13) in both engines: var_fidelity, var_shift, process_noise.

Exact checks: the fused kernel against the operators, the log-variance recursion's closed
forms, the particle kernels against their NumPy reference draw for draw. Statistical checks
run with fixed seeds; each docstring states the chance that a correct engine fails with a
random seed (normal or chi-square approximation, union bound over the comparisons).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from qtm.errors import QTMError
from qtm.gaussian import add_mutation, inherit, mix, refit_expectation
from qtm.params import uncond_share
from qtm.particles import ChainSetup, Finetune, Fitness, QGSetup, simulate_chain, simulate_qg
from qtm.recursion import simulate_moments
from qtm.sampler_map import guided_moments
from qtm.simulate import build_grid, simulate_grid

BASE = dict(cond_mean=1.0, cond_var=1.0, uncond_mean=0.0, uncond_var=4.0, data_mean=1.0, data_var=0.5)


def hand_iterated(point, *, iterations):
    """CONTRIBUTING.md's loop with the new terms, one operator call at a time; the unconditional
    branch takes the share s = min(1, rho_u / rho) of rho_v and mu, written out here."""
    rho = point["fidelity"]
    rho_u = point.get("uncond_fidelity", point.get("drop", 0.0) * rho)
    share = 0.0 if rho_u == 0 else min(1.0, rho_u / rho) if rho > 0 else 1.0
    rho_v, mu = point.get("var_fidelity"), point.get("var_shift", 0.0)
    base_c = (point["cond_mean"], point["cond_var"])
    base_u = (point["uncond_mean"], point["uncond_var"])
    real = (point["data_mean"], point["data_var"])
    cond, uncond, data = base_c, base_u, real
    means, variances = [], []
    for _ in range(iterations):
        prior_c, prior_u = (cond, uncond) if point["finetune"] == "continue" else (base_c, base_u)
        cond = inherit(*prior_c, *data, fidelity=rho, var_fidelity=rho_v, var_shift=mu)
        uncond = inherit(*prior_u, *data, fidelity=rho_u, var_fidelity=None if rho_v is None else share * rho_v,
                         var_shift=share * mu)
        generated = guided_moments(*cond, *uncond, cfg=point["cfg"], schedule=point["schedule"],
                                   sampler=point["sampler"], steps=point["steps"], eta=point["eta"])
        generated = add_mutation(*generated, mutation_var=point["mutation"])
        means.append(float(generated.mean))
        variances.append(float(generated.var))
        if point.get("population") is not None:
            generated = refit_expectation(*generated, population=point["population"])
        data = mix(*generated, *real, rate=point["real_fraction"])
    return np.array(means), np.array(variances)


COMMON = dict(BASE, schedule="constant", eta=0.0, steps=12, real_fraction=0.0, mutation=0.0)
POINTS = [
    dict(COMMON, cfg=7.5, sampler="ddim", fidelity=0.7, var_fidelity=0.5, var_shift=0.3, finetune="base"),
    dict(COMMON, cfg=3.0, sampler="ddpm", schedule="cosine", fidelity=0.6, drop=0.2, var_fidelity=0.3,
         var_shift=-0.2, finetune="continue", real_fraction=0.2, mutation=0.01, population=40),
    dict(COMMON, cfg=2.0, sampler="ddim", eta=0.5, fidelity=0.7, uncond_fidelity=0.88, var_fidelity=0.6,
         var_shift=0.1, finetune="continue"),
    dict(COMMON, cfg=5.0, sampler="ddim", fidelity=0.5, uncond_fidelity=0.2, var_shift=0.25, finetune="base",
         real_fraction=0.1),
    dict(COMMON, cfg=2.0, sampler="tilt", fidelity=0.8, drop=0.5, var_fidelity=0.4, var_shift=0.2,
         finetune="continue"),
    dict(COMMON, cfg=1.5, sampler="ddim", fidelity=0.0, uncond_fidelity=0.5, var_fidelity=0.7, var_shift=0.1,
         finetune="continue"),
]


@pytest.mark.parametrize("point", POINTS, ids=lambda p: f"{p['sampler']}-{p['finetune']}-{p.get('var_fidelity')}")
def test_kernel_and_operators_carry_the_new_terms(point):
    """The fused kernel (ddim, ddpm) and the operators path (tilt) against hand-iterated operator calls."""
    mean, var = hand_iterated(point, iterations=6)
    traj = simulate_moments(iterations=6, **point)
    np.testing.assert_allclose(traj.mean, mean, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(traj.var, var, rtol=1e-10, atol=1e-13)


def test_a_grid_mixing_linear_and_log_variance_points_matches_separate_runs():
    """NaN var_fidelity marks the linear move per point (a table's gaps); odd sizes cross the kernel's blocks."""
    var_fidelity = np.array([np.nan, 0.2, 0.5, np.nan, 1.0, 0.0, 0.7])[:, None]
    var_shift = np.array([0.0, 0.3, -0.5])[None, :]
    traj = simulate_moments(**BASE, cfg=4.0, fidelity=0.6, drop=0.3, var_fidelity=var_fidelity, var_shift=var_shift,
                            finetune="continue", iterations=4, steps=10)
    assert traj.var.shape == (7, 3, 4)
    for i in range(7):
        for j in range(3):
            given = None if np.isnan(var_fidelity[i, 0]) else var_fidelity[i, 0]
            single = simulate_moments(**BASE, cfg=4.0, fidelity=0.6, drop=0.3, var_fidelity=given,
                                      var_shift=var_shift[0, j], finetune="continue", iterations=4, steps=10)
            np.testing.assert_array_equal(traj.var[i, j], single.var)
            np.testing.assert_array_equal(traj.mean[i, j], single.mean)
    plain = simulate_moments(**BASE, cfg=4.0, fidelity=0.6, drop=0.3, finetune="continue", iterations=4, steps=10)
    np.testing.assert_array_equal(traj.var[0, 0], plain.var)


@pytest.mark.parametrize(("rho_v", "mu", "population"), [(0.5, 0.3, None), (0.3, 0.1, 50), (0.7, -0.2, 20)])
def test_log_variance_fixed_point_under_base_prior_finetuning(rho_v, mu, population):
    """CFG 1 (the tilt is the conditional model), prior the base: L_t = ln v_t obeys
    L_{t+1} = ln v_B + rho_v (L_t + ln c - ln v_B) + mu with c = (N-1)/N, so
    L_t = L* + rho_v^t (L_0 - L*),  L* = ln v_B + (rho_v ln c + mu) / (1 - rho_v),
    L_0 = ln v_B + rho_v (ln v_d - ln v_B) + mu."""
    v_base, v_data, iterations = 1.5, 0.02, 12
    traj = simulate_moments(cond_mean=0.0, cond_var=v_base, uncond_mean=0.0, uncond_var=4.0, data_mean=0.0,
                            data_var=v_data, cfg=1.0, fidelity=0.5, var_fidelity=rho_v, var_shift=mu,
                            finetune="base", iterations=iterations, sampler="tilt", population=population)
    shrink = 1.0 if population is None else (population - 1) / population
    fixed = math.log(v_base) + (rho_v * math.log(shrink) + mu) / (1 - rho_v)
    first = math.log(v_base) + rho_v * (math.log(v_data) - math.log(v_base)) + mu
    t = np.arange(iterations)
    np.testing.assert_allclose(np.log(traj.var), fixed + rho_v**t * (first - fixed), rtol=1e-12, atol=1e-12)


def test_continued_finetuning_accumulates_the_error():
    """CFG 1, prior the previous model: L_{t+1} = L_t + rho_v ln c + mu, the error accumulates linearly
    (the issue's ln(v_c / v_base) growing over iterations at CFG 1)."""
    rho_v, mu, population = 0.4, 0.25, 30
    traj = simulate_moments(cond_mean=0.0, cond_var=1.5, uncond_mean=0.0, uncond_var=4.0, data_mean=0.0,
                            data_var=0.5, cfg=1.0, fidelity=0.5, var_fidelity=rho_v, var_shift=mu,
                            finetune="continue", iterations=8, sampler="tilt", population=population)
    first = math.log(1.5) + rho_v * (math.log(0.5) - math.log(1.5)) + mu
    step = rho_v * math.log((population - 1) / population) + mu
    np.testing.assert_allclose(np.log(traj.var), first + step * np.arange(8), rtol=1e-12)


def test_uncond_share():
    np.testing.assert_array_equal(uncond_share([0.5, 0.5, 0.7, 0.0, 0.0], [0.1, 0.0, 0.88, 0.3, 0.0]),
                                  [0.2, 0.0, 1.0, 1.0, 0.0])


def test_process_noise_is_checked_and_leaves_the_expectation():
    """The moments engine gives expectations: with real_fraction 0 no variance depends on a mean."""
    kwargs = dict(BASE, cfg=3.0, fidelity=0.5, iterations=3, steps=10)
    np.testing.assert_array_equal(simulate_moments(**kwargs, process_noise=0.5).var, simulate_moments(**kwargs).var)
    with pytest.raises(QTMError, match="process_noise"):
        simulate_moments(**kwargs, process_noise=-1.0)
    with pytest.raises(QTMError, match="var_fidelity"):
        simulate_moments(**kwargs, var_fidelity=[0.5, 1.5])


def test_qtm_simulate_grid_carries_the_new_columns():
    points, axes = build_grid({"cfg": "1,4", "iterations": "3", "steps": "10", "var_fidelity": "0.5",
                               "var_shift": "0,0.2", "process_noise": "0.1"})
    table = simulate_grid(points, axes).frame
    assert {"var_fidelity", "var_shift", "process_noise"} <= set(table.columns)
    row = table[(table.cfg == 4.0) & (table.var_shift == 0.2)].sort_values("iteration")
    direct = simulate_moments(**{k: v[0] for k, v in axes.items()}, cfg=4.0, var_fidelity=0.5, var_shift=0.2,
                              iterations=3, steps=10)
    np.testing.assert_array_equal(row["var"].to_numpy(), direct.var)
    default, _ = build_grid({"cfg": "1", "iterations": "2", "steps": "10"})
    assert default["var_fidelity"].isna().all()  # NaN: the linear move
    assert len(simulate_grid(default, axes).frame) == 2


# --- the particle engine -------------------------------------------------------------------

FINETUNES = [
    Finetune(0.7, 0.3, None, "continue", 0.5, 0.2, 0.1),
    Finetune(0.6, 0.0, 0.9, "base", 0.3, -0.3, 0.2),
    Finetune(0.5, 0.2, None, "base", None, 0.4, 0.0),
]


@pytest.mark.parametrize("finetune", FINETUNES, ids=["continue", "base-free-rho-u", "linear-shift"])
def test_qg_kernel_matches_reference_with_the_new_terms(finetune):
    setup = QGSetup(population=150, generations=3, dims=2, data_mean=[0.5, -1.0], data_var=[1.0, 2.0],
                    fitness=Fitness("tilt", cfg=3.0), mutation=[0.1, 0.0], real_fraction=0.2, finetune=finetune,
                    uncond_var=3.0)
    fast = simulate_qg(setup, replicates=5, seed=11)
    slow = simulate_qg(setup, replicates=5, seed=11, kernel="numpy")
    np.testing.assert_allclose(fast.mean, slow.mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fast.var, slow.var, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("finetune", ["base", "continue"])
def test_chain_kernel_matches_reference_with_the_new_terms(finetune):
    setup = ChainSetup.build(population=60, iterations=3, modes=3, dims=2, cfg=4.0, schedule="cosine", steps=6,
                             eta=0.5, drop=0.3, fidelity=0.8, finetune=finetune, mutation=0.01, real_fraction=0.25,
                             uncond_var=2.0, var_fidelity=0.4, var_shift=0.3, process_noise=0.2)
    fast = simulate_chain(setup, replicates=3, seed=5)
    slow = simulate_chain(setup, replicates=3, seed=5, kernel="numpy")
    np.testing.assert_allclose(fast.mean, slow.mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fast.var, slow.var, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fast.occupancy, slow.occupancy, atol=1e-12)


def _z_within(sample, expected, *, z=4.0, slack=0.0):
    sample = np.asarray(sample, dtype=float)
    error = sample.std(ddof=1) / math.sqrt(sample.size)
    assert abs(sample.mean() - expected) <= z * error + slack, (sample.mean(), expected, error)


@pytest.mark.parametrize("case", [
    {"cfg": 1.0, "fidelity": 0.5, "var_fidelity": 0.5, "var_shift": 0.3, "finetune": "continue"},
    {"cfg": 3.0, "fidelity": 0.7, "uncond_fidelity": 0.88, "var_fidelity": 0.3, "var_shift": 0.2,
     "uncond_var": 2.0},
    {"cfg": 2.0, "fidelity": 0.6, "drop": 0.2, "var_shift": 0.2, "finetune": "continue", "uncond_var": 3.0,
     "process_noise": 0.05},
], ids=["cfg1-continue", "free-rho-u", "linear-shift-noise"])
def test_particle_means_agree_with_moments_engine_with_the_new_terms(case):
    """Means over 150 replicates of the trait mean and variance vs :func:`simulate_moments` (M = 1).

    As tests/test_particles.py: 4 standard errors plus 2 % of the variance (0.02 on the mean)
    for the O(1/N) effects the moments engine leaves out (here also E[ln v] < ln E[v] of the
    refitted variance, about rho_v / N). The process noise has mean 0 and real_fraction is 0,
    so the expectations are the moments engine's. 3 iterations x 2 statistics at 4 SE:
    false-failure rate < 5e-4 per case.
    """
    n, iterations, steps = 300, 3, 10
    moments = simulate_moments(cond_mean=0.0, cond_var=1.0, uncond_mean=0.0, uncond_var=case.get("uncond_var", 1.0),
                               data_mean=0.0, data_var=1.0, iterations=iterations, steps=steps, population=n,
                               **{k: v for k, v in case.items() if k != "uncond_var"})
    setup = ChainSetup.build(population=n, iterations=iterations, steps=steps, cond_mean=0.0, cond_var=1.0,
                             uncond_mean=0.0, **case)
    result = simulate_chain(setup, replicates=150, seed=23)
    for t in range(iterations):
        _z_within(result.mean[:, t, 0], moments.mean[t], slack=0.02)
        _z_within(result.var[:, t, 0] * n / (n - 1), moments.var[t], slack=0.02 * moments.var[t])


def test_process_noise_spreads_the_replicates_and_is_carried_forward():
    """Per-replicate finetuning noise of SD sigma on the conditional mean, finetune from the base (rho = 0.5),
    CFG 1, DDIM (the generated mean is alpha_t m_c + const, alpha_t the map's slope at iteration t's variance):

    Var(mean_0) = alpha_0^2 (rho^2 v_d / N + sigma^2) + v_0 / N,
    Var(mean_1) = alpha_1^2 (rho^2 Var(mean_0) + sigma^2) + v_1 / N

    (the second iteration's data set is the first's output: its noise is carried forward). The
    sample variances of 400 replicate means against these, each by a two-sided chi-square test at
    level 1e-4 with 3 % slack for the refitted variance's own scatter (O(1/sqrt N) in alpha):
    false-failure rate < 2e-4. Without process noise the spread is the sampling term alone."""
    n, rho, sigma, steps, reps = 200, 0.5, 0.3, 10, 400
    setup = ChainSetup.build(population=n, iterations=2, steps=steps, cfg=1.0, fidelity=rho, data_var=1.0,
                             cond_var=1.0, process_noise=sigma)
    result = simulate_chain(setup, replicates=reps, seed=31)
    moments = simulate_moments(cond_mean=0.0, cond_var=1.0, uncond_mean=0.0, uncond_var=1.0, data_mean=0.0,
                               data_var=1.0, cfg=1.0, fidelity=rho, iterations=2, steps=steps, population=n)
    cond_var = [1.0 + rho * ((n - 1) / n - 1.0), 1.0 + rho * (moments.var[0] * (n - 1) / n - 1.0)]

    def slope(v):
        high, low = (guided_moments(m, v, 0.0, 1.0, cfg=1.0, steps=steps).mean for m in (1.0, 0.0))
        return float(high - low)

    var0 = slope(cond_var[0]) ** 2 * (rho**2 / n + sigma**2) + moments.var[0] / n
    var1 = slope(cond_var[1]) ** 2 * (rho**2 * var0 + sigma**2) + moments.var[1] / n
    low, high = stats.chi2.ppf([5e-5, 1 - 5e-5], reps - 1) / (reps - 1)
    for t, expected in enumerate((var0, var1)):
        ratio = result.mean[:, t, 0].var(ddof=1) / expected
        assert 0.97 * low <= ratio <= 1.03 * high, (t, ratio, low, high)
    quiet = simulate_chain(ChainSetup.build(population=n, iterations=1, steps=steps, cfg=1.0, fidelity=rho),
                           replicates=reps, seed=31)
    assert quiet.mean[:, 0, 0].var(ddof=1) < 0.1 * var0


def test_particle_sweep_passes_the_new_terms(tmp_path):
    import pandas as pd

    from qtm.particles.sweep import simulate_particles

    # None (not NaN) for the default: the provenance is JSON, which has no NaN.
    points = pd.DataFrame({"cfg": [3.0, 3.0], "iterations": [2, 2], "steps": [6, 6],
                           "var_fidelity": pd.Series([None, 0.5], dtype=object), "var_shift": [0.0, 0.2],
                           "process_noise": [0.0, 0.1]})
    options = {"population": 40, "replicates": 2, "seed": 3, "data_mean": 0.0, "data_var": 1.0, "cond_mean": 0.0,
               "cond_var": 1.0, "uncond_mean": 0.0, "uncond_var": 1.0}
    table = pd.read_csv(simulate_particles(points, options=options, out=tmp_path / "sweep.csv"))
    given = table[table.var_fidelity == 0.5].sort_values(["replicate", "iteration"])
    direct = simulate_chain(ChainSetup.build(population=40, iterations=2, steps=6, cfg=3.0, var_fidelity=0.5,
                                             var_shift=0.2, process_noise=0.1), replicates=2, seed=3)
    np.testing.assert_array_equal(given["mean"].to_numpy(), direct.mean.ravel())
    plain = table[table.var_fidelity.isna()].sort_values(["replicate", "iteration"])
    default = simulate_chain(ChainSetup.build(population=40, iterations=2, steps=6, cfg=3.0), replicates=2, seed=3)
    np.testing.assert_array_equal(plain["var"].to_numpy(), default.var.ravel())


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"var_fidelity": 1.5}, "var_fidelity must lie in [0, 1]"),
    ({"process_noise": -0.1}, "process_noise must be >= 0"),
    ({"var_shift": "a"}, "var_shift must be a number"),
])
def test_bad_terms_are_one_line_errors(kwargs, message):
    with pytest.raises(QTMError) as caught:
        ChainSetup.build(population=10, **kwargs)
    assert message in str(caught.value) and "\n" not in str(caught.value)
