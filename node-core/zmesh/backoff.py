"""Exponential backoff with full jitter, for reconnecting (signaling sockets, a tab's home relay).

The jitter matters: when a server restarts, every node that lost it must not come back in the same
instant. And only a session that *stayed up* counts as a success: a server that accepts and at once
closes (broken or hostile) must not be redialled at the shortest delay forever.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable


class Backoff:
    """``delay()`` grows from ``first`` towards ``cap`` (doubling, drawn uniformly below the bound).
    Call ``opened()`` when a session opens and ``closed()`` when it ends: the growth starts over
    only if the session lasted at least ``cap`` seconds."""

    def __init__(self, first: float = 0.5, cap: float = 30.0, rng: Callable[[], float] = random.random,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.first, self.cap, self._rng, self._clock = first, cap, rng, clock
        self.failures = 0
        self._opened: float | None = None

    def delay(self) -> float:
        bound = min(self.cap, self.first * 2 ** min(self.failures, 32))
        self.failures += 1
        return bound * self._rng()

    def opened(self) -> None:
        self._opened = self._clock()

    def closed(self) -> None:
        if self._opened is not None and self._clock() - self._opened >= self.cap:
            self.failures = 0
        self._opened = None
