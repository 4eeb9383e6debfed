"""The classic quantitative-genetics loop of the particle simulator, compiled with Numba.

Kernels write into preallocated output arrays (replicate first); replicates run in blocks on a thread
pool (:mod:`qtm.thread_blocks`), and the per-replicate work is sequential and allocates its
work buffers once per replicate.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from qtm.particles.counter_rng import (
    P_ENV,
    P_INIT_LABEL,
    P_INIT_TRAIT,
    P_MUTATION,
    P_REAL_LABEL,
    P_REAL_TRAIT,
    _block,
    _fill_normals,
)
from qtm.particles.population import (
    F_PROCESS,
    W_ACCUMULATE,
    W_REPLACE,
    W_SUBSAMPLE,
    _add_to_pool,
    _draw_mixture,
    _finetune,
    _moments,
    _process_noise,
    _resample_indices,
    _subsample,
)
from qtm.thread_blocks import run_in_threads

FIT_NEUTRAL, FIT_STABILIZING, FIT_TRUNCATION, FIT_TILT = range(4)


@njit(cache=True)
def _qg_generation(key, t, parents, labels, child, fitness, theta, neg_half_precision, keep, tilt_cfg, finetune,
                   continue_prior, c0m, c0v, u0m, u0v, cw, cm, cv, uw, um, uv, shift, no_shift, process,
                   env_sd, use_env, mutation_sd, use_mutation, systematic, phenotype, env_noise, log_w, cdf,
                   index, positions, marks, noise):
    """One generation of the classic loop: select among the M ``parents`` and write the N offspring into ``child``.

    ``phenotype``, ``env_noise``, ``log_w`` and ``cdf`` hold M rows (M x d floats for the noise),
    ``index``, ``positions`` and ``noise`` N (N x d), ``marks`` N + 1.
    """
    m_par, d = parents.shape
    n = child.shape[0]
    one = np.ones(1)
    if use_env:
        _fill_normals(key, _block(t, P_ENV), env_noise)
        for a in range(d):
            sd = env_sd[a]
            for i in range(m_par):
                phenotype[i, a] = parents[i, a] + sd * env_noise[i * d + a]
    if fitness == FIT_TILT:
        if finetune[F_PROCESS] > 0.0:
            _process_noise(key, t, finetune[F_PROCESS], process, shift)
        _finetune(parents, labels, continue_prior, one, c0m, c0v, one, u0m, u0v, finetune, shift, no_shift,
                  cw, cm, cv, uw, um, uv)
    if use_env:
        _log_fitness(phenotype, fitness, theta, neg_half_precision, keep * (m_par // n), tilt_cfg, cm, cv, um, uv,
                     log_w)
    else:
        _log_fitness(parents, fitness, theta, neg_half_precision, keep * (m_par // n), tilt_cfg, cm, cv, um, uv,
                     log_w)
    _resample_indices(key, t, log_w, systematic, index, cdf, positions, marks)
    # Individuals innermost: a loop over the few axes inside costs more than its work.
    if use_mutation:
        _fill_normals(key, _block(t, P_MUTATION), noise)
        for a in range(d):
            sd = mutation_sd[a]
            for i in range(n):
                child[i, a] = parents[index[i], a] + sd * noise[i * d + a]
    else:
        for a in range(d):
            for i in range(n):
                child[i, a] = parents[index[i], a]


@njit(cache=True)
def _log_fitness(z, fitness, theta, neg_half_precision, keep, tilt_cfg, cm, cv, um, uv, log_w):
    """Log fitness of each phenotype ``z`` (M rows; truncation keeps the top ``keep``); neutral: all 0."""
    m_par, d = z.shape
    if fitness == FIT_STABILIZING:
        # Individuals innermost: the loop vectorises (the axes, usually one, are too few to).
        for i in range(m_par):
            log_w[i] = 0.0
        for a in range(d):
            target, weight = theta[a], neg_half_precision[a]
            for i in range(m_par):
                log_w[i] += (z[i, a] - target) ** 2 * weight
    elif fitness == FIT_TRUNCATION:
        threshold = np.sort(z[:, 0])[m_par - keep]
        for i in range(m_par):
            log_w[i] = 0.0 if z[i, 0] >= threshold else -np.inf
    elif fitness == FIT_TILT:
        for i in range(m_par):
            s = 0.0
            for a in range(d):
                vc = max(cv[0, a], 1e-300)
                vu = max(uv[0, a], 1e-300)
                s += (-((z[i, a] - cm[0, a]) ** 2) / vc - math.log(vc)
                      + (z[i, a] - um[0, a]) ** 2 / vu + math.log(vu))
            log_w[i] = 0.5 * (tilt_cfg - 1.0) * s
    else:
        for i in range(m_par):
            log_w[i] = 0.0


@njit(cache=True)
def _qg_replicate(key, n, generations, data_mean, data_var, fitness, theta, omega2, keep, tilt_cfg,
                  finetune, continue_prior, base_c_mean, base_c_var, base_u_mean, base_u_var,
                  env_var, mutation_var, systematic, n_real, workflow, out_mean, out_var):
    """One replicate of :func:`qg_kernel` (out_mean, out_var of shape (T, d))."""
    d = data_mean.shape[0]
    env_sd = np.sqrt(env_var)
    mutation_sd = np.sqrt(mutation_var)
    # Counter-based draws: skipping unused ones leaves every other draw unchanged.
    use_env = np.any(env_var > 0.0)
    use_mutation = np.any(mutation_var > 0.0)
    neg_half_precision = -0.5 / omega2
    one = np.ones(1)
    # The pool holds D_0 and every generation (the pooled workflows); accumulate selects among all of it.
    pool_rows = (generations + 1) * n if workflow != W_REPLACE else 0
    parents = pool_rows if workflow == W_ACCUMULATE else n
    g = np.empty((n, d))
    child = np.empty((n, d))
    labels = np.zeros(max(pool_rows, n), dtype=np.int64)  # one component: every label is 0 (the pool's too)
    _draw_mixture(key, 0, P_INIT_LABEL, P_INIT_TRAIT, one, data_mean.reshape(1, d),
                  data_var.reshape(1, d), g, labels, 0, n)
    pool = np.empty((pool_rows, d))
    perm = np.empty(pool_rows, dtype=np.int64)
    if workflow != W_REPLACE:
        _add_to_pool(pool, labels, 0, g, labels)
    phenotype = np.empty((parents, d))
    env_noise = np.empty(parents * d)
    noise = np.empty(n * d)
    log_w = np.zeros(parents)
    cdf = np.empty(parents)
    index = np.empty(n, dtype=np.int64)
    positions = np.empty(n)
    marks = np.empty(n + 1, dtype=np.int64)
    c0m, c0v = base_c_mean.reshape(1, d), base_c_var.reshape(1, d)
    u0m, u0v = base_u_mean.reshape(1, d), base_u_var.reshape(1, d)
    cw, cm, cv = np.ones(1), c0m.copy(), c0v.copy()
    uw, um, uv = np.ones(1), u0m.copy(), u0v.copy()
    shift, no_shift, process = np.zeros((1, d)), np.zeros((1, d)), np.empty(d)
    for t in range(generations):
        # The parents: the whole pool so far (accumulate) or the newest set.
        m_par = (t + 1) * n if workflow == W_ACCUMULATE else n
        parent_x = pool[:m_par] if workflow == W_ACCUMULATE else g[:n]
        _qg_generation(key, t, parent_x, labels[:m_par], child, fitness, theta, neg_half_precision, keep, tilt_cfg,
                       finetune, continue_prior, c0m, c0v, u0m, u0v, cw, cm, cv, uw, um, uv, shift, no_shift,
                       process, env_sd, use_env, mutation_sd, use_mutation, systematic, phenotype[:m_par],
                       env_noise[: m_par * d], log_w[:m_par], cdf[:m_par], index, positions, marks, noise)
        if workflow == W_REPLACE:
            g, child = child, g
            _moments(g, out_mean[t], out_var[t])
            if n_real > 0:
                _draw_mixture(key, t, P_REAL_LABEL, P_REAL_TRAIT, one, data_mean.reshape(1, d),
                              data_var.reshape(1, d), g, labels, 0, n_real)
            continue
        _moments(child, out_mean[t], out_var[t])
        if n_real > 0:
            _draw_mixture(key, t, P_REAL_LABEL, P_REAL_TRAIT, one, data_mean.reshape(1, d),
                          data_var.reshape(1, d), child, labels, 0, n_real)
        _add_to_pool(pool, labels, (t + 1) * n, child, labels)
        if workflow == W_SUBSAMPLE:
            _subsample(key, t, pool[: (t + 2) * n], labels, perm, g, labels)


@njit(cache=True, nogil=True)
def _qg_block(start, stop, keys, n, generations, data_mean, data_var, fitness, theta, omega2, keep, tilt_cfg,
              finetune, continue_prior, base_c_mean, base_c_var, base_u_mean, base_u_var, env_var, mutation_var,
              systematic, n_real, workflow, out_mean, out_var):
    for r in range(start, stop):
        _qg_replicate(keys[r], n, generations, data_mean, data_var, fitness, theta, omega2, keep, tilt_cfg,
                      finetune, continue_prior, base_c_mean, base_c_var, base_u_mean, base_u_var,
                      env_var, mutation_var, systematic, n_real, workflow, out_mean[r], out_var[r])


def qg_kernel(keys, *arguments):
    """The classic loop: phenotype, log fitness, resample N offspring, mutate, record, mix in real data.

    Individuals carry a breeding value g (d axes); the phenotype is g plus environmental
    noise of variance ``env_var`` (so h^2 = v_g / (v_g + env_var)); selection acts on the
    phenotype and offspring inherit g. Fitness kinds: neutral, Gaussian stabilizing
    (``theta``, ``omega2``), truncation (keep the top ``keep`` individuals on axis 0), or
    the CFG tilt (p_c/p_u)^(w-1) of Gaussian models refitted to the population each
    generation (the :data:`FINETUNE_TERMS` in ``finetune``; prior the base or the previous model).
    ``workflow`` (:data:`W_REPLACE` ...): the parents of generation t+1 are the newest generation,
    the pool of all generations and D_0 (truncation then keeps the same fraction), or N of them.

    The arguments after ``keys`` are :func:`_qg_block`'s after ``keys``; replicate ``r`` writes row ``r`` of
    the outputs.
    """
    run_in_threads(_qg_block, keys.shape[0], keys, *arguments)
