"""Plain NumPy reference of the particle kernels, vectorised over replicates (and particles).

Same algorithms, same counter-based random numbers (the hash, counter layout and ziggurat tables of
:mod:`qtm.particles.counter_rng`) and the same argument lists as the kernels (:mod:`qtm.particles.qg_kernel`,
:mod:`qtm.particles.sampler_kernel`), so the two agree draw for draw (up to the last bits of ``exp``/``log``
and of sums, which NumPy's vectorised loops may round differently; the resampling weights use the kernels'
own polynomial ``exp``). It serves the tests and is the speed baseline of the benchmarks.
"""

from __future__ import annotations

import numpy as np

from qtm.particles.counter_rng import (
    ONE_BITS,
    P_ENV,
    P_GEN,
    P_INIT_LABEL,
    P_INIT_TRAIT,
    P_MULTINOMIAL,
    P_MUTATION,
    P_PROCESS,
    P_REAL_LABEL,
    P_REAL_TRAIT,
    P_SUBSAMPLE,
    P_SYSTEMATIC,
    PARTICLE_SHIFT,
    TWO_POW_M53,
    ZIG_ATTEMPTS,
    ZIG_EDGES,
    ZIG_MASK,
    ZIG_RATIO,
    ZIG_RIGHT,
    ZIG_TAIL_TRIES,
    attempt,
    block,
    mix,
)
from qtm.particles.population import (
    EXP_C0,
    EXP_C1,
    EXP_C2,
    EXP_C3,
    EXP_C4,
    EXP_C5,
    EXP_C6,
    EXP_C7,
    EXP_C8,
    EXP_C9,
    EXP_C10,
    EXP_C11,
    EXP_C12,
    EXP_FLOOR,
    EXP_SHIFTER,
    F_FACTOR_C,
    F_FACTOR_U,
    F_PROCESS,
    F_RHO,
    F_RHO_U,
    F_RHO_V,
    F_RHO_VU,
    LN2_HI,
    LN2_LO,
    LOG2E,
    W_ACCUMULATE,
    W_REPLACE,
    W_SUBSAMPLE,
)
from qtm.particles.qg_kernel import (
    FIT_STABILIZING,
    FIT_TILT,
    FIT_TRUNCATION,
)


def _mix(keys, counters):
    with np.errstate(over="ignore"):  # the hash relies on wrap-around arithmetic
        return mix(keys, counters)


def _uniform(keys, counters):
    return (_mix(keys, counters) >> np.uint64(11)).astype(np.float64) * TWO_POW_M53


def _normals(keys, base, start, stop):
    """Normals ``start .. stop-1`` of the blocks at ``base`` (keys, base broadcast; draws on a last axis).

    The kernel's ziggurat, vectorised: every draw takes its first attempt at once, and
    the few rejected ones (about 1.5 %) are retried together.
    """
    counters = base[..., None] + np.arange(start, stop, dtype=np.uint64)
    shape = counters.shape
    counters = counters.ravel()
    keys = np.broadcast_to(keys[..., None], shape).ravel()
    out = np.zeros(counters.shape)
    todo = np.arange(counters.size)
    for a in range(ZIG_ATTEMPTS):
        h = _mix(keys[todo], counters[todo] + attempt(a, 0))
        layer = (h & ZIG_MASK).astype(np.intp)
        u = 2.0 * ((h >> np.uint64(12)) | ONE_BITS).view(np.float64) - 3.0
        fast = np.abs(u) < ZIG_RATIO[layer]
        out[todo[fast]] = u[fast] * ZIG_EDGES[layer[fast]]
        tail = ~fast & (layer == 0)
        if tail.any():
            out[todo[tail]] = _tail(keys[todo[tail]], counters[todo[tail]] + attempt(a, 2), u[tail])
        wedge = ~fast & (layer != 0)
        todo, layer, u = todo[wedge], layer[wedge], u[wedge]
        x = u * ZIG_EDGES[layer]
        f0 = np.exp(-0.5 * (ZIG_EDGES[layer] ** 2 - x * x))
        f1 = np.exp(-0.5 * (ZIG_EDGES[layer + 1] ** 2 - x * x))
        accept = f1 + _uniform(keys[todo], counters[todo] + attempt(a, 1)) * (f0 - f1) < 1.0
        out[todo[accept]] = x[accept]
        todo = todo[~accept]
        if todo.size == 0:
            break
    return out.reshape(shape)


