"""Independent work items spread over threads: ranges of a compiled, GIL-free kernel on helper threads.

The compiled engines' work items share nothing (the particle simulator's replicates, the moments engine's
blocks of grid points), so they need no ``prange``: Numba's parallel passes cost 1–9 s of compilation per
kernel on a cold cache (the first ``qtm simulate`` of a fresh install paid it for every kernel it ran), while
a ``nogil`` kernel over a range of items compiles without them and runs about as fast from threads. The
threads are Numba's thread count (:func:`numba.get_num_threads`, which ``--threads`` and
:func:`numba.set_num_threads` set); results do not depend on it, since no item reads another's.
"""

from __future__ import annotations

import os
import queue
import threading
import time

import numba

#: Ranges per thread: small enough that a thread slowed down on a shared machine does not hold the others up,
#: large enough that the call into the kernel (about 2 microseconds) is negligible.
RANGES_PER_THREAD = 16
#: Work left after the first range below which the calling thread finishes alone: waking a helper thread
#: takes about 0.1 ms on a virtual machine, which small grids (the fit's optimiser) would pay on every call.
ALONE_SECONDS = 2e-4


class _Helpers:
    """Daemon threads that run the jobs put on one queue, started when first needed and kept.

    Starting threads per call costs about 0.13 ms each, more than a small grid's whole kernel (the fit's
    optimiser calls the moments engine thousands of times); a queued job starts in microseconds.
    """

    def __init__(self):
        self.jobs = queue.SimpleQueue()
        self.count = 0
        self.lock = threading.Lock()

    def ensure(self, count: int) -> None:
        with self.lock:
            while self.count < count:
                threading.Thread(target=self._serve, name=f"qtm-kernel-{self.count}", daemon=True).start()
                self.count += 1

    def _serve(self) -> None:
        while True:
            self.jobs.get()()


_HELPERS = _Helpers()
# A forked child has none of its parent's threads: it starts its own when it needs them.
os.register_at_fork(after_in_child=lambda: globals().update(_HELPERS=_Helpers()))


def run_in_threads(kernel, items: int, *args) -> None:
    """Run ``kernel(start, stop, *args)`` over ``range(items)`` in contiguous ranges, on Numba's thread count.

    ``kernel`` is compiled with ``nogil=True`` and writes item ``i``'s results where no other item writes.
    The calling thread runs the first range and, when the rest would take less than :data:`ALONE_SECONDS`,
    the rest; otherwise helper threads (kept between calls) join it, and every thread takes the next range
    when it finishes one. A Ctrl-C stops the helpers after their current range (compiled code
    cannot be interrupted) and raises; an error in a range stops them likewise and reaches the caller.

    Examples
    --------
    >>> import numpy as np
    >>> done = np.zeros(100, int)
    >>> def mark(start, stop, out):
    ...     out[start:stop] += 1
    >>> run_in_threads(mark, 100, done)
    >>> bool((done == 1).all())
    True
    """
    threads = min(numba.get_num_threads(), items)
    if threads <= 1:
        kernel(0, items, *args)
        return
    size = max(1, items // (threads * RANGES_PER_THREAD))
    began = time.perf_counter()
    kernel(0, size, *args)
    if (time.perf_counter() - began) * (items - size) / size < ALONE_SECONDS:
        kernel(size, items, *args)
        return
    starts = iter(range(size, items, size))  # shared: next() on a range iterator is atomic under the GIL
    stop = threading.Event()
    errors = []
    finished = threading.Semaphore(0)
    # A helper job that has not started when the caller is done is skipped, so that a caller never waits
    # for helpers busy with another caller's ranges.
    lock, started, closed = threading.Lock(), 0, False

    def work():
        try:
            for start in starts:
                if stop.is_set():
                    return
                kernel(start, min(start + size, items), *args)
        except BaseException as error:  # handed to the caller, which raises it
            errors.append(error)
            stop.set()

    def helper_job():
        nonlocal started
        with lock:
            if closed:
                return
            started += 1
        try:
            work()
        finally:
            finished.release()

    helpers = _HELPERS
    helpers.ensure(threads - 1)
    for _ in range(threads - 1):
        helpers.jobs.put(helper_job)
    try:
        work()
    finally:
        stop.set()
        with lock:
            closed = True
        for _ in range(started):
            finished.acquire()
    if errors:
        raise errors[0]
