"""The compiled loops of the moments engine: the fused DDIM/DDPM recursion and the solvers' step maps.

Each kernel runs blocks of ``BLOCK`` points in parallel (ranges of blocks on a thread pool,
:mod:`qtm.thread_blocks`) and, within a block, every
per-point loop over the block's lanes, so that LLVM vectorises it (SIMD); block-local copies padded by
repeating the last point keep those loops branch-free. Every parameter array holds one value for all
points or one per point (:func:`_at`).

- :func:`chain_kernel`: all iterations of the recursion with diffusers' DDIM step fused in
  (:mod:`qtm.recursion`'s DDIM/DDPM path; ``tests/test_recursion.py`` checks it against the operators).
- :func:`ddim_law_kernel`: the steps of one guided DDIM/DDPM sampling (:mod:`qtm.sampler_map`'s law).
- :func:`sampler_kernel`: the K steps of one guided sampling with a solver of :mod:`qtm.solvers`, the
  exact map of its :class:`qtm.solvers.SolverPlan` (:func:`qtm.solvers.plan_moments`).
- :func:`solver_chain_kernel`: all iterations of the recursion with a solver's sampling or a closed-form law
  (the tilt, the ODE and SDE limits), the operators of :mod:`qtm.gaussian` written out.

Both solver kernels compute, operation for operation and in the same order, what the NumPy form of the
map and the operators computed, so that the results are the same to the last bit (Numba neither contracts
nor reassociates without ``fastmath``; scale tables, exp(var_shift) and squared noise are computed by NumPy
and passed in). Heun's step is the one exception: it multiplies by each step's reciprocal sigmas instead of
dividing every point by them, which moves its moments in the last bits (relative 1e-14 after a few
iterations) and halves its cost.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from qtm.continuous_kernels import ode_gaps, ode_moments, sde_moments

#: Points per block: the inner loops run over a block, so that they vectorise (SIMD).
BLOCK = 16


def blocks(points: int) -> int:
    """The number of blocks of ``points`` grid points: the kernels' item count for
    :func:`qtm.thread_blocks.run_in_threads`."""
    return (points + BLOCK - 1) // BLOCK


#: The laws :func:`solver_chain_kernel` computes in closed form instead of stepping a solver's plan.
CLOSED_LAWS = ("tilt", "ode", "sde")
_TILT, _ODE = 1 + CLOSED_LAWS.index("tilt"), 1 + CLOSED_LAWS.index("ode")


@njit(cache=True, nogil=True, error_model="numpy")
def chain_kernel(
    first_block, stop_block,
    cond_mean, cond_var, uncond_mean, uncond_var, data_mean, data_var,
    cfg, fidelity, uncond_fidelity, real_fraction, mutation_var,
    var_fidelity, uncond_var_fidelity, var_shift, uncond_var_shift,
    continue_, shrink, workflow, inv_population,
    abar, sqrt_abar, sqrt_beta, x_coef, eps_coef, noise_var, scale_slope, scale_offset,
    out_mean, out_var,
):  # fmt: skip
    """All iterations of the points of blocks ``first_block`` to ``stop_block - 1`` (:func:`blocks`;
    :func:`qtm.thread_blocks.run_in_threads` runs ranges of blocks in parallel): the operators of
    qtm.gaussian and the exact map of qtm.sampler_map fused, so that nothing but the result touches memory;
    within a block the per-point loops vectorise. tests/test_recursion.py checks the kernel against the
    operators themselves. ``workflow`` indexes
    ``PARAMETERS["data_workflow"].choices`` (0: replace); ``inv_population`` is 1/N (0: infinite)."""
    n_points, n_iter = out_mean.shape
    n_steps = abar.size
    for block in range(first_block, stop_block):
        lo = block * BLOCK
        size = min(BLOCK, n_points - lo)
        # Block-local copies (padded by repeating the last point) keep the inner loops branch-free;
        # separate arrays (not rows of one) let LLVM see that they do not alias, and vectorise.
        base_cm, base_cv, base_um, base_uv = _empty4()
        real_m, real_v, w_peak, rho = _empty4()
        rho_u, f, mut, m = _empty4()
        rho_v, rho_vu, factor_c, factor_u = _empty4()
        v = np.empty(BLOCK)
        for j in range(BLOCK):
            i = lo + min(j, size - 1)
            base_cm[j], base_cv[j] = _at(cond_mean, i), _at(cond_var, i)
            base_um[j], base_uv[j] = _at(uncond_mean, i), _at(uncond_var, i)
            real_m[j], real_v[j], w_peak[j] = _at(data_mean, i), _at(data_var, i), _at(cfg, i)
            rho[j], rho_u[j] = _at(fidelity, i), _at(uncond_fidelity, i)
            f[j], mut[j] = _at(real_fraction, i), _at(mutation_var, i)
            rho_v[j], rho_vu[j] = _at(var_fidelity, i), _at(uncond_var_fidelity, i)
            factor_c[j], factor_u[j] = math.exp(_at(var_shift, i)), math.exp(_at(uncond_var_shift, i))
        log_block = not np.all(np.isnan(rho_v))
        cm, cv, um, uv = base_cm.copy(), base_cv.copy(), base_um.copy(), base_uv.copy()
        dm, dv = real_m.copy(), real_v.copy()
        # The accumulated pool (as qtm.recursion's operator path): mixture moments, generated strata's variance sum.
        pool_m, pool_v, gen_sum = real_m.copy(), real_v.copy(), np.zeros(BLOCK)
        for t in range(n_iter):
            if not continue_:
                # Element by element: a slice assignment compiles a shape check and its error message (2 s).
                for j in range(BLOCK):
                    cm[j], cv[j], um[j], uv[j] = base_cm[j], base_cv[j], base_um[j], base_uv[j]
            # A block without var_fidelity keeps the branch-free linear loop (bit for bit the engine
            # before var_fidelity existed); the log-space move is a call of its own.
            if log_block:
                _inherit_variances(cv, uv, dv, rho, rho_u, rho_v, rho_vu)
            else:
                for j in range(BLOCK):
                    cv[j] += rho[j] * (dv[j] - cv[j])
                    uv[j] += rho_u[j] * (dv[j] - uv[j])
            for j in range(BLOCK):
                cm[j] += rho[j] * (dm[j] - cm[j])
                um[j] += rho_u[j] * (dm[j] - um[j])
                cv[j] *= factor_c[j]
                uv[j] *= factor_u[j]
                m[j] = 0.0
                v[j] = 1.0
            for k in range(n_steps):
                ab, beta, root_beta = abar[k], 1.0 - abar[k], sqrt_beta[k]
                x_k, e_k, ea_k, nv_k = x_coef[k], eps_coef[k], eps_coef[k] * sqrt_abar[k], noise_var[k]
                s_k, o_k = scale_slope[k], scale_offset[k]
                for j in range(BLOCK):
                    w = s_k * w_peak[j] + o_k
                    den_c = ab * cv[j] + beta
                    den_u = ab * uv[j] + beta
                    # One division for both branches' slopes b / (a^2 v + b^2).
                    inv = root_beta / (den_c * den_u)
                    slope_c = den_u * inv
                    slope_u = den_c * inv
                    gain = x_k + e_k * (slope_u + w * (slope_c - slope_u))
                    shift = -ea_k * (um[j] * slope_u + w * (cm[j] * slope_c - um[j] * slope_u))
                    m[j] = gain * m[j] + shift
                    v[j] = gain * gain * v[j] + nv_k
            for j in range(BLOCK):
                v[j] += mut[j]
            for j in range(size):
                out_mean[lo + j, t] = m[j]
                out_var[lo + j, t] = v[j]
            if workflow == 0:
                for j in range(BLOCK):
                    gen_v = v[j] * shrink
                    gap = m[j] - real_m[j]
                    dv[j] = (1.0 - f[j]) * gen_v + f[j] * real_v[j] + f[j] * (1.0 - f[j]) * gap * gap
                    dm[j] = (1.0 - f[j]) * m[j] + f[j] * real_m[j]
            else:
                _pool(t + 2, workflow == 1, shrink, inv_population, m, v, real_m, real_v, f, pool_m, pool_v,
                      gen_sum, dm, dv)


@njit(cache=True)
def _pool(sets, accumulate, shrink, inv_population, m, v, real_m, real_v, f, pool_m, pool_v, gen_sum, dm, dv):
    """Add the newest set (generated moments m, v mixed with real data) to the pool; write the next data set."""
    rate = 1.0 / sets
    drift = inv_population * rate * rate if accumulate else 0.0
    scale = 1.0 if accumulate else shrink
    for j in range(m.size):
        gap = m[j] - real_m[j]
        new_v = (1.0 - f[j]) * v[j] + f[j] * real_v[j] + f[j] * (1.0 - f[j]) * gap * gap
        new_m = (1.0 - f[j]) * m[j] + f[j] * real_m[j]
        spread = pool_m[j] - new_m
        pool_v[j] = (1.0 - rate) * pool_v[j] + rate * new_v + rate * (1.0 - rate) * spread * spread
        pool_m[j] = (1.0 - rate) * pool_m[j] + rate * new_m
        gen_sum[j] += (1.0 - f[j]) * v[j]
        dm[j] = pool_m[j]
        dv[j] = pool_v[j] * scale - gen_sum[j] * drift


@njit(cache=True)
def _inherit_variances(cv, uv, dv, rho, rho_u, rho_v, rho_vu):
    """Both branches' variances finetuned in place: in log space where rho_v is given, linearly where it is NaN."""
    for j in range(cv.size):
        if math.isnan(rho_v[j]):
            cv[j] += rho[j] * (dv[j] - cv[j])
            uv[j] += rho_u[j] * (dv[j] - uv[j])
        else:
            cv[j] = cv[j] ** (1.0 - rho_v[j]) * dv[j] ** rho_v[j]
            uv[j] = uv[j] ** (1.0 - rho_vu[j]) * dv[j] ** rho_vu[j]


