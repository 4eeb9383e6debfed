"""Cost of each sampler in the moments engine, per grid point and iteration (issue 11).

Times :func:`qtm.recursion.simulate_moments` for every sampler of :data:`qtm.params.SAMPLERS`
on one grid (CFG x condition drop x fidelity, the reference model, each sampler's scheduler by
:meth:`qtm.solvers.SchedulerConfig.for_sampler`) and prints nanoseconds per point-iteration and the
ratio to ``ddim`` measured in the same run. ``ddim`` and ``ddpm`` run through the fused Numba kernel
of the DDIM recursion, diffusers' other solvers through the fused kernel of theirs
(:mod:`qtm.moments_kernels`), the tilt and the ODE/SDE limits through that kernel's closed-form laws
(:mod:`qtm.continuous_kernels`). Each sampler is run once untimed (Numba compiles, caches fill), then once
per round for ``--repeats`` rounds (the order rotating), its ratio to ``ddim`` taken within each round. A
second figure times 10^6 points x 20 iterations with DPM++ 2M against DDIM in the same run
(``--large-points 0`` skips it). The load average is printed before and after: on a shared machine the
ratios are the figure to read.

Run: ``.venv/bin/python benchmarks/solver_costs.py [--points 10000] [--iterations 5] [--steps 50]``.

Measured on 2026-12-06 at 13:46 UTC (2 x86-64 cores, load average 1.1-1.5 from outside this script),
10,648 points x 5 iterations, 50 steps, 15 rounds, ns per point-iteration (best) and x ddim (median of the
rounds' ratios, range), b8b3854 (the tilt, ODE and SDE through the NumPy operators, the ODE's weight from
SciPy's hyp2f1) then this code (every closed-form law in the solver kernel, the ODE's hypergeometric function
compiled, :mod:`qtm.continuous_kernels`), back to back (``benchmarks/results/solver_costs_2026-12-06_closed_laws.txt``):

==========  ==========================  ==========================
sampler     b8b3854                     now
==========  ==========================  ==========================
ddim        77 (1.00)                   78 (1.00)
ddpm        71 (0.94, 0.50-1.73)        74 (0.99, 0.76-1.24)
euler       161 (1.56, 0.88-2.52)       147 (1.68, 1.30-1.99)
euler-a     125 (1.54, 0.86-2.25)       149 (1.65, 1.31-2.01)
dpm++2m     147 (1.54, 0.81-2.34)       143 (1.69, 1.26-2.97)
dpm++1s     132 (1.52, 0.84-1.81)       145 (1.63, 1.26-2.21)
heun        140 (1.75, 0.88-2.07)       151 (1.94, 1.45-2.31)
flow-euler  127 (1.57, 0.75-1.78)       139 (1.61, 1.37-2.17)
ode         358 (4.64, 2.67-5.88)       131 (1.50, 1.36-1.76)
sde         213 (2.99, 1.73-3.73)       98 (1.18, 1.05-1.58)
tilt        114 (1.65, 0.91-2.08)       58 (0.72, 0.60-4.76)
==========  ==========================  ==========================

10^6 points x 20 iterations, DPM++ 2M: 1.77 s (DDIM 1.17 s in the same run, 1.51 x). Each run of the small grid
takes milliseconds, and this machine's speed moves within seconds (single ratios range over a factor of 2), so
the goal (every sampler at most 2 x ddim) is read on the median of the rounds; Heun, with two model evaluations
per step, is the closest to it (1.84-1.94 in four runs of this code). The ODE's cost is its hypergeometric
function's, which depends on how close ``v_c / v_u`` is to 1 or 0 (0.07-0.3 us per call on one core; SciPy's
took 0.25 us at ``z <= 1/2`` and up to 30 us as ``z -> 1``, a collapsing chain).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numba
import numpy as np
from _memory import peak_line
from moments_grid import MODEL, grid

from qtm.params import SAMPLERS
from qtm.recursion import simulate_moments
from qtm.solvers import SchedulerConfig


def options_of(sampler: str, params: dict, *, iterations: int, steps: int) -> dict:
    return dict(MODEL, **params, sampler=sampler, iterations=iterations, steps=steps,
                scheduler=SchedulerConfig.for_sampler(sampler))


def seconds_of(options: dict) -> float:
    start = time.perf_counter()
    simulate_moments(**options)
    return time.perf_counter() - start


def rounds(params: dict, *, iterations: int, steps: int, repeats: int) -> dict[str, np.ndarray]:
    """Seconds of every sampler in each of ``repeats`` rounds (each sampler once per round, the order rotating),
    after one untimed run each: the machine's drift then moves a round's samplers together, and a ratio to DDIM
    taken within a round cancels it."""
    options = {sampler: options_of(sampler, params, iterations=iterations, steps=steps) for sampler in SAMPLERS}
    for sampler in SAMPLERS:
        simulate_moments(**options[sampler])
    times = {sampler: np.empty(repeats) for sampler in SAMPLERS}
    for r in range(repeats):
        order = SAMPLERS[r % len(SAMPLERS):] + SAMPLERS[: r % len(SAMPLERS)]
        for sampler in order:
            times[sampler][r] = seconds_of(options[sampler])
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--large-points", type=int, default=1_000_000,
                        help="grid of the second figure, DPM++ 2M against DDIM (0: skip it)")
    parser.add_argument("--large-iterations", type=int, default=20)
    args = parser.parse_args()
    # CFG up to 3 keeps the ODE's doubly exponential collapse (ln v_t / v_u = w^t ln v_0 / v_u) above the
    # smallest float.
    params, n_points = grid(args.points, cfg_max=3.0)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {numba.get_num_threads()} "
          f"Numba threads; load average before {os.getloadavg()[0]:.2f}")
    print(f"{n_points:,} points x {args.iterations} iterations, {args.steps} steps, {args.repeats} rounds")
    times = rounds(params, iterations=args.iterations, steps=args.steps, repeats=args.repeats)
    print(f"{'sampler':>11}  {'ns / point-iteration (best)':>27}  {'x ddim (median of rounds)':>26}  {'range':>11}")
    for sampler, seconds in times.items():
        ratios = seconds / times["ddim"]
        print(f"{sampler:>11}  {seconds.min() / (n_points * args.iterations) * 1e9:27.1f}  {np.median(ratios):26.2f}"
              f"  {ratios.min():5.2f}-{ratios.max():<5.2f}")
    if args.large_points:
        large, n_large = grid(args.large_points, cfg_max=3.0)
        seconds = {}
        for sampler in ("ddim", "dpm++2m"):
            options = options_of(sampler, large, iterations=args.large_iterations, steps=args.steps)
            simulate_moments(**options)
            seconds[sampler] = seconds_of(options)
        print(f"{n_large:,} points x {args.large_iterations} iterations, {args.steps} steps: dpm++2m "
              f"{seconds['dpm++2m']:.2f} s, ddim {seconds['ddim']:.2f} s ({seconds['dpm++2m'] / seconds['ddim']:.2f} "
              f"x ddim); goal < 5 s: {'met' if seconds['dpm++2m'] < 5 else 'MISSED'}")
    print(f"load average after {os.getloadavg()[0]:.2f}; {peak_line()}")


if __name__ == "__main__":
    main()
