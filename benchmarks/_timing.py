"""The one timing helper every benchmark uses: the median wall time of a call, after warm-up."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def median_seconds(
    fn: Callable[[], Any], *, repeat: int = 7, warmup: int = 2, sync: Callable[[Any], Any] | None = None
) -> float:
    """Median seconds of ``fn()`` over ``repeat`` calls after ``warmup`` untimed ones.

    ``sync(result)`` waits for asynchronous work (``block_until_ready``, ``mx.eval``, a CUDA
    synchronize) inside the timed region, so lazy frameworks are timed for what they compute.
    """
    wait = sync or (lambda result: result)
    for _ in range(warmup):
        wait(fn())
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        wait(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)
