"""Independent replicates spread over threads: blocks of a compiled, GIL-free kernel on a thread pool.

The particle kernels' replicates share nothing, so they need no ``prange``: Numba's parallel passes cost
about 8 s of compilation per kernel for what is a plain loop (the first ``qtm simulate --engine particles``
of a fresh install paid it twice), while a ``nogil`` kernel over a block of replicates compiles in a fraction
of a second and runs as fast from a thread pool. The pool has Numba's thread count
(:func:`numba.get_num_threads`, which ``--threads`` and :func:`numba.set_num_threads` set), and since each
replicate draws from its own counter-based stream, results do not depend on it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba

#: Blocks per thread: small enough blocks that a thread slowed down on a shared machine does not hold the
#: others up, large enough that the call into the kernel (a few microseconds) is negligible.
BLOCKS_PER_THREAD = 16


def run_replicate_blocks(block_kernel, replicates: int, *args) -> None:
    """Run ``block_kernel(start, stop, *args)`` over ``range(replicates)`` in blocks, on Numba's thread count.

    ``block_kernel`` is compiled with ``nogil=True`` and writes replicate ``r``'s results into row ``r`` of
    its output arrays. A Ctrl-C cancels the blocks not yet started and waits for the running ones (compiled
    code cannot be interrupted), then raises.
    """
    threads = min(numba.get_num_threads(), replicates)
    if threads <= 1:
        block_kernel(0, replicates, *args)
        return
    size = max(1, replicates // (threads * BLOCKS_PER_THREAD))
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="replicates")
    try:
        futures = [pool.submit(block_kernel, start, min(start + size, replicates), *args)
                   for start in range(0, replicates, size)]
        for future in futures:
            future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
