"""Tests of the closed-form equilibria and the CFG tilt chain.

Each closed form is checked three ways: it solves its own fixed-point equation,
iterating the generation map (built from the operators of :mod:`qtm.gaussian`)
converges to it, and one Monte-Carlo generation started at the equilibrium returns
its variance. The Monte-Carlo checks use fixed seeds and accept ``|z| < 5`` (false
failure about 6e-7 per check, below 1e-5 for the file).
"""

import doctest

import numpy as np
import pytest
from scipy import stats

import qtm.equilibria
from qtm.equilibria import (
    cfg_tilt_chain,
    cfg_tilt_collapse,
    cfg_tilt_mutation_equilibrium,
    iterations_to_collapse,
    stabilizing_mutation_equilibrium,
    truncation_mutation_equilibrium,
)
from qtm.errors import ImproperDistributionError, QTMError
from qtm.gaussian import add_mutation, cfg_tilt, inherit, stabilizing_selection, truncation_selection

Z_LIMIT = 5.0


def z_var(sample, expected):
    centred = sample - sample.mean()
    s2 = sample.var(ddof=1)
    return (s2 - expected) / np.sqrt((np.mean(centred**4) - s2**2) / sample.size)


def iterate(step, start, generations):
    v = start
    for _ in range(generations):
        v = step(v)
    return v


def stabilizing_generation(v, width2, mutation_var, heritability):
    selected = stabilizing_selection(0.0, v, width2=width2).var
    inherited = inherit(0.0, v, 0.0, selected, fidelity=heritability).var
    return add_mutation(0.0, inherited, mutation_var=mutation_var).var


def tilt_generation(v, cfg, uncond_var, mutation_var):
    return cfg_tilt(0.0, v, 0.0, uncond_var, cfg=cfg).var + mutation_var


# --- stabilizing selection + mutation -------------------------------------------------------------


def test_stabilizing_equilibrium_solves_fixed_point_and_is_reached_from_anywhere():
    width2 = np.array([0.5, 2.0, 10.0])[:, None, None]
    v_m = np.array([0.0, 0.01, 1.0])[None, :, None]
    h2 = np.array([0.3, 1.0])
    v = stabilizing_mutation_equilibrium(width2=width2, mutation_var=v_m, heritability=h2)
    assert v.shape == (3, 3, 2)
    np.testing.assert_allclose(h2 * v**2, v_m * (v + width2), atol=1e-12)
    np.testing.assert_allclose(stabilizing_generation(v, width2, v_m, h2), v, rtol=1e-12, atol=1e-15)
    # without mutation the approach to 0 is only algebraic (v_t ~ w2 / (h2 t)), so iterate with v_m > 0
    mutating = v_m[:, 1:]

    def step(x):
        return stabilizing_generation(x, width2, mutating, h2)

    starts = np.array([1e-3, 50.0])[:, None, None, None]  # both ends at once, as a leading axis
    reached = iterate(step, np.broadcast_to(starts, (2, 3, 2, 2)), 800)
    np.testing.assert_allclose(reached, np.broadcast_to(v[:, 1:], reached.shape), rtol=1e-8)
    # Lande's result at h2 = 1: v* = v_m / 2 + sqrt(v_m w2 + v_m^2 / 4)
    np.testing.assert_allclose(v[..., 1], (v_m / 2 + np.sqrt(v_m * width2 + v_m**2 / 4))[..., 0])


def test_stabilizing_equilibrium_monte_carlo_generation():
    """One generation by rejection selection + mutation noise from N(0, v*); one check, false failure 6e-7."""
    width2, v_m = 1.5, 0.3
    v = float(stabilizing_mutation_equilibrium(width2=width2, mutation_var=v_m))
    rng = np.random.default_rng(21)
    z = rng.normal(0.0, np.sqrt(v), 1_000_000)
    kept = z[rng.random(z.size) < np.exp(-(z**2) / (2 * width2))]
    offspring = kept + rng.normal(0.0, np.sqrt(v_m), kept.size)
    assert abs(z_var(offspring, v)) < Z_LIMIT


# --- truncation + mutation -------------------------------------------------------------------------


def test_truncation_equilibrium_formula_and_iteration():
    keep = np.array([0.05, 0.3, 0.5, 0.9])[:, None]
    v_m = np.array([0.1, 2.0])
    v = truncation_mutation_equilibrium(keep=keep, mutation_var=v_m)
    x = stats.norm.isf(keep)
    i = stats.norm.pdf(x) / keep
    np.testing.assert_allclose(v, v_m / (i * (i - x)))
    reached = iterate(
        lambda s: add_mutation(0.0, truncation_selection(0.0, s, keep=keep).var, mutation_var=v_m).var,
        np.full(v.shape, 7.0),
        120,
    )
    np.testing.assert_allclose(reached, v, rtol=1e-9)


