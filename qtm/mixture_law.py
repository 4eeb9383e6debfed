"""The guided DDIM/DDPM sampler's law when p_c and p_u are Gaussian mixtures, by particles.

The exact Gaussian law (:mod:`qtm.sampler_map`) treats the unconditional model as one Gaussian. A text-to-image
model's unconditional model is a mixture over its concepts, and guidance then tilts by the concept's posterior,
``p_c (p_c / p_u)^(w-1) ∝ p_c p(c | x)^(w-1)``, which is bounded by 1: past the scale where p(c | x) reaches 1 in
the concept's core, more guidance selects little more. A single Gaussian p_u has an unbounded ratio and keeps
sharpening. Here each particle is drawn by the K-step sampler with the exact denoisers of the two mixtures (the
particle simulator's, :func:`qtm.particles.reference.mixture_eps`); the law is the particles' mean and variance.
"""

from __future__ import annotations

import numpy as np

from qtm.errors import QTMError
from qtm.gaussian import Moments
from qtm.params import NETWORK_SAMPLERS, PARAMETERS, effective_eta
from qtm.particles.reference import level_coefficients, mixture_eps
from qtm.random import check_random_state
from qtm.sampler_map import ddim_config, step_coefficients
from qtm.schedules import CFGSchedule
from qtm.solvers import SchedulerConfig
from qtm.validation import as_float_array, check_positive


def mixture_law(cond_weights, cond_means, cond_vars, uncond_weights, uncond_means, uncond_vars, *, cfg,
                schedule="constant", sampler: str = "ddim", steps: int = 50, eta: float = 0.0,
                scheduler: SchedulerConfig | str = "sd15", particles: int = 20_000, random_state=None) -> Moments:
    """Mean and variance of the guided sampler's output for R pairs of diagonal Gaussian mixtures.

    Parameters
    ----------
    cond_weights, cond_means, cond_vars : array_like of shape (R, M_c), (R, M_c, d), (R, M_c, d)
        The conditional model of each of R cases (weights sum to 1 per case; variances > 0).
    uncond_weights, uncond_means, uncond_vars : array_like of shape (R, M_u), (R, M_u, d), (R, M_u, d)
        The unconditional model of each case.
    cfg : array_like of shape (W,)
        Peak guidance scales; every case is sampled at each, from the same starting noise (common random
        numbers, so that differences between scales are not blurred by sampling noise).
    schedule, sampler, steps, eta, scheduler
        As in :func:`qtm.sampler_map.prepare_sampler`; ``sampler`` is ``ddim`` or ``ddpm``.
    particles : int
        Particles per case and scale; the Monte Carlo error of a log variance is about ``sqrt(2 / particles)``.
    random_state : None, int or numpy.random.Generator

    Returns
    -------
    Moments
        ``mean`` and ``var`` of shape (R, W, d).

    Examples
    --------
    One Gaussian each: the particles agree with the exact law of :mod:`qtm.sampler_map`.

    >>> from qtm.sampler_map import prepare_sampler
    >>> law = mixture_law([[1.0]], [[[1.0]]], [[[0.5]]], [[1.0]], [[[0.0]]], [[[1.0]]], cfg=[3.0],
    ...                   steps=20, particles=40_000, random_state=0)
    >>> exact = prepare_sampler("ddim", cfg=3.0, steps=20).moments(1.0, 0.5, 0.0, 1.0)
    >>> round(float(law.var[0, 0, 0]), 2), round(float(exact.var), 2)
    (0.09, 0.09)
    """
    if sampler not in NETWORK_SAMPLERS:
        raise QTMError(f"the mixture law samples with {' or '.join(NETWORK_SAMPLERS)}, not {sampler!r}")
    cond = _mixture(cond_weights, cond_means, cond_vars, "cond")
    uncond = _mixture(uncond_weights, uncond_means, uncond_vars, "uncond")
    if cond[1].shape[0] != uncond[1].shape[0] or cond[1].shape[2] != uncond[1].shape[2]:
        raise QTMError(f"cond and uncond must have the same cases and axes, got means of shapes "
                       f"{cond[1].shape} and {uncond[1].shape}")
    cfgs = check_positive(np.atleast_1d(cfg), "cfg")
    steps = PARAMETERS["steps"].check(steps)
    particles = int(PARAMETERS["population"].check(particles))
    step = step_coefficients(steps, eta=effective_eta(sampler, eta), config=ddim_config(sampler, scheduler))
    a_t, b_t = np.sqrt(step.abar_t), np.sqrt(1.0 - step.abar_t)
    # The denoisers' level coefficients do not depend on w: built once per level, used at every w.
    levels = [(level_coefficients(*cond, a_t[k], b_t[k]), level_coefficients(*uncond, a_t[k], b_t[k]))
              for k in range(steps)]
    rng = check_random_state(random_state)
    cases, dims = cond[1].shape[0], cond[1].shape[2]
    start = rng.standard_normal((cases, particles, dims))
    noise = rng.standard_normal((steps, cases, particles, dims)) if step.noise_std.any() else None
    parsed = CFGSchedule.parse(schedule)
    mean, var = np.empty((cases, len(cfgs), dims)), np.empty((cases, len(cfgs), dims))
    for j, w in enumerate(cfgs):
        scales = parsed.scales(float(w), steps, alphas_cumprod=step.abar_t)
        x = start
        for k, (cond_level, uncond_level) in enumerate(levels):
            eps_c = mixture_eps(x, *cond_level, b_t[k])
            eps_u = mixture_eps(x, *uncond_level, b_t[k])
            x = step.x_coef[k] * x + step.eps_coef[k] * (eps_u + scales[k] * (eps_c - eps_u))
            if noise is not None:
                x = x + step.noise_std[k] * noise[k]
        mean[:, j] = x.mean(axis=1)
        var[:, j] = x.var(axis=1, ddof=1)
    return Moments(mean, var)


def _mixture(weights, means, variances, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    weights = as_float_array(weights, f"{name}_weights")
    means = as_float_array(means, f"{name}_means")
    variances = check_positive(variances, f"{name}_vars")
    if weights.ndim != 2 or means.ndim != 3 or means.shape != variances.shape or means.shape[:2] != weights.shape:
        raise QTMError(f"{name}: weights (R, M), means and variances (R, M, d) expected, got shapes "
                       f"{weights.shape}, {means.shape}, {variances.shape}")
    if np.any(weights < 0) or not np.allclose(weights.sum(axis=1), 1.0):
        raise QTMError(f"{name}_weights must be >= 0 and sum to 1 in each case")
    return weights, means, variances
