"""What one client may cost the server: token buckets for request and message rates, and a body
reader that never buffers more than the limit allows.

The buckets take the time as an argument (or an injected clock) so tests drive them without
sleeping.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from zmesh.errors import ConfigError, ProtocolError


def check_rate(rate: float, burst: float) -> None:
    if rate <= 0 or burst < 1:
        raise ConfigError(f"a rate limit needs rate > 0 and burst >= 1, got rate={rate} burst={burst}")


class TooLarge(ProtocolError):
    """A request body is larger than the endpoint accepts."""


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; one token per request."""

    __slots__ = ("rate", "burst", "_tokens", "_last")

    def __init__(self, rate: float, burst: float, *, now: float) -> None:
        check_rate(rate, burst)
        self.rate, self.burst = rate, burst
        self._tokens, self._last = burst, now

    def take(self, now: float) -> float:
        """Spend a token: 0.0 if allowed, else the seconds until one will be available."""
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate


class KeyedLimiter:
    """One bucket per key (the client's IP). The least recently seen keys are forgotten beyond
    ``max_keys`` so that memory stays bounded however many addresses a client uses."""

    def __init__(self, rate: float, burst: float, *, max_keys: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        check_rate(rate, burst)
        self.rate, self.burst, self._max_keys, self._clock = rate, burst, max_keys, clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, key: str) -> float:
        """0.0 if ``key`` may go ahead, else the seconds it should wait."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now=now)
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now)


class _Readable(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


async def read_limited(stream: _Readable, *, declared: int | None, limit: int) -> bytes:
    """Read a whole body of at most ``limit`` bytes, else raise ``TooLarge``.

    A declared Content-Length over the limit is refused before reading anything; a body without
    one (chunked) is read up to ``limit + 1`` bytes and refused as soon as it passes the limit.
    """
    if declared is not None and declared > limit:
        raise TooLarge(f"the body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await stream.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise TooLarge(f"the body exceeds the limit of {limit} bytes")
    return b"".join(chunks)