def _tail(keys, counters, u):
    tail_keys = _mix(keys, counters)
    out = np.full(keys.shape, ZIG_RIGHT)
    todo = np.arange(keys.size)
    for k in range(ZIG_TAIL_TRIES):
        x = np.log(1.0 - _uniform(tail_keys[todo], np.uint64(2 * k))) / ZIG_RIGHT
        y = np.log(1.0 - _uniform(tail_keys[todo], np.uint64(2 * k + 1)))
        accept = -2.0 * y >= x * x
        out[todo[accept]] = np.where(u[todo[accept]] < 0.0, x[accept] - ZIG_RIGHT, ZIG_RIGHT - x[accept])
        todo = todo[~accept]
        if todo.size == 0:
            break
    return out


def _draw_mixture(keys, iteration, p_label, p_trait, weights, means, variances, count):
    """``count`` draws per replicate from a diagonal Gaussian mixture: traits (R, count, d), labels."""
    m, d = means.shape
    u = _uniform(keys[:, None], block(iteration, p_label) + np.arange(count, dtype=np.uint64))
    acc = np.cumsum(weights)[: m - 1]
    labels = (acc[None, None, :] <= u[..., None]).sum(axis=-1)
    noise = _normals(keys, np.full(keys.shape, block(iteration, p_trait)), 0, count * d)
    noise = noise.reshape(keys.shape[0], count, d)
    return means[labels] + np.sqrt(variances[labels]) * noise, labels


def _refit(x, labels, prior_w, prior_m, prior_v, rho, rho_v, factor, shift):
    """Batched kernel refit: priors (R, M[, d]) or (M[, d]), ``shift`` (R, M, d) or 0; returns (w, m, v)."""
    r, n, d = x.shape
    m = prior_m.shape[-2]
    onehot = labels[..., None] == np.arange(m)
    counts = onehot.sum(axis=1).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.einsum("rnm,rnd->rmd", onehot, x) / counts[..., None]
        centred = x - np.take_along_axis(mean, labels[..., None], axis=1)
        var = np.einsum("rnm,rnd->rmd", onehot, centred**2) / counts[..., None]
    enough = (counts >= 2.0)[..., None]
    new_w = prior_w + rho * (counts / n - prior_w)
    new_m = np.where(enough, prior_m + rho * (mean - prior_m) + shift, prior_m)
    with np.errstate(invalid="ignore"):  # components without members: NaN, not taken
        moved = prior_v + rho * (var - prior_v) if np.isnan(rho_v) else prior_v ** (1.0 - rho_v) * var**rho_v
    new_v = np.where(enough, moved * factor, prior_v)
    return new_w, np.broadcast_to(new_m, (r, m, d)), np.broadcast_to(new_v, (r, m, d))


def _finetune(x, labels, c_prior, u_prior, finetune, shift):
    """Both branches refitted (the kernels' ``_finetune``); the process noise ``shift`` moves the conditional means."""
    c_model = _refit(x, labels, *c_prior, finetune[F_RHO], finetune[F_RHO_V], finetune[F_FACTOR_C], shift)
    u_model = _refit(x, labels, *u_prior, finetune[F_RHO_U], finetune[F_RHO_VU], finetune[F_FACTOR_U], 0.0)
    return c_model, u_model


def _process_noise(keys, iteration, finetune, m, d):
    """The kernels' ``_process_noise`` for every replicate: (R, M, d), or 0 without process noise."""
    if not finetune[F_PROCESS] > 0.0:
        return 0.0
    normals = _normals(keys, np.full(keys.shape, block(iteration, P_PROCESS)), 0, m * d)
    return finetune[F_PROCESS] * normals.reshape(keys.shape[0], m, d)


