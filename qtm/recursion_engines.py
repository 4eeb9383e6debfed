"""The moments engine's three ways through one group of grid points (:func:`qtm.recursion.simulate_moments`).

Each writes the expected moments of every point and iteration into ``out = (mean, var)``: the fused DDIM/DDPM
kernel (:func:`run_kernel`), the fused kernel of diffusers' other solvers and the closed-form laws
(:func:`run_solver`), and the path written with the :mod:`qtm.gaussian` operators (:func:`run_operators`), which
the other two are tested against and which alone runs a selection slope or a point that overflows.
"""

from __future__ import annotations

import numpy as np

from qtm.moments_kernels import CLOSED_LAWS, blocks, chain_kernel, solver_chain_kernel
from qtm.params import PARAMETERS
from qtm.solvers import plan_arrays
from qtm.thread_blocks import run_in_threads


def run_operators(*, iterations, sampler, continue_, population, workflow, out, **p):
    """The recursion written with the :mod:`qtm.gaussian` operators, vectorised over the points.

    ``sampler`` is the group's :class:`qtm.sampler_map.PreparedSampler`. Writes the moments of each point and
    iteration into ``out = (mean, var)``, arrays of shape (points, iterations)."""
    from qtm.gaussian import add_mutation, inherit, mix, refit_expectation

    mean, var = out
    base_c = (p["cond_mean"], p["cond_var"])
    base_u = (p["uncond_mean"], p["uncond_var"])
    real = (p["data_mean"], p["data_var"])
    cond, uncond, data = base_c, base_u, real
    # The accumulated pool: its mixture moments, how many equal-size sets it holds (D_0 first) and the
    # sum of its generated strata's variances (each weighted by its share 1 - f of its set).
    pool, sets, generated_var_sum = real, 1, 0.0
    f = p["real_fraction"]
    lost = np.zeros(mean.shape[0], dtype=bool)
    # The selection slope's factor on the finetuned variance, the same at every iteration (None: the sampler's law).
    sloped = ~np.isnan(p["selection_slope"])
    selection = np.exp(np.where(sloped, p["selection_slope"] * p["mean_log_scale"], 0.0)) if sloped.any() else None
    for t in range(iterations):
        prior_c, prior_u = (cond, uncond) if continue_ else (base_c, base_u)
        cond = inherit(*prior_c, *data, fidelity=p["fidelity"], var_fidelity=p["var_fidelity"],
                       var_shift=p["var_shift"])
        uncond = inherit(*prior_u, *data, fidelity=p["uncond_fidelity"], var_fidelity=p["uncond_var_fidelity"],
                         var_shift=p["uncond_var_shift"])
        generated = sampler.moments(*cond, *uncond)
        if selection is not None:
            generated = (generated[0], np.where(sloped, cond[1] * selection, generated[1]))
        lost = lost | ~(np.isfinite(generated[0]) & np.isfinite(generated[1]))
        if lost.any():
            # A point whose moments turned inf or NaN has diverged (divergence_iteration): its rows read NaN from
            # here on, and finite stand-ins (the real data, the base model) keep the operators' checks for the rest.
            generated, cond, uncond = (tuple(np.where(lost, x, y) for x, y in zip(stand_in, moments, strict=True))
                                       for stand_in, moments in ((real, generated), (base_c, cond), (base_u, uncond)))
        generated = add_mutation(*generated, mutation_var=p["mutation"])
        mean[:, t], var[:, t] = np.where(lost, np.nan, generated[0]), np.where(lost, np.nan, generated[1])
        if workflow != "replace":
            sets += 1
            pool = mix(*pool, *mix(*generated, *real, rate=f), rate=1.0 / sets)
            generated_var_sum = generated_var_sum + (1.0 - f) * generated[1]
            if population is None:
                data = pool
            elif workflow == "accumulate":
                data = (pool[0], pool[1] - generated_var_sum / (sets * sets * population))
            else:
                data = refit_expectation(*pool, population=population, estimator="mle")
            continue
        if population is not None:
            generated = refit_expectation(*generated, population=population, estimator="mle")
        data = mix(*generated, *real, rate=f)


