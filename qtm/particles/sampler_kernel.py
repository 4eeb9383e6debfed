"""The guided-sampler chain of the particle simulator, compiled with Numba: refit, then K DDIM steps per particle.

Its layout is the qg loop's (:mod:`qtm.particles.qg_kernel`): replicates in parallel, each one's iterations
sequential, in particle batches whose denoiser loops vectorise.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from qtm.particles.counter_rng import (
    P_GEN,
    P_INIT_LABEL,
    P_INIT_TRAIT,
    P_REAL_LABEL,
    P_REAL_TRAIT,
    PARTICLE_SHIFT,
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
    _exp_nonpositive,
    _finetune,
    _moments,
    _process_noise,
    _subsample,
)
from qtm.thread_blocks import run_in_threads

#: Particles per batch of the sampler chain: the denoiser's loops run over a batch innermost,
#: so LLVM vectorises them across particles (per particle, d and M are too small to fill a vector).
BATCH = 64


@njit(cache=True, inline="always")
def _mixture_eps(xi, width, m, off_am, inv_s, log_norm, k, b, eps, ll, scaled, top, total):
    """Exact ε-prediction of a diagonal Gaussian mixture at level ``k`` for particles 0..width-1 of a batch.

    ``xi`` and ``eps`` are (d, BATCH), ``ll`` (M, BATCH), ``top`` and ``total`` (BATCH,), ``scaled``
    (M, d, BATCH) holds (x - a m) / (a² v + b²), used twice. Each particle's operations are those of
    the posterior-weighted log-sum-exp in the same order, so the batching changes no bit. The
    level's coefficients are indexed in place (slicing them made an array view per call).
    """
    d = xi.shape[0]
    if m == 1:  # the posterior is 1: skip the exp (bit-identical to the general branch)
        for a in range(d):
            am, inv = off_am[k, 0, a], inv_s[k, 0, a]
            for i in range(width):
                eps[a, i] = b * ((xi[a, i] - am) * inv)
        return
    for i in range(width):
        top[i] = -np.inf
        total[i] = 0.0
    for j in range(m):
        for i in range(width):
            ll[j, i] = 0.0
        for a in range(d):
            am, inv = off_am[k, j, a], inv_s[k, j, a]
            for i in range(width):
                diff = xi[a, i] - am
                scaled[j, a, i] = diff * inv
                ll[j, i] += diff * scaled[j, a, i]
        norm = log_norm[k, j]
        for i in range(width):
            ll[j, i] = norm - 0.5 * ll[j, i]
            top[i] = max(top[i], ll[j, i])
    for a in range(d):
        for i in range(width):
            eps[a, i] = 0.0
    for j in range(m):
        for i in range(width):
            # The polynomial exp vectorises (math.exp is a libm call per number); exp(0) = 1 exactly.
            p = _exp_nonpositive(ll[j, i] - top[i])
            p = 1.0 if ll[j, i] == top[i] else p
            total[i] += p
            ll[j, i] = p * b
        for a in range(d):
            for i in range(width):
                eps[a, i] += ll[j, i] * scaled[j, a, i]
    for i in range(width):
        total[i] = 1.0 / total[i]  # one division instead of d
    for a in range(d):
        for i in range(width):
            eps[a, i] *= total[i]


@njit(cache=True)
def _level_coefficients(w, mean, var, a_level, b_level, am, inv_s, log_norm):
    """Per component: a·m, 1/(a²v + b²) and log weight - ½ Σ log(a²v + b²) at one noise level."""
    m, d = mean.shape
    for j in range(m):
        s = 0.0
        for a in range(d):
            level_var = max(a_level * a_level * var[j, a] + b_level * b_level, 1e-300)
            am[j, a] = a_level * mean[j, a]
            inv_s[j, a] = 1.0 / level_var
            s += math.log(level_var)
        log_norm[j] = (math.log(w[j]) if w[j] > 0.0 else -np.inf) - 0.5 * s


@njit(cache=True)
def _chain_replicate(key, n, iterations, data_w, data_m, data_v, base_cw, base_cm, base_cv, base_uw, base_um,
                     base_uv, finetune, continue_prior, abar_t, abar_prev, scales, eta, mutation_var, n_real,
                     workflow, out_mean, out_var, out_occupancy):
    """One replicate of :func:`chain_kernel` (outputs of shape (T, d) and (T, M))."""
    m, d = data_m.shape
    k_steps = abar_t.shape[0]
    a_t = np.sqrt(abar_t)
    inv_a_t = 1.0 / a_t  # divisions are slow: one per level, not one per particle and axis
    b_t = np.sqrt(1.0 - abar_t)
    a_prev = np.sqrt(abar_prev)
    sigma = eta * np.sqrt((1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev))
    direction = np.sqrt(np.maximum(1.0 - abar_prev - sigma**2, 0.0))
    a_final = a_prev[k_steps - 1]
    b_final = math.sqrt(1.0 - abar_prev[k_steps - 1])
    x = np.empty((n, d))
    labels = np.empty(n, dtype=np.int64)
    _draw_mixture(key, 0, P_INIT_LABEL, P_INIT_TRAIT, data_w, data_m, data_v, x, labels, 0, n)
    # The pooled workflows: D_0 and every generation; accumulate-subsample trains on ``train``.
    pool_rows = (iterations + 1) * n if workflow != W_REPLACE else 0
    pool, pool_labels, perm = np.empty((pool_rows, d)), np.empty(pool_rows, dtype=np.int64), np.empty(
        pool_rows, dtype=np.int64)
    train, train_labels = x.copy(), labels.copy()
    if workflow != W_REPLACE:
        _add_to_pool(pool, pool_labels, 0, x, labels)
    cw, cm, cv = base_cw.copy(), base_cm.copy(), base_cv.copy()
    uw, um, uv = base_uw.copy(), base_um.copy(), base_uv.copy()
    c_am = np.empty((k_steps + 1, m, d))
    c_inv = np.empty((k_steps + 1, m, d))
    c_norm = np.empty((k_steps + 1, m))
    u_am = np.empty((k_steps, m, d))
    u_inv = np.empty((k_steps, m, d))
    u_norm = np.empty((k_steps, m))
    noise = np.empty(d * (k_steps + 2))
    batch_noise = np.empty((d * (k_steps + 2), BATCH))
    xi = np.empty((d, BATCH))
    eps_c = np.empty((d, BATCH))
    eps_u = np.empty((d, BATCH))
    ll = np.empty((m, BATCH))
    scaled = np.empty((m, d, BATCH))
    top = np.empty(BATCH)
    total = np.empty(BATCH)
    shift, no_shift, process = np.zeros((m, d)), np.zeros((m, d)), np.empty(m * d)
    for t in range(iterations):
        if finetune[F_PROCESS] > 0.0:
            _process_noise(key, t, finetune[F_PROCESS], process, shift)
        # The training set: the pool so far (accumulate), the subsample drawn from it, or the newest set.
        size = (t + 1) * n if workflow == W_ACCUMULATE else n
        fit_x = pool[:size] if workflow == W_ACCUMULATE else train[:n] if workflow == W_SUBSAMPLE else x[:n]
        fit_labels = (pool_labels[:size] if workflow == W_ACCUMULATE else train_labels[:n] if workflow == W_SUBSAMPLE
                      else labels[:n])
        _finetune(fit_x, fit_labels, continue_prior, base_cw, base_cm, base_cv, base_uw, base_um, base_uv, finetune,
                  shift, no_shift, cw, cm, cv, uw, um, uv)
        for k in range(k_steps):
            _level_coefficients(cw, cm, cv, a_t[k], b_t[k], c_am[k], c_inv[k], c_norm[k])
            _level_coefficients(uw, um, uv, a_t[k], b_t[k], u_am[k], u_inv[k], u_norm[k])
        _level_coefficients(cw, cm, cv, a_final, b_final, c_am[k_steps], c_inv[k_steps], c_norm[k_steps])
        gen_base = _block(t, P_GEN)
        for start in range(0, n, BATCH):
            width = min(BATCH, n - start)
            for i in range(width):
                _fill_normals(key, gen_base + (np.uint64(start + i) << np.uint64(PARTICLE_SHIFT)), noise)
                for c in range(noise.shape[0]):
                    batch_noise[c, i] = noise[c]
            for a in range(d):
                for i in range(width):
                    xi[a, i] = batch_noise[a, i]
            for k in range(k_steps):
                _mixture_eps(xi, width, m, c_am, c_inv, c_norm, k, b_t[k], eps_c, ll, scaled, top, total)
                _mixture_eps(xi, width, m, u_am, u_inv, u_norm, k, b_t[k], eps_u, ll, scaled, top, total)
                w, b, inv_a, a_next, dir_k, sigma_k = scales[k], b_t[k], inv_a_t[k], a_prev[k], direction[k], sigma[k]
                for a in range(d):
                    row = d * (k + 1) + a
                    for i in range(width):
                        e = eps_u[a, i] + w * (eps_c[a, i] - eps_u[a, i])
                        x0 = (xi[a, i] - b * e) * inv_a
                        xi[a, i] = a_next * x0 + dir_k * e + sigma_k * batch_noise[row, i]
            for i in range(width):
                best = 0
                top_ll = -np.inf
                for j in range(m):
                    s = 0.0
                    for a in range(d):
                        s += (xi[a, i] - c_am[k_steps, j, a]) ** 2 * c_inv[k_steps, j, a]
                    s = c_norm[k_steps, j] - 0.5 * s
                    if s > top_ll:
                        top_ll = s
                        best = j
                labels[start + i] = best
                for a in range(d):
                    x[start + i, a] = xi[a, i] + math.sqrt(mutation_var[a]) * batch_noise[d * (k_steps + 1) + a, i]
        _moments(x, out_mean[t], out_var[t])
        for j in range(m):
            out_occupancy[t, j] = 0.0
        for i in range(n):
            out_occupancy[t, labels[i]] += 1.0 / n
        if n_real > 0:
            _draw_mixture(key, t, P_REAL_LABEL, P_REAL_TRAIT, data_w, data_m, data_v, x, labels, 0,
                          n_real)
        if workflow != W_REPLACE:
            _add_to_pool(pool, pool_labels, (t + 1) * n, x, labels)
        if workflow == W_SUBSAMPLE:
            _subsample(key, t, pool[: (t + 2) * n], pool_labels, perm, train, train_labels)


@njit(cache=True, nogil=True)
def _chain_block(start, stop, keys, n, iterations, data_w, data_m, data_v, base_cw, base_cm, base_cv, base_uw,
                 base_um, base_uv, finetune, continue_prior, abar_t, abar_prev, scales, eta, mutation_var, n_real,
                 workflow, out_mean, out_var, out_occupancy):
    for r in range(start, stop):
        _chain_replicate(keys[r], n, iterations, data_w, data_m, data_v, base_cw, base_cm, base_cv, base_uw,
                         base_um, base_uv, finetune, continue_prior, abar_t, abar_prev, scales, eta,
                         mutation_var, n_real, workflow, out_mean[r], out_var[r], out_occupancy[r])


def chain_kernel(keys, *arguments):
    """The guided-sampler chain: refit (labels), run the K-step guided DDIM sampler on each particle, record.

    Per iteration: both branches are refitted to the labelled training set (the
    :data:`FINETUNE_TERMS` in ``finetune``: fidelities, log-space variance terms, and the
    process noise drawn per replicate and iteration on the conditional means); each of the N
    new particles starts at x_K ~ N(0, I) and takes K DDIM steps (diffusers' update, no
    clipping) with the guided ε̂ = ε̂_u + w_k (ε̂_c - ε̂_u) of the two fitted mixtures; it is
    labelled by its most probable component of the conditional mixture at the last noise
    level; mutation noise is added; its statistics are recorded; then the first ``n_real``
    particles are replaced by fresh real data to form the newest set; the next training set is
    that set (``workflow`` :data:`W_REPLACE`), the pool of D_0 and every set so far
    (:data:`W_ACCUMULATE`) or N individuals drawn from it without replacement (:data:`W_SUBSAMPLE`).

    The arguments after ``keys`` are :func:`_chain_block`'s after ``keys``; replicate ``r`` writes row ``r`` of
    the outputs.
    """
    run_in_threads(_chain_block, keys.shape[0], keys, *arguments)
