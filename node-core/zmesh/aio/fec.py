"""Forward error correction on asyncio: ``FecLink`` drives a sans-IO ``FecEndpoint`` over an
unreliable ``Link``; ``FecChannelsLink`` runs one zmesh link over a reliable control channel and a
lossy channel under ``FecLink`` (the rule for which cell goes where: ``zmesh.fec.channels``).
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable

from ..cells import CELL_SIZE, MAX_FRAME_SIZE
from ..errors import ConfigError, FECError, LinkClosed, ProtocolError, TransportError
from ..fec.budget import RepairLimits
from ..fec.channels import split_by_channel
from ..fec.endpoint import FecEndpoint, LostFrames
from ..fec.tetrys import REPAIR_OVERHEAD, SOURCE, Gap, packet_type
from ..link import Link
from .link import CloseOnce

INBOX_FRAMES = 64  # frames received and not yet read; beyond that the channels stop being read


class FecLink:
    """A ``Link`` with Tetrys FEC over ``inner``: ordered, exactly once, gaps reported.

    Must be created inside a running event loop (it owns a reader, a writer and a timer task,
    ended by ``close``). ``reliable`` is the inner link's: over a lossy link a loss beyond what
    repair covers surfaces as ``LostFrames`` from ``recv``. At most ``max_queue`` packets wait for
    the inner link; beyond that, repairs and window updates are dropped (they are redundant by
    nature) and ``send`` waits. A malformed or lying packet from the peer closes the link: ``recv``
    raises that ``FECError`` once, then ``LinkClosed``.
    """

    ordered = True

    def __init__(self, inner: Link, *, symbol_size: int = 1200, window: int = 256, min_repair: float = 0.0,
                 max_repair: float = 0.5, ack_every: int = 16, ack_interval: float = 0.02,
                 repair_interval: float = 0.05, max_stall: float = 1.0, max_queue: int = 64,
                 repair_limits: RepairLimits | None = None, rng: random.Random | None = None) -> None:
        if symbol_size + REPAIR_OVERHEAD > inner.max_frame_size:
            raise ConfigError(f"fec symbol_size {symbol_size} + {REPAIR_OVERHEAD} exceeds the inner link's "
                              f"max_frame_size {inner.max_frame_size}")
        if max_queue < 1:
            raise ConfigError("fec max_queue must be >= 1")
        self.inner = inner
        self.endpoint = FecEndpoint(symbol_size=symbol_size, window=window, min_repair=min_repair,
                                    max_repair=max_repair, ack_every=ack_every, ack_interval=ack_interval,
                                    repair_interval=repair_interval, max_stall=max_stall,
                                    repair_limits=repair_limits, rng=rng)
        self.reliable = inner.reliable
        self.max_frame_size = self.endpoint.encoder.max_payload
        self.max_queue = max_queue
        self.dropped = 0  # repairs and window updates dropped because the inner link was congested
        self._queue: deque[bytes] = deque()
        self._closed = False
        self._error: FECError | None = None
        self._changed = asyncio.Event()  # wakes send/recv waiters and the writer
        self._rearm = asyncio.Event()  # wakes the timer task
        self._loop = asyncio.get_running_loop()
        self._tasks = [self._loop.create_task(coroutine)
                       for coroutine in (self._read_loop(), self._write_loop(), self._timer_loop())]

    async def send(self, frame: bytes) -> None:
        if len(frame) > self.max_frame_size:
            raise TransportError(f"frame of {len(frame)} bytes exceeds this FEC link's max_frame_size "
                                 f"{self.max_frame_size}")
        await self._wait_for(lambda: self.endpoint.writable and len(self._queue) < self.max_queue)
        self.endpoint.send(frame, self._loop.time())
        self._pump()

    async def recv(self) -> bytes:
        while (event := self.endpoint.next_event()) is None:
            if self._closed:
                error, self._error = self._error, None
                raise error or LinkClosed("FEC link is closed")
            await self._changed_wait()
        self._pump()
        if isinstance(event, Gap):
            raise LostFrames(event.first, event.last)
        return event.payload

    async def close(self) -> None:
        self._stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.inner.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ internals

    def _stop(self, error: FECError | None = None) -> None:
        if not self._closed:
            self._closed, self._error = True, error
        self._changed.set()

    async def _changed_wait(self) -> None:
        self._changed.clear()
        await self._changed.wait()

    async def _wait_for(self, ready: Callable[[], bool]) -> None:
        while True:
            if self._closed:
                raise LinkClosed("FEC link is closed")
            if ready():
                return
            await self._changed_wait()

    def _pump(self) -> None:
        """Move the endpoint's packets to the send queue and wake everyone."""
        for packet in self.endpoint.data_to_send():
            if len(self._queue) >= self.max_queue and packet_type(packet) != SOURCE:
                self.dropped += 1
            else:
                self._queue.append(packet)
        self._changed.set()
        self._rearm.set()

    async def _read_loop(self) -> None:
        try:
            while True:
                packet = await self.inner.recv()
                self.endpoint.receive(packet, self._loop.time())
                self._pump()
        except FECError as error:
            self._stop(error)
            await self.inner.close()
        except LinkClosed:
            self._stop()

    async def _write_loop(self) -> None:
        try:
            while True:
                while not self._queue:
                    await self._changed_wait()
                await self.inner.send(self._queue.popleft())
                self._changed.set()
        except LinkClosed:
            self._stop()

    async def _timer_loop(self) -> None:
        # A call_later wake-up rather than asyncio.wait_for: on Python 3.11 wait_for can swallow a
        # cancellation that races with its timeout, and close() would then wait for this task forever.
        while True:
            deadline = self.endpoint.get_timer()
            self._rearm.clear()
            alarm = None if deadline is None else self._loop.call_at(deadline, self._rearm.set)
            try:
                await self._rearm.wait()
            finally:
                if alarm is not None:
                    alarm.cancel()
            if deadline is not None and self._loop.time() >= deadline:
                self.endpoint.handle_timer(self._loop.time())
                self._pump()


