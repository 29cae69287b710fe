"""Multipath streams on the asyncio driver: the glue around ``zmesh.multipath`` (docs/protocol.md
"Multipath").

``open_multipath`` (client) opens a leg stream to the exit's multipath service on each circuit,
links them with a fresh secret nonce and returns a ``MultipathStream``, which reads and writes like
a ``MeshStream``. ``MultipathExit`` (exit) answers those legs: leg 0's LINK names the target, which
the exit's ordinary stream handler connects to (exit policy and all) as if it were a BEGIN; later
legs join the set. An exit without the service refuses the leg's BEGIN, and the client falls back
to a plain stream on the first circuit.

A leg that dies (its circuit destroyed) does not end the stream while another leg lives: what the
sender had sent on it and not yet seen acknowledged is sent again on the remaining legs, and the
receiver drops what it already had. When every leg is gone the stream fails with ``StreamError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import Counter, deque
from collections.abc import Awaitable, Callable

from ..cells import DestroyReason, EndReason
from ..descriptor import Descriptor
from ..errors import MultipathError, StreamError, ZmeshError, reason_words
from ..identity import PeerId
from ..multipath.linking import LinkRegistry
from ..multipath.scheduler import LegView, pick_leg
from ..multipath.sequencing import DEFAULT_WINDOW, FIN, Reorder, SendBuffer
from ..multipath.wire import (
    MAX_DATA,
    MAX_LEGS,
    MULTIPATH_PORT,
    MessageReader,
    MultipathCommand,
    encode_link,
    encode_linked,
    encode_seq,
    parse_link,
    parse_linked,
    parse_seq,
)
from ..path import PathSelector
from .building import BuildPolicy, build_around_failures
from .driver import IncomingStream, MeshStream, NodeDriver, StreamHandler
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


async def open_multipath(driver: NodeDriver, circuits: list[int], host: str, port: int, *,
                         window: int = DEFAULT_WINDOW) -> MultipathStream | MeshStream:
    """A stream to ``host:port`` over ``circuits`` (which must end at the same exit), returned once
    leg 0 is linked and the exit connected; the other legs link in the background. An exit without
    the multipath service gets a plain stream on ``circuits[0]``."""
    try:
        first = await driver.open_stream(circuits[0], "", MULTIPATH_PORT)
    except StreamError as exc:
        if exc.reason is not EndReason.EXIT_POLICY:
            raise
        log.info("the exit has no multipath service: one circuit only")
        return await driver.open_stream(circuits[0], host, port)
    nonce = secrets.token_bytes(32)
    stream = MultipathStream(driver, window=window)
    leg = stream.add_leg(0, first, linked=False)
    try:
        await first.write(encode_link(nonce, 0, host, port))
        async with asyncio.timeout(LINK_TIMEOUT):
            await asyncio.shield(leg.linked)
    except TimeoutError as exc:
        await stream.close(EndReason.TIMEOUT)
        raise StreamError("the exit did not link the multipath stream", EndReason.TIMEOUT) from exc
    except StreamError as exc:
        await stream.close(exc.reason)
        raise StreamError(f"stream refused: {reason_words(exc.reason)}", exc.reason) from exc
    for index, circuit in enumerate(circuits[1:MAX_LEGS], start=1):
        stream._tasks.spawn(_join(driver, stream, index, circuit, nonce))
    return stream


async def _join(driver: NodeDriver, stream: MultipathStream, index: int, circuit: int, nonce: bytes) -> None:
    """Link one more leg; a leg that cannot join leaves the stream on the legs it has."""
    try:
        leg_stream = await driver.open_stream(circuit, "", MULTIPATH_PORT)
        leg = stream.add_leg(index, leg_stream, linked=False)
        await leg_stream.write(encode_link(nonce, index))
        async with asyncio.timeout(LINK_TIMEOUT):
            await asyncio.shield(leg.linked)
    except (ZmeshError, TimeoutError) as exc:
        log.info("multipath leg %d did not join: %s", index, exc)


class _LinkedRequest:
    """Leg 0's LINK, put to the exit's stream handler as if it were a BEGIN for its target."""

    def __init__(self, exit: MultipathExit, leg: MeshStream, stream: MultipathStream, host: str, port: int,
                 reader: MessageReader, early: list) -> None:
        self._exit, self._leg, self._stream = exit, leg, stream
        self._reader, self._early = reader, early
        self.circuit, self.stream_id = leg.circuit, leg.stream_id
        self.host, self.port = host, port

    async def accept(self) -> MultipathStream:
        await self._leg.write(encode_linked(0))
        self._stream.add_leg(0, self._leg, linked=True, reader=self._reader, early=self._early)
        return self._stream

    async def reject(self, reason: EndReason) -> None:
        await self._stream.close(reason)
        await self._leg.close(reason)


class MultipathExit:
    """The exit's multipath service: links legs into sets (``zmesh.multipath.linking``) and hands
    each set, as one stream, to the exit's stream handler (``wrap``)."""

    def __init__(self, driver: NodeDriver, *, window: int = DEFAULT_WINDOW, max_sets: int = 1024) -> None:
        self.driver = driver
        self.window = window
        self.registry: LinkRegistry[MultipathStream] = LinkRegistry(driver.node.clock, max_sets=max_sets,
                                                                     link_timeout=LINK_TIMEOUT)

    def wrap(self, handler: StreamHandler) -> StreamHandler:
        """``handler`` for ordinary BEGINs; leg streams (empty host, ``MULTIPATH_PORT``) here first."""
        async def serve(request: IncomingStream) -> None:
            if request.host == "" and request.port == MULTIPATH_PORT:
                await self.serve(request, handler)
            else:
                await handler(request)
        return serve

    async def serve(self, request: IncomingStream, handler: StreamHandler) -> None:
        leg = await request.accept()
        reader = MessageReader()
        try:
            messages: list = []
            async with asyncio.timeout(LINK_TIMEOUT):
                while not messages:
                    data = await leg.read()
                    if not data:
                        return
                    messages = reader.feed(data)
            command, body = messages[0]
            if command is not MultipathCommand.LINK:
                raise MultipathError(f"a leg must begin with LINK, not {command.name}", DestroyReason.MP_PROTOCOL)
            nonce, index, target = parse_link(body)
            if target is not None:
                stream = MultipathStream(self.driver, window=self.window,
                                         on_close=lambda: self.registry.remove(nonce))
                self.registry.create(nonce, leg.circuit, stream)
                self.driver.node.metrics["multipath_sets"] += 1
                try:
                    await handler(_LinkedRequest(self, leg, stream, *target, reader, messages[1:]))
                finally:
                    await stream.close(EndReason.MISC)  # nothing if the handler closed it
                return
            joined = self.registry.join(nonce, index, leg.circuit)
            self.driver.node.metrics["multipath_legs_joined"] += 1
            await leg.write(encode_linked(index))
            joined.state.add_leg(index, leg, linked=True, reader=reader, early=messages[1:])
        except MultipathError as exc:
            log.info("multipath leg refused: %s", exc)
            self.driver.node.metrics[f"multipath_refused_{exc.reason.name.lower()}"] += 1
            await self.driver.destroy_circuit(leg.circuit, exc.reason)
        except TimeoutError:
            await leg.close(EndReason.TIMEOUT)


