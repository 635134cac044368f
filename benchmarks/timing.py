"""Shared by the CPU benchmarks: two BLAS threads, and interleaved median timing.

Import this module before NumPy, so the thread settings reach its BLAS library."""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")


def median_ms(fns, repeats: int, warmup: int = 3) -> list[float]:
    """Median wall time of each function in ms, timed in turns (a, b, a, b, ...) so that a
    change in machine load during the run affects all of them alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return [1000 * statistics.median(bucket) for bucket in times]
