"""A fixed-bucket histogram of plain numbers, so the pure core can keep a distribution (circuit build
times) that an exporter reads at scrape time, without the core importing a metrics library."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

# Seconds: a circuit build on loopback takes milliseconds, over the internet up to the 30 s build timeout.
BUILD_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Histogram:
    """How many observations fell at or below each bound (the last count is above every bound)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        if not bounds or list(bounds) != sorted(set(bounds)) or not all(math.isfinite(b) for b in bounds):
            raise ValueError("histogram bounds must be finite, distinct and increasing")
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations at or below it)`` per bucket, ending with ``(inf, count)``:
        Prometheus's bucket shape."""
        total, out = 0, []
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out