def _exp_nonpositive(x):
    """:func:`qtm.particles.population._exp_nonpositive`, operation for operation (without fused multiply-adds)."""
    with np.errstate(invalid="ignore"):
        xc = np.minimum(np.where(x > EXP_FLOOR, x, EXP_FLOOR), 0.0)
        shifted = xc * LOG2E + EXP_SHIFTER
        k = shifted - EXP_SHIFTER
        r = (xc - k * LN2_HI) - k * LN2_LO
        p = EXP_C12 * r + EXP_C11
        for c in (EXP_C10, EXP_C9, EXP_C8, EXP_C7, EXP_C6, EXP_C5, EXP_C4, EXP_C3, EXP_C2, EXP_C1, EXP_C0):
            p = p * r + c
        scale = ((shifted.view(np.uint64) + np.uint64(1023)) << np.uint64(52)).view(np.float64)
        return np.where(x > EXP_FLOOR, p * scale, 0.0)


def _resample_indices(keys, iteration, log_w, systematic, children):
    """Indices of ``children`` offspring per replicate among the parents of ``log_w`` (R, M)."""
    r, n = log_w.shape
    k = children
    weights = _exp_nonpositive(log_w - log_w.max(axis=1, keepdims=True))
    cdf = np.cumsum(weights, axis=1)
    total = cdf[:, -1:]
    index = np.empty((r, k), dtype=np.int64)
    if systematic:  # the kernel's offspring counts; child i descends from the parents whose count is <= i
        shift = _uniform(keys, block(iteration, P_SYSTEMATIC))
        with np.errstate(invalid="ignore"):
            counts = cdf[:, :-1] * (k / total) - shift[:, None]
            counts = np.ceil(np.minimum(np.where(counts > 0.0, counts, 0.0), k))
        order = np.arange(k)
        for row in range(r):
            index[row] = np.searchsorted(counts[row], order, side="right")
        return index
    counters = block(iteration, P_MULTINOMIAL) + np.arange(k + 1, dtype=np.uint64)
    spacings = np.cumsum(-np.log(1.0 - _uniform(keys[:, None], counters)), axis=1)
    positions = spacings[:, :k] * (total / spacings[:, k:])
    # One searchsorted per replicate keeps the comparisons exactly those of the kernel;
    # it is a small part of the work.
    for row in range(r):
        index[row] = np.searchsorted(cdf[row], positions[row], side="right")
    return np.minimum(index, n - 1)


def _subsample(keys, iteration, pool, pool_labels, count):
    """The kernels' ``_subsample`` for every replicate: ``count`` rows of ``pool`` (R, M, d) and their labels."""
    reps, size = pool.shape[:2]
    perm = np.broadcast_to(np.arange(size), (reps, size)).copy()
    rows = np.arange(reps)
    base = block(iteration, P_SUBSAMPLE)
    for i in range(count):  # the shuffle is sequential; it runs over the replicates at once
        j = i + (_uniform(keys, base + np.uint64(i)) * (size - i)).astype(np.int64)
        perm[rows, i], perm[rows, j] = perm[rows, j], perm[rows, i].copy()
    chosen = perm[:, :count]
    return np.take_along_axis(pool, chosen[..., None], axis=1), np.take_along_axis(pool_labels, chosen, axis=1)


