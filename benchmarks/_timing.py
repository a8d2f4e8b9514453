"""The timing helper every benchmark uses: the median wall time of a call (or of calls timed in
turn), after warm-up."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

#: calls back to back in one GPU timing sample: a cast of a 256 MB tensor takes ~0.15 ms, and the
#: first call's host work plus the final wait (tens of microseconds, more for JAX than for torch)
#: are then about 1% of a sample rather than 3-5% of a sample of 10
GPU_BATCH = 50


def median_seconds(
    fn: Callable[[], Any],
    *,
    repeat: int = 7,
    warmup: int = 2,
    sync: Callable[[Any], Any] | None = None,
    batch: int = 1,
) -> float:
    """Median seconds of one ``fn()`` over ``repeat`` samples after ``warmup`` untimed calls.

    ``sync(result)`` waits for asynchronous work (``block_until_ready``, ``mx.eval``, a CUDA
    synchronize) inside the timed region, so lazy frameworks are timed for what they compute. A
    sample is ``batch`` calls back to back and one wait, divided by ``batch``: on a GPU that is the
    device's throughput with the host's dispatch overlapped (``batch=1``: one call's latency).
    """
    [seconds] = interleaved_median_seconds(fn, repeat=repeat, warmup=warmup, sync=sync, batch=batch)
    return seconds


def paired_median_seconds(
    first: Callable[[], Any],
    second: Callable[[], Any],
    *,
    repeat: int = 7,
    warmup: int = 2,
    sync: Callable[[Any], Any] | None = None,
    batch: int = 1,
) -> tuple[float, float]:
    """:func:`median_seconds` of two calls whose samples alternate (first, second, first, ...), so a
    ratio of the two is taken under the same machine state: on a shared CPU a bare cast's time
    drifts by 2x between runs, and an anchor timed once, minutes before, skews every ratio."""
    a, b = interleaved_median_seconds(first, second, repeat=repeat, warmup=warmup, sync=sync, batch=batch)
    return a, b


def interleaved_median_seconds(
    *fns: Callable[[], Any],
    repeat: int = 7,
    warmup: int = 2,
    sync: Callable[[Any], Any] | None = None,
    batch: int = 1,
) -> list[float]:
    """:func:`median_seconds` of each of ``fns``, their samples taken in turn."""
    wait = sync or (lambda result: result)
    for fn in fns:
        for _ in range(warmup):
            wait(fn())
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, out in zip(fns, times):
            start = time.perf_counter()
            for _ in range(batch):
                result = fn()
            wait(result)
            out.append((time.perf_counter() - start) / batch)
    return [statistics.median(t) for t in times]
