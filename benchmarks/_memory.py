"""Peak memory of a benchmark process, as every benchmark prints it.

The figure is the resident set size (``ru_maxrss``): what the operating system gave the
process, so it counts every allocation, NumPy's, Numba's and torch's as much as
Python's (``tracemalloc`` would see Python's and NumPy's only). It is the peak of the
whole process since it started, interpreter and imports included.
"""

from __future__ import annotations

import resource
import sys


def peak_rss_bytes() -> int:
    """The largest resident set size this process has had, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak if sys.platform == "darwin" else peak * 1024


def peak_line() -> str:
    """One line for a benchmark's output: the peak resident set size so far."""
    return f"peak memory: {peak_rss_bytes() / 2**20:,.0f} MiB resident (ru_maxrss of this process)"
