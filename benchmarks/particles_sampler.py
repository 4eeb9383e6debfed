"""Benchmark 2: the guided-sampler chain, Numba kernel against its NumPy reference.

M=3 modes, d=4 axes, K=25 DDIM steps, N=1,000 particles, 1,000 replicates, 10 iterations
by default (issue 3: at least 8x the NumPy reference; report particle-steps per second,
one particle-step = one particle through one denoising step; issue 16: at least 2e7
particle-steps per second on 2 cores, beside the roofline: the particle's normal draws and both
mixture denoisers per particle-step, measured by a micro-kernel in the same run, ``_roofline.py``).
Goals are judged on CPU time (the machine may be shared); wall-clock figures are printed too.
The reference runs on fewer replicates (``--reference-replicates``); its cost is linear in
the replicates, so the rates per particle-step are compared.

Run: ``NUMBA_CACHE_DIR=.numba_cache .venv/bin/python benchmarks/particles_sampler.py``
"""

from __future__ import annotations

import argparse

from _kernel_vs_reference import print_first_call, print_machine, report, timed
from _roofline import print_roofline

from qtm.particles import ChainSetup, simulate_chain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=1_000)
    parser.add_argument("--population", type=int, default=1_000)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--modes", type=int, default=3)
    parser.add_argument("--dims", type=int, default=4)
    parser.add_argument("--reference-replicates", type=int, default=10)
    args = parser.parse_args()

    def setup(population, iterations):
        return ChainSetup.build(population=population, iterations=iterations, modes=args.modes, dims=args.dims,
                                steps=args.steps, cfg=7.5, schedule="cosine", drop=0.2, fidelity=0.9,
                                uncond_var=4.0)

    print_machine()
    print_first_call(lambda: simulate_chain(setup(10, 1), replicates=2, seed=0))

    full = setup(args.population, args.iterations)
    per_replicate = args.population * args.iterations * args.steps
    fast = timed(lambda: simulate_chain(full, replicates=args.replicates, seed=1))
    slow = timed(lambda: simulate_chain(full, replicates=args.reference_replicates, seed=1, kernel="numpy"))
    fast_rate = args.replicates * per_replicate / fast[0]
    slow_rate = args.reference_replicates * per_replicate / slow[0]

    print(f"numba: M={args.modes}, d={args.dims}, K={args.steps}, N={args.population}, "
          f"{args.replicates} replicates x {args.iterations} iterations in {fast[0]:.2f} s = "
          f"{fast_rate:.3g} particle-steps/s")
    print(f"numpy reference: {args.reference_replicates} replicates in {slow[0]:.2f} s = "
          f"{slow_rate:.3g} particle-steps/s")
    print(f"ratio numba/numpy: {fast_rate / slow_rate:.1f}x (goal >= 8x)")
    report(fast=fast, fast_work=args.replicates * per_replicate, slow=slow,
           slow_work=args.reference_replicates * per_replicate, unit="particle-steps")
    print_roofline("sampler", kernel=fast, kernel_work=args.replicates * per_replicate, unit="particle-steps",
                   goal=2e7, replicates=max(args.replicates // 10, 2), population=args.population,
                   rounds=args.iterations, steps=args.steps, modes=args.modes, dims=args.dims)


if __name__ == "__main__":
    main()
