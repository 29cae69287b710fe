"""One zmesh link over two channels: cells that steer circuits on a reliable, ordered channel, and
RELAY cells (all of a circuit's data) under Tetrys FEC on an unordered, unreliable one.

That is what WebRTC offers a link with a second DataChannel (``ordered: false, maxRetransmits: 0``):
a lost packet is repaired from the next repair symbol instead of waiting for a retransmission, and
one loss does not hold up every circuit on the link. RELAY cells keep their order among themselves
(``FecLink`` delivers in order), which is what relay crypto needs; CREATE/CREATED/DESTROY, PING/PONG
and link authentication keep theirs on the control channel. The two orders are independent: a
DESTROY may overtake RELAY cells still in flight, which only ends a circuit that is ending anyway,
and no RELAY cell is sent on a circuit before its CREATED has arrived. A loss FEC could not repair
breaks the running digest of that circuit at the next cell, so the circuit is torn down (the link
stays up); ``lost_frames`` counts such gaps.
"""

from __future__ import annotations

import asyncio

from ..cells import CELL_SIZE, MAX_FRAME_SIZE, CellCommand
from ..errors import LinkClosed, ProtocolError
from ..link import CloseOnce, Link
from .link import FecLink, LostFrames

_RELAY = int(CellCommand.RELAY)
INBOX_FRAMES = 64  # frames received and not yet read; beyond that the channels stop being read


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
        control = []
        for start in range(0, len(frame), CELL_SIZE):
            cell = frame[start:start + CELL_SIZE]
            if len(cell) == CELL_SIZE and cell[1] == _RELAY:
                if control:  # keep the control cells' order with respect to each other
                    await self.control.send(b"".join(control))
                    control.clear()
                await self.fec.send(cell)
            else:
                control.append(cell)
        if control:
            await self.control.send(b"".join(control))

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
