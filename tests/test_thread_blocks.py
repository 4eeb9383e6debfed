"""qtm.thread_blocks: every item of a kernel's range runs once, on any thread count, and errors reach the caller."""

import doctest
import threading
import time

import numba
import numpy as np
import pytest

from qtm import thread_blocks
from qtm.thread_blocks import ALONE_SECONDS, run_in_threads


def _on_one_and_two_threads(run):
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        run()
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        run()
    finally:
        numba.set_num_threads(before)


def _counting(seconds_per_range):
    """A kernel that counts its items' runs and its threads, taking ``seconds_per_range`` per range."""
    threads = set()

    def count(start, stop, out):
        threads.add(threading.get_ident())
        out[start:stop] += 1
        time.sleep(seconds_per_range)

    return count, threads


@pytest.mark.parametrize("items", [0, 1, 2, 31, 32, 33, 200])
@pytest.mark.parametrize("slow", [False, True])
def test_every_item_runs_once_per_call(items, slow):
    """Ranges of uneven size (the last one short): each item runs exactly once per call, on one and two threads,
    whether the calling thread finishes alone (a fast kernel) or helpers join it (a slow one)."""
    runs = np.zeros(items, int)
    count, _ = _counting(ALONE_SECONDS if slow else 0.0)
    _on_one_and_two_threads(lambda: run_in_threads(count, items, runs))
    np.testing.assert_array_equal(runs, 2)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="one thread only")
@pytest.mark.parametrize(("alone_seconds", "threads_used"), [(10.0, 1), (0.0, 2)])
def test_helpers_join_only_when_the_work_left_is_worth_waking_them(monkeypatch, alone_seconds, threads_used):
    monkeypatch.setattr(thread_blocks, "ALONE_SECONDS", alone_seconds)
    before = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        count, threads = _counting(1e-3)
        run_in_threads(count, 200, np.zeros(200, int))
        assert len(threads) == threads_used
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("items", [1, 33, 200])
def test_an_error_in_one_range_reaches_the_caller(items):
    def fail(start, stop):
        time.sleep(ALONE_SECONDS)
        if start <= items // 2 < stop:
            raise ValueError("range failed")

    with pytest.raises(ValueError, match="range failed"):
        _on_one_and_two_threads(lambda: run_in_threads(fail, items))


def test_examples():
    assert doctest.testmod(thread_blocks).failed == 0


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="one thread only")
def test_a_caller_does_not_wait_for_helpers_busy_with_another_callers_ranges(monkeypatch):
    """Caller A's helper is held inside a range; caller B, meanwhile, finishes its own ranges and returns."""
    monkeypatch.setattr(thread_blocks, "ALONE_SECONDS", 0.0)
    helper_busy, release = threading.Event(), threading.Event()

    def held_in_helpers(start, stop, out):
        if threading.current_thread().name.startswith("qtm-kernel"):
            helper_busy.set()
            release.wait(timeout=30)
        time.sleep(1e-3)
        out[start:stop] += 1

    before = numba.get_num_threads()
    numba.set_num_threads(2)
    first = np.zeros(200, int)
    caller_a = threading.Thread(target=lambda: run_in_threads(held_in_helpers, 200, first))
    try:
        caller_a.start()
        assert helper_busy.wait(timeout=30)
        second = np.zeros(200, int)
        run_in_threads(lambda start, stop, out: out.__setitem__(slice(start, stop), 1), 200, second)
        assert (second == 1).all() and not release.is_set() and caller_a.is_alive()
    finally:
        release.set()
        caller_a.join()
        numba.set_num_threads(before)
    assert (first == 1).all()