def test_truncation_equilibrium_monte_carlo_generation():
    """Keep the top 30 % of a sample of N(0, v*), add mutation noise; one check, false failure 6e-7."""
    keep, v_m = 0.3, 0.5
    v = float(truncation_mutation_equilibrium(keep=keep, mutation_var=v_m))
    rng = np.random.default_rng(22)
    z = rng.normal(0.0, np.sqrt(v), 1_000_000)
    kept = z[z >= stats.norm.isf(keep) * np.sqrt(v)]
    assert abs(z_var(kept + rng.normal(0.0, np.sqrt(v_m), kept.size), v)) < Z_LIMIT


# --- CFG tilt + mutation ---------------------------------------------------------------------------

CFGS = np.array([0.0, 0.5, 0.9, 1.5, 2.0, 7.5])


def test_tilt_equilibrium_solves_quadratic_and_iteration_converges():
    v_u, v_m = 1.0, 0.1
    e = cfg_tilt_mutation_equilibrium(cfg=CFGS, uncond_var=v_u, mutation_var=v_m)
    assert np.all(np.isfinite(e.var))
    np.testing.assert_allclose(tilt_generation(e.var, CFGS, v_u, v_m), e.var, rtol=1e-12)
    np.testing.assert_allclose((1 - CFGS) * e.var**2 - (1 - CFGS) * (v_u + v_m) * e.var, CFGS * v_u * v_m,
                               atol=1e-12)
    # from below the unstable point (and from far above, for w < 1) the chain reaches the stable one
    starts = np.stack([np.full(CFGS.shape, 1e-4), np.where(CFGS > 1, 0.99 * e.unstable_var, 20.0)])
    reached = iterate(lambda s: tilt_generation(s, CFGS, v_u, v_m), starts, 800)
    np.testing.assert_allclose(reached, np.stack([e.var, e.var]), rtol=1e-9)
    assert np.all(np.isinf(e.unstable_var[CFGS < 1]))
    above = CFGS > 1
    np.testing.assert_allclose(tilt_generation(e.unstable_var[above], CFGS[above], v_u, v_m),
                               e.unstable_var[above], rtol=1e-10)


def test_tilt_equilibrium_slopes_match_numerical_derivatives():
    v_u, v_m, m_u, h = 1.0, 0.1, 0.3, 1e-6
    e = cfg_tilt_mutation_equilibrium(cfg=CFGS, uncond_var=v_u, mutation_var=v_m)
    step = [tilt_generation(e.var + d, CFGS, v_u, v_m) for d in (h, -h)]
    var_derivative = (step[0] - step[1]) / (2 * h)
    np.testing.assert_allclose(e.var_slope, var_derivative, rtol=1e-6, atol=1e-9)
    assert np.all(e.var_slope < 1)
    mean_map = [cfg_tilt(m_u + d, e.var, m_u, v_u, cfg=CFGS).mean for d in (h, -h)]
    np.testing.assert_allclose(e.mean_slope, (mean_map[0] - mean_map[1]) / (2 * h), rtol=1e-6, atol=1e-9)
    # selection with w > 1 holds the variance but pushes the mean away from p_u's
    assert np.all(e.mean_slope[CFGS > 1] > 1) and np.all(e.mean_slope[CFGS < 1] < 1)


def test_tilt_equilibrium_absent_means_growth_to_improper():
    # w = 1: v -> v + v_m; w = 3 with much mutation: the discriminant is negative
    e = cfg_tilt_mutation_equilibrium(cfg=[1.0, 3.0], uncond_var=1.0, mutation_var=0.5)
    assert all(np.all(np.isinf(field)) for field in e)
    with pytest.raises(ImproperDistributionError, match="cfg w=3"):
        iterate(lambda s: tilt_generation(s, 3.0, 1.0, 0.5), 0.01, 100)
    # above the unstable fixed point the variance grows until the tilt is improper
    e = cfg_tilt_mutation_equilibrium(cfg=2.0, uncond_var=1.0, mutation_var=0.1)
    with pytest.raises(ImproperDistributionError):
        iterate(lambda s: tilt_generation(s, 2.0, 1.0, 0.1), 1.01 * e.unstable_var, 200)


