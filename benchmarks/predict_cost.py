"""Time ``chain validate TRAIN`` against ``chain validate TRAIN --predict HELD_OUT`` on the same runs.

Usage::

    python benchmarks/predict_cost.py TRAIN_RUN... --predict HELD_OUT_RUN... [--repeats 2] [--decompose]
        [--guidance shared]

Both validations go through :func:`validate.pipeline.validate_runs` with the stats embedder, no bootstrap,
(unless ``--decompose``) no decomposition and the same fit (``--guidance``, default shared: the model
``--predict`` fits, so the ratio is the cost of predicting, not of a second model), into temporary report
folders; the runs' reference points must exist
(``chain validate --make-reference`` makes them). Each is run ``--repeats`` times, alternating, after one warm-up
of each (so the embedding cache and Numba's compiled kernels serve both alike); the best wall time of each is
printed with their ratio: issue 21's goal is that ``--predict`` adds at most 20 %, a ratio <= 1.2. The held-out
runs' own embedding is part of the added cost.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from validate.pipeline import validate_runs

GOAL = 1.2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--predict", nargs="+", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--decompose", action="store_true")
    parser.add_argument("--guidance", default="shared", choices=("shared", "per-setting"))
    args = parser.parse_args()
    print(f"load before: {os.getloadavg()[0]:.2f} (1-min average); {len(args.runs)} training runs, "
          f"{len(args.predict)} held out; --guidance {args.guidance}")
    times = {"validate": [], "validate --predict": []}
    with tempfile.TemporaryDirectory() as folder:

        def run(name, count):
            began = time.perf_counter()
            validate_runs(args.runs, predict=args.predict if "predict" in name else None,
                          report=Path(folder) / f"{name.replace(' ', '')}-{count}", bootstrap=0,
                          decompose_runs=args.decompose, guidance=args.guidance, warn=lambda message: None)
            return time.perf_counter() - began

        for name in times:
            run(name, "warm")
        for count in range(args.repeats):
            for name in times:
                times[name].append(run(name, count))
    best = {name: min(values) for name, values in times.items()}
    for name, values in times.items():
        print(f"{name:20s} best {best[name]:7.1f} s   all {', '.join(f'{v:.1f}' for v in values)}")
    ratio = best["validate --predict"] / best["validate"]
    print(f"ratio {ratio:.2f} (goal <= {GOAL}: {'met' if ratio <= GOAL else 'not met'}); "
          f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
