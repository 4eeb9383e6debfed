"""How time and peak memory grow with the size of the work: the moments engine and the qg particle kernel.

Three directions, each size measured in a fresh subprocess (so that one size's peak
memory cannot hide another's, and each starts from the same state):

- ``moments``: ``qtm.recursion.simulate_moments`` over 10^3 ... 10^6 grid points x 20
  iterations (exact DDIM map, 50 steps; the grid of ``benchmarks/moments_grid.py``);
- ``qg-population``: ``qtm.particles.simulate_qg`` with N = 10^2 ... 10^5 individuals,
  100 replicates, 50 generations;
- ``qg-replicates``: the same kernel with 10 ... 10^4 replicates, N = 1,000, 50 generations.

For each size: the best wall time of a few calls (after a first call that compiles or
loads the cached kernel), the CPU time of that call, and the peak resident set size of the
subprocess (``ru_maxrss``: every allocation, the interpreter and imports included; the
resident size after the first call is printed too, so the size's own share is the
difference). Then the least-squares slope of log(time) and log(peak) against log(size)
over all sizes and between the two largest (goal: time slope <= 1.05 in every direction;
the moments grid 10^6 x 20 under 1 GB peak). Fixed costs make small sizes cheap per unit,
so the slope between the two largest sizes is the one that tells how a bigger sweep grows.

About a minute on 2 idle cores (the largest sizes take a few seconds each, every subprocess
about 2 s to start). ``--quick`` stops one decade lower in each direction (a check of the
script on a busy machine; its slopes mean little).

Run: ``NUMBA_CACHE_DIR=.numba_cache .venv/bin/python benchmarks/scaling.py [--quick] [--plot docs/img/scaling.png]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _memory import peak_rss_bytes

HERE = Path(__file__).resolve().parent
ITERATIONS = 20
GENERATIONS = 50
QG_REPLICATES = 100
QG_POPULATION = 1_000
#: Timed calls per size: the best counts; small sizes repeat until this much wall time has passed.
REPEATS, MIN_SECONDS = 3, 0.5
GOAL_SLOPE, GOAL_MOMENTS_BYTES = 1.05, 10**9

DIRECTIONS = {
    "moments": {"sizes": [10**3, 10**4, 10**5, 10**6], "unit": "grid points", "work": "point-iterations"},
    "qg-population": {"sizes": [10**2, 10**3, 10**4, 10**5], "unit": "individuals N", "work": "individual-generations"},
    "qg-replicates": {"sizes": [10, 10**2, 10**3, 10**4], "unit": "replicates", "work": "individual-generations"},
}


def _call(direction: str, size: int):
    """The call to time for one size, the size it really has (a grid is a cube) and its work."""
    if direction == "moments":
        from moments_grid import MODEL, grid

        from qtm.recursion import simulate_moments

        axes, points = grid(size)
        return (lambda: simulate_moments(**MODEL, **axes, iterations=ITERATIONS)), points, points * ITERATIONS
    from qtm.particles import Fitness, QGSetup, simulate_qg

    population, replicates = (size, QG_REPLICATES) if direction == "qg-population" else (QG_POPULATION, size)
    setup = QGSetup(population=population, generations=GENERATIONS, resampling="systematic",
                    fitness=Fitness("stabilizing", omega2=4.0), mutation=0.05)
    return (lambda: simulate_qg(setup, replicates=replicates, seed=1)), size, replicates * population * GENERATIONS


def measure(direction: str, size: int) -> dict:
    """Time one size in this process (the subprocess side)."""
    call, size, work = _call(direction, size)
    # A small call of the same kernel first: compiling or loading it is not the size's cost.
    small = _call(direction, DIRECTIONS[direction]["sizes"][0])[0]
    small()
    baseline = peak_rss_bytes()
    best = best_cpu = float("inf")
    began, count = time.perf_counter(), 0
    while count < REPEATS or (time.perf_counter() - began < MIN_SECONDS and count < 100):
        start, cpu = time.perf_counter(), time.process_time()
        call()
        seconds = time.perf_counter() - start
        if seconds < best:
            best, best_cpu = seconds, time.process_time() - cpu
        count += 1
    return {"direction": direction, "size": size, "work": work, "seconds": best, "cpu_seconds": best_cpu,
            "calls": count, "peak_bytes": peak_rss_bytes(), "baseline_bytes": baseline}


def run_size(direction: str, size: int) -> dict:
    """Measure one size in a fresh subprocess."""
    done = subprocess.run([sys.executable, __file__, "--child", direction, str(size)], capture_output=True,
                          text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{direction} at {size}: the subprocess failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def slope(x, y) -> float:
    """Least-squares slope of log(y) against log(x)."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def summarise(rows: list[dict]) -> dict:
    """Slopes per direction: over all sizes, and between the two largest."""
    out = {}
    for direction in DIRECTIONS:
        own = sorted((r for r in rows if r["direction"] == direction), key=lambda r: r["size"])
        if len(own) < 2:
            continue
        size = [r["size"] for r in own]
        seconds = [r["seconds"] for r in own]
        peak = [r["peak_bytes"] for r in own]
        out[direction] = {"time_slope": slope(size, seconds), "time_slope_last": slope(size[-2:], seconds[-2:]),
                          "cpu_slope": slope(size, [r["cpu_seconds"] for r in own]), "peak_slope": slope(size, peak)}
    return out