def qg_reference(keys, n, generations, data_mean, data_var, fitness, theta, omega2, keep, tilt_cfg,
                 finetune, continue_prior, base_c_mean, base_c_var, base_u_mean, base_u_var,
                 env_var, mutation_var, systematic, n_real, workflow, out_mean, out_var):
    """NumPy version of :func:`qtm.particles.qg_kernel.qg_kernel` (same arguments)."""
    reps, d = keys.shape[0], data_mean.shape[0]
    one = np.ones(1)
    g, labels = _draw_mixture(keys, 0, P_INIT_LABEL, P_INIT_TRAIT, one, data_mean[None], data_var[None], n)
    pool = [g]
    c_model = (one, base_c_mean[None], base_c_var[None])
    u_model = (one, base_u_mean[None], base_u_var[None])
    for t in range(generations):
        if workflow == W_ACCUMULATE:
            g = np.concatenate(pool, axis=1)
            labels = np.zeros(g.shape[:2], dtype=np.int64)
        parents = g.shape[1]
        z = g
        if np.any(env_var > 0):
            noise = _normals(keys, np.full(reps, block(t, P_ENV)), 0, parents * d).reshape(reps, parents, d)
            z = g + np.sqrt(env_var) * noise
        if fitness == FIT_STABILIZING:
            log_w = ((z - theta) ** 2 * (-0.5 / omega2)).sum(axis=2)
        elif fitness == FIT_TRUNCATION:
            threshold = np.sort(z[:, :, 0], axis=1)[:, parents - keep * (parents // n)]
            log_w = np.where(z[:, :, 0] >= threshold[:, None], 0.0, -np.inf)
        elif fitness == FIT_TILT:
            c_prior = c_model if continue_prior else (one, base_c_mean[None], base_c_var[None])
            u_prior = u_model if continue_prior else (one, base_u_mean[None], base_u_var[None])
            c_model, u_model = _finetune(g, labels, c_prior, u_prior, finetune,
                                         _process_noise(keys, t, finetune, 1, d))
            vc = np.maximum(c_model[2], 1e-300)
            vu = np.maximum(u_model[2], 1e-300)
            s = -((z - c_model[1]) ** 2) / vc - np.log(vc) + (z - u_model[1]) ** 2 / vu + np.log(vu)
            log_w = 0.5 * (tilt_cfg - 1.0) * s.sum(axis=2)
        else:
            log_w = np.zeros((reps, parents))
        index = _resample_indices(keys, t, log_w, systematic, n)
        g = np.take_along_axis(g, index[..., None], axis=1)
        if np.any(mutation_var > 0):
            noise = _normals(keys, np.full(reps, block(t, P_MUTATION)), 0, n * d).reshape(reps, n, d)
            g = g + np.sqrt(mutation_var) * noise
        out_mean[:, t] = g.mean(axis=1)
        out_var[:, t] = ((g - out_mean[:, t][:, None]) ** 2).mean(axis=1)
        labels = np.zeros((reps, n), dtype=np.int64)  # one component
        if n_real > 0:
            real, _ = _draw_mixture(keys, t, P_REAL_LABEL, P_REAL_TRAIT, one, data_mean[None], data_var[None],
                                    n_real)
            g = g.copy()
            g[:, :n_real] = real
        if workflow != W_REPLACE:
            pool.append(g)
        if workflow == W_SUBSAMPLE:
            g, labels = _subsample(keys, t, np.concatenate(pool, axis=1), np.zeros((reps, (t + 2) * n), np.int64), n)


def level_coefficients(w, mean, var, a_level, b_level):
    """A mixture's components at one noise level: a·m, 1/(a²v + b²) and log weight - ½ Σ log(a²v + b²)."""
    level_var = np.maximum(a_level**2 * var + b_level**2, 1e-300)
    with np.errstate(divide="ignore"):
        log_norm = np.log(w) - 0.5 * np.log(level_var).sum(axis=-1)
    return a_level * mean, 1.0 / level_var, log_norm


def _mixture_log_lik(x, am, inv_s, log_norm):
    """Per particle and component: log weight + log density (up to a constant) at one level; (R, N, M)."""
    return log_norm[:, None, :] - 0.5 * ((x[:, :, None, :] - am[:, None]) ** 2 * inv_s[:, None]).sum(axis=-1)


def mixture_eps(x, am, inv_s, log_norm, b_level):
    """The exact ε-prediction of a diagonal Gaussian mixture for particles ``x`` (R, N, d), from its
    :func:`level_coefficients` (R, M, d), (R, M, d), (R, M)."""
    ll = _mixture_log_lik(x, am, inv_s, log_norm)
    p = _exp_nonpositive(ll - ll.max(axis=-1, keepdims=True))
    eps = (p[..., None] * (b_level * (x[:, :, None, :] - am[:, None]) * inv_s[:, None])).sum(axis=2)
    return eps * (1.0 / p.sum(axis=-1))[..., None]


def chain_reference(keys, n, iterations, data_w, data_m, data_v, base_cw, base_cm, base_cv, base_uw, base_um,
                    base_uv, finetune, continue_prior, abar_t, abar_prev, scales, eta, mutation_var, n_real,
                    workflow, out_mean, out_var, out_occupancy):
    """NumPy version of :func:`qtm.particles.sampler_kernel.chain_kernel` (same arguments)."""
    reps = keys.shape[0]
    m, d = data_m.shape
    k_steps = abar_t.shape[0]
    a_t, b_t, a_prev = np.sqrt(abar_t), np.sqrt(1.0 - abar_t), np.sqrt(abar_prev)
    sigma = eta * np.sqrt((1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev))
    direction = np.sqrt(np.maximum(1.0 - abar_prev - sigma**2, 0.0))
    x, labels = _draw_mixture(keys, 0, P_INIT_LABEL, P_INIT_TRAIT, data_w, data_m, data_v, n)
    pool, pool_labels = [x], [labels]
    train, train_labels = x, labels
    c_model = (base_cw, base_cm, base_cv)
    u_model = (base_uw, base_um, base_uv)
    particle_base = (np.arange(n, dtype=np.uint64) << np.uint64(PARTICLE_SHIFT))[None, :]
    particle_keys = np.broadcast_to(keys[:, None], (reps, n))
    for t in range(iterations):
        c_prior = c_model if continue_prior else (base_cw, base_cm, base_cv)
        u_prior = u_model if continue_prior else (base_uw, base_um, base_uv)
        if workflow == W_ACCUMULATE:
            train, train_labels = np.concatenate(pool, axis=1), np.concatenate(pool_labels, axis=1)
        elif workflow == W_REPLACE:
            train, train_labels = x, labels
        c_model, u_model = _finetune(train, train_labels, c_prior, u_prior, finetune,
                                     _process_noise(keys, t, finetune, m, d))
        base = np.broadcast_to(block(t, P_GEN) + particle_base, (reps, n))
        xi = _normals(particle_keys, base, 0, d)
        for k in range(k_steps):
            eps_c = mixture_eps(xi, *level_coefficients(*c_model, a_t[k], b_t[k]), b_t[k])
            eps_u = mixture_eps(xi, *level_coefficients(*u_model, a_t[k], b_t[k]), b_t[k])
            eps = eps_u + scales[k] * (eps_c - eps_u)
            x0 = (xi - b_t[k] * eps) * (1.0 / a_t[k])
            noise = _normals(particle_keys, base, d * (k + 1), d * (k + 2))
            xi = a_prev[k] * x0 + direction[k] * eps + sigma[k] * noise
        final = level_coefficients(*c_model, a_prev[-1], np.sqrt(1.0 - abar_prev[-1]))
        labels = _mixture_log_lik(xi, *final).argmax(axis=-1)
        noise = _normals(particle_keys, base, d * (k_steps + 1), d * (k_steps + 2))
        x = xi + np.sqrt(mutation_var) * noise
        out_mean[:, t] = x.mean(axis=1)
        out_var[:, t] = ((x - out_mean[:, t][:, None]) ** 2).mean(axis=1)
        out_occupancy[:, t] = (labels[..., None] == np.arange(m)).mean(axis=1)
        if n_real > 0:
            real, real_labels = _draw_mixture(keys, t, P_REAL_LABEL, P_REAL_TRAIT, data_w, data_m, data_v,
                                              n_real)
            x[:, :n_real] = real
            labels[:, :n_real] = real_labels
        if workflow != W_REPLACE:
            pool.append(x)
            pool_labels.append(labels)
        if workflow == W_SUBSAMPLE:
            train, train_labels = _subsample(keys, t, np.concatenate(pool, axis=1),
                                             np.concatenate(pool_labels, axis=1), n)
