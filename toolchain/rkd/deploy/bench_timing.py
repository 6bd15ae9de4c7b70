"""Interleaved timing of several runtimes (``rkd bench``): batch-1 latency and batch throughput, round by round,
in an order that rotates so that load on the machine falls on all alike."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

MIN_ROUNDS = 3  # with ``seconds``: at least this many timed rounds, so p90 means something
DEFAULT_ITERS = 30


@dataclass
class Timing:
    """The raw samples of one runtime: batch-1 latencies (ms) and batch throughputs (images/s), one per round."""

    latency_ms: list[float] = field(default_factory=list)
    throughput: list[float] = field(default_factory=list)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, linear between the closest ranks (NumPy's default method)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


Call = Callable[[], object]


def measure(
    calls: Mapping[str, tuple[Call, Call]],
    *,
    batch_size: int,
    warmup: int = 3,
    iters: int | None = None,
    seconds: float | None = None,
    rewarm: bool = True,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[dict[str, Timing], int]:
    """Time ``calls`` (name -> (one-image call, ``batch_size``-image call)) interleaved, round by round.

    ``warmup`` untimed rounds, then ``iters`` timed rounds, or with ``seconds`` as many rounds as fit in that
    time (at least :data:`MIN_ROUNDS`). In each round every name makes its batch-1 call then its batch call, both
    timed, after one untimed batch-1 call with ``rewarm`` (so the first call after another runtime's does not
    carry the switch: caches, sleeping threads); the order of the names rotates by one each round.

    Returns:
        ``({name: Timing}, rounds)``.
    """
    names = list(calls)
    rounds = DEFAULT_ITERS if iters is None and seconds is None else iters
    timings = {name: Timing() for name in names}
    for _ in range(warmup):
        for name in names:
            calls[name][0]()
            calls[name][1]()
    start, done = clock(), 0
    while True:
        if rounds is not None and done >= rounds:
            break
        if rounds is None and done >= MIN_ROUNDS and clock() - start >= float(seconds or 0):
            break
        for i in range(len(names)):
            name = names[(done + i) % len(names)]
            one, batch = calls[name]
            if rewarm:
                one()
            t0 = clock()
            one()
            t1 = clock()
            batch()
            t2 = clock()
            timings[name].latency_ms.append(max(t1 - t0, 1e-9) * 1e3)
            timings[name].throughput.append(batch_size / max(t2 - t1, 1e-9))
        done += 1
    return timings, done


def summarize(timing: Timing) -> tuple[dict[str, float], dict[str, float]]:
    """Latency ``{p50, p90, mean, min, max}`` (ms) and throughput ``{median, min, max}`` (images/s)."""
    lat, thr = timing.latency_ms, timing.throughput
    return (
        {"p50": percentile(lat, 0.5), "p90": percentile(lat, 0.9), "mean": statistics.fmean(lat),
         "min": min(lat), "max": max(lat)},
        {"median": statistics.median(thr), "min": min(thr), "max": max(thr)},
    )
