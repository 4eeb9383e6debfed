"""Time the selection curve's sampling against the decomposition's, per iteration, on a copy of a tiny run.

Usage::

    python benchmarks/selection_curve.py RUN [--cfgs 1.5,2,3,5,7.5,10] [--per-caption 15] [--paired N]

The run directory is copied (its images, weights and run.json; not its decomposition or selection samples) into a
temporary folder, then, with the run's own backend (the tiny backend's cached base model):

1. the decomposition's samples of every iteration (CFG 1 and unconditional, ``--per-caption`` per caption), as
   ``chain validate --decompose`` makes them: the baseline, per iteration;
2. the base model's CFG-1 and unconditional samples of the selection curve (``RUN/selection/base``), timed apart:
   once per run, not per iteration;
3. the samples at every CFG value of ``--cfgs`` of every model (the base and each iteration's), ``--paired`` per
   caption (default: ``chain validate``'s, a third of ``--per-caption``, at least 3): per model.

Prints the wall and CPU seconds of each, the selection curve's cost per model against the decomposition's per
iteration and their ratio (issue 21's goal: at most 1.5 for 6 values of w), and the load average. The tiny backend
samples on ``$CHAIN_THREADS`` threads (default one), at the same cost per image whatever the CFG scale (it
always evaluates both branches).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from chain.decomposition_samples import make_decomposition_samples
from chain.runner import make_backend
from chain.selection_samples import make_selection_samples
from qtm.rundir import SAMPLES_FOLDER, SELECTION_FOLDER, read_run
from validate.selection import DEFAULT_CFGS, parse_cfgs


def timed(call) -> tuple[float, float, object]:
    """Wall and CPU seconds of ``call()`` and its result."""
    start, cpu = time.perf_counter(), time.process_time()
    result = call()
    return time.perf_counter() - start, time.process_time() - cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--cfgs", default=",".join(f"{w:g}" for w in DEFAULT_CFGS))
    parser.add_argument("--per-caption", type=int, default=15)
    parser.add_argument("--paired", type=int, default=None)
    args = parser.parse_args()
    cfgs = parse_cfgs(args.cfgs)
    paired = args.paired if args.paired is not None else max(3, args.per_caption // 3)
    print(f"load before: {os.getloadavg()[0]:.2f} (1-min average), CHAIN_THREADS={os.environ.get('CHAIN_THREADS', 1)}")
    with tempfile.TemporaryDirectory() as folder:
        run_dir = Path(folder) / args.run.name
        shutil.copytree(args.run, run_dir, ignore=shutil.ignore_patterns(SAMPLES_FOLDER, SELECTION_FOLDER,
                                                                         ".validate_cache"))
        run = read_run(run_dir)
        iterations, captions = len(run.iterations), len(set(run.iterations[min(run.iterations)].captions))
        print(f"run {args.run} ({iterations} iterations, {captions} captions, {run.params.get('steps')} steps, "
              f"sampler {run.params.get('sampler')}); w = {', '.join(f'{w:g}' for w in cfgs)}; "
              f"{args.per_caption} per caption at CFG 1, {paired} per caption at each w")
        # Each phase gets its backend built beforehand (loading the cached base model is not sampling); the
        # selection's must still hold the base model, which the decomposition replaces by each iteration's.
        backend = make_backend(run.params)
        decomposition_wall, decomposition_cpu, made = timed(lambda: make_decomposition_samples(
            run_dir, backend=backend, per_caption=args.per_caption))
        backend = make_backend(run.params)
        base_wall, base_cpu, base = timed(lambda: make_selection_samples(
            run_dir, (), per_caption=args.per_caption, paired=paired, backend=backend))
        curve_wall, curve_cpu, curve = timed(lambda: make_selection_samples(
            run_dir, cfgs, per_caption=args.per_caption, paired=paired, backend=backend))
    models = iterations + 1
    per_iteration = decomposition_wall / iterations
    per_model = curve_wall / models
    print(f"decomposition samples: {made['images']} images, {decomposition_wall:.1f} s wall, "
          f"{decomposition_cpu:.1f} s CPU; per iteration {per_iteration:.2f} s wall")
    print(f"selection, base model's CFG-1 and unconditional samples (once per run): {base['images']} images, "
          f"{base_wall:.1f} s wall, {base_cpu:.1f} s CPU")
    print(f"selection samples at {len(cfgs)} values of w: {curve['images']} images for {models} models, "
          f"{curve_wall:.1f} s wall, {curve_cpu:.1f} s CPU; per model {per_model:.2f} s wall")
    print(f"ratio, selection curve per model / decomposition per iteration: {per_model / per_iteration:.2f} "
          f"(CPU: {(curve_cpu / models) / (decomposition_cpu / iterations):.2f}; goal <= 1.5)")
    print(f"ratio including the base model's own samples spread over the iterations: "
          f"{(curve_wall + base_wall) / iterations / per_iteration:.2f}")
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
