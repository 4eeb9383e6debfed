"""The roofline of each particle benchmark: what its random draws and arithmetic alone cost, measured in the same run.

Each micro-kernel does a unit's draws and arithmetic with the kernels' own primitives (the
counter-based ziggurat, the polynomial ``exp``, the resampling walk, the mixture denoiser),
in parallel over replicates on the same threads, and nothing else: no moments, no refit, no
copies into the population, no labels. What the real kernel does beyond that is bookkeeping,
so the fraction of the roofline it reaches says how much room is left.

Rates are given per CPU-second (the process's CPU time, summed over threads) and, multiplied
by the threads, for idle cores: on a shared machine the wall-clock rate depends on the load,
the CPU time much less.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from _kernel_vs_reference import timed
from numba import njit, prange

from qtm.particles.counter_rng import P_GEN, P_MUTATION, PARTICLE_SHIFT, _block, _fill_normals
from qtm.particles.population import _resample_indices
from qtm.particles.sampler_kernel import BATCH, _level_coefficients, _mixture_eps


@njit(parallel=True, cache=True)
def qg_roofline(keys, n, generations, out):
    """Per individual-generation: one normal draw, its log weight, the exp and the systematic resampling walk."""
    for r in prange(keys.shape[0]):
        key = keys[r]
        noise, log_w = np.empty(n), np.empty(n)
        cdf, positions, index, marks = np.empty(n), np.empty(n), np.empty(n, dtype=np.int64), np.empty(
            n + 1, dtype=np.int64)
        check = 0
        for t in range(generations):
            _fill_normals(key, _block(t, P_MUTATION), noise)
            for i in range(n):
                log_w[i] = -0.125 * noise[i] * noise[i]
            _resample_indices(key, t, log_w, True, index, cdf, positions, marks)
            check += index[n // 2]
        out[r] = check


@njit(parallel=True, cache=True)
def sampler_roofline(keys, n, steps, means, variances, out):
    """Per particle-step: the particle's normal draws and the conditional and unconditional mixture denoisers.

    ``means`` and ``variances`` (M, d) stand for both branches (the cost does not depend on the
    values); the step's update is the guided DDIM one with fixed coefficients.
    """
    m, d = means.shape
    for r in prange(keys.shape[0]):
        key = keys[r]
        am, inv_s, log_norm = np.empty((steps, m, d)), np.empty((steps, m, d)), np.empty((steps, m))
        weights = np.full(m, 1.0 / m)
        for k in range(steps):
            level = (k + 1.0) / (steps + 1.0)
            _level_coefficients(weights, means, variances, math.sqrt(1.0 - level), math.sqrt(level), am[k],
                                inv_s[k], log_norm[k])
        noise = np.empty(d * (steps + 2))
        batch_noise = np.empty((d * (steps + 2), BATCH))
        xi, eps_c, eps_u = np.empty((d, BATCH)), np.empty((d, BATCH)), np.empty((d, BATCH))
        ll, scaled, top, total = np.empty((m, BATCH)), np.empty((m, d, BATCH)), np.empty(BATCH), np.empty(BATCH)
        check = 0.0
        for start in range(0, n, BATCH):
            width = min(BATCH, n - start)
            for i in range(width):
                _fill_normals(key, _block(0, P_GEN) + (np.uint64(start + i) << np.uint64(PARTICLE_SHIFT)), noise)
                for c in range(noise.shape[0]):
                    batch_noise[c, i] = noise[c]
            for a in range(d):
                for i in range(width):
                    xi[a, i] = batch_noise[a, i]
            for k in range(steps):
                _mixture_eps(xi, width, m, am, inv_s, log_norm, k, 0.5, eps_c, ll, scaled, top, total)
                _mixture_eps(xi, width, m, am, inv_s, log_norm, k, 0.5, eps_u, ll, scaled, top, total)
                for a in range(d):
                    for i in range(width):
                        e = eps_u[a, i] + 7.5 * (eps_c[a, i] - eps_u[a, i])
                        xi[a, i] = 0.9 * (xi[a, i] - 0.5 * e) + 0.4 * e + 0.1 * batch_noise[d * (k + 1) + a, i]
            check += xi[0, 0]
        out[r] = check


def roofline(kind: str, *, replicates: int, population: int, rounds: int, **shape) -> tuple[float, float]:
    """Units per CPU-second and per wall-second of the ``kind`` (``qg`` or ``sampler``) micro-kernel.

    ``rounds`` is the number of generations (qg) or iterations (sampler, ``steps`` x that many
    particle-steps per particle); the fastest of three runs counts (after one that compiles).
    """
    keys = np.arange(1, replicates + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    out = np.empty(replicates)
    if kind == "qg":
        def call(keys):
            qg_roofline(keys, population, rounds, out[: keys.shape[0]])
        work = replicates * population * rounds
    else:
        steps, modes, dims = shape["steps"], shape["modes"], shape["dims"]
        means = np.linspace(-2.0, 2.0, modes * dims).reshape(modes, dims)
        variances = np.full((modes, dims), 0.5)

        def call(keys):
            for _ in range(rounds):
                sampler_roofline(keys, population, steps, means, variances, out[: keys.shape[0]])
        work = replicates * population * steps * rounds
    call(keys[:2])
    runs = [timed(lambda: call(keys)) for _ in range(3)]
    return work / min(cpu for _, cpu in runs), work / min(wall for wall, _ in runs)


def print_roofline(kind: str, *, kernel: tuple[float, float], kernel_work: float, unit: str, goal: float,
                   fraction_goal: float | None = None, **roofline_args) -> None:
    """Print the roofline, the kernel's rate (``kernel``: its wall and CPU seconds) and the fraction reached.

    The goals are judged on CPU time: rate per CPU-second x threads is what idle cores reach if
    the threads scale perfectly (replicates are independent, so they nearly do).
    """
    threads = numba.get_num_threads()
    roof_cpu, roof_wall = roofline(kind, **roofline_args)
    wall, cpu = kernel
    kernel_cpu = kernel_work / cpu
    fraction = kernel_cpu / roof_cpu
    print(f"roofline ({kind}: draws and arithmetic only): {roof_cpu:.3g} {unit} per CPU-second "
          f"({1e9 / roof_cpu:.2f} ns each), {threads * roof_cpu:.3g}/s on {threads} idle cores; "
          f"wall clock {roof_wall:.3g}/s under the current load")
    print(f"kernel: {kernel_cpu:.3g} per CPU-second ({1e9 / kernel_cpu:.2f} ns each), "
          f"{threads * kernel_cpu:.3g}/s on {threads} idle cores (goal >= {goal:.3g}/s: "
          f"{'met' if threads * kernel_cpu >= goal else 'NOT met'}); wall clock {kernel_work / wall:.3g}/s")
    verdict = "" if fraction_goal is None else (
        f" (goal >= {fraction_goal:.0%}: {'met' if fraction >= fraction_goal else 'NOT met'})")
    print(f"fraction of the roofline (CPU time): {fraction:.0%}{verdict}")