ChooseLeg = Callable[[PeerId, frozenset[PeerId], bool], Awaitable[list[Descriptor]]]


class LegPartners:
    """The client's second legs: for each circuit multipath streams start on, one more circuit to
    the same exit through none of its other relays (``choose_leg(exit, avoid, refetch)`` draws that
    path), built on first use and kept while the first circuit is."""

    def __init__(self, driver: NodeDriver, choose_leg: ChooseLeg, selector: PathSelector, *,
                 build_policy: BuildPolicy | None = None,
                 first_hop: Callable[[PeerId, bool], None] | None = None) -> None:
        self.driver = driver
        self._choose = choose_leg
        self._selector = selector
        self._policy = build_policy
        self._first_hop = first_hop
        self._partners: dict[int, int] = {}
        self._lock = asyncio.Lock()  # one partner build at a time

    async def open(self, circuit: int, path: list[PeerId], host: str, port: int) -> MultipathStream | MeshStream:
        """A multipath stream on ``circuit`` (whose hops are ``path``) and its partner; without a
        partner (no disjoint path, or its build failed) a plain stream on ``circuit``."""
        async with self._lock:
            partner = self._partners.get(circuit)
            if partner is None or partner not in self.driver.node.circuits():
                try:
                    partner = self._partners[circuit] = await self._build(path)
                except ZmeshError as exc:
                    log.info("no second multipath leg (%s): one circuit only", exc)
                    self._partners.pop(circuit, None)
                    return await self.driver.open_stream(circuit, host, port)
        return await open_multipath(self.driver, [circuit, partner], host, port)

    async def _build(self, path: list[PeerId]) -> int:
        # the exit is avoided too: it is the path's given last hop, never to be drawn as its entry
        exit_peer, others = path[-1], frozenset(path)

        async def choose(avoid: frozenset[PeerId], refetch: bool) -> list[Descriptor]:
            return await self._choose(exit_peer, avoid | others, refetch)
        handle, _ = await build_around_failures(self.driver, choose, self._selector, policy=self._policy,
                                                pinned={exit_peer}, first_hop=self._first_hop)
        return handle

    async def forget(self, circuit: int) -> None:
        """``circuit`` is being closed: close its partner too."""
        partner = self._partners.pop(circuit, None)
        if partner is not None:
            with contextlib.suppress(ZmeshError):
                await self.driver.destroy_circuit(partner)
