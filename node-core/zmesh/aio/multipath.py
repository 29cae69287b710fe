"""Multipath streams on the asyncio driver: the glue around ``zmesh.multipath`` (docs/protocol.md
"Multipath").

A ``MultipathStream`` reads and writes like a ``MeshStream`` over the leg streams it is given
(linked by ``zmesh.aio.multipath_link``): one reader and one writer task per leg, the scheduler's
choice per message, the reorder buffer and ACKs.

A leg that dies (its circuit destroyed) does not end the stream while another leg lives: what the
sender had sent on it and not yet seen acknowledged is sent again on the remaining legs, and the
receiver drops what it already had. When every leg is gone the stream fails with ``StreamError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Callable

from ..cells import DestroyReason, EndReason
from ..errors import MultipathError, StreamError, ZmeshError, reason_words
from ..multipath.scheduler import LegView, pick_leg
from ..multipath.sequencing import DEFAULT_WINDOW, FIN, Reorder, SendBuffer
from ..multipath.wire import (
    MAX_DATA,
    MAX_LEGS,
    MessageReader,
    MultipathCommand,
    encode_seq,
    parse_linked,
    parse_seq,
)
from .driver import MeshStream, NodeDriver
from .tasks import OwnedTasks

log = logging.getLogger(__name__)
LINK_TIMEOUT = 30.0  # seconds a leg may take to link
_DATA, _ACK, _FIN = MultipathCommand.DATA, MultipathCommand.ACK, MultipathCommand.FIN


class _Leg:
    __slots__ = ("index", "stream", "lock", "slot", "alive", "linked")

    def __init__(self, index: int, stream: MeshStream, linked: bool) -> None:
        self.index = index
        self.stream = stream
        self.lock = asyncio.Lock()  # one message at a time into the leg's byte stream
        self.slot: tuple[int, bytes | None] | None = None  # the message given to this leg's writer
        self.alive = True
        self.linked = asyncio.get_running_loop().create_future()
        if linked:
            self.linked.set_result(None)


class MultipathStream:
    """One stream over several legs: ``read`` / ``write`` / ``close`` like ``MeshStream``."""

    def __init__(self, driver: NodeDriver, *, window: int = DEFAULT_WINDOW,
                 on_close: Callable[[], None] | None = None) -> None:
        self._driver = driver
        self._send = SendBuffer(window)
        self._recv = Reorder(window)
        self._ack_every = max(1, window // 4)
        self._legs: dict[int, _Leg] = {}
        self._pending: deque[tuple[int, bytes | None]] = deque()  # numbered, waiting for a leg
        self._changed = asyncio.Condition()
        self._chunks: deque[bytes] = deque()
        self._readable = asyncio.Event()
        self._error: StreamError | None = None
        self._closed = False
        self.ended: EndReason | None = None  # how the stream ended, once it did (as MeshStream.ended)
        self._on_close = on_close
        self._tasks = OwnedTasks("multipath stream")
        self.circuit = -1  # leg 0's circuit (what a circuit manager tracks the stream by)
        self.bytes_in = self.bytes_out = 0
        self.resent = 0  # messages sent again after their leg died
        self.sent_on: Counter[int] = Counter()  # messages sent, by leg

    @property
    def legs(self) -> list[int]:
        """The circuits of the live legs."""
        return [leg.stream.circuit for leg in self._legs.values() if leg.alive]

    def add_leg(self, index: int, stream: MeshStream, *, linked: bool, reader: MessageReader | None = None,
                early: list[tuple[MultipathCommand, bytes]] = ()) -> _Leg:
        leg = self._legs[index] = _Leg(index, stream, linked)
        if index == 0:
            self.circuit = stream.circuit
        self._tasks.spawn(self._read_leg(leg, reader or MessageReader(), list(early)))
        self._tasks.spawn(self._write_leg(leg))
        return leg

    # ---------------------------------------------------------------- application side

    async def read(self) -> bytes:
        """What has arrived, in order (waiting for some); ``b""`` at the end; ``StreamError`` if
        the stream failed (every leg lost, or a peer broke the multipath rules)."""
        while not self._chunks and not self._recv.finished:
            if self._error is not None:
                raise self._error
            self._readable.clear()
            await self._readable.wait()
        data = b"".join(self._chunks)
        self._chunks.clear()
        self.bytes_in += len(data)
        ack = self._recv.ack_due(self._ack_every)
        if ack is not None:
            await self._control(encode_seq(_ACK, ack))
        return data

    async def write(self, data: bytes) -> None:
        """Send all of ``data``, waiting while the multipath window is full."""
        for start in range(0, len(data), MAX_DATA):
            await self._queue(bytes(data[start:start + MAX_DATA]))
            self.bytes_out += min(MAX_DATA, len(data) - start)

    async def _queue(self, data: bytes | None) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._error is not None or (
                self._send.room() > 0 and len(self._pending) < 2 * MAX_LEGS))
            if self._error is not None:
                raise self._error
            self._pending.append((self._send.assign(data), data))
            self._dispatch()
            self._changed.notify_all()

    async def close(self, reason: EndReason = EndReason.DONE) -> None:
        """End the stream: with ``DONE``, a FIN after everything written, and the legs close once
        the far end acknowledged it (or after ``LINK_TIMEOUT``); otherwise at once."""
        if self._closed:
            return
        self._closed = True
        self.ended = self.ended or reason
        try:
            if reason is EndReason.DONE and self._error is None and self.legs:
                with contextlib.suppress(ZmeshError, TimeoutError):
                    await self._queue(FIN)
                    async with asyncio.timeout(LINK_TIMEOUT), self._changed:
                        await self._changed.wait_for(lambda: self._send.done() or not self.legs
                                                     or self._error is not None)
            for leg in self._legs.values():
                with contextlib.suppress(ZmeshError):
                    await leg.stream.close(reason)
        finally:
            await self._tasks.close()
            if self._on_close is not None:
                self._on_close()

    # ---------------------------------------------------------------- legs

    def _dispatch(self) -> None:
        """Give waiting messages to legs, each to the leg the scheduler picks now (call under
        ``_changed``, then notify): decided once per message, so a window that opens later cannot
        leave a message waiting for a leg that no longer wants it."""
        while self._pending:
            views, legs = [], {}
            for leg in self._legs.values():
                if leg.alive and leg.linked.done() and leg.linked.exception() is None:
                    rtt, room = self._driver.node.circuit_flow(leg.stream.circuit) or (None, 0)
                    views.append(LegView(leg.index, rtt, room, leg.slot is None))
                    legs[leg.index] = leg
            choice = pick_leg(views)
            if choice is None:
                return
            leg = legs[choice]
            leg.slot = seq, _ = self._pending.popleft()
            self._send.sent(seq, leg.index)
            self.sent_on[leg.index] += 1

    async def _changed_now(self) -> None:
        async with self._changed:
            self._dispatch()
            self._changed.notify_all()

    async def _write_leg(self, leg: _Leg) -> None:
        """Send the messages the scheduler gives this leg."""
        try:
            await asyncio.shield(leg.linked)
        except StreamError:
            return
        await self._changed_now()
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: not leg.alive or leg.slot is not None)
                if not leg.alive or leg.slot is None:
                    return
                seq, data = leg.slot
            try:
                async with leg.lock:
                    await leg.stream.write(encode_seq(_FIN, seq) if data is FIN else encode_seq(_DATA, seq, data))
            except StreamError as exc:
                await self._leg_down(leg, exc.reason)
                return
            leg.slot = None
            await self._changed_now()

    async def _read_leg(self, leg: _Leg, reader: MessageReader, early: list) -> None:
        try:
            for command, body in early:
                await self._on_message(leg, command, body)
            while data := await leg.stream.read():
                for command, body in reader.feed(data):
                    await self._on_message(leg, command, body)
            await self._leg_down(leg, EndReason.DONE)
        except MultipathError as exc:
            await self._abort(leg, exc)
        except StreamError as exc:
            await self._leg_down(leg, exc.reason)

    async def _on_message(self, leg: _Leg, command: MultipathCommand, body: bytes) -> None:
        if command is _DATA or command is _FIN:
            seq, data = parse_seq(body, data=command is _DATA)
            for item in self._recv.push(seq, data if command is _DATA else FIN):
                if item is not FIN:
                    self._chunks.append(item)
            self._readable.set()
        elif command is _ACK:
            self._send.on_ack(parse_seq(body)[0])
            await self._changed_now()
        elif command is MultipathCommand.LINKED and not leg.linked.done() and parse_linked(body) == leg.index:
            leg.linked.set_result(None)
            await self._changed_now()
        else:
            raise MultipathError(f"unexpected multipath {command.name} on leg {leg.index}",
                                 DestroyReason.MP_PROTOCOL)

    async def _control(self, message: bytes) -> None:
        """An ACK, on a live leg with nothing waiting on it if there is one."""
        for leg in sorted((leg for leg in self._legs.values() if leg.alive and leg.linked.done()),
                          key=lambda leg: leg.lock.locked()):
            try:
                async with leg.lock:
                    await leg.stream.write(message)
                return
            except StreamError as exc:
                await self._leg_down(leg, exc.reason)

    async def _leg_down(self, leg: _Leg, reason: EndReason) -> None:
        """A leg ended: what it carried unacknowledged goes out again on the others."""
        if not leg.alive:
            return
        leg.alive = False
        if not leg.linked.done():
            leg.linked.set_exception(StreamError(f"multipath leg {leg.index} failed to link ({reason_words(reason)})",
                                                 reason))
            leg.linked.exception()  # retrieved: whoever waits on it has been told
        leg.slot = None
        lost = self._send.leg_lost(leg.index)
        self._pending.extendleft(reversed(lost))
        self.resent += len(lost)
        self._driver.node.metrics["multipath_legs_lost"] += reason is not EndReason.DONE
        if not self.legs and not (self._recv.finished and self._send.done()) and self._error is None:
            self._error = StreamError(f"every leg of the multipath stream is gone (the last: "
                                      f"{reason_words(reason)})", EndReason.DESTROYED if reason is EndReason.DONE
                                      else reason)
        self._readable.set()
        await self._changed_now()

    async def _abort(self, leg: _Leg, exc: MultipathError) -> None:
        """A peer broke the multipath rules: its leg's circuit is destroyed with the reason, the
        other legs end, and the application sees a ``StreamError``."""
        log.info("multipath stream closed: %s", exc)
        self._driver.node.metrics[f"multipath_refused_{exc.reason.name.lower()}"] += 1
        self._error = StreamError(f"multipath peer fault: {exc}", EndReason.PROTOCOL)
        for other in self._legs.values():
            other.alive = False
        if not leg.linked.done():
            leg.linked.set_exception(self._error)
            leg.linked.exception()
        self._readable.set()
        async with self._changed:
            self._changed.notify_all()
        await self._driver.destroy_circuit(leg.stream.circuit, exc.reason)
        for other in self._legs.values():
            if other is not leg:
                with contextlib.suppress(ZmeshError):
                    await other.stream.close(EndReason.PROTOCOL)
