"""The compiled ODE and SDE limits: the hypergeometric function against mpmath, the point laws against
:mod:`qtm.continuous`, and the chain kernel against hand-iterated operators (tests/test_recursion.py has the
points; these add the regimes a collapsing chain reaches)."""

import doctest
import warnings

import mpmath
import numpy as np
import pytest

from qtm.continuous import continuous_moments
from qtm.continuous_kernels import gap_constant, hypergeometric_1_32, ode_gaps, ode_moments, sde_moments
from qtm.recursion import divergence_iteration, simulate_moments

#: Guidance scales: the even integers (the poles of the connection formula, exact and within its window, where SciPy
#: takes over), the study's values, negative and below one, and random ones (fixed seed).
SCALES = [2.0, 4.0, 10.0, 2.0005, 3.9995, 2.0021, 1.0, 1.5, 3.0, 7.5, 0.3, -0.5, -3.0, 15.0,
          *np.random.default_rng(5).uniform(-2.0, 20.0, 12)]
#: q = 1 - z from a collapsed chain's 1e-120 (mpmath takes seconds at 1e-300 for some integer w) to z = 1e-5,
#: both series and their meeting point.
QS = [1e-120, 1e-40, 1e-8, 0.05, 0.3, 0.5, 0.7, 0.95, 1.0 - 1e-5]


def _exact(alpha, q):
    """2F1(alpha, 1; 3/2; 1 - q) at 30 digits beyond q's own (1 - q must not round to 1)."""
    with mpmath.workdps(int(max(30, 30 - np.log10(q)))):
        return mpmath.hyp2f1(alpha, 1, 1.5, 1 - mpmath.mpf(q))


@pytest.mark.parametrize("w", SCALES)
def test_hypergeometric_matches_mpmath(w):
    """Both arguments the ODE's weight takes (v_c < v_u and v_c > v_u), relative error below 1e-13 wherever the
    value is a finite double (exact: no statistical failure rate)."""
    for alpha in (0.5 * (1.0 - w), 1.0 + 0.5 * w):
        for q in QS:
            exact = _exact(alpha, q)
            if not abs(exact) < 1e300:
                continue
            value = hypergeometric_1_32(alpha, 1.0 - q, q, gap_constant(alpha))
            assert abs(value - exact) <= 1e-13 * abs(exact), (alpha, q, value, float(exact))


def test_point_laws_match_the_numpy_forms():
    """ode_moments and sde_moments point by point against continuous_moments on arrays (its checks, broadcasting
    and flattening around the same compiled laws) on random points: variance ratios 1e-12..1e12 and w up to 40,
    which reaches the SDE's logarithmic branch. The laws themselves are checked against quadrature and an ODE
    solver in tests/test_continuous.py and against mpmath above."""
    rng = np.random.default_rng(11)
    n = 400
    for sampler, decades, top in (("ode", 12, 12.0), ("sde", 12, 40.0)):
        cond_mean, uncond_mean = rng.normal(size=(2, n))
        cond_var, uncond_var = 10.0 ** rng.uniform(-decades / 2, decades / 2, size=(2, n))
        cfg = rng.uniform(-top / 4, top, n)
        reference = continuous_moments(cond_mean, cond_var, uncond_mean, uncond_var, cfg=cfg, sampler=sampler)
        for i in range(n):
            args = (cond_mean[i], cond_var[i], uncond_mean[i], uncond_var[i])
            if sampler == "ode":
                mean, var = ode_moments(cfg[i], *ode_gaps(cfg[i]), *args)
            else:
                mean, var = sde_moments(cfg[i], *args)
            if not (np.isfinite(reference.mean[i]) and np.isfinite(reference.var[i])):
                continue
            scale = max(abs(reference.mean[i]), abs(cond_mean[i]) + abs(uncond_mean[i]))
            assert abs(mean - reference.mean[i]) <= 1e-12 * scale, (sampler, i, mean, reference.mean[i])
            assert abs(var - reference.var[i]) <= 1e-12 * reference.var[i], (sampler, i, var, reference.var[i])


@pytest.mark.parametrize("sampler", ["ode", "sde"])
def test_a_collapsing_chain_matches_the_limit_iterated(sampler):
    """CFG up to 7.5 with full fidelity in mean and log variance (so that each model is its data, exactly): in
    three iterations the variance falls by hundreds of orders of magnitude (q -> 1e-250 in the ODE's weight).
    The kernel against continuous_moments applied to each generation in turn."""
    cfg = np.array([1.0, 2.0, 3.0, 4.5, 5.0, 7.5])
    traj = simulate_moments(cond_mean=1.0, cond_var=1.0, uncond_mean=0.0, uncond_var=4.0, data_mean=1.0,
                            data_var=1.0, cfg=cfg, fidelity=1.0, var_fidelity=1.0, drop=0.0, finetune="continue",
                            sampler=sampler, iterations=3)
    generated = (np.ones(6), np.ones(6))
    for t in range(3):
        generated = continuous_moments(*generated, 0.0, 4.0, cfg=cfg, sampler=sampler)
        np.testing.assert_allclose(traj.mean[:, t], generated.mean, rtol=1e-12)
        np.testing.assert_allclose(traj.var[:, t], generated.var, rtol=1e-12)
    if sampler == "ode":
        assert 0 < traj.var[-1, -1] < 1e-200


def test_a_diverging_chain_reads_as_diverged_without_warnings():
    """A moment that overflows in the kernel (w = 40 with v_c > v_u: 50^40, then its 40th power) sends the group
    to the operators, whose rows read NaN from the overflow on; w = 1 keeps the data."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        traj = simulate_moments(cond_mean=1.0, cond_var=50.0, uncond_mean=0.0, uncond_var=1.0, data_mean=1.0,
                                data_var=50.0, cfg=[1.0, 40.0], fidelity=1.0, var_fidelity=1.0, drop=0.0,
                                finetune="continue", sampler="ode", iterations=4)
    assert divergence_iteration(traj).tolist() == [-1, 0]
    np.testing.assert_allclose(traj.var[0], 50.0, rtol=1e-12)
    assert np.isnan(traj.var[1, -1])


def test_the_module_example_runs():
    import qtm.continuous_kernels

    assert doctest.testmod(qtm.continuous_kernels).failed == 0
