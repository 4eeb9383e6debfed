"""The Numba kernels of the particle simulator: the classic selection loop and the guided-sampler chain.

Random numbers come from a counter-based generator (the SplitMix64 output function
applied to ``key + counter * golden_gamma``) instead of a stateful one. Each replicate
has its own 64-bit key (:func:`qtm.random.replicate_seeds`) and every draw has a fixed
counter (iteration, purpose, index), so

- a replicate's result depends only on (seed, replicate index), never on the number of
  threads or on how the replicates are split into chunks, and
- the NumPy reference (:mod:`qtm.particles.reference`) draws exactly the same numbers,
  vectorised over replicates, so the two implementations are compared draw for draw.

Normal number ``n`` of a block at counter ``base`` comes from Doornik's 128-layer
ziggurat (ZIGNOR) on the hashes of ``base + n`` (bits 0..6 pick the layer, bits 12..63 the
uniform; attempt ``a`` and its extra uniforms
``s`` add ``(4a + s) << 58``; the tail hashes its uniforms under the key of ``s = 2``). It is a
pure function of (key, counter), so the reference vectorises it, and it costs about one
hash and one table look-up per normal (Box-Muller's log, sqrt, cos were the bottleneck).

Resampling weights and the sampler chain's posterior weights use :func:`_exp_nonpositive`, a
polynomial ``exp`` that LLVM vectorises (Numba's ``math.exp`` calls libm one number at a time;
its SVML path needs an LLVM this llvmlite is not built with). The reference evaluates the same
polynomial (up to fused multiply-adds: last-bit differences, which move a resampling index only
if a position falls within 1e-16 of a cdf step).

Kernels write into preallocated output arrays (replicate first) and loop over
replicates with ``prange``; the per-replicate work is sequential and allocates its work
buffers once per replicate.

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
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

GAMMA = np.uint64(0x9E3779B97F4A7C15)
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)
TWO_POW_M53 = 1.0 / 9007199254740992.0

#: Counter layout: bits 58..63 the ziggurat's attempt, bits 44..57 the iteration, bits 40..43
#: the purpose of a draw, bits 20..39 the particle (sampler chain), bits 0..19 the draw.
ATTEMPT_SHIFT = 58
MAX_ITERATIONS = 1 << (ATTEMPT_SHIFT - 44)
ITERATION_SHIFT = 44
PURPOSE_SHIFT = 40
PARTICLE_SHIFT = 20
MAX_BLOCK = 1 << PARTICLE_SHIFT

# The purposes of draws (one counter block each per iteration).
(P_INIT_LABEL, P_INIT_TRAIT, P_ENV, P_SYSTEMATIC, P_MULTINOMIAL, P_MUTATION, P_REAL_LABEL, P_REAL_TRAIT,
 P_GEN, P_PROCESS, P_SUBSAMPLE) = range(11)

#: The data workflows, in the order of :data:`qtm.params.DATA_WORKFLOWS`.
W_REPLACE, W_ACCUMULATE, W_SUBSAMPLE = range(3)

#: The kernels' ``finetune`` argument: one float per term, in this order (built by
#: :attr:`qtm.particles.model.Finetune.terms`). The variance fidelities are NaN for the linear
#: move; the factors are exp(var_shift) of each branch.
FINETUNE_TERMS = ("fidelity", "uncond_fidelity", "var_fidelity", "uncond_var_fidelity", "var_factor",
                  "uncond_var_factor", "process_noise")
(F_RHO, F_RHO_U, F_RHO_V, F_RHO_VU, F_FACTOR_C, F_FACTOR_U, F_PROCESS) = range(len(FINETUNE_TERMS))

FIT_NEUTRAL, FIT_STABILIZING, FIT_TRUNCATION, FIT_TILT = range(4)


def _ziggurat_tables(layers=128, right=3.442619855899, volume=9.91256303526217e-3):
    """Layer edges x_0 > x_1 = r > ... > x_C = 0 of the ziggurat and the ratios x_(i+1)/x_i (Doornik 2005)."""
    edges = np.zeros(layers + 1)
    f = math.exp(-0.5 * right * right)
    edges[0], edges[1] = volume / f, right
    for i in range(2, layers):
        edges[i] = math.sqrt(-2.0 * math.log(volume / edges[i - 1] + f))
        f = math.exp(-0.5 * edges[i] ** 2)
    return edges, edges[1:] / edges[:-1]


ZIG_EDGES, ZIG_RATIO = _ziggurat_tables()
ZIG_RIGHT = ZIG_EDGES[1]
ZIG_MASK = np.uint64(127)
ONE_BITS = np.uint64(0x3FF0000000000000)  # the IEEE bits of 1.0
ZIG_ATTEMPTS = 16
ZIG_TAIL_TRIES = 64


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


@intrinsic
def _float_bits(typingctx, x):
    """The IEEE bits of a float64 as a uint64 (NumPy: ``x.view(np.uint64)``)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return types.uint64(types.float64), codegen


