"""Cost of each sampler in the moments engine, per grid point and iteration (issue 11).

Times :func:`qtm.recursion.simulate_moments` for every sampler of :data:`qtm.params.SAMPLERS`
on one grid (CFG x condition drop x fidelity, the reference model, each sampler's scheduler by
:meth:`qtm.solvers.SchedulerConfig.for_sampler`) and prints nanoseconds per point-iteration and the
ratio to ``ddim`` measured in the same run. ``ddim`` and ``ddpm`` run through the fused Numba kernel
of the DDIM recursion, diffusers' other solvers through the fused kernel of theirs
(:mod:`qtm.moments_kernels`), the tilt and the ODE/SDE limits through the :mod:`qtm.gaussian`
operators, vectorised over the grid. Each sampler is run once untimed (Numba compiles, caches fill),
then the best of ``--repeats`` runs is taken. A second figure times 10^6 points x 20 iterations with
DPM++ 2M against DDIM in the same run (``--large-points 0`` skips it). The load average is printed
before and after: on a shared machine the ratios are the figure to read.

Run: ``.venv/bin/python benchmarks/solver_costs.py [--points 10000] [--iterations 5] [--steps 50]``.

Measured on 2026-12-06 (2 shared x86-64 cores, other agents running, load average 4.6 before and after
both runs), 10,648 points x 5 iterations, 50 steps, ns per point-iteration (x ddim), ea2d7ed (each
iteration rebuilt the solver plan and scale table and stepped with NumPy over the grid) then this
code, back to back:

==========  ===============  ==============
sampler     ea2d7ed          now
==========  ===============  ==============
ddim        318 (1.00)       185 (1.00)
ddpm        334 (1.05)       225 (1.22)
euler       2073 (6.53)      259 (1.40)
euler-a     1773 (5.58)      174 (0.94)
dpm++2m     1453 (4.58)      314 (1.70)
dpm++1s     1284 (4.04)      250 (1.36)
heun        2168 (6.83)      375 (2.03)
flow-euler  1609 (5.07)      376 (2.04)
ode         509 (1.60)       417 (2.26)
sde         296 (0.93)       206 (1.12)
tilt        174 (0.55)       99 (0.54)
==========  ===============  ==============

10^6 points x 20 iterations, DPM++ 2M: 3.55 s (DDIM 2.34 s in the same run, 1.52 x). On this loaded
machine the figures move by up to a factor 1.5 from run to run (an earlier pair: heun 1.59, flow-euler
2.08, dpm++2m 1.74 x ddim); single-threaded CPU time, which the load does not move, gave euler 1.7,
dpm++2m 1.7 and heun 2.0 x ddim. ``ode`` evaluates a hypergeometric function per point and iteration
(:mod:`qtm.continuous`), which no kernel fuses.
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
    parser.add_argument("--repeats", type=int, default=3)
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
