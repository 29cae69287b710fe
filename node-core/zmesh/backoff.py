"""Exponential backoff with full jitter, for reconnecting (signaling sockets, a tab's home relay).

The jitter matters: when a server restarts, every node that lost it must not come back in the same
instant.
"""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """``delay()`` grows from ``first`` towards ``cap`` (doubling, drawn uniformly below the bound);
    ``reset()`` after a success."""

    def __init__(self, first: float = 0.5, cap: float = 30.0, rng: Callable[[], float] = random.random) -> None:
        self.first, self.cap, self._rng = first, cap, rng
        self.failures = 0

    def delay(self) -> float:
        bound = min(self.cap, self.first * 2 ** min(self.failures, 32))
        self.failures += 1
        return bound * self._rng()

    def reset(self) -> None:
        self.failures = 0