@intrinsic
def _bits_float(typingctx, bits):
    """The float64 with the given IEEE bits (NumPy: ``bits.view(np.float64)``)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.uint64), codegen


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


@njit(cache=True, inline="always")
def _mix(key, counter):
    z = key + (counter + np.uint64(1)) * GAMMA
    z = (z ^ (z >> np.uint64(30))) * MIX1
    z = (z ^ (z >> np.uint64(27))) * MIX2
    return z ^ (z >> np.uint64(31))


@njit(cache=True, inline="always")
def _uniform(key, counter):
    return np.float64(_mix(key, counter) >> np.uint64(11)) * TWO_POW_M53


@njit(cache=True, inline="always")
def _block(iteration, purpose):
    high = np.uint64(iteration) << np.uint64(ITERATION_SHIFT)
    return high | (np.uint64(purpose) << np.uint64(PURPOSE_SHIFT))


@njit(cache=True, inline="always")
def _attempt(a, s):
    return np.uint64(4 * a + s) << np.uint64(ATTEMPT_SHIFT)


@njit(cache=True)
def _normal_slow(key, counter, a, layer, u):
    """The ziggurat's rare branches: the tail beyond r (layer 0) and the wedge test; NaN means retry."""
    if layer == 0:  # Marsaglia's tail method, with its own stream of uniforms
        tail_key = _mix(key, counter + _attempt(a, 2))
        for k in range(ZIG_TAIL_TRIES):
            x = math.log(1.0 - _uniform(tail_key, np.uint64(2 * k))) / ZIG_RIGHT
            y = math.log(1.0 - _uniform(tail_key, np.uint64(2 * k + 1)))
            if -2.0 * y >= x * x:
                return x - ZIG_RIGHT if u < 0.0 else ZIG_RIGHT - x
        return ZIG_RIGHT
    x = u * ZIG_EDGES[layer]
    f0 = math.exp(-0.5 * (ZIG_EDGES[layer] ** 2 - x * x))
    f1 = math.exp(-0.5 * (ZIG_EDGES[layer + 1] ** 2 - x * x))
    if f1 + _uniform(key, counter + _attempt(a, 1)) * (f0 - f1) < 1.0:
        return x
    return np.nan


@njit(cache=True, inline="always")
def _zig_uniform(h):
    """Uniform on [-1, 1) from bits 12..63 of ``h`` (bits 0..6 pick the layer).

    Built from the bits of a float in [1, 2) rather than by an integer-to-float conversion,
    which AVX2 lacks for 64-bit integers (the fill loop ran about twice as fast without it).
    """
    return 2.0 * _bits_float((h >> np.uint64(12)) | ONE_BITS) - 3.0


@njit(cache=True, inline="always")
def _normal(key, counter):
    """Standard normal number ``counter`` of ``key`` (0 after 16 rejected attempts: probability ~1e-30)."""
    for a in range(ZIG_ATTEMPTS):
        h = _mix(key, counter + _attempt(a, 0))
        layer = h & ZIG_MASK
        u = _zig_uniform(h)
        if abs(u) < ZIG_RATIO[layer]:
            return u * ZIG_EDGES[layer]
        x = _normal_slow(key, counter, a, np.int64(layer), u)
        if not math.isnan(x):
            return x
    return 0.0


