"""Cost of each sampler in the moments engine, per grid point and iteration (issue 11).

Times :func:`qtm.recursion.simulate_moments` for every sampler of :data:`qtm.params.SAMPLERS`
on one grid (CFG x condition drop x fidelity, the reference model, each sampler's scheduler by
:meth:`qtm.solvers.SchedulerConfig.for_sampler`) and prints nanoseconds per point-iteration and the
ratio to ``ddim`` measured in the same run. ``ddim`` and ``ddpm`` run through the fused Numba kernel
of the DDIM recursion, diffusers' other solvers through the fused kernel of theirs
(:mod:`qtm.moments_kernels`), the tilt and the ODE/SDE limits through that kernel's closed-form laws
(:mod:`qtm.continuous_kernels`). Each sampler is run once untimed (Numba compiles, caches fill),
then the best of ``--repeats`` runs is taken. A second figure times 10^6 points x 20 iterations with
DPM++ 2M against DDIM in the same run (``--large-points 0`` skips it). The load average is printed
before and after: on a shared machine the ratios are the figure to read.

Run: ``.venv/bin/python benchmarks/solver_costs.py [--points 10000] [--iterations 5] [--steps 50]``.

Measured on 2026-12-06, 12:57 UTC (2 x86-64 cores, load average 0.8), 10,648 points x 5 iterations, 50
steps, best of 15, ns per point-iteration (x ddim), b8b3854 (the tilt, ODE and SDE through the NumPy operators,
the ODE's weight from SciPy's hyp2f1) then this code (every closed-form law in the solver kernel, the ODE's
hypergeometric function compiled, :mod:`qtm.continuous_kernels`), back to back:

==========  ===============  ==============
sampler     b8b3854          now
==========  ===============  ==============
ddim        86 (1.00)        107 (1.00)
ddpm        66 (0.77)        107 (1.01)
euler       126 (1.46)       159 (1.49)
euler-a     129 (1.49)       156 (1.46)
dpm++2m     134 (1.55)       174 (1.63)
dpm++1s     144 (1.66)       168 (1.58)
heun        165 (1.90)       186 (1.74)
flow-euler  141 (1.63)       166 (1.55)
ode         394 (4.56)       154 (1.45)
sde         306 (3.54)       148 (1.38)
tilt        212 (2.45)       65 (0.61)
==========  ===============  ==============

10^6 points x 20 iterations, DPM++ 2M: 2.21 s (DDIM 1.24 s in the same run, 1.79 x). The machine's speed
drifts: single ratios move by up to 0.3 between runs minutes apart (three more runs of this code: heun 1.29-1.91,
dpm++2m 1.24-1.76, ode 1.28-1.53, sde 1.32-1.69 x ddim), hence the best of 15 (each run takes milliseconds).
The ODE's cost is its hypergeometric function's, which depends on how close ``v_c / v_u`` is to 1 or 0 (0.07-0.3
us per call on one core; SciPy's took 0.25 us at ``z <= 1/2`` and up to 30 us as ``z -> 1``, a collapsing chain).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numba
from _memory import peak_line
from moments_grid import MODEL, grid

from qtm.params import SAMPLERS
from qtm.recursion import simulate_moments
from qtm.solvers import SchedulerConfig


def best_time(sampler: str, params: dict, *, iterations: int, steps: int, repeats: int) -> float:
    options = dict(MODEL, **params, sampler=sampler, iterations=iterations, steps=steps,
                   scheduler=SchedulerConfig.for_sampler(sampler))
    simulate_moments(**options)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        simulate_moments(**options)
        best = min(best, time.perf_counter() - start)
    return best


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
    print(f"{n_points:,} points x {args.iterations} iterations, {args.steps} steps, best of {args.repeats}")
    per_point = {}
    for sampler in SAMPLERS:
        seconds = best_time(sampler, params, iterations=args.iterations, steps=args.steps, repeats=args.repeats)
        per_point[sampler] = seconds / (n_points * args.iterations) * 1e9
    print(f"{'sampler':>11}  {'ns / point-iteration':>20}  {'x ddim':>8}")
    for sampler, ns in per_point.items():
        print(f"{sampler:>11}  {ns:20.1f}  {ns / per_point['ddim']:8.2f}")
    if args.large_points:
        large, n_large = grid(args.large_points, cfg_max=3.0)
        seconds = {sampler: best_time(sampler, large, iterations=args.large_iterations, steps=args.steps, repeats=1)
                   for sampler in ("ddim", "dpm++2m")}
        print(f"{n_large:,} points x {args.large_iterations} iterations, {args.steps} steps: dpm++2m "
              f"{seconds['dpm++2m']:.2f} s, ddim {seconds['ddim']:.2f} s ({seconds['dpm++2m'] / seconds['ddim']:.2f} "
              f"x ddim); goal < 5 s: {'met' if seconds['dpm++2m'] < 5 else 'MISSED'}")
    print(f"load average after {os.getloadavg()[0]:.2f}; {peak_line()}")


if __name__ == "__main__":
    main()
