"""Benchmark 1: the classic quantitative-genetics loop, Numba kernel against its NumPy reference.

Gaussian stabilizing selection, systematic (or multinomial) resampling and Gaussian
mutation; by default 10,000 replicates x N=1,000 x 50 generations (issue 3: at least
1e8 individual-generations per second on 2 cores and at least 8x the NumPy reference).
The reference runs on fewer replicates (``--reference-replicates``): its cost is linear
in the replicates, so its rate per individual-generation is what is compared.

Run: ``NUMBA_CACHE_DIR=.numba_cache .venv/bin/python benchmarks/particles_qg.py``
"""

from __future__ import annotations

import argparse
import os
import time

import numba

from qtm.particles import Fitness, QGSetup, simulate_qg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=10_000)
    parser.add_argument("--population", type=int, default=1_000)
    parser.add_argument("--generations", type=int, default=50)
    parser.add_argument("--reference-replicates", type=int, default=200)
    parser.add_argument("--resampling", choices=("systematic", "multinomial"), default="systematic")
    args = parser.parse_args()

    def setup(population, generations):
        return QGSetup(population=population, generations=generations, resampling=args.resampling,
                       fitness=Fitness("stabilizing", omega2=4.0), mutation=0.05)

    print(f"load before: {os.getloadavg()[0]:.2f} (1-min average), cores: {os.cpu_count()}, "
          f"numba threads: {numba.get_num_threads()}")
    start, cpu = time.perf_counter(), time.process_time()
    simulate_qg(setup(10, 1), replicates=2, seed=0)
    print(f"first call (compile, or load from the cache at {os.environ.get('NUMBA_CACHE_DIR')}): "
          f"{time.perf_counter() - start:.2f} s")

    full = setup(args.population, args.generations)
    start, cpu = time.perf_counter(), time.process_time()
    simulate_qg(full, replicates=args.replicates, seed=1)
    fast, fast_cpu = time.perf_counter() - start, time.process_time() - cpu
    fast_rate = args.replicates * args.population * args.generations / fast

    start, cpu = time.perf_counter(), time.process_time()
    simulate_qg(full, replicates=args.reference_replicates, seed=1, backend="numpy")
    slow, slow_cpu = time.perf_counter() - start, time.process_time() - cpu
    slow_rate = args.reference_replicates * args.population * args.generations / slow

    print(f"numba: {args.replicates} replicates x N={args.population} x {args.generations} generations "
          f"({args.resampling}) in {fast:.2f} s = {fast_rate:.3g} individual-generations/s")
    print(f"numpy reference: {args.reference_replicates} replicates in {slow:.2f} s = "
          f"{slow_rate:.3g} individual-generations/s")
    print(f"ratio numba/numpy: {fast_rate / slow_rate:.1f}x (goal >= 8x); "
          f"goal >= 1e8/s: {'met' if fast_rate >= 1e8 else 'NOT met'}")
    # On a shared machine the wall-clock rates depend on the load; the CPU time each run
    # used gives the rate that idle cores would reach (assuming perfect scaling over threads).
    work_fast, work_slow = fast_rate * fast, slow_rate * slow
    print(f"CPU time: numba {fast_cpu:.2f} s ({work_fast / fast_cpu:.3g} individual-generations per CPU-second, "
          f"{numba.get_num_threads() * work_fast / fast_cpu:.3g}/s on {numba.get_num_threads()} idle cores), "
          f"numpy {slow_cpu:.2f} s ({work_slow / slow_cpu:.3g} per CPU-second); "
          f"idle-core ratio {numba.get_num_threads() * (work_fast / fast_cpu) / (work_slow / slow_cpu):.1f}x")
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
