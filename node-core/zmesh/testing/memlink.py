"""An in-memory link pair: a whole mesh runs inside one process for protocol tests and benchmarks.

Bounded, so a slow reader pushes back on the writer exactly as a real socket would.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque

from ..errors import ConfigError, LinkClosed, TransportError


class _Pipe:
    """One direction of a memory link: a bounded FIFO of frames, counted in bytes."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self.frames: deque[bytes] = deque()
        self.queued_bytes = 0
        self.closed = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    def _update(self) -> None:
        if self.frames or self.closed:
            self._readable.set()
        else:
            self._readable.clear()
        if self.queued_bytes < self.capacity or self.closed:
            self._writable.set()
        else:
            self._writable.clear()

    async def put(self, frame: bytes) -> None:
        while not self.closed and self.queued_bytes >= self.capacity:
            await self._writable.wait()
        if self.closed:
            raise LinkClosed("memory link is closed")
        self.frames.append(frame)
        self.queued_bytes += len(frame)
        self._update()

    async def get(self) -> bytes:
        while not self.frames:
            if self.closed:
                raise LinkClosed("memory link is closed")
            await self._readable.wait()
        frame = self.frames.popleft()
        self.queued_bytes -= len(frame)
        self._update()
        return frame

    def close(self) -> None:
        self.closed = True
        self._update()


class MemoryLink:
    """One end of an in-memory link. Create pairs with ``memory_link_pair``.

    ``loss`` (0..1) drops frames at random, to exercise unreliable-link code (FEC) without a
    network; the seed makes such tests repeatable.
    """

    transport = "memory"

    def __init__(self, outgoing: _Pipe, incoming: _Pipe, *, ordered: bool, reliable: bool,
                 max_frame_size: int, loss: float, rng: random.Random) -> None:
        self._out = outgoing
        self._in = incoming
        self.ordered = ordered
        self.reliable = reliable
        self.max_frame_size = max_frame_size
        self._loss = loss
        self._rng = rng
        self.frames_sent = 0
        self.bytes_sent = 0

    @property
    def queued_bytes(self) -> int:
        """Bytes written by this end and not yet read by the other (what the link buffers)."""
        return self._out.queued_bytes

    async def send(self, frame: bytes) -> None:
        if len(frame) > self.max_frame_size:
            raise TransportError(
                f"frame of {len(frame)} bytes exceeds this link's max_frame_size {self.max_frame_size}")
        if self._loss and self._rng.random() < self._loss:
            return
        await self._out.put(bytes(frame))
        self.frames_sent += 1
        self.bytes_sent += len(frame)

    async def recv(self) -> bytes:
        return await self._in.get()

    async def close(self) -> None:
        self._out.close()
        self._in.close()

    @property
    def closed(self) -> bool:
        return self._out.closed


def memory_link_pair(*, capacity_bytes: int = 256 * 1024, max_frame_size: int = 1 << 20,
                     loss: float = 0.0, seed: int | None = None) -> tuple[MemoryLink, MemoryLink]:
    """Two connected ``MemoryLink`` ends. ``loss`` > 0 makes the pair unreliable (and unordered)."""
    if capacity_bytes <= 0 or max_frame_size <= 0:
        raise ConfigError("memory link capacity_bytes and max_frame_size must be positive")
    if not 0.0 <= loss < 1.0:
        raise ConfigError(f"memory link loss must be in [0, 1), got {loss}")
    a_to_b, b_to_a = _Pipe(capacity_bytes), _Pipe(capacity_bytes)
    reliable = loss == 0.0
    rng = random.Random(seed)
    a = MemoryLink(a_to_b, b_to_a, ordered=True, reliable=reliable, max_frame_size=max_frame_size,
                   loss=loss, rng=rng)
    b = MemoryLink(b_to_a, a_to_b, ordered=True, reliable=reliable, max_frame_size=max_frame_size,
                   loss=loss, rng=rng)
    return a, b
