"""The particle engine: Numba against its NumPy reference, analytic quantitative genetics, the moments engine.

Statistical tests run with fixed seeds, so each either always passes or always fails;
the false-failure rate stated in a docstring is the chance that a correct simulator
would fail with a random seed (from the normal approximation, union bound over the
comparisons). Sizes are small so that the whole file runs in seconds once the kernels
are compiled (the first run compiles them into NUMBA_CACHE_DIR).
"""

from __future__ import annotations

import dataclasses
import math

import numba
import numpy as np
import pytest
from scipy import stats

from qtm.errors import QTMError
from qtm.particles import ChainSetup, Finetune, Fitness, QGSetup, simulate_chain, simulate_qg
from qtm.particles.counter_rng import _fill_normals
from qtm.particles.population import _exp_nonpositive, _resample_indices
from qtm.particles.reference import _exp_nonpositive as _exp_nonpositive_reference
from qtm.particles.reference import _normals
from qtm.recursion import simulate_moments


def _z_within(sample, expected, *, z=4.0, slack=0.0):
    """Mean of independent replicates within z standard errors (plus a stated slack) of ``expected``."""
    sample = np.asarray(sample, dtype=float)
    error = sample.std(ddof=1) / math.sqrt(sample.size)
    assert abs(sample.mean() - expected) <= z * error + slack, (sample.mean(), expected, error)


# --- the random numbers ---------------------------------------------------------------


def test_normals_are_standard_normal_and_shared_with_the_reference():
    """Ziggurat normals: KS test and tail mass on 400,000 draws; false-failure rate about 2e-3."""
    out = np.empty(400_000)
    _fill_normals(np.uint64(7), np.uint64(3 << 40), out)
    assert stats.kstest(out, "norm").pvalue > 1e-3
    tail = (np.abs(out) > 3.0).mean()  # 1080 expected; covers the ziggurat's tail and wedges
    expected = 2 * stats.norm.sf(3.0)
    assert abs(tail - expected) < 4 * math.sqrt(expected / out.size)
    reference = _normals(np.array([np.uint64(7)]), np.array([np.uint64(3 << 40)]), 0, out.size)[0]
    np.testing.assert_allclose(reference, out, rtol=1e-12, atol=1e-12)


def test_polynomial_exp_is_accurate_and_flushes_below_its_floor():
    x = np.concatenate([-np.linspace(0.0, 699.0, 20_001), -np.random.default_rng(0).exponential(2.0, 5_000)])
    fast = np.array([_exp_nonpositive(v) for v in x])
    np.testing.assert_allclose(fast, np.exp(x), rtol=5e-16, atol=0.0)
    np.testing.assert_allclose(_exp_nonpositive_reference(x), fast, rtol=5e-16, atol=0.0)
    assert _exp_nonpositive(0.0) == 1.0
    for v in (-700.5, -1e6, -np.inf, np.nan):
        assert _exp_nonpositive(v) == 0.0
        assert _exp_nonpositive_reference(np.array([v]))[0] == 0.0


def test_systematic_resampling_gives_each_parent_its_share_rounded():
    """Systematic resampling: parent j gets floor or ceil of N w_j / Σw children, in order."""
    n = 1_000
    rng = np.random.default_rng(4)
    for iteration in range(20):
        log_w = rng.normal(0.0, 3.0, n)
        log_w[rng.random(n) < 0.1] = -np.inf
        index = np.empty(n, dtype=np.int64)
        _resample_indices(np.uint64(3), iteration, log_w, True, index, np.empty(n), np.empty(n),
                          np.empty(n + 1, dtype=np.int64))
        assert np.all(np.diff(index) >= 0)
        share = n * np.exp(log_w - log_w.max()) / np.exp(log_w - log_w.max()).sum()
        counts = np.bincount(index, minlength=n)
        assert np.all(counts >= np.floor(share - 1e-9)) and np.all(counts <= np.ceil(share + 1e-9))


# --- Numba against the NumPy reference --------------------------------------------------


