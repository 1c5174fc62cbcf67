"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import time


def median_time(fn, runs: int) -> float:
    """Median wall seconds of `runs` calls of fn()."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
