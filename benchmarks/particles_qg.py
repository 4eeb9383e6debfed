"""Benchmark 1: the classic quantitative-genetics loop, Numba kernel against its NumPy reference.

Gaussian stabilizing selection, systematic (or multinomial) resampling and Gaussian
mutation; by default 10,000 replicates x N=1,000 x 50 generations (issue 3: at least 8x the
NumPy reference; issue 16: at least 1.5e8 individual-generations per second on 2 cores and at
least 70 % of the roofline, the cost of one normal draw, the exp and the resampling walk
per individual-generation measured by a micro-kernel in the same run: ``_roofline.py``).
Goals are judged on CPU time (the machine may be shared); wall-clock figures are printed too.
The reference runs on fewer replicates (``--reference-replicates``): its cost is linear
in the replicates, so its rate per individual-generation is what is compared.

Run: ``NUMBA_CACHE_DIR=.numba_cache .venv/bin/python benchmarks/particles_qg.py``
"""

from __future__ import annotations

import argparse

from _kernel_vs_reference import print_first_call, print_machine, report, timed
from _roofline import print_roofline

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

    print_machine()
    print_first_call(lambda: simulate_qg(setup(10, 1), replicates=2, seed=0))

    full = setup(args.population, args.generations)
    per_replicate = args.population * args.generations
    fast = timed(lambda: simulate_qg(full, replicates=args.replicates, seed=1))
    slow = timed(lambda: simulate_qg(full, replicates=args.reference_replicates, seed=1, kernel="numpy"))
    fast_rate = args.replicates * per_replicate / fast[0]
    slow_rate = args.reference_replicates * per_replicate / slow[0]

    print(f"numba: {args.replicates} replicates x N={args.population} x {args.generations} generations "
          f"({args.resampling}) in {fast[0]:.2f} s = {fast_rate:.3g} individual-generations/s")
    print(f"numpy reference: {args.reference_replicates} replicates in {slow[0]:.2f} s = "
          f"{slow_rate:.3g} individual-generations/s")
    print(f"ratio numba/numpy: {fast_rate / slow_rate:.1f}x (goal >= 8x)")
    report(fast=fast, fast_work=args.replicates * per_replicate, slow=slow,
           slow_work=args.reference_replicates * per_replicate, unit="individual-generations")
    print_roofline("qg", kernel=fast, kernel_work=args.replicates * per_replicate, unit="individual-generations",
                   goal=1.5e8, fraction_goal=0.7, replicates=max(args.replicates // 5, 2),
                   population=args.population, rounds=args.generations)


if __name__ == "__main__":
    main()
