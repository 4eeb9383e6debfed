"""The ODE and SDE limits: against the moment equations, as the limits of the discrete solvers, and the chain."""

import warnings

import numpy as np
import pytest
from scipy.integrate import quad, solve_ivp

from qtm.continuous import continuous_moments, ode_chain_variance
from qtm.errors import QTMError
from qtm.gaussian import cfg_tilt
from qtm.sampler_map import guided_moments
from qtm.solvers import SchedulerConfig

# (cond_mean, cond_var, uncond_mean, uncond_var, w): both orders of the variances, wide ratios,
# guidance inside and outside [0, 1], and w = 1/2 where the SDE formula's exponent vanishes.
CASES = [
    (1.0, 0.5, 0.0, 1.0, 7.5),
    (1.0, 0.5, 0.0, 1.0, 1.0),
    (-0.5, 2.0, 0.3, 1.5, 3.0),
    (0.4, 1e-3, -0.2, 1.0, 2.0),
    (2.0, 30.0, 1.0, 0.03, 1.5),
    (0.0, 0.7, 1.0, 0.2, 0.5),
    (1.0, 0.3, -1.0, 2.0, -0.5),
    (1.0, 4.0, 0.0, 0.8, 0.25),
]


def _integrate(cm, cv, um, uv, w, sampler):
    """Solve the moment equations of the guided flow downwards in s = ln(tau), rtol 1e-10.

    ``a = (w/(cv+tau) + (1-w)/(uv+tau))/2``, ``b = (w cm/(cv+tau) + (1-w) um/(uv+tau))/2``;
    ODE: mu' = a mu - b, V' = 2 a V; SDE: mu' = 2 a mu - 2 b, V' = 4 a V - 1 (d/dtau). Starts from
    pure noise N(0, tau) at tau = 1e20 and stops at tau = 1e-14: the neglected start and end change
    the result by O(tau_max^-1/2) = 1e-10 and O(tau_min) (relative), far below the 1e-6 tolerance.
    """
    k = 1.0 if sampler == "ode" else 2.0

    def rhs(s, y):
        tau = np.exp(s)
        a = 0.5 * (w / (cv + tau) + (1 - w) / (uv + tau))
        b = 0.5 * (w * cm / (cv + tau) + (1 - w) * um / (uv + tau))
        return [tau * k * (a * y[0] - b), tau * (2 * k * a * y[1] - (k - 1))]

    start, end = np.log(1e20), np.log(1e-14)
    sol = solve_ivp(rhs, (start, end), [0.0, 1e20], method="DOP853", rtol=1e-10, atol=1e-14)
    assert sol.success
    return sol.y[0, -1], sol.y[1, -1]


@pytest.mark.parametrize("sampler", ["ode", "sde"])
def test_closed_forms_solve_the_moment_equations(sampler):
    for cm, cv, um, uv, w in CASES:
        mean, var = _integrate(cm, cv, um, uv, w, sampler)
        out = continuous_moments(cm, cv, um, uv, cfg=w, sampler=sampler)
        assert float(out.var) == pytest.approx(var, rel=1e-6), (cm, cv, um, uv, w)
        assert float(out.mean) == pytest.approx(mean, rel=1e-6, abs=1e-6), (cm, cv, um, uv, w)


def test_sde_variance_is_the_integral_of_e_to_the_minus_four():
    """The issue's formula V = int_0^inf E(tau)^-4 dtau, by adaptive quadrature, and the ODE's geometric mean."""
    for cm, cv, um, uv, w in CASES:
        def e(tau, cv=cv, uv=uv, w=w):
            return ((cv + tau) / cv) ** (w / 2) * ((uv + tau) / uv) ** ((1 - w) / 2)

        integral = quad(lambda t, e=e: e(t) ** -4, 0, np.inf, epsabs=0, epsrel=1e-12, limit=500)[0]
        assert float(continuous_moments(cm, cv, um, uv, cfg=w, sampler="sde").var) == pytest.approx(integral, rel=1e-9)
        ode = continuous_moments(cm, cv, um, uv, cfg=w, sampler="ode")
        assert float(ode.var) == pytest.approx(cv**w * uv ** (1 - w), rel=1e-12)


def test_broadcasting_and_the_special_points():
    cv = np.array([[0.5, 2.0, 1.0]])
    w = np.array([[0.0], [1.0], [0.5]])
    for sampler in ("ode", "sde"):
        out = continuous_moments(1.0, cv, 0.0, 1.0, cfg=w, sampler=sampler)
        assert out.var.shape == (3, 3)
        np.testing.assert_allclose(out.var[0], 1.0, rtol=1e-12)  # w = 0: p_u
        np.testing.assert_allclose(out.var[1], cv[0], rtol=1e-12)  # w = 1: p_c
        np.testing.assert_allclose(out.mean[:2], [[0.0] * 3, [1.0] * 3], atol=1e-12)
        np.testing.assert_allclose(out.var[2, 2], 1.0, rtol=1e-12)  # equal variances: no selection on them


