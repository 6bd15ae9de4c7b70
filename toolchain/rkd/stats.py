"""Binomial intervals for accuracies (every reported accuracy carries one)."""

from __future__ import annotations

import math


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927); (0, 1) when n == 0.

    Example:
        >>> wilson_interval(450, 1000)  # doctest: +ELLIPSIS
        (0.419..., 0.480...)
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got {successes}/{n}")
    if n == 0:
        return (0.0, 1.0)
    z = _z(confidence)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return (lo, hi)


def accuracy_summary(correct: int, n: int) -> dict[str, object]:
    """``{"acc", "correct", "n", "ci95"}``: an accuracy as every rkd report writes it, with its 95% Wilson
    interval (acc 0.0 when n == 0)."""
    lo, hi = wilson_interval(correct, n)
    return {"acc": correct / n if n else 0.0, "correct": correct, "n": n, "ci95": [lo, hi]}


def _z(confidence: float) -> float:
    """Two-sided standard normal quantile (inverse error function by bisection; no SciPy needed)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    target = confidence
    lo, hi = 0.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if math.erf(mid / math.sqrt(2)) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2