def run_solver(*, iterations, sampler, continue_, population, workflow, out, **p):
    """A solver's or a closed-form law's recursion through its fused Numba kernel into ``out``: bit for bit the
    operator path, but for the last bits of the ODE's and SDE's exponentials.

    Where a moment overflows (or the tilt cannot be normalised), the operator path runs instead: its errors say
    where, its rows of diverged points read NaN."""
    if sampler.plan is None:
        scales, rows = sampler.law_scales
        table, plan, law = scales[None, :], _NO_PLAN, 1 + CLOSED_LAWS.index(sampler.sampler)
    else:
        table, rows = sampler.scale_table
        table, plan, law = np.ascontiguousarray(table.T), plan_arrays(sampler.plan), 0
    mean, var = out
    run_in_threads(solver_chain_kernel, blocks(len(mean)),
        p["cond_mean"], p["cond_var"], p["uncond_mean"], p["uncond_var"], p["data_mean"], p["data_var"],
        p["fidelity"], p["uncond_fidelity"], p["var_fidelity"], p["uncond_var_fidelity"],
        np.exp(p["var_shift"]), np.exp(p["uncond_var_shift"]), p["real_fraction"], p["mutation"],
        np.require(rows, np.int64, ["C", "W"]), table, plan, law,
        continue_, PARAMETERS["data_workflow"].choices.index(workflow), population or 0, mean, var,
    )  # fmt: skip
    if not (np.isfinite(mean).all() and np.isfinite(var).all()):
        run_operators(iterations=iterations, sampler=sampler, continue_=continue_, population=population,
                       workflow=workflow, out=out, **p)


def run_kernel(*, iterations, sampler, continue_, population, workflow, out, **p):
    """The DDIM/DDPM recursion through the fused Numba kernel, written into ``out = (mean, var)``."""
    coef, schedule = sampler.coefficients, sampler.schedule
    # Every schedule is affine in the peak scale (scale_k = slope_k * cfg + offset_k), which lets
    # each point compute its own scales without a (points x steps) table.
    offset = schedule.scales(0.0, len(coef.abar_t), alphas_cumprod=coef.abar_t)
    slope = schedule.scales(1.0, len(coef.abar_t), alphas_cumprod=coef.abar_t) - offset
    probe = schedule.scales(7.5, len(coef.abar_t), alphas_cumprod=coef.abar_t)
    if not np.allclose(probe, 7.5 * slope + offset):
        raise NotImplementedError(f"CFG schedule {schedule.spec!r} is not affine in the peak scale")
    mean, var = out
    # The finite-N refit is the MLE's expectation (qtm.gaussian.refit_expectation): variance x (N-1)/N.
    shrink = 1.0 if population is None else (population - 1) / population
    run_in_threads(chain_kernel, blocks(len(mean)),
        p["cond_mean"], p["cond_var"], p["uncond_mean"], p["uncond_var"], p["data_mean"], p["data_var"],
        p["cfg"], p["fidelity"], p["uncond_fidelity"], p["real_fraction"], p["mutation"],
        p["var_fidelity"], p["uncond_var_fidelity"], p["var_shift"], p["uncond_var_shift"],
        continue_, shrink, PARAMETERS["data_workflow"].choices.index(workflow),
        0.0 if population is None else 1.0 / population,
        coef.abar_t, np.sqrt(coef.abar_t), np.sqrt(1.0 - coef.abar_t),
        coef.x_coef, coef.eps_coef, coef.noise_std**2, slope, offset,
        mean, var,
    )  # fmt: skip


#: :func:`qtm.solvers.plan_arrays`'s types with nothing in them: the plan argument of a closed-form law's kernel run.
_NO_PLAN = (*(np.empty(0) for _ in range(7)), 0.0, False)

#: The samplers of the fused kernel: diffusers' DDIM step, whose exact map is :func:`qtm.sampler_map.step_coefficients`.
KERNEL_SAMPLERS = ("ddim", "ddpm")
