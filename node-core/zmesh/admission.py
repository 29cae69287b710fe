"""Fair admission of circuit handshakes: Tor's onion-skin queue, kept per link (sans-IO, pure).

A CREATE costs its sender nothing (random bytes will do) and the relay a hybrid handshake, so one
link sending CREATEs as fast as it can would otherwise take all of a relay's CPU. Here each link has
a bounded FIFO of handshakes waiting to be done and a token bucket refilled on the node's clock;
``next_ready`` serves the links round-robin, one handshake per link per turn while that link has a
token, so a flooding link gets its rate and every other link still gets its turn. A handshake that
waited longer than ``max_delay`` is handed back as expired (its client has likely given up), and a
link whose queue is full is told so: the node refuses the excess, and the driver stops reading the
link until half of its queue is done, so a flood waits in the peer's socket instead of costing the
relay a refusal per CREATE.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class _LinkQueue(Generic[T]):
    __slots__ = ("waiting", "tokens", "updated", "paused")

    def __init__(self, burst: int, now: float) -> None:
        self.waiting: deque[tuple[float, T]] = deque()  # (queued at, item), oldest first
        self.tokens = float(burst)
        self.updated = now
        self.paused = False  # the queue filled up: not read again until half of it is done


class HandshakeQueue(Generic[T]):
    """Per-link bounded queues of pending handshakes, served round-robin under per-link rates."""

    def __init__(self, *, rate: float, burst: int, max_pending: int, max_delay: float) -> None:
        if not rate > 0 or burst < 1 or max_pending < 1 or not max_delay > 0:
            raise ConfigError(f"handshake admission needs a positive rate, burst, queue and delay, got rate={rate}, "
                              f"burst={burst}, max_pending={max_pending}, max_delay={max_delay}")
        self.rate, self.burst, self.max_pending, self.max_delay = rate, burst, max_pending, max_delay
        self._links: dict[int, _LinkQueue[T]] = {}  # a link's bucket outlives its empty queue
        self._turns: deque[int] = deque()  # links with something waiting, in serving order

    def add(self, link: int, item: T, now: float) -> bool:
        """Queue ``item`` for ``link``; False (nothing queued) when that link's queue is full."""
        queue = self._links.get(link)
        if queue is None:
            queue = self._links[link] = _LinkQueue(self.burst, now)
        if len(queue.waiting) >= self.max_pending:
            return False
        if not queue.waiting:
            self._turns.append(link)
        queue.waiting.append((now, item))
        queue.paused = queue.paused or len(queue.waiting) >= self.max_pending
        return True

    def next_ready(self, now: float) -> T | None:
        """The next handshake to do now, taking the next link in turn that has a token; else None."""
        for _ in range(len(self._turns)):
            link = self._turns.popleft()
            queue = self._links[link]
            self._refill(queue, now)
            if queue.tokens >= 1:
                queue.tokens -= 1
                _, item = queue.waiting.popleft()
                if queue.waiting:
                    self._turns.append(link)
                return item
            self._turns.append(link)
        return None

    def expired(self, now: float) -> list[T]:
        """Remove and return every handshake that has waited longer than ``max_delay``."""
        out: list[T] = []
        for link in list(self._turns):
            waiting = self._links[link].waiting
            while waiting and now - waiting[0][0] > self.max_delay:
                out.append(waiting.popleft()[1])
            if not waiting:
                self._turns.remove(link)
        return out

    def __bool__(self) -> bool:
        """Whether any CREATE waits (checked per frame, so the common case costs one test)."""
        return bool(self._turns)

    def next_deadline(self) -> float:
        """When ``next_ready`` or ``expired`` may next have something (math.inf: nothing waits)."""
        deadline = math.inf
        for link in self._turns:
            queue = self._links[link]
            token_at = queue.updated + max(0.0, 1 - queue.tokens) / self.rate
            deadline = min(deadline, token_at, queue.waiting[0][0] + self.max_delay)
        return deadline

    def resume_after(self, link: int, now: float) -> float:
        """Seconds until ``link`` should be read again: 0.0 unless its queue filled up and is not yet
        half done (then about the time its rate needs for that)."""
        queue = self._links.get(link)
        if queue is None or not queue.paused:
            return 0.0
        excess = len(queue.waiting) - self.max_pending // 2
        if excess <= 0:
            queue.paused = False
            return 0.0
        self._refill(queue, now)
        return max(excess - queue.tokens, 1.0) / self.rate

    def forget(self, link: int) -> list[T]:
        """The link closed: drop its queue and bucket; return what was waiting."""
        queue = self._links.pop(link, None)
        if queue is None:
            return []
        if queue.waiting:
            self._turns.remove(link)
        return [item for _, item in queue.waiting]

    def _refill(self, queue: _LinkQueue[T], now: float) -> None:
        if now > queue.updated:
            queue.tokens = min(float(self.burst), queue.tokens + (now - queue.updated) * self.rate)
            queue.updated = now
