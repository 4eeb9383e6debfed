"""What the two particle benchmarks share: timing a call, and the report of kernel against reference."""

from __future__ import annotations

import os
import time

import numba
from _memory import peak_line


def print_machine() -> None:
    print(f"load before: {os.getloadavg()[0]:.2f} (1-min average), cores: {os.cpu_count()}, "
          f"numba threads: {numba.get_num_threads()}")


def print_first_call(call) -> None:
    """Time the first call, which compiles the kernel or loads it from the on-disk cache."""
    start = time.perf_counter()
    call()
    print(f"first call (compile, or load from the cache at {os.environ.get('NUMBA_CACHE_DIR')}): "
          f"{time.perf_counter() - start:.2f} s")


def timed(call) -> tuple[float, float]:
    """Wall and CPU seconds of ``call()``."""
    start, cpu = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - start, time.process_time() - cpu


def report(*, fast: tuple[float, float], fast_work: float, slow: tuple[float, float], slow_work: float,
           unit: str) -> None:
    """Print the CPU-time figures of both runs (``fast``, ``slow``: wall and CPU seconds), load and peak memory.

    On a shared machine the wall-clock rates depend on the load; the CPU time each run used
    gives the rate that idle cores would reach (assuming perfect scaling over threads).
    """
    (_, fast_cpu), (_, slow_cpu) = fast, slow
    threads = numba.get_num_threads()
    fast_per_cpu, slow_per_cpu = fast_work / fast_cpu, slow_work / slow_cpu
    print(f"CPU time: numba {fast_cpu:.2f} s ({fast_per_cpu:.3g} {unit} per CPU-second, "
          f"{threads * fast_per_cpu:.3g}/s on {threads} idle cores), "
          f"numpy {slow_cpu:.2f} s ({slow_per_cpu:.3g} per CPU-second); "
          f"idle-core ratio {threads * fast_per_cpu / slow_per_cpu:.1f}x")
    print(f"load after: {os.getloadavg()[0]:.2f}")
    print(peak_line())