@njit(cache=True)
def _fill_normals(key, base, out):
    """Normals 0 .. len(out)-1 of the block starting at counter ``base``.

    A branch-free first pass takes every draw's first attempt and marks the rejected ones
    (about 1.5 %) with NaN; the second pass draws those again with :func:`_normal`.
    """
    for n in range(out.shape[0]):
        h = _mix(key, base + np.uint64(n))
        layer = h & ZIG_MASK
        u = _zig_uniform(h)
        x = u * ZIG_EDGES[layer]
        out[n] = x if abs(u) < ZIG_RATIO[layer] else np.nan
    for n in range(out.shape[0]):
        if math.isnan(out[n]):
            out[n] = _normal(key, base + np.uint64(n))


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
        if workflow == W_ACCUMULATE:
            m_par = (t + 1) * n
            _qg_generation(key, t, pool[:m_par], labels[:m_par], child, fitness, theta, neg_half_precision, keep,
                           tilt_cfg, finetune, continue_prior, c0m, c0v, u0m, u0v, cw, cm, cv, uw, um, uv, shift,
                           no_shift, process, env_sd, use_env, mutation_sd, use_mutation, systematic,
                           phenotype[:m_par], env_noise[: m_par * d], log_w[:m_par], cdf[:m_par], index,
                           positions, marks, noise)
        else:
            _qg_generation(key, t, g, labels, child, fitness, theta, neg_half_precision, keep, tilt_cfg, finetune,
                           continue_prior, c0m, c0v, u0m, u0v, cw, cm, cv, uw, um, uv, shift, no_shift, process,
                           env_sd, use_env, mutation_sd, use_mutation, systematic, phenotype, env_noise, log_w,
                           cdf, index, positions, marks, noise)
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


@njit(parallel=True, cache=True)
def qg_kernel(keys, n, generations, data_mean, data_var, fitness, theta, omega2, keep, tilt_cfg,
              finetune, continue_prior, base_c_mean, base_c_var, base_u_mean, base_u_var,
              env_var, mutation_var, systematic, n_real, workflow, out_mean, out_var):
    """The classic loop: phenotype, log fitness, resample N offspring, mutate, record, mix in real data.

    Individuals carry a breeding value g (d axes); the phenotype is g plus environmental
    noise of variance ``env_var`` (so h^2 = v_g / (v_g + env_var)); selection acts on the
    phenotype and offspring inherit g. Fitness kinds: neutral, Gaussian stabilizing
    (``theta``, ``omega2``), truncation (keep the top ``keep`` individuals on axis 0), or
    the CFG tilt (p_c/p_u)^(w-1) of Gaussian models refitted to the population each
    generation (the :data:`FINETUNE_TERMS` in ``finetune``; prior the base or the previous model).
    ``workflow`` (:data:`W_REPLACE` ...): the parents of generation t+1 are the newest generation,
    the pool of all generations and D_0 (truncation then keeps the same fraction), or N of them.
    """
    # The parallel loop only calls the sequential body: Numba's parallel passes then see a
    # small function, which cuts the compile time.
    for r in prange(keys.shape[0]):
        _qg_replicate(keys[r], n, generations, data_mean, data_var, fitness, theta, omega2, keep, tilt_cfg,
                      finetune, continue_prior, base_c_mean, base_c_var, base_u_mean, base_u_var,
                      env_var, mutation_var, systematic, n_real, workflow, out_mean[r], out_var[r])


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
        if workflow == W_ACCUMULATE:
            size = (t + 1) * n
            _finetune(pool[:size], pool_labels[:size], continue_prior, base_cw, base_cm, base_cv, base_uw, base_um,
                      base_uv, finetune, shift, no_shift, cw, cm, cv, uw, um, uv)
        elif workflow == W_SUBSAMPLE:
            _finetune(train, train_labels, continue_prior, base_cw, base_cm, base_cv, base_uw, base_um, base_uv,
                      finetune, shift, no_shift, cw, cm, cv, uw, um, uv)
        else:
            _finetune(x, labels, continue_prior, base_cw, base_cm, base_cv, base_uw, base_um, base_uv, finetune,
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


@njit(parallel=True, cache=True)
def chain_kernel(keys, n, iterations, data_w, data_m, data_v, base_cw, base_cm, base_cv, base_uw, base_um,
                 base_uv, finetune, continue_prior, abar_t, abar_prev, scales, eta, mutation_var, n_real,
                 workflow, out_mean, out_var, out_occupancy):
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
    """
    for r in prange(keys.shape[0]):
        _chain_replicate(keys[r], n, iterations, data_w, data_m, data_v, base_cw, base_cm, base_cv, base_uw,
                         base_um, base_uv, finetune, continue_prior, abar_t, abar_prev, scales, eta,
                         mutation_var, n_real, workflow, out_mean[r], out_var[r], out_occupancy[r])