@pytest.mark.parametrize("kind", ["neutral", "stabilizing", "truncation", "tilt"])
@pytest.mark.parametrize("resampling", ["systematic", "multinomial"])
def test_qg_kernel_matches_reference_draw_for_draw(kind, resampling):
    setup = QGSetup(population=150, generations=3, dims=2, data_mean=[0.5, -1.0], data_var=[1.0, 2.0],
                    fitness=Fitness(kind, theta=1.0, omega2=2.0, keep=0.3, cfg=3.0), environmental_var=0.5,
                    mutation=[0.1, 0.0], resampling=resampling, real_fraction=0.2,
                    finetune=Finetune(0.7, 0.3, None, "continue"), uncond_var=3.0)
    fast = simulate_qg(setup, replicates=5, seed=11)
    slow = simulate_qg(setup, replicates=5, seed=11, kernel="numpy")
    np.testing.assert_allclose(fast.mean, slow.mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fast.var, slow.var, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("finetune", ["base", "continue"])
def test_chain_kernel_matches_reference_draw_for_draw(finetune):
    setup = ChainSetup.build(population=60, iterations=2, modes=3, dims=2, cfg=4.0, schedule="cosine", steps=6,
                             eta=0.5, drop=0.3, fidelity=0.8, finetune=finetune, mutation=0.01,
                             real_fraction=0.25, uncond_var=2.0)
    fast = simulate_chain(setup, replicates=3, seed=5)
    slow = simulate_chain(setup, replicates=3, seed=5, kernel="numpy")
    np.testing.assert_allclose(fast.mean, slow.mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fast.var, slow.var, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fast.occupancy, slow.occupancy, atol=1e-12)


@pytest.mark.parametrize("workflow", ["accumulate", "accumulate-subsample"])
@pytest.mark.parametrize(("kind", "resampling"), [("truncation", "systematic"), ("tilt", "multinomial")])
def test_pooled_workflows_match_reference_draw_for_draw(workflow, kind, resampling):
    """Both models select from (or refit to) the pool, or N drawn from it, identically in both implementations.

    Iteration 0 trains on D_0 in every workflow, and the subsample has a counter block of its own,
    so the first iteration is exactly the replace workflow's."""
    qg = QGSetup(population=120, generations=3, dims=2, data_mean=[0.5, -1.0], data_var=[1.0, 2.0],
                 fitness=Fitness(kind, keep=0.3, cfg=3.0), environmental_var=0.5, mutation=[0.1, 0.0],
                 resampling=resampling, real_fraction=0.2, finetune=Finetune(0.7, 0.3, None, "continue"),
                 uncond_var=3.0, data_workflow=workflow)
    chain = ChainSetup.build(population=50, iterations=3, modes=2, dims=2, cfg=4.0, steps=5, eta=0.5, drop=0.3,
                             fidelity=0.8, finetune="continue", real_fraction=0.25, data_workflow=workflow)
    for setup, run in ((qg, simulate_qg), (chain, simulate_chain)):
        fast = run(setup, replicates=3, seed=5)
        slow = run(setup, replicates=3, seed=5, kernel="numpy")
        np.testing.assert_allclose(fast.mean, slow.mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(fast.var, slow.var, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(fast.occupancy, slow.occupancy, atol=1e-12)
        replaced = run(dataclasses.replace(setup, data_workflow="replace"), replicates=3, seed=5)
        np.testing.assert_array_equal(fast.var[:, 0], replaced.var[:, 0])
        assert not np.array_equal(fast.var[:, 1:], replaced.var[:, 1:])


def _on_one_and_two_threads(run):
    """``run()`` with Numba on one thread, then on two (as many as there are, up to two)."""
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = run()
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        return one, run()
    finally:
        numba.set_num_threads(before)


def test_qg_results_do_not_depend_on_threads():
    setup = QGSetup(population=300, generations=4, fitness=Fitness("stabilizing", omega2=1.0), mutation=0.1)
    one, two = _on_one_and_two_threads(lambda: simulate_qg(setup, replicates=6, seed=3))
    np.testing.assert_array_equal(one.var, two.var)
    np.testing.assert_array_equal(simulate_qg(setup, replicates=3, seed=3, replicate_offset=3).var, one.var[3:])


def test_results_do_not_depend_on_threads_or_chunking():
    setup = ChainSetup.build(population=50, iterations=2, modes=2, cfg=3.0, steps=5)
    one, two = _on_one_and_two_threads(lambda: simulate_chain(setup, replicates=4, seed=9))
    np.testing.assert_array_equal(one.mean, two.mean)
    np.testing.assert_array_equal(one.occupancy, two.occupancy)
    tail = simulate_chain(setup, replicates=2, seed=9, replicate_offset=2)
    np.testing.assert_array_equal(tail.mean, one.mean[2:])
    np.testing.assert_array_equal(tail.replicates, [2, 3])
    assert not np.array_equal(simulate_chain(setup, replicates=4, seed=10).mean, one.mean)


# --- the classic loop against analytic quantitative genetics -----------------------------


def test_breeders_equation():
    """R = h² S for one generation of selection on the phenotype; false-failure rate < 1e-4 (4 SE).

    v_g = v_e = 1 (h² = 1/2), Gaussian fitness with optimum θ=2, ω²=2 on z ~ N(0, 2):
    S = v_p θ / (v_p + ω²) = 1, so the offspring's mean breeding value is R = 1/2.
    """
    setup = QGSetup(population=2000, generations=1, environmental_var=1.0,
                    fitness=Fitness("stabilizing", theta=2.0, omega2=2.0))
    result = simulate_qg(setup, replicates=60, seed=1)
    _z_within(result.mean[:, 0, 0], 0.5 * 1.0, slack=2e-3)


def test_gaussian_selection_variance():
    """Variance after Gaussian selection v ω²/(v+ω²) = 0.5 (v = ω² = 1); false-failure rate < 1e-4.

    Systematic resampling copies the weighted population almost exactly; the slack of
    1 % covers its O(1/N) bias and the (N-1)/N of the initial sample's MLE variance.
    """
    setup = QGSetup(population=2000, generations=1, fitness=Fitness("stabilizing", omega2=1.0))
    result = simulate_qg(setup, replicates=60, seed=2)
    _z_within(result.var[:, 0, 0], 0.5, slack=0.005)


def test_truncation_selection():
    """Keep the top 20 %: mean shift i σ and variance factor 1 - i(i - x); false-failure rate < 1e-4.

    The top 400 of 2000 order statistics approximate the truncated Gaussian to O(1/N);
    the slack (1 % of each value) covers that.
    """
    q = 0.2
    x = stats.norm.isf(q)
    i = stats.norm.pdf(x) / q
    setup = QGSetup(population=2000, generations=1, fitness=Fitness("truncation", keep=q))
    result = simulate_qg(setup, replicates=60, seed=3)
    _z_within(result.mean[:, 0, 0], i, slack=0.01 * i)
    _z_within(result.var[:, 0, 0], 1 - i * (i - x), slack=0.01)


def test_mutation_selection_equilibrium():
    """Stabilizing selection + mutation settle at the root of v = c vω²/(v+ω²) + v_m, c = (N-1)/N.

    ω² = 1, v_m = 0.1, multinomial resampling (c is its expected variance loss); the
    statistic is each replicate's variance averaged over generations 40..59, so the
    replicates are independent. Slack 2 % for the O(1/N) nonlinearity; false-failure
    rate < 1e-4.
    """
    n, omega2, vm = 1000, 1.0, 0.1
    c = (n - 1) / n
    b = omega2 - c * omega2 - vm
    equilibrium = (-b + math.sqrt(b * b + 4 * vm * omega2)) / 2
    setup = QGSetup(population=n, generations=60, fitness=Fitness("stabilizing", omega2=omega2), mutation=vm,
                    resampling="multinomial")
    result = simulate_qg(setup, replicates=40, seed=4)
    _z_within(result.var[:, 40:, 0].mean(axis=1), equilibrium, slack=0.02 * equilibrium)


def test_drift_under_pure_resampling():
    """Neutral multinomial resampling: E[MLE var] falls by (N-1)/N per generation.

    The recorded variance after generation t has seen t+2 factors (the initial sample's
    MLE and t+1 resamplings). Nine generations, each at 4 SE: false-failure rate < 1e-3.
    """
    n = 20
    setup = QGSetup(population=n, generations=9, resampling="multinomial")
    result = simulate_qg(setup, replicates=3000, seed=5)
    for t in range(9):
        _z_within(result.var[:, t, 0], ((n - 1) / n) ** (t + 2))
    # systematic resampling with equal weights copies the population: no drift at all
    still = simulate_qg(QGSetup(population=n, generations=3, resampling="systematic"), replicates=5, seed=5)
    np.testing.assert_allclose(still.var[:, 2], still.var[:, 0], rtol=1e-12)


def test_extreme_selection_stays_finite():
    """Weights exp(-(z-θ)²/2ω²) underflow to 0 at ω² = 1e-12: log space keeps the best individual."""
    setup = QGSetup(population=500, generations=2, fitness=Fitness("stabilizing", theta=30.0, omega2=1e-12))
    result = simulate_qg(setup, replicates=3, seed=6)
    assert np.all(np.isfinite(result.mean))
    assert np.all(result.var < 1e-20)  # everyone descends from the one closest to θ
    assert np.all(result.mean > 2.0)
    strong = QGSetup(population=200, generations=3, fitness=Fitness("tilt", cfg=500.0), uncond_var=4.0)
    assert np.all(np.isfinite(simulate_qg(strong, replicates=2, seed=6).var))


def test_far_apart_modes_keep_finite_posteriors():
    """Mixture posteriors in log space: modes 2000 sd apart (densities underflow) give no NaN.

    The first iteration splits the particles between both modes; later ones may not
    (x_K ~ N(0, 1) is far from the noised mixture at SD's terminal noise level).
    """
    setup = ChainSetup.build(population=100, iterations=2, modes=2, data_mean=[[-1000.0], [1000.0]],
                             data_var=1.0, cfg=1.0, steps=10)
    result = simulate_chain(setup, replicates=3, seed=1)
    assert np.all(np.isfinite(result.var))
    np.testing.assert_allclose(result.occupancy.sum(axis=2), 1.0)
    assert np.all(np.abs(result.occupancy[:, 0] - 0.5) < 0.25)


# --- the chain against the moments engine -----------------------------------------------

MOMENT_CASES = [
    {"cfg": 1.0},
    {"cfg": 3.0, "schedule": "cosine", "drop": 0.2, "fidelity": 0.8, "finetune": "continue", "uncond_var": 4.0},
    {"cfg": 5.0, "schedule": "linear", "eta": 0.5, "real_fraction": 0.2, "mutation": 0.05, "uncond_mean": 0.5,
     "uncond_var": 2.0, "cond_mean": 1.0},
    {"cfg": 2.0, "schedule": "cutoff:0.5", "sampler": "ddpm", "drop": 1.0, "fidelity": 0.5,
     "uncond_var": 3.0},
]


@pytest.mark.parametrize("case", MOMENT_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_particle_means_agree_with_moments_engine(case):
    """Means over 150 replicates of the trait mean and variance vs :func:`simulate_moments` (M = 1).

    The particle variance is the population's MLE, so it is scaled by N/(N-1). Tolerance:
    4 standard errors plus 2 % of the variance (and 0.02 on the mean) for the O(1/N)
    effects the moments engine leaves out (a finite real sample D_0 and the map's
    nonlinearity in the refitted variance). 3 iterations x 2 statistics at 4 SE:
    false-failure rate < 5e-4 per case.
    """
    n, iterations, steps = 300, 3, 10
    moments = simulate_moments(
        cond_mean=case.get("cond_mean", 0.0), cond_var=1.0, uncond_mean=case.get("uncond_mean", 0.0),
        uncond_var=case.get("uncond_var", 1.0), data_mean=0.0, data_var=1.0, cfg=case["cfg"],
        schedule=case.get("schedule", "constant"), drop=case.get("drop", 0.0), fidelity=case.get("fidelity", 1.0),
        iterations=iterations, finetune=case.get("finetune", "base"), real_fraction=case.get("real_fraction", 0.0),
        sampler=case.get("sampler", "ddim"), steps=steps, eta=case.get("eta", 0.0), population=n,
        mutation=case.get("mutation", 0.0),
    )
    setup = ChainSetup.build(population=n, iterations=iterations, steps=steps, **case)
    result = simulate_chain(setup, replicates=150, seed=21)
    for t in range(iterations):
        _z_within(result.mean[:, t, 0], moments.mean[t], slack=0.02)
        _z_within(result.var[:, t, 0] * n / (n - 1), moments.var[t], slack=0.02 * moments.var[t])


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: QGSetup(population=1), "population must be >= 2"),
        (lambda: ChainSetup.build(population=1), "population must be >= 2"),
        (lambda: ChainSetup.build(modes=0), "modes must be >= 1"),
        (lambda: ChainSetup.build(data_var=-1.0), "data_var must be > 0"),
        (lambda: ChainSetup.build(sampler="tilt"), "model 'qg'"),
        (lambda: ChainSetup.build(fidelity=1.5), "fidelity must lie in [0, 1]"),
        (lambda: ChainSetup.build(data_mean=[1.0, 2.0, 3.0], dims=2), "data_mean"),
        (lambda: QGSetup(fitness=Fitness("truncation", keep=1e-6), population=10), "keeps nobody"),
        (lambda: simulate_qg(QGSetup(population=10), replicates=0, seed=0), "replicates must be >= 1"),
        (lambda: simulate_chain(ChainSetup.build(population=10), replicates=1, seed=-1), "seed must be >= 0"),
        (lambda: Fitness("directional"), "unknown fitness"),
        (lambda: QGSetup(generations=1 << 14), "generations must be < 16384"),
    ],
)
def test_bad_input_is_one_line_error(build, message):
    with pytest.raises(QTMError) as caught:
        build()
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