def plot(rows: list[dict], slopes: dict, path: Path, title: str) -> None:
    """Time and peak memory against size, log-log, one line per direction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for direction, spec in DIRECTIONS.items():
        own = sorted((r for r in rows if r["direction"] == direction), key=lambda r: r["size"])
        if not own:
            continue
        size = [r["size"] for r in own]
        label = f"{direction} ({spec['unit']})"
        if direction in slopes:
            label += f", slope {slopes[direction]['time_slope']:.2f}"
        left.loglog(size, [r["seconds"] for r in own], "o-", label=label)
        right.loglog(size, [r["peak_bytes"] / 2**20 for r in own], "o-", label=direction)
    left.set(xlabel="size", ylabel="wall time (s, best of the calls)", title="time")
    right.set(xlabel="size", ylabel="peak resident set (MiB)", title="peak memory (fresh process per size)")
    right.axhline(GOAL_MOMENTS_BYTES / 2**20, color="grey", ls=":", lw=1, label="1 GB (moments 10^6 goal)")
    for axis in (left, right):
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="stop one decade lower in each direction")
    parser.add_argument("--directions", nargs="+", choices=tuple(DIRECTIONS), default=list(DIRECTIONS))
    parser.add_argument("--plot", type=Path, default=None, help="write the figure here (e.g. docs/img/scaling.png)")
    parser.add_argument("--json", type=Path, default=None, help="also write the measurements here")
    parser.add_argument("--child", nargs=2, metavar=("DIRECTION", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]))))
        return

    load_before = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores; load average before {load_before[0]:.2f} (1-minute); "
          f"NUMBA_CACHE_DIR={os.environ.get('NUMBA_CACHE_DIR')}; peak memory is the resident set size (ru_maxrss) "
          "of a fresh subprocess per size")
    rows = []
    for direction in args.directions:
        spec = DIRECTIONS[direction]
        sizes = spec["sizes"][:-1] if args.quick else spec["sizes"]
        print(f"{direction}: size in {spec['unit']}")
        for size in sizes:
            row = run_size(direction, size)
            rows.append(row)
            print(f"  {size:>9,}: {row['seconds']:8.4f} s (CPU {row['cpu_seconds']:7.3f} s, best of {row['calls']}) "
                  f"= {row['work'] / row['seconds']:.3g} {spec['work']}/s; peak {row['peak_bytes'] / 2**20:7.0f} MiB "
                  f"(after the first call {row['baseline_bytes'] / 2**20:.0f} MiB)")
    slopes = summarise(rows)
    print("log-log slopes (wall time over all sizes / between the two largest; CPU time and peak over all sizes; "
          "on a busy machine the CPU-time slope is the steadier one):")
    for direction, values in slopes.items():
        verdict = "met" if max(values["time_slope"], values["time_slope_last"]) <= GOAL_SLOPE else "MISSED"
        print(f"  {direction:14s} time {values['time_slope']:.3f} / {values['time_slope_last']:.3f} "
              f"(goal <= {GOAL_SLOPE}: {verdict}); CPU time {values['cpu_slope']:.3f}; peak {values['peak_slope']:.3f}")
    largest = [r for r in rows if r["direction"] == "moments" and r["size"] == 10**6]
    if largest:
        peak = largest[0]["peak_bytes"]
        print(f"moments grid 10^6 x {ITERATIONS}: peak {peak / 1e9:.2f} GB (goal < 1 GB: "
              f"{'met' if peak < GOAL_MOMENTS_BYTES else 'MISSED'})")
    load_after = os.getloadavg()
    print(f"load average after {load_after[0]:.2f} (1-minute)")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if args.json:
        args.json.write_text(json.dumps({"date": stamp, "load_before": load_before[0], "load_after": load_after[0],
                                         "rows": rows, "slopes": slopes}, indent=2) + "\n")
    if args.plot:
        sizes_note = "quick sizes" if args.quick else "full sizes"
        plot(rows, slopes, args.plot, f"benchmarks/scaling.py, {stamp}, {os.cpu_count()} cores, {sizes_note}, "
             f"load {load_before[0]:.1f} before / {load_after[0]:.1f} after")
        print(f"figure: {args.plot}")


if __name__ == "__main__":
    main()
