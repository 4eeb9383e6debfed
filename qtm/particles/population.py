"""Population steps of the particle simulator shared by its two models (Numba): draw, refit, resample, pool.

Draws from a diagonal Gaussian mixture, per-axis moments, the refit of a model to a labelled
sample (finetuning's inheritance), finetuning's process noise, resampling by weights (systematic
or multinomial; log weights through :func:`_exp_nonpositive`), and the pools of the data workflows.

Resampling weights and the sampler chain's posterior weights use :func:`_exp_nonpositive`, a
polynomial ``exp`` that LLVM vectorises (Numba's ``math.exp`` calls libm one number at a time;
its SVML path needs an LLVM this llvmlite is not built with). The reference evaluates the same
polynomial (up to fused multiply-adds: last-bit differences, which move a resampling index only
if a position falls within 1e-16 of a cdf step).

Data workflows (``workflow``, the index of :data:`qtm.params.DATA_WORKFLOWS`; docs/theory.md,
"Data workflows"): ``replace`` trains iteration t+1 on the newest generation; ``accumulate`` on
the pool of D_0 and every generation so far (each with its real data mixed in), kept per
replicate in a buffer of (iterations + 1) x N x d floats; ``accumulate-subsample`` on N
individuals drawn from that pool without replacement (a partial Fisher-Yates shuffle on the
uniforms of its own counter block, ``P_SUBSAMPLE``, so that no other draw changes).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from qtm.particles.counter_rng import (
    P_MULTINOMIAL,
    P_PROCESS,
    P_SUBSAMPLE,
    P_SYSTEMATIC,
    _bits_float,
    _block,
    _fill_normals,
    _float_bits,
    _uniform,
)

#: The data workflows, in the order of :data:`qtm.params.DATA_WORKFLOWS`.
W_REPLACE, W_ACCUMULATE, W_SUBSAMPLE = range(3)

#: The kernels' ``finetune`` argument: one float per term, in this order (built by
#: :attr:`qtm.particles.model.Finetune.terms`). The variance fidelities are NaN for the linear
#: move; the factors are exp(var_shift) of each branch.
FINETUNE_TERMS = ("fidelity", "uncond_fidelity", "var_fidelity", "uncond_var_fidelity", "var_factor",
                  "uncond_var_factor", "process_noise")
(F_RHO, F_RHO_U, F_RHO_V, F_RHO_VU, F_FACTOR_C, F_FACTOR_U, F_PROCESS) = range(len(FINETUNE_TERMS))

#: exp(x) = 2^k exp(r): k = round(x / ln 2) by adding 1.5 * 2^52 (the integer lands in the low
#: bits), r = x - k ln 2 in two parts (k * LN2_HI is exact), exp(r) by its Taylor polynomial
#: to degree 12 (|r| <= ln(2)/2: truncation error below 2e-16), 2^k put into the exponent bits.
EXP_SHIFTER = 6755399441055744.0
LOG2E = 1.4426950408889634
LN2_HI = 6.93147180369123816490e-01
LN2_LO = 1.90821492927058770002e-10
EXP_FLOOR = -700.0
(EXP_C0, EXP_C1, EXP_C2, EXP_C3, EXP_C4, EXP_C5, EXP_C6, EXP_C7, EXP_C8, EXP_C9, EXP_C10, EXP_C11,
 EXP_C12) = (1.0 / math.factorial(k) for k in range(13))


@njit(cache=True, fastmath={"contract"})
def _exp_nonpositive(x):
    """exp(x) for x <= 0 within 2 ulp, branch-free so that loops over it vectorise.

    Below exp(-700) (and for NaN) it returns 0: such weights are < 1e-304 of the largest.
    Multiply-adds may be fused (a third faster; LLVM still inlines it, keeping the flag),
    so the reference's value can differ in the last bit.
    """
    xc = x if x > EXP_FLOOR else EXP_FLOOR
    xc = xc if xc < 0.0 else 0.0
    shifted = xc * LOG2E + EXP_SHIFTER
    k = shifted - EXP_SHIFTER
    r = (xc - k * LN2_HI) - k * LN2_LO
    p = EXP_C12 * r + EXP_C11
    p = p * r + EXP_C10
    p = p * r + EXP_C9
    p = p * r + EXP_C8
    p = p * r + EXP_C7
    p = p * r + EXP_C6
    p = p * r + EXP_C5
    p = p * r + EXP_C4
    p = p * r + EXP_C3
    p = p * r + EXP_C2
    p = p * r + EXP_C1
    p = p * r + EXP_C0
    # The low bits of ``shifted`` hold k in two's complement; k + 1023 is the biased exponent.
    w = p * _bits_float((_float_bits(shifted) + np.uint64(1023)) << np.uint64(52))
    return w if x > EXP_FLOOR else 0.0


@njit(cache=True)
def _draw_mixture(key, iteration, p_label, p_trait, weights, means, variances, x, labels, start, stop):
    """Draw rows start..stop-1 of ``x`` (and their component ``labels``) from a diagonal Gaussian mixture."""
    m, d = means.shape
    noise = np.empty((stop - start) * d)
    _fill_normals(key, _block(iteration, p_trait), noise)
    label_base = _block(iteration, p_label)
    for i in range(start, stop):
        u = _uniform(key, label_base + np.uint64(i - start))
        j = 0
        acc = weights[0]
        while j < m - 1 and acc <= u:
            j += 1
            acc += weights[j]
        labels[i] = j
        for a in range(d):
            x[i, a] = means[j, a] + math.sqrt(variances[j, a]) * noise[(i - start) * d + a]


@njit(cache=True, fastmath={"reassoc"})
def _moments(x, out_mean, out_var):
    """Per-axis mean and MLE variance (two passes, for accuracy at small variance).

    ``reassoc`` lets LLVM vectorise the sums (several partial sums: a different rounding,
    still fixed by the compiled code, so results stay independent of the threads).
    """
    n, d = x.shape
    for a in range(d):
        s = 0.0
        for i in range(n):
            s += x[i, a]
        mu = s / n
        s = 0.0
        for i in range(n):
            s += (x[i, a] - mu) ** 2
        out_mean[a] = mu
        out_var[a] = s / n


@njit(cache=True)
def _refit(x, labels, prior_w, prior_m, prior_v, rho, rho_v, factor, shift, new_w, new_m, new_v):
    """Move a mixture the fraction ``rho`` from its prior toward the labelled sample's moments.

    The variance moves linearly (``rho_v`` NaN) or by ``prior^(1-rho_v) sample^rho_v``
    (:func:`qtm.gaussian.inherit`), then is multiplied by ``factor`` = exp(var_shift); the
    mean gets the process noise ``shift`` (M, d). A component with fewer than two members has
    no variance estimate: it is not refitted, its mean and variance stay at the prior (only its
    weight moves, toward its share of the sample).
    """
    m, d = prior_m.shape
    n = x.shape[0]
    counts = np.zeros(m)
    sums = np.zeros((m, d))
    for i in range(n):
        counts[labels[i]] += 1.0
        for a in range(d):
            sums[labels[i], a] += x[i, a]
    sq = np.zeros((m, d))
    for i in range(n):
        j = labels[i]
        for a in range(d):
            sq[j, a] += (x[i, a] - sums[j, a] / counts[j]) ** 2
    for j in range(m):
        new_w[j] = prior_w[j] + rho * (counts[j] / n - prior_w[j])
        for a in range(d):
            if counts[j] >= 2.0:
                new_m[j, a] = prior_m[j, a] + rho * (sums[j, a] / counts[j] - prior_m[j, a]) + shift[j, a]
                if math.isnan(rho_v):
                    moved = prior_v[j, a] + rho * (sq[j, a] / counts[j] - prior_v[j, a])
                else:
                    moved = prior_v[j, a] ** (1.0 - rho_v) * (sq[j, a] / counts[j]) ** rho_v
                new_v[j, a] = moved * factor
            else:
                new_m[j, a] = prior_m[j, a]
                new_v[j, a] = prior_v[j, a]


@njit(cache=True)
def _finetune(x, labels, continue_prior, base_cw, base_cm, base_cv, base_uw, base_um, base_uv, finetune,
              shift, no_shift, cw, cm, cv, uw, um, uv):
    """Refit both branches (cw.., uw.. in place) from the base model, or from themselves with ``continue_prior``.

    ``finetune`` holds the :data:`FINETUNE_TERMS`; the process noise ``shift`` moves the
    conditional branch's means only (``no_shift``: zeros for the unconditional branch).
    """
    rho, rho_v, factor_c = finetune[F_RHO], finetune[F_RHO_V], finetune[F_FACTOR_C]
    rho_u, rho_vu, factor_u = finetune[F_RHO_U], finetune[F_RHO_VU], finetune[F_FACTOR_U]
    if continue_prior:
        _refit(x, labels, cw, cm, cv, rho, rho_v, factor_c, shift, cw, cm, cv)
        _refit(x, labels, uw, um, uv, rho_u, rho_vu, factor_u, no_shift, uw, um, uv)
    else:
        _refit(x, labels, base_cw, base_cm, base_cv, rho, rho_v, factor_c, shift, cw, cm, cv)
        _refit(x, labels, base_uw, base_um, base_uv, rho_u, rho_vu, factor_u, no_shift, uw, um, uv)


@njit(cache=True)
def _process_noise(key, iteration, sd, normals, shift):
    """The finetuning's noise on the conditional means of one iteration: ``shift`` (M, d) = sd x normals."""
    m, d = shift.shape
    _fill_normals(key, _block(iteration, P_PROCESS), normals)
    for j in range(m):
        for a in range(d):
            shift[j, a] = sd * normals[j * d + a]