def test_ode_selects_harder_than_the_tilt_outside_the_unit_interval():
    """Precision x_c^w x_u^(1-w) is convex in w and meets the tilt's w x_c + (1-w) x_u at w = 0 and 1."""
    cv, uv = np.meshgrid(np.geomspace(0.05, 20, 9), np.geomspace(0.05, 20, 9))
    for w, harder in ((3.0, True), (-0.5, True), (0.4, False)):
        ode_precision = 1.0 / continuous_moments(0.0, cv, 0.0, uv, cfg=w).var
        # The tilt's precision may be <= 0 (improper) outside [0, 1]; the ODE's never is.
        tilt_precision = w / cv + (1 - w) / uv
        gap = ode_precision - tilt_precision
        assert np.all(gap >= -1e-9) if harder else np.all(gap <= 1e-9)
    proper = cfg_tilt(1.0, 0.5, 0.0, 1.0, cfg=7.5)
    assert float(continuous_moments(1.0, 0.5, 0.0, 1.0, cfg=7.5).var) < 0.05 * float(proper.var)


# Cosine betas, trailing spacing, last step onto clean data: sigma_max = 2.0e4, so starting from
# N(0, 1) (VP) or N(0, sigma_max^2) (VE) instead of the true noised law changes the output by
# O(v / sigma_max^2) < 1e-8, and the discrete solvers tend to the limits of a schedule from pure noise.
LONG = SchedulerConfig(
    beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing", steps_offset=0, set_alpha_to_one=True
)


@pytest.mark.parametrize(
    ("sampler", "limit", "order"),
    [
        ("ddim", "ode", 1), ("euler", "ode", 1), ("dpm++1s", "ode", 1), ("dpm++2m", "ode", 2),
        ("heun", "ode", 2), ("flow-euler", "ode", 1), ("ddpm", "sde", 1), ("euler-a", "sde", 1),
    ],
)
def test_discrete_solvers_tend_to_their_limit(sampler, limit, order):
    """The error shrinks like K^-1 (or faster) from 200 to 1000 steps and is small at 1000."""
    case = (1.0, 0.5, 0.0, 1.0)
    config = SchedulerConfig.preset("sd3") if sampler == "flow-euler" else LONG
    target = continuous_moments(*case, cfg=4.0, sampler=limit)
    errors = []
    for steps in (200, 1000):
        out = guided_moments(*case, cfg=4.0, sampler=sampler, steps=steps, scheduler=config)
        errors.append(abs(float(out.var) / float(target.var) - 1) + abs(float(out.mean - target.mean)))
    assert errors[1] < 0.3 * errors[0]
    assert errors[1] < (0.03 if order == 1 else 3e-3)


def test_sd15_schedule_stops_short_of_the_limit():
    """SD v1.5 ends at sigma_max = 14.6 and starts DDIM from N(0, 1): even 999 steps miss the ODE's mean."""
    ode = continuous_moments(1.0, 0.5, 0.0, 1.0, cfg=1.0, sampler="ode")
    ddim = guided_moments(1.0, 0.5, 0.0, 1.0, cfg=1.0, steps=999)
    assert float(ode.mean) == pytest.approx(1.0, abs=1e-12)
    assert float(ddim.mean) == pytest.approx(0.951, abs=1e-3)


def test_ode_chain_collapses_doubly_exponentially():
    """Iterating the ODE map with p_c := the last output (perfect inheritance), p_u fixed."""
    v_u, v0, w = 1.0, 0.5, np.array([1.5, 2.0, 0.5])
    var = np.full(3, v0)
    expected = ode_chain_variance(v0, v_u, cfg=w, iterations=5)
    for t in range(1, 6):
        var = continuous_moments(0.0, var, 0.0, v_u, cfg=w, sampler="ode").var
        np.testing.assert_allclose(np.log(var / v_u), w**t * np.log(v0 / v_u), rtol=1e-12)
        np.testing.assert_allclose(var, expected[t], rtol=1e-12)


def test_bad_input_is_a_one_line_error():
    with pytest.raises(QTMError, match="cond_var"):
        continuous_moments(0.0, 0.0, 0.0, 1.0, cfg=2.0)
    with pytest.raises(QTMError, match="sampler"):
        continuous_moments(0.0, 1.0, 0.0, 1.0, cfg=2.0, sampler="pde")
    with pytest.raises(QTMError, match="iterations"):
        ode_chain_variance(0.5, 1.0, cfg=2.0, iterations=-1)


def test_guided_moments_dispatches_to_the_limits():
    for sampler in ("ode", "sde"):
        direct = continuous_moments([1.0, -1.0], 0.5, 0.0, 1.0, cfg=3.0, sampler=sampler)
        via = guided_moments([1.0, -1.0], 0.5, 0.0, 1.0, cfg=3.0, sampler=sampler, steps=7)
        np.testing.assert_array_equal(via.mean, direct.mean)
        np.testing.assert_array_equal(via.var, direct.var)


def test_an_overflow_is_infinity_without_a_warning():
    """As every sampler's law does: the chain reads it as diverged, ``qtm map`` as one line naming the inputs."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = continuous_moments(0.0, 1e-300, 0.0, 1e300, cfg=-50.0, sampler="sde")
    assert not np.isfinite(out.var)
