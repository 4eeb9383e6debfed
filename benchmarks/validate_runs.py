"""Time ``chain validate RUNS... --embedder stats`` with this tree against a baseline source tree, and compare reports.

Usage::

    python benchmarks/validate_runs.py RUN [RUN ...] --baseline-src DIR [--repeats 3] [--out DIR] [OPTIONS...]

``DIR`` is a checkout of an older commit (e.g. ``git worktree add /tmp/base_ea2d7ed ea2d7ed``); its
``chain validate`` runs in a subprocess with ``PYTHONPATH=DIR``, so that its packages shadow the
editable install, under the same interpreter; this tree's runs the same way with ``PYTHONPATH`` set to
this checkout. Options the script does not know (``--forecast-from 2``, ``--make-reference``,
``--bootstrap 100``...) are passed to both commands. Each command writes its own report folder under
``--out``.

Caches: both versions read and write the same caches (the embedding cache ``.validate_cache`` beside
every image folder, the reference points and decomposition samples inside the run directories, the tiny
backend's base model). So that neither run finds them colder than the other, each version runs once
untimed first (which fills every cache and generates whatever is missing); the timed runs then
alternate baseline and current, ``--repeats`` times each, and the best wall time of each is kept.

Prints both wall times (and the CPU seconds of the same runs: on a shared machine the CPU time is the
steadier figure), the speed-up ratio, the 1-minute load average before and after, and per table of the
reports (every ``.csv``, and the numbers of every ``.json`` but provenance) the largest relative
difference between the two versions' numbers and the count of differing non-numeric cells.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parents[1]
#: Relative differences up to this are float rounding (a different summation order, a batched evaluation).
ROUNDING = 1e-9


def run_validate(src: Path, runs: list[str], extra: list[str], report: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one ``chain validate`` with the packages of ``src``."""
    # The command modules moved from chain/ to commands/ after ea2d7ed; each tree is run through its own.
    program = "commands.chain_program" if (src / "commands" / "chain_program.py").exists() else "chain.cli"
    command = [sys.executable, "-c", f"from {program} import main; main()", "validate", *runs,
               "--embedder", "stats", *extra, "--report", str(report)]
    env = {**os.environ, "PYTHONPATH": str(src)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd="/")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"chain validate with {src} failed (exit {done.returncode}):\n{done.stderr}")
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b| / max(|a|, |b|) over the pairs (equal NaNs and infinities count as equal)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    if same.all():
        return 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.maximum(np.abs(a), np.abs(b))
        gap = np.where(same, 0.0, np.abs(a - b) / np.where(scale > 0, scale, 1.0))
    return float(np.nanmax(np.where(np.isnan(gap), np.inf, gap)))


def compare_csv(old: Path, new: Path) -> tuple[float, int, str]:
    """(largest relative difference of the numeric cells, differing other cells, note) of two tables."""
    a, b = pd.read_csv(old), pd.read_csv(new)
    if list(a.columns) != list(b.columns) or len(a) != len(b):
        return math.inf, 0, f"shape {a.shape} against {b.shape}, columns differ: {list(a.columns) != list(b.columns)}"
    worst, other = 0.0, 0
    for column in a.columns:
        if pd.api.types.is_numeric_dtype(a[column]) and pd.api.types.is_numeric_dtype(b[column]):
            worst = max(worst, _relative(a[column].to_numpy(), b[column].to_numpy()))
        else:
            missing = a[column].isna() & b[column].isna()
            other += int((~missing & (a[column].astype(str) != b[column].astype(str))).sum())
    return worst, other, f"{len(a)} rows"


def _leaves(value, path=""):
    """(path, value) of every number and string in a JSON document, leaving out provenance."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key != "provenance":
                yield from _leaves(item, f"{path}/{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{path}/{index}")
    else:
        yield path, value


def compare_json(old: Path, new: Path) -> tuple[float, int, str]:
    a, b = dict(_leaves(json.loads(old.read_text()))), dict(_leaves(json.loads(new.read_text())))
    if a.keys() != b.keys():
        return math.inf, 0, f"keys differ: {sorted(a.keys() ^ b.keys())[:3]}"
    numbers = [k for k in a if isinstance(a[k], (int, float)) and not isinstance(a[k], bool) and a[k] is not None]
    worst = _relative([a[k] for k in numbers], [b[k] for k in numbers]) if numbers else 0.0
    other = sum(a[k] != b[k] for k in a if k not in numbers)
    return worst, other, f"{len(numbers)} numbers"


def compare_reports(old: Path, new: Path) -> bool:
    """Print the comparison of every table of the two report folders; True when all agree up to rounding."""
    agree = True
    names = sorted({p.name for p in old.iterdir()} | {p.name for p in new.iterdir()})
    for name in names:
        if not name.endswith((".csv", ".json")) or name.endswith(".provenance.json"):
            continue
        if not (old / name).exists() or not (new / name).exists():
            print(f"  {name:34s} only in the {'current' if not (old / name).exists() else 'baseline'} report")
            agree = False
            continue
        worst, other, note = (compare_csv if name.endswith(".csv") else compare_json)(old / name, new / name)
        verdict = "same" if worst <= ROUNDING and other == 0 else "DIFFERS"
        agree &= verdict == "same"
        print(f"  {name:34s} max relative difference {worst:.2e}, other cells differing {other} ({note}): {verdict}")
    return agree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories")
    parser.add_argument("--baseline-src", required=True, type=Path, help="source tree of the baseline commit")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each version (best kept)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/validate_runs_benchmark"), help="report folders")
    args, extra = parser.parse_known_args()
    baseline = args.baseline_src.resolve()
    if not (baseline / "validate" / "pipeline.py").exists():
        sys.exit(f"--baseline-src {baseline}: no validate/pipeline.py there; give a checkout of the project")
    runs = [str(Path(run).resolve()) for run in args.runs]
    versions = {"baseline": baseline, "current": HERE}
    print(f"runs: {' '.join(runs)}; options passed on: {' '.join(extra) or '(none)'}")
    print(f"baseline: {baseline}; current: {HERE}; interpreter: {sys.executable}; cores: {os.cpu_count()}")
    print(f"load before: {os.getloadavg()[0]:.2f} (1-min average)")
    for name, src in versions.items():  # warm every cache, generate what is missing, untimed
        run_validate(src, runs, extra, args.out / f"{name}-warm")
    best = {name: (math.inf, math.inf) for name in versions}
    for repeat in range(args.repeats):
        for name, src in versions.items():
            wall, cpu = run_validate(src, runs, extra, args.out / name)
            print(f"  {name:8s} run {repeat + 1}: {wall:.2f} s wall, {cpu:.2f} s CPU")
            best[name] = min(best[name], (wall, cpu))
    print(f"load after: {os.getloadavg()[0]:.2f}")
    (old_wall, old_cpu), (new_wall, new_cpu) = best["baseline"], best["current"]
    print(f"best wall: baseline {old_wall:.2f} s, current {new_wall:.2f} s: speed-up {old_wall / new_wall:.2f}x "
          f"(CPU {old_cpu:.2f} s against {new_cpu:.2f} s: {old_cpu / new_cpu:.2f}x)")
    print(f"tables (relative differences up to {ROUNDING:g} count as rounding):")
    agree = compare_reports(args.out / "baseline", args.out / "current")
    print("all tables agree" if agree else "some tables differ (see above)")


if __name__ == "__main__":
    main()
