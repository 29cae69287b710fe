"""The asyncio driver: runs a ``Node`` over real ``Link`` objects (same code on Pyodide's loop).

It owns every task it starts (one reader and one writer per link, one timer, dials and stream
handlers) and cancels them in ``close``. All calls into the node go through one lock, because the
node's coroutines may suspend on the crypto provider and it must see one input at a time. Timers
run on the node's own clock (``node.clock``), so a node on a fake clock is driven by that clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from ..cells import DestroyReason, EndReason
from ..circuit import RelayInfo
from ..errors import CircuitError, InvalidState, LinkClosed, StreamError, TransportError, ZmeshError, reason_words
from ..events import (
    CircuitBuilt,
    CircuitClosed,
    CloseLink,
    Event,
    LinkAuthenticated,
    LinkNeeded,
    StreamConnected,
    StreamData,
    StreamEnded,
    StreamRequested,
    StreamWritable,
)
from ..identity import PeerId
from ..link import Link, LinkRole
from ..node import Node
from .tasks import OwnedTasks

log = logging.getLogger(__name__)
# what a build failure's reason means for the one who built it
_HINTS = {DestroyReason.ONION_KEY_OUTDATED: " (the relay has rotated the onion key its descriptor names: "
                                            "refetch the descriptor)"}

Dialer = Callable[[PeerId, LinkRole], Awaitable[Link]]  # the role decides what the dial may reveal
StreamHandler = Callable[["IncomingStream"], Awaitable[None]]
P = ParamSpec("P")
T = TypeVar("T")


class MeshStream:
    """A byte stream through a circuit: ``read`` / ``write`` / ``close``, with flow control."""

    def __init__(self, driver: NodeDriver, circuit: int, stream_id: int) -> None:
        self._driver = driver
        self.circuit = circuit
        self.stream_id = stream_id
        self._chunks: deque[bytes] = deque()
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self.ended: EndReason | None = None
        self.bytes_in = 0
        self.bytes_out = 0

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._readable.set()

    def _end(self, reason: EndReason) -> None:
        self.ended = reason
        self._readable.set()
        self._writable.set()

    def _wake_writer(self) -> None:
        self._writable.set()

    async def read(self) -> bytes:
        """Return whatever data has arrived (waiting for some); ``b""`` once the stream ended (END DONE).

        Any other end (the circuit destroyed, the far side's END with an error reason) raises
        ``StreamError`` once the data that did arrive is read: a short answer is never mistaken
        for a complete one (a close-delimited HTTP body, say)."""
        while not self._chunks:
            if self.ended is not None:
                if self.ended is EndReason.DESTROYED:
                    raise StreamError("the circuit carrying this stream was destroyed", self.ended)
                if self.ended is not EndReason.DONE:
                    raise StreamError(f"the stream ended abnormally ({reason_words(self.ended)})", self.ended)
                return b""
            self._readable.clear()
            await self._readable.wait()
        cells = len(self._chunks)
        data = b"".join(self._chunks)
        self._chunks.clear()
        self.bytes_in += len(data)
        await self._driver.consume(self.circuit, self.stream_id, cells)
        return data

    async def read_exactly(self, size: int) -> bytes:
        """Read until ``size`` bytes or the end; used by message framing."""
        parts, have = [], 0
        while have < size:
            part = await self.read()
            if not part:
                break
            parts.append(part)
            have += len(part)
        data = b"".join(parts)
        if len(data) > size:
            self._chunks.appendleft(data[size:])
            self.bytes_in -= len(data) - size
        return data[:size]

    async def write(self, data: bytes) -> None:
        """Send all of ``data``, waiting while the flow-control windows are closed."""
        view = memoryview(data)
        while view:
            if self.ended is not None:
                raise StreamError(f"stream ended ({reason_words(self.ended)})", self.ended)
            self._writable.clear()
            taken = await self._driver.send(self.circuit, self.stream_id, bytes(view[:256 * 1024]))
            self.bytes_out += taken
            view = view[taken:]
            if view and not taken:
                await self._writable.wait()

    async def close(self, reason: EndReason = EndReason.DONE) -> None:
        """End the stream (END to the far side); a pending ``read`` returns ``b""``."""
        if self.ended is None:
            self._end(reason)
            await self._driver.end_stream(self.circuit, self.stream_id, reason)
        self._driver.forget_stream(self.circuit, self.stream_id)


class IncomingStream:
    """A BEGIN that reached this node; the stream handler accepts or rejects it."""

    def __init__(self, driver: NodeDriver, event: StreamRequested) -> None:
        self._driver = driver
        self.circuit = event.circuit
        self.stream_id = event.stream_id
        self.host = event.host
        self.port = event.port

    async def accept(self) -> MeshStream:
        return await self._driver.accept_stream(self.circuit, self.stream_id)

    async def reject(self, reason: EndReason) -> None:
        await self._driver.end_stream(self.circuit, self.stream_id, reason)


class NodeDriver:
    """Drives one node. ``dialer`` opens links for ``LinkNeeded`` (given the role the link is for, so
    it can dial a client link without naming this node, e.g. over a throwaway signaling session);
    ``stream_handler`` answers BEGINs (exits and destinations); a node without one refuses every
    BEGIN with EXIT_POLICY."""

    def __init__(self, node: Node, *, dialer: Dialer | None = None,
                 stream_handler: StreamHandler | None = None) -> None:
        self.node = node
        self.dialer = dialer
        self.stream_handler = stream_handler
        self._lock = asyncio.Lock()
        self._links: dict[int, Link] = {}
        self._output: dict[int, asyncio.Event] = {}
        self._tasks = OwnedTasks("node driver")
        self._building: dict[int, asyncio.Future] = {}
        self._opening: dict[tuple[int, int], asyncio.Future] = {}
        self._streams: dict[tuple[int, int], MeshStream] = {}
        self._confirmations: dict[int, asyncio.Future] = {}
        self._authenticated: set[int] = set()  # links whose listener accepted our proof
        self._link_peers: dict[int, PeerId] = {}  # who is on each link, where the transport says
        self._dial_errors: dict[PeerId, str] = {}  # why the last link to a peer failed, for the circuit's error
        self._timer_changed = asyncio.Event()
        self._closed = False
        self.on_event: Callable[[Event], None] | None = None
        self._tasks.spawn(self._timer_loop())

    # ---------------------------------------------------------------- links

    async def add_link(self, link: Link, peer: PeerId | None, *, initiator: bool,
                       role: LinkRole | None = None) -> int:
        """Attach an open link; ``peer`` is who the transport says is on the other end, ``role``
        what a link this node opened is for (``Node.link_opened``; a client link by default)."""
        async def opened() -> int:  # registered before the events: the node may refuse it (CloseLink) at once
            link_id = await self.node.link_opened(peer, initiator=initiator, role=role)
            self._links[link_id] = link
            self._output[link_id] = asyncio.Event()
            if peer is not None:
                self._link_peers[link_id] = peer
            return link_id

        link_id = await self._call(opened)
        self._tasks.spawn(self._read_loop(link_id, link))
        self._tasks.spawn(self._write_loop(link_id, link))
        return link_id

    async def connect(self, peer: PeerId, *, authenticated: bool = False, timeout: float = 10.0) -> int:
        """Open a link to ``peer`` now: a client link, or with ``authenticated`` a relay link, e.g. a
        browser tab's to the relay it is reachable through; then return only once the peer has
        accepted this node's proof of identity, i.e. once circuits can be extended to this node
        over the link. This node's own circuits never use a relay link (docs/protocol.md §3)."""
        if self.dialer is None:
            raise TransportError("this node has no dialer")
        if authenticated and not self.node.accept_circuits:  # before dialing, so no link is left open
            raise InvalidState("a node that accepts no circuits opens no relay links")
        role = LinkRole.RELAY if authenticated else LinkRole.CLIENT
        link_id = await self.add_link(await self.dialer(peer, role), peer, initiator=True, role=role)
        if authenticated and link_id not in self._authenticated:
            confirmed = self._confirmations[link_id] = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(confirmed, timeout)
            except TimeoutError as exc:
                raise TransportError(f"{peer.short()} did not accept this node's link authentication") from exc
            finally:
                self._confirmations.pop(link_id, None)
        return link_id

    def links(self) -> dict[int, Link]:
        return dict(self._links)

    def rtt_to(self, peer: PeerId) -> float | None:
        """The last PING→PONG round trip (s) on a link this node has to ``peer``, if one was measured."""
        rtts = [rtt for link_id, linked in self._link_peers.items()
                if linked == peer and (rtt := self.node.link_rtt(link_id)) is not None]
        return min(rtts, default=None)

    async def _read_loop(self, link_id: int, link: Link) -> None:
        try:
            while True:
                frame = await link.recv()
                await self._call(self.node.receive_frame, link_id, frame)
                while (pause := self.node.read_pause(link_id)) > 0:  # its CREATEs wait in its socket
                    await asyncio.sleep(pause)
        except (LinkClosed, TransportError):
            pass
        finally:
            await self._drop_link(link_id, link)

    async def _write_loop(self, link_id: int, link: Link) -> None:
        output = self._output[link_id]
        try:
            while True:
                frame = self.node.take_frame(link_id)
                if frame is None:
                    output.clear()
                    await output.wait()
                    continue
                await link.send(frame)
        except (LinkClosed, TransportError):
            pass
        finally:
            await self._drop_link(link_id, link)

    async def _drop_link(self, link_id: int, link: Link) -> None:
        if self._links.pop(link_id, None) is None:
            return
        self._output.pop(link_id, None)
        self._link_peers.pop(link_id, None)
        self._authenticated.discard(link_id)
        await link.close()
        if not self._closed:
            await self._call(self.node.link_closed, link_id)

    async def _dial(self, peer: PeerId, role: LinkRole) -> None:
        try:
            if self.dialer is None:
                raise TransportError("this node has no dialer")
            link = await self.dialer(peer, role)
        except Exception as exc:  # any dial failure fails the waiting circuits, never the driver
            log.info("link to %s failed: %s: %s", peer.short(), type(exc).__name__, exc)
            if len(self._dial_errors) < 64:
                self._dial_errors[peer] = str(exc)
            await self._call(self.node.link_failed, peer, role)
            return
        await self.add_link(link, peer, initiator=True, role=role)

    # ---------------------------------------------------------------- circuits and streams

    async def build_circuit(self, path: list[RelayInfo]) -> int:
        """Build a circuit; return its handle once built, or raise ``CircuitError``."""
        return (await self.build(path)).circuit

    async def build(self, path: list[RelayInfo]) -> CircuitBuilt:
        """``build_circuit``, answering with how long the build took (for path selection)."""
        future: asyncio.Future[CircuitBuilt] = asyncio.get_running_loop().create_future()
        async with self._lock:
            handle = await self.node.build_circuit(path)
            self._building[handle] = future
        self._after_call()
        return await future

    async def open_stream(self, circuit: int, host: str, port: int) -> MeshStream:
        """Open a stream through ``circuit`` to ``host:port`` (resolved by the exit)."""
        future = asyncio.get_running_loop().create_future()
        async with self._lock:
            stream_id = await self.node.open_stream(circuit, host, port)
            self._opening[(circuit, stream_id)] = future
            stream = self._register_stream(circuit, stream_id)
        self._after_call()
        try:
            await future
        except StreamError:
            self._streams.pop((circuit, stream_id), None)
            raise
        return stream

    async def destroy_circuit(self, circuit: int, reason: DestroyReason = DestroyReason.REQUESTED) -> None:
        await self._call(self.node.destroy_circuit, circuit, reason)

    # The surface MeshStream and IncomingStream use: each is one node call under the lock.

    async def accept_stream(self, circuit: int, stream_id: int) -> MeshStream:
        """Accept a BEGIN that reached this node (CONNECTED to the far side)."""
        stream = self._register_stream(circuit, stream_id)
        await self._call(self.node.accept_stream, circuit, stream_id)
        return stream

    async def send(self, circuit: int, stream_id: int, data: bytes) -> int:
        """Queue what the stream's windows allow of ``data``; return how many bytes were taken."""
        return await self._call(self.node.send, circuit, stream_id, data)

    async def consume(self, circuit: int, stream_id: int, cells: int) -> None:
        """Tell the node the application has read ``cells`` DATA cells (SENDMEs follow)."""
        await self._call(self.node.consume, circuit, stream_id, cells)

    async def end_stream(self, circuit: int, stream_id: int, reason: EndReason) -> None:
        """Send END with ``reason`` (also how a BEGIN is refused)."""
        await self._call(self.node.end_stream, circuit, stream_id, reason)

    def forget_stream(self, circuit: int, stream_id: int) -> None:
        """Stop delivering to a stream the application closed."""
        self._streams.pop((circuit, stream_id), None)

    async def set_network_size(self, nodes: int) -> None:
        """The directory lists ``nodes`` nodes: the node sizes its peer table by it (``PeerTiers``)."""
        await self._call(self.node.set_network_size, nodes)

    def clock_moved(self) -> None:
        """Re-read the node's clock now rather than at the next planned deadline: for a test that
        moves a fake clock (a real monotonic clock needs no telling)."""
        self._timer_changed.set()

    def _register_stream(self, circuit: int, stream_id: int) -> MeshStream:
        stream = MeshStream(self, circuit, stream_id)
        self._streams[(circuit, stream_id)] = stream
        return stream

    async def call(self, method: Callable[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Any other node operation (``node.establish_intro`` and the like, for ``zmesh.aio.onion``),
        under the lock like every call, its events handed out after."""
        return await self._call(method, *args, **kwargs)

    # ---------------------------------------------------------------- plumbing

    async def _call(self, method: Callable[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one node method under the lock, then hand out its events and wake the writers."""
        if self._closed:
            raise InvalidState("the node driver is closed")
        async with self._lock:
            result = await method(*args, **kwargs)
        self._after_call()
        return result

    def _after_call(self) -> None:
        for event in self.node.events():
            self._dispatch(event)
        self._wake()

    def _wake(self) -> None:
        for link_id in self.node.links_with_output():
            output = self._output.get(link_id)
            if output is not None:
                output.set()
        self._timer_changed.set()

    def _dispatch(self, event: Event) -> None:
        if self.on_event is not None:
            self.on_event(event)
        match event:
            case StreamData(circuit, stream_id, data):
                stream = self._streams.get((circuit, stream_id))
                if stream is not None:
                    stream._feed(data)
            case StreamWritable(circuit, stream_id):
                stream = self._streams.get((circuit, stream_id))
                if stream is not None:
                    stream._wake_writer()
            case LinkAuthenticated(link_id):
                self._authenticated.add(link_id)
                future = self._confirmations.get(link_id)
                if future is not None and not future.done():
                    future.set_result(None)
            case LinkNeeded(peer, role):
                self._tasks.spawn(self._dial(peer, role))
            case CloseLink(link_id, reason):
                link = self._links.get(link_id)
                if link is not None:
                    log.info("closing link %d: %s", link_id, reason)  # reasons name limits, never addresses
                    self._tasks.spawn(self._drop_link(link_id, link))
            case CircuitBuilt(circuit, _, _):
                future = self._building.pop(circuit, None)
                if future is not None and not future.done():
                    future.set_result(event)
            case CircuitClosed(circuit, reason, _, failed_peer):
                future = self._building.pop(circuit, None)
                dial_error = self._dial_errors.pop(failed_peer, None) if failed_peer else None
                if future is not None and not future.done():
                    at = f" at {failed_peer.short()}…" if failed_peer else ""
                    because = f" ({dial_error})" if dial_error else _HINTS.get(reason, "")
                    future.set_exception(CircuitError(
                        f"circuit failed to build{at}: {reason_words(reason)}{because}", reason, failed_peer))
            case StreamConnected(circuit, stream_id):
                future = self._opening.pop((circuit, stream_id), None)
                if future is not None and not future.done():
                    future.set_result(None)
            case StreamEnded(circuit, stream_id, reason):
                future = self._opening.pop((circuit, stream_id), None)
                if future is not None and not future.done():
                    future.set_exception(StreamError(f"stream refused: {reason_words(reason)}", reason))
                stream = self._streams.pop((circuit, stream_id), None)
                if stream is not None:
                    stream._end(reason)
            case StreamRequested():
                self._tasks.spawn(self._handle_incoming(IncomingStream(self, event)))

    async def _handle_incoming(self, request: IncomingStream) -> None:
        if self.stream_handler is None:
            await request.reject(EndReason.EXIT_POLICY)
            return
        try:
            await self.stream_handler(request)
        except (ZmeshError, OSError):  # the handler's target failed: end the stream, keep the node
            await request.reject(EndReason.MISC)

    async def _timer_loop(self) -> None:
        # Deadlines are on the node's clock; only the sleep until one is in loop time. A call_later
        # wake-up rather than asyncio.wait_for: on Python 3.11 wait_for can swallow a cancellation
        # that races with its timeout, which would leave close() waiting forever.
        loop, clock = asyncio.get_running_loop(), self.node.clock
        while True:
            self._timer_changed.clear()
            deadline = self.node.next_deadline()
            alarm = None if deadline is None else loop.call_later(
                max(0.0, deadline - clock()), self._timer_changed.set)
            try:
                await self._timer_changed.wait()
            finally:
                if alarm is not None:
                    alarm.cancel()
            if deadline is not None and (now := clock()) >= deadline:
                await self._call(self.node.handle_timer, now)

    async def close(self) -> None:
        """Stop every task and close every link."""
        self._closed = True
        for link in list(self._links.values()):
            await link.close()
        await self._tasks.close()
