"""Tests of the exact Gaussian operators: formulas, quadrature, Monte Carlo, validation.

Statistical checks draw with fixed seeds and accept ``|z| < 5`` for a z-score whose
standard error is estimated from the same sample; a correct formula fails one such
check with probability about 6e-7 (two-sided normal tail at 5), so the whole file's
~30 checks have a false-failure rate below 2e-5.
"""

import doctest

import numpy as np
import pytest
from scipy import integrate, stats

import qtm.gaussian
from qtm.errors import ImproperDistributionError, QTMError
from qtm.gaussian import (
    Moments,
    SelectionResult,
    add_mutation,
    central_truncation,
    cfg_tilt,
    directional_selection,
    inherit,
    mix,
    refit_expectation,
    stabilizing_selection,
    truncation_selection,
)

Z_LIMIT = 5.0


def z_mean(sample, expected):
    return (sample.mean() - expected) / (sample.std(ddof=1) / np.sqrt(sample.size))


def z_var(sample, expected):
    centred = sample - sample.mean()
    fourth = np.mean(centred**4)
    s2 = sample.var(ddof=1)
    return (s2 - expected) / np.sqrt((fourth - s2**2) / sample.size)


def z_weighted(sample, weights, mean, var):
    """z-scores of the self-normalised importance-sampling mean and variance (delta method)."""
    p = weights / weights.sum()
    m = np.sum(p * sample)
    centred = sample - m
    v = np.sum(p * centred**2)
    z_m = (m - mean) / np.sqrt(np.sum(p**2 * centred**2))
    z_v = (v - var) / np.sqrt(np.sum(p**2 * (centred**2 - v) ** 2))
    return z_m, z_v


def z_fraction(kept, n, expected):
    return (kept - n * expected) / np.sqrt(n * expected * (1 - expected))


def quadrature_moments(fitness, mean, var, points=None):
    """Exact moments of W(z) N(z; mean, var) by adaptive quadrature (the independent reference)."""
    sd = np.sqrt(var)
    lo, hi = mean - 14 * sd, mean + 14 * sd

    def integral(k):
        def f(z):
            return z**k * fitness(z) * stats.norm.pdf(z, mean, sd)

        return integrate.quad(f, lo, hi, points=points, limit=400, epsabs=1e-13, epsrel=1e-12)[0]

    w0, w1, w2 = integral(0), integral(1), integral(2)
    return w1 / w0, w2 / w0 - (w1 / w0) ** 2, w0