class FecChannelsLink:
    """A ``Link`` over ``control`` (reliable, ordered) and ``lossy`` (wrapped in ``FecLink``)."""

    ordered = True
    reliable = False  # a loss beyond repair ends a circuit, as described above
    max_frame_size = MAX_FRAME_SIZE

    def __init__(self, control: Link, lossy: Link) -> None:
        if lossy.max_frame_size < CELL_SIZE + 64:
            raise ProtocolError("the lossy channel cannot carry one cell per packet")
        self.transport = f"{getattr(control, 'transport', 'other')}+fec"  # e.g. "webrtc+fec" in stats
        self.control, self.fec = control, FecLink(lossy)
        self.lost_frames = 0
        self._inbox: asyncio.Queue[bytes | BaseException] = asyncio.Queue()
        self._room = asyncio.Semaphore(INBOX_FRAMES)
        self.close = CloseOnce(self._shutdown)
        loop = asyncio.get_running_loop()
        self._pumps = [loop.create_task(self._pump(self.control)), loop.create_task(self._pump(self.fec))]

    async def send(self, frame: bytes) -> None:
        for lossy, part in split_by_channel(frame):
            await (self.fec if lossy else self.control).send(part)

    async def recv(self) -> bytes:
        item = await self._inbox.get()
        if isinstance(item, BaseException):
            self._inbox.put_nowait(item)
            raise item
        self._room.release()
        return item

    async def _pump(self, channel: Link) -> None:
        """Move one channel's frames to the shared inbox (bounded: a full inbox stops reading, so
        the channel's own backpressure reaches the sender)."""
        try:
            while True:
                try:
                    frame = await channel.recv()
                except LostFrames as gap:
                    self.lost_frames += gap.last - gap.first + 1
                    continue
                await self._room.acquire()
                self._inbox.put_nowait(frame)
        except (LinkClosed, ProtocolError):
            await self.close()  # either channel gone: the whole link is

    async def _shutdown(self) -> None:
        for task in self._pumps:
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        self._inbox.put_nowait(LinkClosed("WebRTC link closed"))
        await self.fec.close()
        await self.control.close()
