"""Counter-based random numbers of the particle simulator, shared by its kernels and its NumPy reference.

Random numbers come from a counter-based generator (the SplitMix64 output function
applied to ``key + counter * golden_gamma``) instead of a stateful one. Each replicate
has its own 64-bit key (:func:`qtm.random.replicate_seeds`) and every draw has a fixed
counter (iteration, purpose, index), so

- a replicate's result depends only on (seed, replicate index), never on the number of
  threads or on how the replicates are split into chunks, and
- the NumPy reference (:mod:`qtm.particles.reference`) draws exactly the same numbers,
  vectorised over replicates, so the two implementations are compared draw for draw. The
  hash (:func:`mix`), the counter layout (:func:`block`, :func:`attempt`) and the ziggurat's
  tables are written once, here, for both; the kernels use their compiled forms (``_mix`` ...).

Normal number ``n`` of a block at counter ``base`` comes from Doornik's 128-layer
ziggurat (ZIGNOR) on the hashes of ``base + n`` (bits 0..6 pick the layer, bits 12..63 the
uniform; attempt ``a`` and its extra uniforms
``s`` add ``(4a + s) << 58``; the tail hashes its uniforms under the key of ``s = 2``). It is a
pure function of (key, counter), so the reference vectorises it, and it costs about one
hash and one table look-up per normal (Box-Muller's log, sqrt, cos were the bottleneck).
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
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


def mix(key, counter):
    """The SplitMix64 hash of ``key + (counter + 1) golden_gamma`` (uint64 scalars or NumPy arrays)."""
    z = key + (counter + np.uint64(1)) * GAMMA
    z = (z ^ (z >> np.uint64(30))) * MIX1
    z = (z ^ (z >> np.uint64(27))) * MIX2
    return z ^ (z >> np.uint64(31))


@njit(cache=True, inline="always")
def _uniform(key, counter):
    return np.float64(_mix(key, counter) >> np.uint64(11)) * TWO_POW_M53


def block(iteration, purpose):
    """The first counter of the draws of ``purpose`` in ``iteration``."""
    high = np.uint64(iteration) << np.uint64(ITERATION_SHIFT)
    return high | (np.uint64(purpose) << np.uint64(PURPOSE_SHIFT))


def attempt(a, s):
    """The counter offset of the ziggurat's attempt ``a`` (``s``: its first hash, wedge uniform or tail key)."""
    return np.uint64(4 * a + s) << np.uint64(ATTEMPT_SHIFT)


# The kernels' compiled forms of the three functions above.
_mix = njit(cache=True, inline="always")(mix)
_block = njit(cache=True, inline="always")(block)
_attempt = njit(cache=True, inline="always")(attempt)


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