@pytest.mark.parametrize("cfg", [0.5, 3.0])
def test_tilt_equilibrium_monte_carlo_generation(cfg):
    """Importance-weighted tilt of N(m_u, v*) plus mutation; one check per cfg, false failure 6e-7 each."""
    v_u, v_m = 1.0, 0.2
    v = float(cfg_tilt_mutation_equilibrium(cfg=cfg, uncond_var=v_u, mutation_var=v_m).var)
    rng = np.random.default_rng(23)
    z = rng.normal(0.0, np.sqrt(v), 1_000_000)
    log_ratio = stats.norm.logpdf(z, 0.0, np.sqrt(v)) - stats.norm.logpdf(z, 0.0, np.sqrt(v_u))
    p = np.exp((cfg - 1) * (log_ratio - log_ratio.max()))
    p /= p.sum()
    # the weighted variance of the tilt plus the known mutation variance; delta-method error
    centred = z - np.sum(p * z)
    tilted = np.sum(p * centred**2)
    standard_error = np.sqrt(np.sum(p**2 * (centred**2 - tilted) ** 2))
    assert abs((tilted + v_m - v) / standard_error) < Z_LIMIT


# --- the pure tilt chain ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cfg", "cond_var", "uncond_var"),
    [(7.5, 1.0, 2.0), (2.0, 1.5, 1.0), (0.5, 3.0, 1.0), (1.0, 1.0, 2.0), (-0.5, 1.0, 1.5), (2.0, 1.5, 1.5)],
)
def test_chain_equals_iterated_tilt(cfg, cond_var, uncond_var):
    m_c, m_u, iterations = np.array([1.0, -0.5]), 0.2, 8
    try:
        chain = cfg_tilt_chain(m_c, cond_var, m_u, uncond_var, cfg=cfg, iterations=iterations)
    except ImproperDistributionError:
        chain = None
    mean, var, iterated = m_c, np.full(2, cond_var), []
    for _ in range(iterations):
        try:
            mean, var = cfg_tilt(mean, var, m_u, uncond_var, cfg=cfg)
        except ImproperDistributionError:
            break
        iterated.append((mean, var))
    if len(iterated) < iterations:
        assert chain is None
    else:
        assert chain.mean.shape == chain.var.shape == (2, iterations)
        means, variances = (np.stack(column, axis=-1) for column in zip(*iterated, strict=True))
        np.testing.assert_allclose(chain.mean, means, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(chain.var, variances, rtol=1e-10)


def test_chain_broadcasts_grid_and_stays_finite_over_many_iterations():
    cfg = np.array([0.0, 0.5, 1.0, 1.2, 7.5])[:, None]
    chain = cfg_tilt_chain([1.0, 0.0], [1.0, 0.5], 0.0, 2.0, cfg=cfg, iterations=2000)
    assert chain.var.shape == (5, 2, 2000)
    assert np.all(np.isfinite(chain.var)) and np.all(np.isfinite(chain.mean))
    # collapse is geometric with ratio 1/w; the mean settles at (m_c/v_c - m_u/v_u)/(1/v_c - 1/v_u)
    np.testing.assert_allclose(chain.var[3, :, 400] / chain.var[3, :, 399], 1 / 1.2, rtol=1e-9)
    np.testing.assert_allclose(chain.mean[4, :, -1], [1.0 / (1.0 - 0.5), 0.0])
    np.testing.assert_allclose(chain.var[:2, :, -1], 2.0)  # relaxation to p_u ...
    np.testing.assert_allclose(chain.mean[:2, :, -1], 0.0, atol=1e-12)
    np.testing.assert_allclose(chain.var[2], [[1.0] * 2000, [0.5] * 2000])  # ... and w = 1 is neutral


def test_chain_monte_carlo_two_tilts():
    """Two tilts = p_c^(w^2) p_u^(1-w^2), importance-weighted p_c samples; 2 checks, false failure 1.2e-6."""
    cfg, m_c, v_c, m_u, v_u = 1.5, 1.0, 1.0, 0.0, 2.0
    chain = cfg_tilt_chain(m_c, v_c, m_u, v_u, cfg=cfg, iterations=2)
    rng = np.random.default_rng(24)
    z = rng.normal(m_c, np.sqrt(v_c), 1_000_000)
    log_ratio = stats.norm.logpdf(z, m_c, np.sqrt(v_c)) - stats.norm.logpdf(z, m_u, np.sqrt(v_u))
    p = np.exp((cfg**2 - 1) * (log_ratio - log_ratio.max()))
    p /= p.sum()
    mean = np.sum(p * z)
    centred = z - mean
    var = np.sum(p * centred**2)
    assert abs((mean - chain.mean[1]) / np.sqrt(np.sum(p**2 * centred**2))) < Z_LIMIT
    assert abs((var - chain.var[1]) / np.sqrt(np.sum(p**2 * (centred**2 - var) ** 2))) < Z_LIMIT


def test_chain_names_the_iteration_that_turns_improper():
    # 1/v_t = 1/2 + 2^(t+1) (1/2.1 - 1/2) first falls below 0 at t + 1 = 5
    cfg_tilt_chain(0.0, 2.1, 0.0, 2.0, cfg=2.0, iterations=4)
    with pytest.raises(ImproperDistributionError, match=r"at iteration 4 at cfg w=2, cond_var v_c=2\.1"):
        cfg_tilt_chain(0.0, [1.0, 2.1], 0.0, 2.0, cfg=2.0, iterations=5)


def test_collapse_criterion_matches_long_chains():
    cases = [(7.5, 1.0, 2.0), (1.2, 1.0, 2.0), (2.0, 1.5, 1.5), (0.5, 3.0, 1.0), (0.0, 1.0, 2.0)]
    for cfg, v_c, v_u in [*cases, (1.0, 1.0, 2.0)]:
        limit = float(cfg_tilt_collapse(cfg=cfg, cond_var=v_c, uncond_var=v_u))
        final = cfg_tilt_chain(0.0, v_c, 0.0, v_u, cfg=cfg, iterations=3000).var[-1]
        np.testing.assert_allclose(final, limit, atol=1e-12)
    assert float(cfg_tilt_collapse(cfg=2.0, cond_var=1.1, uncond_var=1.0)) == np.inf
    with pytest.raises(ImproperDistributionError):
        cfg_tilt_chain(0.0, 1.1, 0.0, 1.0, cfg=2.0, iterations=3000)


def test_iterations_to_collapse_matches_first_crossing_of_the_chain():
    for cfg in (0.0, 0.3, 0.9, 1.0, 1.05, 2.0, 7.5):
        for v_c, v_u in ((1.0, 2.0), (1.0, 1.0), (3.0, 1.0), (1.0, 0.05), (1.0, 1.5)):
            for threshold in (0.5, 0.1, 0.01):
                expected = iterations_to_collapse(cfg=cfg, cond_var=v_c, uncond_var=v_u, threshold=threshold)
                try:
                    var = cfg_tilt_chain(0.0, v_c, 0.0, v_u, cfg=cfg, iterations=400).var
                except ImproperDistributionError:
                    assert cfg > 1 and v_c > v_u and expected == np.inf
                    continue
                crossed = np.flatnonzero(var <= threshold * v_c)
                assert expected == (crossed[0] if crossed.size else np.inf), (cfg, v_c, v_u, threshold)


def test_iterations_to_collapse_broadcasts():
    t = iterations_to_collapse(cfg=np.array([1.5, 7.5])[:, None], cond_var=1.0, uncond_var=2.0,
                               threshold=[0.5, 0.1, 0.01])
    assert t.shape == (2, 3) and np.all(np.diff(t, axis=1) >= 0) and np.all(t[0] >= t[1])


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: stabilizing_mutation_equilibrium(width2=-1.0, mutation_var=0.1), "width2"),
        (lambda: stabilizing_mutation_equilibrium(width2=1.0, mutation_var=-0.1), "mutation_var"),
        (lambda: stabilizing_mutation_equilibrium(width2=1, mutation_var=1, heritability=0), "heritability"),
        (lambda: stabilizing_mutation_equilibrium(width2=1, mutation_var=1, heritability=2), "heritability"),
        (lambda: truncation_mutation_equilibrium(keep=1.2, mutation_var=0.1), "keep"),
        (lambda: cfg_tilt_mutation_equilibrium(cfg=-1.0, uncond_var=1.0, mutation_var=0.1), "cfg"),
        (lambda: cfg_tilt_mutation_equilibrium(cfg=2.0, uncond_var=1.0, mutation_var=0.0), "mutation_var"),
        (lambda: cfg_tilt_mutation_equilibrium(cfg=2.0, uncond_var=-1.0, mutation_var=0.1), "uncond_var"),
        (lambda: cfg_tilt_chain(0.0, -1.0, 0.0, 1.0, cfg=2.0, iterations=3), "cond_var"),
        (lambda: cfg_tilt_chain(0.0, 1.0, 0.0, 1.0, cfg=2.0, iterations=0), "iterations"),
        (lambda: cfg_tilt_collapse(cfg=2.0, cond_var=0.0, uncond_var=1.0), "cond_var"),
        (lambda: iterations_to_collapse(cfg=2.0, cond_var=1.0, uncond_var=2.0, threshold=1.0), "threshold"),
    ],
)
def test_bad_parameters_raise_one_line_error_naming_them(call, name):
    with pytest.raises(QTMError, match=rf"\b{name}\b") as info:
        call()
    assert "\n" not in str(info.value)


def test_docstring_examples():
    assert doctest.testmod(qtm.equilibria).failed == 0
