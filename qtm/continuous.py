"""Guided sampling in continuous time: the probability-flow ODE and reverse SDE limits, in closed form.

For ``p_c = N(m_c, v_c)`` and ``p_u = N(m_u, v_u)`` on one axis, write the noising as variance
exploding, ``x_tau = x_0 + sqrt(tau) eps`` (``tau = sigma^2``; every parametrisation of the
diffusion gives the same guided ODE and SDE up to a rescaling of ``x``). The branches' scores are
``-(x - m)/(v + tau)``; the guided score is ``-2 a(tau) x + 2 b(tau)`` with::

    a = (w/(v_c+tau) + (1-w)/(v_u+tau)) / 2 = d ln E / d tau,
    b = (w m_c/(v_c+tau) + (1-w) m_u/(v_u+tau)) / 2,
    E(tau) = ((v_c+tau)/v_c)^(w/2) ((v_u+tau)/v_u)^((1-w)/2).

Integrated from pure noise (``tau -> infinity``) to clean data (``tau = 0``), the moments obey
(``d/dtau``, integrated downwards; derivation in ``docs/theory.md``)::

    ODE  dx/dtau = a x - b:       mu' = a mu - b,      V' = 2 a V
    SDE  dx = (2 a x - 2 b) dtau + dW (reverse time):   mu' = 2 a mu - 2 b,  V' = 4 a V - 1

whose solutions are, with ``L = ln(v_c/v_u)``, ``phi(z) = (e^z - 1)/z``::

    ODE  V = v_c^w v_u^(1-w)                          mu = m_u + (m_c - m_u) J
    SDE  V = int_0^inf E^-4 = v_c phi((2w-1) L)/phi(L)  mu = m_u + (m_c - m_u) w e^((w-1) L) phi(-w L)/phi(-L)

``J = int_0^inf w / (2 (v_c+tau) E(tau)) dtau = w 2F1((1-w)/2, 1; 3/2; 1 - v_c/v_u)`` (Gauss's
hypergeometric function, evaluated with the argument in [0, 1) on either side of ``v_c = v_u``). All four
are exact, computed point by point by :mod:`qtm.continuous_kernels` (which the chain kernel shares); the only
error is floating point (relative 1e-13 or better, checked against
adaptive quadrature and an ODE solver by ``tests/test_continuous.py``).

The ODE's variance is the geometric mean of ``v_c`` and ``v_u`` with weights ``w, 1 - w``; the tilt's
is their weighted harmonic mean, which is larger for ``w > 1`` and ``v_c < v_u``: deterministic
sampling selects harder than the tilt (the project's DDIM finding), and under perfect inheritance
with a fixed ``p_u`` the chain obeys ``ln(v_t/v_u) = w^t ln(v_0/v_u)``, a doubly exponential collapse.

Examples
--------
>>> out = continuous_moments(1.0, 0.5, 0.0, 1.0, cfg=7.5, sampler="ode")
>>> round(float(out.var), 6) == round(0.5**7.5, 6)
True
"""

from __future__ import annotations

import numpy as np

from qtm.continuous_kernels import continuous_laws
from qtm.gaussian import Moments
from qtm.validation import as_float_array, check_choice, check_int, check_positive

CONTINUOUS_SAMPLERS = ("ode", "sde")


def continuous_moments(cond_mean, cond_var, uncond_mean, uncond_var, *, cfg, sampler: str = "ode") -> Moments:
    """Output law of guided sampling with infinitely many steps from pure noise to clean data.

    Parameters
    ----------
    cond_mean, cond_var, uncond_mean, uncond_var : float or array
        ``p_c`` and ``p_u`` per axis (variances > 0); broadcast together with ``cfg``.
    cfg : float or array
        Guidance scale w, constant over the noise levels (any real number).
    sampler : {"ode", "sde"}
        The probability-flow ODE (the limit of DDIM, Euler, DPM-Solver++, Heun, flow-matching
        Euler) or the reverse SDE (the limit of DDPM and Euler-ancestral).

    Returns
    -------
    qtm.gaussian.Moments

    Examples
    --------
    >>> out = continuous_moments(1.0, 0.5, 0.0, 1.0, cfg=[1.0, 7.5], sampler="sde")
    >>> out.mean.round(3).tolist(), out.var.round(4).tolist()
    ([1.0, 1.989], [0.5, 0.0714])
    """
    check_choice(sampler, "sampler", CONTINUOUS_SAMPLERS)
    cond_mean = as_float_array(cond_mean, "cond_mean")
    uncond_mean = as_float_array(uncond_mean, "uncond_mean")
    cond_var = check_positive(cond_var, "cond_var")
    uncond_var = check_positive(uncond_var, "uncond_var")
    w = as_float_array(cfg, "cfg")
    # A moment that overflows comes back as inf or NaN without numpy's warnings: a chain reads it as diverged
    # (qtm.recursion), a single law as one error naming the inputs (qtm.sampler_map.sampler_law).
    model = np.broadcast_arrays(cond_mean, cond_var, uncond_mean, uncond_var, w)
    mean, var = np.empty(model[0].shape), np.empty(model[0].shape)
    # astype copies: Numba reads a broadcast view's writeable flag, which NumPy warns will turn read-only.
    continuous_laws(sampler == "sde", *(a.astype(float).reshape(-1) for a in model),
                    mean.reshape(-1), var.reshape(-1))
    return Moments(np.asarray(mean), np.asarray(var))


def ode_chain_variance(initial_var, uncond_var, *, cfg, iterations: int) -> np.ndarray:
    """Variance over a chain sampled by the ODE with a fixed ``p_u`` and perfect inheritance.

    ``v_{t+1} = v_t^w v_u^(1-w)``, i.e. ``ln(v_t/v_u) = w^t ln(v_0/v_u)``.

    Returns
    -------
    numpy.ndarray of shape ``(iterations + 1,) + broadcast shape``, ``v_0`` first.

    Examples
    --------
    >>> ode_chain_variance(0.5, 1.0, cfg=2.0, iterations=2).tolist()
    [0.5, 0.25, 0.0625]
    """
    initial_var = check_positive(initial_var, "initial_var")
    uncond_var = check_positive(uncond_var, "uncond_var")
    w = as_float_array(cfg, "cfg")
    iterations = check_int(iterations, "iterations", minimum=0)
    powers = w[None, ...] ** np.arange(iterations + 1).reshape((-1,) + (1,) * w.ndim)
    return uncond_var * np.exp(powers * (np.log(initial_var) - np.log(uncond_var)))