def assert_selection(result, reference):
    new_mean, new_var, fitness = reference
    np.testing.assert_allclose([result.mean, result.var, result.mean_fitness], [new_mean, new_var, fitness],
                               rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize(("mean", "var", "optimum", "width2"), [(1.0, 1.0, 0.0, 1.0), (-2.0, 0.3, 1.5, 4.0)])
def test_stabilizing_matches_quadrature(mean, var, optimum, width2):
    result = stabilizing_selection(mean, var, optimum=optimum, width2=width2)
    assert isinstance(result, SelectionResult)
    reference = quadrature_moments(lambda z: np.exp(-((z - optimum) ** 2) / (2 * width2)), mean, var)
    assert_selection(result, reference)


@pytest.mark.parametrize(("mean", "var", "beta"), [(0.0, 2.0, 0.5), (1.0, 0.5, -1.3)])
def test_directional_matches_quadrature(mean, var, beta):
    assert_selection(directional_selection(mean, var, beta=beta),
                     quadrature_moments(lambda z: np.exp(beta * z), mean, var))


@pytest.mark.parametrize(("mean", "var", "keep"), [(0.0, 1.0, 0.5), (2.0, 3.0, 0.1), (-1.0, 0.2, 0.93)])
def test_truncation_matches_quadrature_and_formula(mean, var, keep):
    cut = mean + stats.norm.ppf(1 - keep) * np.sqrt(var)
    result = truncation_selection(mean, var, keep=keep)
    assert_selection(result, quadrature_moments(lambda z: (z >= cut) * 1.0, mean, var, points=[cut]))
    x = stats.norm.ppf(1 - keep)
    i = stats.norm.pdf(x) / keep
    np.testing.assert_allclose([result.mean, result.var], [mean + i * np.sqrt(var), var * (1 - i * (i - x))])


@pytest.mark.parametrize(("mean", "var", "half_width"), [(3.0, 4.0, 1.0), (0.0, 0.5, 0.2), (1.0, 1.0, 3.0)])
def test_central_truncation_matches_quadrature(mean, var, half_width):
    lo, hi = mean - half_width * np.sqrt(var), mean + half_width * np.sqrt(var)
    reference = quadrature_moments(lambda z: ((z >= lo) & (z <= hi)) * 1.0, mean, var, points=[lo, hi])
    assert_selection(central_truncation(mean, var, half_width=half_width), reference)


def test_stabilizing_monte_carlo_rejection():
    """Explicit rejection (accept with probability W <= 1); 3 checks at |z| < 5, false-failure rate 2e-6."""
    rng = np.random.default_rng(11)
    mean, var, optimum, width2 = 0.7, 2.0, -0.5, 1.5
    z = rng.normal(mean, np.sqrt(var), 1_000_000)
    kept = z[rng.random(z.size) < np.exp(-((z - optimum) ** 2) / (2 * width2))]
    result = stabilizing_selection(mean, var, optimum=optimum, width2=width2)
    assert abs(z_mean(kept, result.mean)) < Z_LIMIT
    assert abs(z_var(kept, result.var)) < Z_LIMIT
    assert abs(z_fraction(kept.size, z.size, result.mean_fitness)) < Z_LIMIT


@pytest.mark.parametrize("operator", ["truncation", "central"])
def test_truncation_monte_carlo(operator):
    """Keep the members past the threshold; 3 checks at |z| < 5, false-failure rate 2e-6 per case."""
    rng = np.random.default_rng(12)
    mean, var = 1.0, 2.5
    z = rng.normal(mean, np.sqrt(var), 1_000_000)
    if operator == "truncation":
        result = truncation_selection(mean, var, keep=0.2)
        kept = z[z >= mean + stats.norm.isf(0.2) * np.sqrt(var)]
    else:
        result = central_truncation(mean, var, half_width=0.8)
        kept = z[np.abs(z - mean) <= 0.8 * np.sqrt(var)]
    assert abs(z_mean(kept, result.mean)) < Z_LIMIT
    assert abs(z_var(kept, result.var)) < Z_LIMIT
    assert abs(z_fraction(kept.size, z.size, result.mean_fitness)) < Z_LIMIT


def test_directional_monte_carlo_importance_weights():
    """Importance weights W(z) = exp(beta z); 3 checks at |z| < 5, false-failure rate 2e-6."""
    rng = np.random.default_rng(13)
    mean, var, beta = -0.4, 1.2, 0.6
    z = rng.normal(mean, np.sqrt(var), 1_000_000)
    weights = np.exp(beta * z)
    result = directional_selection(mean, var, beta=beta)
    z_m, z_v = z_weighted(z, weights, result.mean, result.var)
    assert abs(z_m) < Z_LIMIT and abs(z_v) < Z_LIMIT
    assert abs(z_mean(weights, result.mean_fitness)) < Z_LIMIT


@pytest.mark.parametrize("cfg", [0.5, 2.0, 4.0])
def test_cfg_tilt_monte_carlo_importance_weights(cfg):
    """Samples of p_c weighted by (p_c/p_u)^(w-1); 2 checks at |z| < 5, false-failure rate 1.2e-6 per cfg."""
    rng = np.random.default_rng(14)
    m_c, v_c, m_u, v_u = 1.0, 1.0, 0.0, 2.0
    z = rng.normal(m_c, np.sqrt(v_c), 1_000_000)
    log_ratio = stats.norm.logpdf(z, m_c, np.sqrt(v_c)) - stats.norm.logpdf(z, m_u, np.sqrt(v_u))
    weights = np.exp((cfg - 1) * (log_ratio - log_ratio.max()))
    result = cfg_tilt(m_c, v_c, m_u, v_u, cfg=cfg)
    z_m, z_v = z_weighted(z, weights, result.mean, result.var)
    assert abs(z_m) < Z_LIMIT and abs(z_v) < Z_LIMIT


def test_cfg_tilt_formula_broadcasts_over_axes_and_grid():
    cfg = np.array([0.0, 0.5, 1.0, 3.0, 7.5])[:, None]
    m_c, v_c = np.array([1.0, -2.0, 0.3]), np.array([0.5, 1.0, 1.5])
    m_u, v_u = np.array([0.0, 0.5, 0.3]), np.array([2.0, 2.5, 1.8])
    result = cfg_tilt(m_c, v_c, m_u, v_u, cfg=cfg)
    assert isinstance(result, Moments) and result.mean.shape == result.var.shape == (5, 3)
    precision = cfg / v_c + (1 - cfg) / v_u
    np.testing.assert_allclose(result.var, 1 / precision)
    np.testing.assert_allclose(result.mean, (cfg * m_c / v_c + (1 - cfg) * m_u / v_u) / precision)
    # the end points of the family: w = 0 is p_u, w = 1 is p_c
    np.testing.assert_allclose(result.var[[0, 2]], np.stack([np.broadcast_to(v_u, 3), v_c]))
    np.testing.assert_allclose(result.mean[[0, 2]], np.stack([m_u, m_c]))


@pytest.mark.parametrize(
    ("cfg", "proper_var", "cond_var", "uncond_var"),
    [(3.0, 0.5, 2.0, 1.0), (7.5, 0.5, 2.5, 2.0), (-1.0, 2.0, 1.0, 3.0)],
)
def test_cfg_tilt_improper_raises_naming_w_vc_vu(cfg, proper_var, cond_var, uncond_var):
    cfg_tilt(0.0, proper_var, 0.0, uncond_var, cfg=cfg)
    with pytest.raises(ImproperDistributionError, match=r"cfg w=.*cond_var v_c=.*uncond_var v_u=") as info:
        cfg_tilt([0.0, 0.0], [proper_var, cond_var], 0.0, uncond_var, cfg=cfg)
    assert isinstance(info.value, QTMError) and "\n" not in str(info.value)
    assert f"w={cfg:g}" in str(info.value) and f"v_c={cond_var:g}" in str(info.value)


def test_inherit_formula_and_breeders_equation_monte_carlo():
    """R = h^2 S by simulation: z = g + e, truncation on z, offspring inherit g.

    One check at |z| < 5 (false-failure rate 6e-7): the mean breeding value of the
    selected parents equals inherit(prior, selected, fidelity=h2).mean.
    """
    prior = inherit([0.0, 1.0], [1.0, 2.0], [2.0, 0.0], [0.5, 1.0], fidelity=[0.25, 1.0])
    np.testing.assert_allclose(prior.mean, [0.5, 0.0])
    np.testing.assert_allclose(prior.var, [0.875, 1.0])

    rng = np.random.default_rng(15)
    h2, var, mean = 0.4, 2.0, 1.0
    g = rng.normal(mean, np.sqrt(h2 * var), 1_000_000)
    z = g + rng.normal(0.0, np.sqrt((1 - h2) * var), g.size)
    parents = z >= np.quantile(z, 0.7)
    predicted = inherit(mean, var, z[parents].mean(), z[parents].var(), fidelity=h2).mean
    # Given the realised S the response is exact up to the breeding values' scatter about
    # their regression on z, which is independent of z: that scatter gives the standard error.
    residual = g[parents] - mean - h2 * (z[parents] - mean)
    standard_error = residual.std(ddof=1) / np.sqrt(residual.size)
    assert abs((g[parents].mean() - predicted) / standard_error) < Z_LIMIT


def test_inherit_log_variance_is_a_weighted_geometric_mean_times_the_error():
    """ln v = ln v_prior + rho_v (ln v_data - ln v_prior) + mu; NaN rho_v is the linear move; the mean
    moves with rho either way, and mu also scales the linear variance."""
    prior_var, data_var, rho_v, mu = 2.0, 0.02, np.array([0.0, 0.3, 1.0, np.nan]), 0.4
    result = inherit(1.0, prior_var, 3.0, data_var, fidelity=0.5, var_fidelity=rho_v, var_shift=mu)
    log_move = np.log(prior_var) + rho_v[:3] * (np.log(data_var) - np.log(prior_var)) + mu
    np.testing.assert_allclose(result.var[:3], np.exp(log_move), rtol=1e-14)
    np.testing.assert_allclose(result.var[3], (prior_var + 0.5 * (data_var - prior_var)) * np.exp(mu), rtol=1e-14)
    np.testing.assert_array_equal(result.mean, 2.0)
    assert inherit(0.0, 1.5, 0.0, 0.7, fidelity=0.3, var_fidelity=None).var == inherit(0.0, 1.5, 0.0, 0.7,
                                                                                        fidelity=0.3).var
    # A collapsed data set pulls the variance to 0 unless rho_v = 0 (no NaN from 0 * log 0).
    np.testing.assert_array_equal(inherit(0.0, 1.0, 0.0, 0.0, fidelity=1.0, var_fidelity=[0.0, 0.5]).var, [1.0, 0.0])
    with pytest.raises(QTMError, match="var_fidelity"):
        inherit(0.0, 1.0, 0.0, 1.0, fidelity=0.5, var_fidelity=1.5)
    with pytest.raises(QTMError, match="var_shift"):
        inherit(0.0, 1.0, 0.0, 1.0, fidelity=0.5, var_shift=np.inf)


def test_add_mutation_monte_carlo():
    """Adding independent noise; 2 checks at |z| < 5, false-failure rate 1.2e-6."""
    rng = np.random.default_rng(16)
    result = add_mutation(0.5, 1.5, mutation_var=0.4)
    np.testing.assert_allclose([result.mean, result.var], [0.5, 1.9])
    sample = rng.normal(0.5, np.sqrt(1.5), 1_000_000) + rng.normal(0.0, np.sqrt(0.4), 1_000_000)
    assert abs(z_mean(sample, result.mean)) < Z_LIMIT and abs(z_var(sample, result.var)) < Z_LIMIT


def test_mix_formula_and_monte_carlo():
    """Sampling the mixture component by component; 2 checks at |z| < 5, false-failure rate 1.2e-6."""
    rate, m1, v1, m2, v2 = 0.3, 0.0, 1.0, 3.0, 0.5
    result = mix(m1, v1, m2, v2, rate=rate)
    np.testing.assert_allclose(result.mean, 0.9)
    np.testing.assert_allclose(result.var, 0.7 * 1.0 + 0.3 * 0.5 + 0.3 * 0.7 * 9.0)
    rng = np.random.default_rng(17)
    second = rng.random(1_000_000) < rate
    draws = rng.normal(size=second.size)
    sample = np.where(second, m2 + np.sqrt(v2) * draws, m1 + np.sqrt(v1) * draws)
    assert abs(z_mean(sample, result.mean)) < Z_LIMIT and abs(z_var(sample, result.var)) < Z_LIMIT


@pytest.mark.parametrize(("estimator", "ddof"), [("mle", 0), ("unbiased", 1)])
def test_refit_expectation_monte_carlo(estimator, ddof):
    """200 000 refits to N = 5 samples; 2 checks at |z| < 5, false-failure rate 1.2e-6 per estimator."""
    rng = np.random.default_rng(18)
    samples = rng.normal(2.0, np.sqrt(3.0), (200_000, 5))
    result = refit_expectation(2.0, 3.0, population=5, estimator=estimator)
    assert abs(z_mean(samples.mean(axis=1), result.mean)) < Z_LIMIT
    assert abs(z_mean(samples.var(axis=1, ddof=ddof), result.var)) < Z_LIMIT


def test_refit_expectation_formula_and_infinite_population():
    result = refit_expectation(np.zeros(3), [1.0, 2.0, 4.0], population=[[2], [10]])
    np.testing.assert_allclose(result.var, [[0.5, 1.0, 2.0], [0.9, 1.8, 3.6]])
    assert result.mean.shape == (2, 3)
    np.testing.assert_allclose(refit_expectation(1.0, 2.0, population=None).var, 2.0)
    np.testing.assert_allclose(refit_expectation(1.0, 2.0, population=3, estimator="unbiased").var, 2.0)


def test_selection_broadcasts_axes_against_parameter_grid():
    means, variances = np.array([0.0, 1.0]), np.array([1.0, 4.0])
    keep = np.array([0.1, 0.5, 0.9])[:, None]
    result = truncation_selection(means, variances, keep=keep)
    assert result.mean.shape == result.var.shape == result.mean_fitness.shape == (3, 2)
    for row, q in enumerate(keep[:, 0]):
        for axis in range(2):
            single = truncation_selection(means[axis], variances[axis], keep=q)
            pair = [result.mean[row, axis], result.var[row, axis]]
            np.testing.assert_allclose(pair, [single.mean, single.var])
    assert add_mutation(0.0, variances, mutation_var=0.5).mean.shape == (2,)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: stabilizing_selection(0.0, -1.0, width2=1.0), "var"),
        (lambda: stabilizing_selection(0.0, 1.0, width2=0.0), "width2"),
        (lambda: directional_selection(np.nan, 1.0, beta=1.0), "mean"),
        (lambda: truncation_selection(0.0, 1.0, keep=1.0), "keep"),
        (lambda: truncation_selection(0.0, 1.0, keep=0.0), "keep"),
        (lambda: central_truncation(0.0, 1.0, half_width=-1.0), "half_width"),
        (lambda: cfg_tilt(0.0, -1.0, 0.0, 1.0, cfg=2.0), "cond_var"),
        (lambda: cfg_tilt(0.0, 1.0, 0.0, 1.0, cfg="strong"), "cfg"),
        (lambda: inherit(0.0, 1.0, 0.0, 1.0, fidelity=1.5), "fidelity"),
        (lambda: inherit(0.0, 1.0, 0.0, -0.1, fidelity=0.5), "data_var"),
        (lambda: add_mutation(0.0, 1.0, mutation_var=-0.1), "mutation_var"),
        (lambda: mix(0.0, 1.0, 0.0, 1.0, rate=-0.1), "rate"),
        (lambda: refit_expectation(0.0, 1.0, population=1), "population"),
        (lambda: refit_expectation(0.0, 1.0, population=[4, 2.5]), "population"),
        (lambda: refit_expectation(0.0, 1.0, population=1, estimator="unbiased"), "population"),
        (lambda: refit_expectation(0.0, 1.0, population=4, estimator="bayes"), "estimator"),
    ],
)
def test_bad_parameters_raise_one_line_error_naming_them(call, name):
    with pytest.raises(QTMError, match=rf"\b{name}\b") as info:
        call()
    assert "\n" not in str(info.value)


def test_docstring_examples():
    assert doctest.testmod(qtm.gaussian).failed == 0