@njit(cache=True, error_model="numpy")
def ddim_law_kernel(cond_mean, cond_var, uncond_mean, uncond_var, row, table, steps, out_mean, out_var):
    """One guided DDIM/DDPM sampling of every point: diffusers' step with the Gaussian ideal noise prediction,
    operation for operation as :meth:`qtm.sampler_map.PreparedSampler.moments` wrote it in NumPy (so to the last
    bit). ``table[row[i], k]`` is point i's guidance scale at step k; ``steps`` holds the rows abar_t,
    sqrt(abar_t), sqrt(1 - abar_t), x_coef, eps_coef and noise_std squared (NumPy's).

    On one thread: its callers (validate's fits) map a few thousand points at a time between BLAS calls, whose
    spinning threads kept a parallel region waiting about 2 ms per call whatever its size; 10^5 point-steps
    take about 0.3 ms here."""
    abar, root, root_rest, x_coef, eps_coef, noise_var = steps[0], steps[1], steps[2], steps[3], steps[4], steps[5]
    n_points = out_mean.size
    for block in range((n_points + BLOCK - 1) // BLOCK):
        lo = block * BLOCK
        size = min(BLOCK, n_points - lo)
        cm, cv, um, uv = _empty4()
        r, w = np.empty(BLOCK, np.int64), np.empty(BLOCK)
        for j in range(BLOCK):
            i = lo + min(j, size - 1)
            cm[j], cv[j] = _at(cond_mean, i), _at(cond_var, i)
            um[j], uv[j] = _at(uncond_mean, i), _at(uncond_var, i)
            r[j] = _at(row, i)
        mean, var = np.zeros(BLOCK), np.ones(BLOCK)
        for k in range(abar.size):
            ab, rest, a, b = abar[k], 1.0 - abar[k], root[k], root_rest[k]
            xc, ec, nv = x_coef[k], eps_coef[k], noise_var[k]
            for j in range(BLOCK):
                w[j] = table[r[j], k]
            for j in range(BLOCK):
                slope_c = b / (ab * cv[j] + rest)
                icpt_c = -a * cm[j] * slope_c
                slope_u = b / (ab * uv[j] + rest)
                icpt_u = -a * um[j] * slope_u
                gain = xc + ec * (slope_u + w[j] * (slope_c - slope_u))
                shift = ec * (icpt_u + w[j] * (icpt_c - icpt_u))
                mean[j] = gain * mean[j] + shift
                var[j] = gain * gain * var[j] + nv
        for j in range(size):
            out_mean[lo + j] = mean[j]
            out_var[lo + j] = var[j]


@njit(cache=True, error_model="numpy")
def sampler_kernel(cond_mean, cond_var, uncond_mean, uncond_var, row, table, plan, out_mean, out_var):
    """One guided sampling of every point along a solver's plan (:func:`qtm.solvers.plan_arrays`).

    ``table[k, row[i]]`` is point i's guidance scale at model evaluation k. On one thread, as
    :func:`ddim_law_kernel` and for the same reason."""
    n_points = out_mean.size
    for block in range((n_points + BLOCK - 1) // BLOCK):
        lo = block * BLOCK
        size = min(BLOCK, n_points - lo)
        cm, cv, um, uv = _empty4()
        r = np.empty(BLOCK, np.int64)
        for j in range(BLOCK):
            i = lo + min(j, size - 1)
            cm[j], cv[j] = _at(cond_mean, i), _at(cond_var, i)
            um[j], uv[j] = _at(uncond_mean, i), _at(uncond_var, i)
            r[j] = _at(row, i)
        m, v, scratch = np.empty(BLOCK), np.empty(BLOCK), _scratch()
        _sample(table, r, plan, cm, cv, um, uv, m, v, scratch)
        for j in range(size):
            out_mean[lo + j] = m[j]
            out_var[lo + j] = v[j]


@njit(cache=True, nogil=True, error_model="numpy")
def solver_chain_kernel(first_block, stop_block, cond_mean, cond_var, uncond_mean, uncond_var, data_mean, data_var,
                        fidelity, uncond_fidelity, var_fidelity, uncond_var_fidelity, var_factor, uncond_var_factor,
                        real_fraction, mutation_var, row, table, plan, law, continue_, workflow, population,
                        out_mean, out_var):
    """All iterations of the recursion with a solver's sampling or a closed-form law for the points of blocks
    ``first_block`` to ``stop_block - 1`` (:func:`blocks`): :mod:`qtm.recursion`'s operators (inherit,
    mutation, refit, mix, pool) written operation for operation as :mod:`qtm.gaussian` computes them, so that
    the results are those of the operator path to the last bit (the ODE's and SDE's exponentials and logarithms
    are libm's, not NumPy's, and may differ in the last bits). ``law`` is 0 for the solver ``plan``, else 1 +
    its index in :data:`CLOSED_LAWS` (then ``table`` has one row, the guidance scale of each of ``row``'s
    values); ``var_factor`` is exp(var_shift) (NumPy's); ``workflow`` indexes
    ``PARAMETERS["data_workflow"].choices``; ``population`` is 0 for infinitely many."""
    n_points, n_iter = out_mean.shape
    for block in range(first_block, stop_block):
        lo = block * BLOCK
        size = min(BLOCK, n_points - lo)
        base_cm, base_cv, base_um, base_uv = _empty4()
        real_m, real_v, rho, rho_u = _empty4()
        rho_v, rho_vu, fac_c, fac_u = _empty4()
        f, mut, m, v = _empty4()
        r = np.empty(BLOCK, np.int64)
        for j in range(BLOCK):
            i = lo + min(j, size - 1)
            base_cm[j], base_cv[j] = _at(cond_mean, i), _at(cond_var, i)
            base_um[j], base_uv[j] = _at(uncond_mean, i), _at(uncond_var, i)
            real_m[j], real_v[j] = _at(data_mean, i), _at(data_var, i)
            rho[j], rho_u[j] = _at(fidelity, i), _at(uncond_fidelity, i)
            rho_v[j], rho_vu[j] = _at(var_fidelity, i), _at(uncond_var_fidelity, i)
            fac_c[j], fac_u[j] = _at(var_factor, i), _at(uncond_var_factor, i)
            f[j], mut[j] = _at(real_fraction, i), _at(mutation_var, i)
            r[j] = _at(row, i)
        gap_below, gap_above = np.empty(BLOCK), np.empty(BLOCK)
        if law == _ODE:
            for j in range(BLOCK):
                gap_below[j], gap_above[j] = ode_gaps(table[0, r[j]])
        cm, cv, um, uv = base_cm.copy(), base_cv.copy(), base_um.copy(), base_uv.copy()
        dm, dv = real_m.copy(), real_v.copy()
        pool_m, pool_v, gen_sum = real_m.copy(), real_v.copy(), np.zeros(BLOCK)
        scratch = _scratch()
        for t in range(n_iter):
            for j in range(BLOCK):
                prior_cm, prior_cv = (cm[j], cv[j]) if continue_ else (base_cm[j], base_cv[j])
                prior_um, prior_uv = (um[j], uv[j]) if continue_ else (base_um[j], base_uv[j])
                cm[j], cv[j] = _inherit(prior_cm, prior_cv, dm[j], dv[j], rho[j], rho_v[j], fac_c[j])
                um[j], uv[j] = _inherit(prior_um, prior_uv, dm[j], dv[j], rho_u[j], rho_vu[j], fac_u[j])
            if law == 0:
                _sample(table, r, plan, cm, cv, um, uv, m, v, scratch)
            else:
                for j in range(BLOCK):
                    m[j], v[j] = _closed_law(law, table[0, r[j]], gap_below[j], gap_above[j], cm[j], cv[j], um[j],
                                             uv[j])
            for j in range(BLOCK):
                v[j] = v[j] + mut[j]
            for j in range(size):
                out_mean[lo + j, t] = m[j]
                out_var[lo + j, t] = v[j]
            if workflow == 0:
                shrink = 1.0 if population == 0 else (population - 1) / population
                for j in range(BLOCK):
                    dm[j], dv[j] = _mix(m[j], v[j] * shrink, real_m[j], real_v[j], f[j])
                continue
            sets = t + 2
            for j in range(BLOCK):
                new_m, new_v = _mix(m[j], v[j], real_m[j], real_v[j], f[j])
                pool_m[j], pool_v[j] = _mix(pool_m[j], pool_v[j], new_m, new_v, 1.0 / sets)
                gen_sum[j] = gen_sum[j] + (1.0 - f[j]) * v[j]
                dm[j], dv[j] = pool_m[j], pool_v[j]
                if population != 0 and workflow == 1:
                    dv[j] = pool_v[j] - gen_sum[j] / (sets * sets * population)
                elif population != 0:
                    dv[j] = pool_v[j] * ((population - 1) / population)


@njit(inline="always")
def _closed_law(law, w, gap_below, gap_above, cm, cv, um, uv):
    """The output moments of the closed-form law ``law`` (see :func:`solver_chain_kernel`) at one point: the tilt
    as :func:`qtm.gaussian.cfg_tilt` computes it (NaN where it cannot be normalised, which sends the group to the
    operators and their error), the ODE and SDE limits of :mod:`qtm.continuous_kernels`."""
    if law == _TILT:
        precision = w / cv + (1 - w) / uv
        if not precision > 0:
            return math.nan, math.nan
        return (w * cm / cv + (1 - w) * um / uv) / precision, 1 / precision
    if law == _ODE:
        return ode_moments(w, gap_below, gap_above, cm, cv, um, uv)
    return sde_moments(w, cm, cv, um, uv)


@njit(inline="always")
def _inherit(prior_m, prior_v, data_m, data_v, rho, rho_v, factor):
    """:func:`qtm.gaussian.inherit` of one branch at one point (rho_v NaN: the linear move)."""
    var = prior_v + rho * (data_v - prior_v)
    if not math.isnan(rho_v):
        var = prior_v ** (1 - rho_v) * data_v**rho_v
    return prior_m + rho * (data_m - prior_m), var * factor


@njit(inline="always")
def _mix(mean, var, other_mean, other_var, rate):
    """:func:`qtm.gaussian.mix` at one point."""
    gap = mean - other_mean
    return (1 - rate) * mean + rate * other_mean, (1 - rate) * var + rate * other_var + rate * (1 - rate) * (gap * gap)


@njit(inline="always")
def _sample(table, r, plan, cm, cv, um, uv, out_m, out_v, scratch):
    """The block's guided sampling along ``plan`` into out_m, out_v (``scratch``: six separate block arrays,
    which LLVM can tell apart, so that the step loops vectorise)."""
    alpha, noise, x_coef, d_coef, prev_coef, noise_var, sigmas, init_var, heun = plan
    s1, s2, s3, s4, s5, s6 = scratch
    if heun:
        _heun_steps(table, r, sigmas, init_var, cm, cv, um, uv, out_m, out_v, s1, s2, s3, s4, s5, s6)
    else:
        _solver_steps(table, r, alpha, noise, x_coef, d_coef, prev_coef, noise_var, init_var, cm, cv, um, uv,
                      out_m, out_v, s1, s2, s3, s4)


@njit(inline="always")
def _solver_steps(table, r, alpha, noise, x_coef, d_coef, prev_coef, noise_var, init_var, cm, cv, um, uv, mx, vxx,
                  mh, vxh, vhh, w):
    """A one-evaluation-per-step solver: the joint moments of x and the previous guided output h = D_{k-1}
    through ``x -> x_coef x + d_coef D_k + prev_coef D_{k-1} + noise`` (``noise_var``: noise_std squared)."""
    for j in range(BLOCK):
        mx[j], mh[j], vxx[j], vxh[j], vhh[j] = 0.0, 0.0, init_var, 0.0, 0.0
    for k in range(alpha.size):
        a, s = alpha[k], noise[k]
        aa, ss = a * a, s * s
        xc, dc, c, nv = x_coef[k], d_coef[k], prev_coef[k], noise_var[k]
        _gather(table, k, r, w)
        for j in range(BLOCK):
            slope, icpt = _guided(w[j], a, aa, ss, cm[j], cv[j], um[j], uv[j])
            gain = xc + dc * slope
            new_mx = gain * mx[j] + c * mh[j] + dc * icpt
            new_vxx = gain * gain * vxx[j] + 2.0 * gain * c * vxh[j] + c * c * vhh[j] + nv
            vxh[j] = slope * (gain * vxx[j] + c * vxh[j])
            vhh[j] = slope * slope * vxx[j]
            mh[j] = slope * mx[j] + icpt
            mx[j] = new_mx
            vxx[j] = new_vxx


@njit(inline="always")
def _heun_steps(table, r, sigmas, init_var, cm, cv, um, uv, mean, var, w, w_next, sc, ic, su, iu):
    """HeunDiscreteScheduler (VE sigmas): per step an Euler predictor at evaluation 2k and a trapezoid corrector
    at evaluation 2k + 1 (Euler alone onto sigma 0), composed into one affine map. Both branches' denoisers at
    sigma_{k+1} serve the corrector of step k and the predictor of step k + 1: sc, ic, su, iu keep them."""
    ss = sigmas[0] * sigmas[0]
    for j in range(BLOCK):
        mean[j], var[j] = 0.0, init_var
        sc[j], ic[j] = _denoiser(1.0, 1.0, ss, cm[j], cv[j])
        su[j], iu[j] = _denoiser(1.0, 1.0, ss, um[j], uv[j])
    for k in range(sigmas.size - 1):
        sigma, sigma_next = sigmas[k], sigmas[k + 1]
        dt = sigma_next - sigma
        ss_next = sigma_next * sigma_next
        # Reciprocals once per step, not divisions per point (which cost as much as the rest of the step).
        inv, inv_next = 1.0 / sigma, 1.0 / sigma_next if sigma_next != 0 else 0.0
        _gather(table, 2 * k, r, w)
        if sigma_next == 0:
            # Euler alone: x + dt (x - D1)/sigma.
            for j in range(BLOCK):
                gain = 1.0 + dt * (1.0 - (su[j] + w[j] * (sc[j] - su[j]))) * inv
                shift = -dt * (iu[j] + w[j] * (ic[j] - iu[j])) * inv
                mean[j] = gain * mean[j] + shift
                var[j] = gain * gain * var[j]
            continue
        _gather(table, 2 * k + 1, r, w_next)
        half = 0.5 * dt
        for j in range(BLOCK):
            # (x - D1)/sigma = x q - p and the predictor x_mid = x + dt (x - D1)/sigma.
            q = (1.0 - (su[j] + w[j] * (sc[j] - su[j]))) * inv
            p = (iu[j] + w[j] * (ic[j] - iu[j])) * inv
            gain_mid, shift_mid = 1.0 + dt * q, -dt * p
            sc[j], ic[j] = _denoiser(1.0, 1.0, ss_next, cm[j], cv[j])
            su[j], iu[j] = _denoiser(1.0, 1.0, ss_next, um[j], uv[j])
            q2 = (1.0 - (su[j] + w_next[j] * (sc[j] - su[j]))) * inv_next
            p2 = (iu[j] + w_next[j] * (ic[j] - iu[j])) * inv_next
            # x_next = x + dt/2 [(x - D1)/sigma + (x_mid - D2(x_mid))/sigma_next]
            gain = 1.0 + half * (q + q2 * gain_mid)
            shift = half * (q2 * shift_mid - p - p2)
            mean[j] = gain * mean[j] + shift
            var[j] = gain * gain * var[j]


@njit(inline="always")
def _gather(table, k, rows, out):
    """Each lane's scale at evaluation k, gathered before the step's loop so that the loop vectorises."""
    for j in range(BLOCK):
        out[j] = table[k, rows[j]]


@njit(inline="always")
def _guided(w, a, aa, ss, cm, cv, um, uv):
    """Slope and intercept of the guided ideal denoiser ``D(x)`` on ``x = a x0 + s eps`` (``aa = a^2, ss = s^2``)."""
    slope_c, icpt_c = _denoiser(a, aa, ss, cm, cv)
    slope_u, icpt_u = _denoiser(a, aa, ss, um, uv)
    return slope_u + w * (slope_c - slope_u), icpt_u + w * (icpt_c - icpt_u)


@njit(inline="always")
def _denoiser(a, aa, ss, mean, var):
    """Slope and intercept of ``E[x0 | a x0 + s eps = x]`` for ``x0 ~ N(mean, var)``."""
    slope = a * var / (aa * var + ss)
    return slope, mean * (1.0 - a * slope)


@njit(inline="always")
def _empty4():
    return np.empty(BLOCK), np.empty(BLOCK), np.empty(BLOCK), np.empty(BLOCK)


@njit(inline="always")
def _scratch():
    """Six separate block arrays: the work space of :func:`_sample`."""
    return np.empty(BLOCK), np.empty(BLOCK), np.empty(BLOCK), np.empty(BLOCK), np.empty(BLOCK), np.empty(BLOCK)


@njit(inline="always")
def _at(values, i):
    return values[0] if values.size == 1 else values[i]