@njit(cache=True)
def _resample_indices(key, iteration, log_w, systematic, index, cdf, positions, marks):
    """Indices of K = ``index.shape[0]`` offspring of the M = ``log_w.shape[0]`` parents, drawn with weights
    exp(log_w) (log space: no underflow at strong selection).

    ``cdf`` (M floats), ``positions`` (K floats) and ``marks`` (K + 1 integers) are work buffers.
    """
    n = log_w.shape[0]
    k = index.shape[0]
    top = -np.inf
    for i in range(n):
        top = max(top, log_w[i])
    for i in range(n):  # vectorised
        cdf[i] = _exp_nonpositive(log_w[i] - top)
    total = 0.0
    for i in range(n):
        total += cdf[i]
        cdf[i] = total
    if systematic:
        # Offspring positions (i + shift) N / total on the cdf: parents 0..j have
        # ceil(cdf[j] N / total - shift) offspring between them. Child i's parent is the number of
        # parents whose count is <= i, which replaces a merge of positions and cdf whose branches
        # depend on the data. The counts never decrease with j, so that number is 1 + the last j
        # whose count is <= i: each j writes j + 1 at its count and a running maximum reads it off
        # (plain stores: a histogram's increments waited on each other through memory).
        shift = _uniform(key, _block(iteration, P_SYSTEMATIC))
        scale = k / total
        for i in range(k + 1):
            marks[i] = 0
        for j in range(n - 1):  # the last parent's count is K
            count = cdf[j] * scale - shift
            count = count if count > 0.0 else 0.0  # clamped as a float: NaN (all weights 0) -> 0
            count = count if count < k else k
            marks[np.int64(math.ceil(count))] = j + 1
        parent = 0
        for i in range(k):
            parent = max(parent, marks[i])
            index[i] = parent
        return
    # Multinomial: sorted uniforms from normalised exponential spacings, O(N) without a sort.
    base = _block(iteration, P_MULTINOMIAL)
    s = 0.0
    for i in range(k):
        s -= math.log(1.0 - _uniform(key, base + np.uint64(i)))
        positions[i] = s
    s -= math.log(1.0 - _uniform(key, base + np.uint64(k)))
    scale = total / s
    for i in range(k):
        positions[i] *= scale
    j = 0
    for i in range(k):
        while j < n - 1 and cdf[j] <= positions[i]:
            j += 1
        index[i] = j


@njit(cache=True)
def _add_to_pool(pool, pool_labels, start, x, labels):
    """Copy the set ``x`` (and its labels) into rows ``start ..`` of the pool."""
    n, d = x.shape
    for i in range(n):
        pool_labels[start + i] = labels[i]
        for a in range(d):
            pool[start + i, a] = x[i, a]


@njit(cache=True)
def _subsample(key, iteration, pool, pool_labels, perm, out, out_labels):
    """``out.shape[0]`` rows of ``pool`` drawn uniformly without replacement (a partial Fisher-Yates shuffle).

    Draw ``i`` swaps position ``i`` with ``i + floor(u_i (M - i))``, u_i the uniform ``i`` of the
    iteration's ``P_SUBSAMPLE`` block; ``perm`` (at least M integers) is a work buffer.
    """
    size, d = pool.shape
    for i in range(size):
        perm[i] = i
    base = _block(iteration, P_SUBSAMPLE)
    for i in range(out.shape[0]):
        j = i + np.int64(_uniform(key, base + np.uint64(i)) * (size - i))
        perm[i], perm[j] = perm[j], perm[i]
        out_labels[i] = pool_labels[perm[i]]
        for a in range(d):
            out[i, a] = pool[perm[i], a]
