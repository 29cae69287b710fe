"""``FecLink``: in-order, exactly-once frames over an unordered/unreliable ``Link``, with Tetrys.

The wrapper owns one encoder (our frames) and one decoder (the peer's), and turns the decoder's
progress into window updates sent back on the same link. A frame the sender had to give up on —
its window stayed full for ``give_up_after`` seconds despite repairs — surfaces as an ``FECError``
from ``recv`` naming the lost frames, and delivery carries on after it: the link never hangs.
"""

from __future__ import annotations

import asyncio
from collections import deque

from zmesh.errors import FECError, LinkClosed
from zmesh.link import Link

from .adaptive import RepairRateController
from .tetrys import UPDATE, Delivered, Gap, TetrysDecoder, TetrysEncoder, parse_update


class FecLink:
    ordered = True
    reliable = True

    def __init__(self, inner: Link, *, symbol_size: int = 1200, window: int = 256, min_repair: float = 0.0,
                 max_repair: float = 0.5, update_every: int = 8, repair_interval: float = 0.02,
                 give_up_after: float = 2.0) -> None:
        self.inner = inner
        self.encoder = TetrysEncoder(symbol_size=symbol_size, max_window=window)
        self.decoder = TetrysDecoder(symbol_size=symbol_size, max_window=window)
        self.controller = RepairRateController(min_ratio=min_repair, max_ratio=max_repair)
        self.max_frame_size = self.encoder.max_payload
        self.update_every = update_every
        self.repair_interval = repair_interval
        self.give_up_after = give_up_after
        self.gaps: list[Gap] = []
        self._inbox: deque[Delivered | Gap] = deque()
        self._readable = asyncio.Event()
        self._progress = asyncio.Event()  # set by window updates
        self._credit = 0.0
        self._since_update = 0
        self._closed = False
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read_loop()), loop.create_task(self._repair_loop())]

    async def send(self, frame: bytes) -> None:
        if self._closed:
            raise LinkClosed("FEC link is closed")
        waited = 0.0
        while self.encoder.full:
            # Stalled: help the receiver with repairs; after give_up_after, drop the oldest symbol.
            self._progress.clear()
            await self._send_repair()
            try:
                await asyncio.wait_for(self._progress.wait(), self.repair_interval)
            except TimeoutError:
                waited += self.repair_interval
                if waited >= self.give_up_after:
                    self.encoder.give_up_oldest()
        await self.inner.send(self.encoder.source(frame))
        self._credit += self.controller.ratio
        while self._credit >= 1.0:
            self._credit -= 1.0
            await self._send_repair()

    async def recv(self) -> bytes:
        while not self._inbox:
            if self._closed:
                raise LinkClosed("FEC link is closed")
            self._readable.clear()
            await self._readable.wait()
        event = self._inbox.popleft()
        if isinstance(event, Gap):
            raise FECError(f"frames {event.first}..{event.last} were lost beyond what repair covered")
        return event.payload

    async def _send_repair(self) -> None:
        packet = self.encoder.repair()
        if packet is not None:
            await self.inner.send(packet)

    async def _read_loop(self) -> None:
        try:
            while True:
                packet = await self.inner.recv()
                if packet[:1] == bytes([UPDATE]):
                    next_expected, received, highest = parse_update(packet)
                    self.encoder.acknowledge(next_expected)
                    self._credit += self.controller.update(highest, received)
                    self._progress.set()
                    continue
                events = self.decoder.receive(packet)
                for event in events:
                    if isinstance(event, Gap):
                        self.gaps.append(event)
                    self._inbox.append(event)
                if events:
                    self._readable.set()
                self._since_update += 1
                if self._since_update >= self.update_every or (self.decoder.stalled and events):
                    self._since_update = 0
                    await self.inner.send(self.decoder.update_packet())
        except (LinkClosed, FECError):
            # A hostile or broken peer: stop reading and surface the close to recv().
            self._closed = True
            self._readable.set()

    async def _repair_loop(self) -> None:
        """Tail protection: if symbols stay unacknowledged, keep sending repairs and updates."""
        while True:
            await asyncio.sleep(self.repair_interval)
            if self.encoder.window:
                await self._send_repair()
            if self.decoder.packets_received:
                await self.inner.send(self.decoder.update_packet())

    async def close(self) -> None:
        self._closed = True
        self._readable.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.inner.close()
