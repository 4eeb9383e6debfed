"""Time ``make test`` on fresh clones of a baseline commit and of this checkout's HEAD, one after the other.

Usage::

    python benchmarks/fresh_clone_test.py [--baseline ea2d7ed] [--commit HEAD] [--work /tmp/fresh_clone_test]

Each commit is cloned from this repository into its own folder under ``--work`` and ``make test`` runs there
as CI runs it: the virtual environment created and installed from nothing (the installers' caches pointed at
empty folders inside the clone, so neither finds wheels unpacked by an earlier run), then ruff and the suite.
The script prints each commit's wall time of the whole target and of its install step alone, the suite's own
summary line, the ratio of this commit's time to the baseline's, and the 1-minute load average before and
after: the machine's speed varies between sessions, so only the ratio within one run compares commits.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def timed(command: list[str], cwd: Path, env: dict) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, done


def measure(commit: str, work: Path) -> dict:
    """Clone ``commit``, then time ``make .venv/.installed`` and the rest of ``make test``."""
    folder = work / commit
    shutil.rmtree(folder, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", str(HERE), str(folder)], check=True)
    subprocess.run(["git", "checkout", "-q", commit], cwd=folder, check=True)
    env = {**os.environ, "UV_CACHE_DIR": str(folder / ".uv-cache"), "PIP_NO_CACHE_DIR": "1"}
    install, done = timed(["make", ".venv/.installed"], folder, env)
    if done.returncode != 0:
        sys.exit(f"{commit}: the install failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    suite, done = timed(["make", "test"], folder, env)
    summary = [line for line in done.stdout.splitlines() if " passed" in line or " failed" in line]
    return {"commit": commit, "install": install, "suite": suite, "total": install + suite, "rc": done.returncode,
            "summary": summary[-1] if summary else done.stdout[-300:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="ea2d7ed")
    parser.add_argument("--commit", default="HEAD")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fresh_clone_test"))
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", args.commit], cwd=HERE, capture_output=True,
                            text=True, check=True).stdout.strip()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs", flush=True)
    rows = []
    for name in (args.baseline, commit):
        rows.append(measure(name, args.work))
        row = rows[-1]
        print(f"{row['commit']}: make test {row['total']:.1f} s (install {row['install']:.1f} s, ruff and suite "
              f"{row['suite']:.1f} s), exit {row['rc']}; {row['summary']}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"ratio {commit} / {args.baseline}: {rows[1]['total'] / rows[0]['total']:.2f} (whole target), "
          f"{rows[1]['suite'] / rows[0]['suite']:.2f} (ruff and suite)")
    shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
