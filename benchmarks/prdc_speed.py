"""validate.diversity.prdc against the prdc package's compute_prdc: the time of each and their ratio.

Both compute precision, recall, density and coverage of a generated set against a real one (equal values:
tests/test_validate_prdc.py). Each size is timed as the best of --repeats calls, after one warm-up call.

Run: ``.venv/bin/python benchmarks/prdc_speed.py`` (about 20 s on 2 cores).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import time

import numpy as np
from prdc import compute_prdc

from validate.diversity import prdc


def best_time(function, repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        function()
        times.append(time.perf_counter() - began)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="500,1000,2000", help="Comma list of set sizes (real = generated).")
    parser.add_argument("--dims", type=int, default=64, help="Feature dimensions.")
    parser.add_argument("--k", type=int, default=5, help="Neighbour count.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed calls per size (the best is shown).")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"d={args.dims}, k={args.k}, best of {args.repeats}")
    print(f"{'n':>6} {'validate (s)':>13} {'prdc (s)':>10} {'prdc / validate':>16}")
    rng = np.random.default_rng(0)
    for n in (int(size) for size in args.sizes.split(",")):
        real, generated = rng.normal(size=(n, args.dims)), 0.8 * rng.normal(size=(n, args.dims)) + 0.3
        ours = best_time(lambda real=real, generated=generated: prdc(real, generated, k=args.k), args.repeats)
        with contextlib.redirect_stdout(io.StringIO()):  # compute_prdc prints the set sizes on every call
            theirs = best_time(lambda real=real, generated=generated: compute_prdc(real, generated, args.k),
                               args.repeats)
        print(f"{n:>6} {ours:>13.4f} {theirs:>10.4f} {theirs / ours:>15.2f}x")


if __name__ == "__main__":
    main()
