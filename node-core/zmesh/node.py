"""The node state machine: links in, cells through, events out (sans-IO; docs/protocol.md §6).

One ``Node`` is every role at once: circuit origin (client), relay (middle hop) and edge (exit or
destination at a circuit's last hop). It never touches sockets, tasks or timers. A driver
(``zmesh.aio.driver``) feeds it frames with ``receive_frame``, pulls frames to write with
``take_frame``, drains ``events()``, calls ``handle_timer`` at ``next_deadline()`` and waits
``read_pause(link)`` before reading a link's next frame (a CREATE flood waits in the peer's socket).
Its methods are coroutines only because the crypto provider is (WebCrypto); the driver must call
them one at a time.

Peer input never raises out of ``receive_frame``: a malformed frame closes the link, a bad cell on a
circuit destroys that circuit (DESTROY both ways), and the metrics count what happened.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .admission import HandshakeQueue
from .cells import (
    BODY_SIZE,
    CELL_SIZE,
    FLAG_MORE,
    MAX_CELLS_PER_FRAME,
    RELAY_DATA_SIZE,
    Cell,
    CellCommand,
    DestroyReason,
    EndReason,
    RelayCommand,
    RelayMessage,
    encode_cell,
    encode_relay_body,
    fragments,
    parse_frame,
    parse_relay_body,
    relay_cell_header,
)
from .circuit import MAX_HOPS, MIN_HOPS, BuildState, Edge, OriginCircuit, RelayCircuit, RelayInfo, Stream, StreamState
from .crypto.provider import KEY_SIZE, CryptoProvider
from .errors import ConfigError, CryptoError, InvalidState, ProtocolError
from .events import (
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
from .flow import CIRCUIT_WINDOW
from .handshake import CREATE_SIZE, CREATED_SIZE, client_finish, client_start, server_respond
from .identity import Identity, PeerId
from .relaycrypto import HopCrypto, onion_decrypt, onion_encrypt, recognize, seal, split_bodies
from .streams import format_target, parse_target

LINK_AUTH_DOMAIN = b"zmesh-link-auth-v1\x00"
_INITIATOR_BIT = 0x8000_0000


@dataclass(frozen=True, slots=True)
class NodeLimits:
    """Bounds on what a peer can make this node hold. Defaults are safe for a public relay."""

    build_timeout: float = 30.0
    max_circuits_per_link: int = 4096
    max_streams_per_circuit: int = 256
    # A sender that respects the circuit window never has more than CIRCUIT_WINDOW DATA cells
    # queued here; the slack covers SENDME/END/handshake cells.
    max_queued_cells_per_circuit: int = CIRCUIT_WINDOW + 64
    # Link liveness (docs/protocol.md §3): PING a link silent this long; close it once silent for
    # dead_after, so circuits over a peer that vanished without closing its link are torn down.
    keepalive_interval: float = 15.0
    dead_after: float = 45.0
    # Global caps (defect: a relay held whatever it was sent): ~22 KiB per link, ~3.4 KiB per circuit.
    max_links: int = 1000  # a link opened to this node beyond this many links is closed at once
    max_circuits: int = 16384  # CREATEs beyond this many circuits are refused with RESOURCE_LIMIT
    # A peer that does not read loses its link once this much waits for it: link cells (PONG, DESTROY,
    # AUTH…), which must hold a DESTROY for every circuit a link can carry, and all cells together.
    max_queued_link_cells: int = 8192
    max_queued_cells_per_link: int = 32768
    # Handshake fairness (zmesh.admission): per link, CREATEs wait in a bounded queue and are answered
    # at up to handshake_rate per second (bursts of handshake_burst), round-robin across links.
    handshake_rate: float = 100.0
    handshake_burst: int = 32
    max_pending_handshakes_per_link: int = 64
    handshake_queue_delay: float = 1.75  # Tor's MaxOnionQueueDelay: older CREATEs are refused

    def __post_init__(self) -> None:
        for name in ("max_links", "max_circuits", "max_circuits_per_link", "max_queued_cells_per_circuit"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_queued_link_cells <= self.max_circuits_per_link:
            raise ConfigError(f"max_queued_link_cells ({self.max_queued_link_cells}) must exceed max_circuits_per_link "
                              f"({self.max_circuits_per_link}): closing a link may DESTROY every circuit on another")
        if self.max_queued_cells_per_link < self.max_queued_link_cells + self.max_queued_cells_per_circuit:
            raise ConfigError(f"max_queued_cells_per_link ({self.max_queued_cells_per_link}) must hold "
                              f"max_queued_link_cells plus one circuit's max_queued_cells_per_circuit")
        if not self.keepalive_interval > 0:
            raise ConfigError(f"keepalive_interval must be positive, got {self.keepalive_interval}")
        if not self.dead_after > self.keepalive_interval:
            raise ConfigError(f"dead_after ({self.dead_after} s) must be greater than keepalive_interval "
                              f"({self.keepalive_interval} s): a PING needs time to be answered")


class _LinkState:
    __slots__ = ("peer", "initiator", "queue", "queued_cells", "link_cells", "circuits", "next_circ", "closed",
                 "challenge", "last_rx", "ping_at", "ping_nonce", "rtt")

    def __init__(self, peer: PeerId | None, initiator: bool, now: float) -> None:
        self.peer = peer
        self.challenge = b""  # sent to an unauthenticated dialer, until it answers
        self.initiator = initiator
        self.queue: deque[tuple[int, list[bytes]]] = deque()  # (circuit handle, cells) in send order
        self.queued_cells = 0
        self.link_cells = 0  # of queued_cells, those of no circuit (handle 0)
        self.circuits: set[int] = set()
        self.next_circ = 1
        self.closed = False  # over its queue bound: nothing more is queued or read; closed by _reap
        self.last_rx = now  # when the last valid frame arrived (opening counts)
        self.ping_at = -math.inf  # when the last PING was sent; after last_rx: it is unanswered
        self.ping_nonce = b""  # the payload of that PING until its PONG arrives
        self.rtt: float | None = None


_Circuit = OriginCircuit | RelayCircuit
_ORIGIN, _PREV, _NEXT = "origin", "prev", "next"


class _CircuitFailure(Exception):
    """Internal: unwinds handling of one circuit's input, which is then destroyed."""

    def __init__(self, reason: DestroyReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class Node:
    """Protocol state of one mesh node. ``clock`` returns seconds (monotonic)."""

    def __init__(self, identity: Identity, provider: CryptoProvider, clock: Callable[[], float], *,
                 accept_circuits: bool = True, limits: NodeLimits | None = None) -> None:
        self.identity = identity
        self.provider = provider
        self.clock = clock
        self.accept_circuits = accept_circuits
        self.limits = limits or NodeLimits()
        self.metrics: Counter[str] = Counter()
        self._links: dict[int, _LinkState] = {}
        self._peer_links: dict[PeerId, int] = {}
        self._next_link = 1
        self._routes: dict[tuple[int, int], tuple[_Circuit, str]] = {}
        self._circuits: dict[int, _Circuit] = {}
        self._next_handle = 1
        self._waiting: dict[PeerId, list[_Circuit]] = {}
        self._deadlines: dict[int, float] = {}
        # No link needs handle_timer before this. It may be early, never late: a frame only lowers
        # it to its own link's new deadline (O(1)); handle_timer recomputes it over all links.
        self._link_timer = math.inf
        self._queued: Counter[tuple[int, int]] = Counter()
        self._events: list[Event] = []
        limits = self.limits
        self._handshakes: HandshakeQueue[tuple[RelayCircuit, bytes]] = HandshakeQueue(
            rate=limits.handshake_rate, burst=limits.handshake_burst,
            max_pending=limits.max_pending_handshakes_per_link, max_delay=limits.handshake_queue_delay)
        self._closing: list[int] = []  # links over their queue bound, closed at the end of the call

    # ------------------------------------------------------------------ driver interface: links

    async def link_opened(self, peer: PeerId | None, *, initiator: bool) -> int:
        """Register a new link (``peer`` is None for an inbound link whose dialer is unknown: it is
        challenged, and a dialer that relays proves its PeerId, so circuits can be extended to it
        over this very link — how a browser tab, which cannot listen, still relays)."""
        link_id = self._next_link
        self._next_link += 1
        now = self.clock()
        link = self._links[link_id] = _LinkState(peer, initiator, now)
        self._link_timer = min(self._link_timer, now + self.limits.keepalive_interval)
        if not initiator and len(self._links) > self.limits.max_links:
            self.metrics["links_refused"] += 1
            self._events.append(CloseLink(link_id, f"this node holds its maximum of {self.limits.max_links} links"))
            await self.link_closed(link_id)
            return link_id
        if peer is not None:
            await self._link_identified(link_id, peer)
        elif not initiator:
            link.challenge = self.provider.random_bytes(32)
            self._enqueue(link_id, 0, [encode_cell(CellCommand.AUTH_CHALLENGE, 0, link.challenge)])
        return link_id

    async def _link_identified(self, link_id: int, peer: PeerId) -> None:
        self._peer_links.setdefault(peer, link_id)
        for circ in self._waiting.pop(peer, []):
            if circ.handle in self._circuits:
                await self._guarded(circ, self._start_on_link(circ, link_id))

    async def _on_auth(self, link_id: int, cell: Cell) -> None:
        """AUTH_CHALLENGE: a relaying node proves who it is; AUTHENTICATE: check that proof.

        The signature covers the challenge *and the listener's PeerId*, so a man in the middle
        cannot pass a challenge through to a third node. Clients never answer: they stay anonymous.
        """
        link = self._links[link_id]
        if cell.command == CellCommand.AUTHENTICATED:
            if link.initiator:
                self._events.append(LinkAuthenticated(link_id))
            return
        if cell.command == CellCommand.AUTH_CHALLENGE:
            if link.initiator and self.accept_circuits and link.peer is not None and len(cell.payload) == 32:
                signature = await self.provider.ed25519_sign(
                    self.identity.signing_key, LINK_AUTH_DOMAIN + cell.payload + link.peer.key)
                self._enqueue(link_id, 0, [encode_cell(CellCommand.AUTHENTICATE, 0,
                                                       self.identity.peer_id.key + signature)])
            return
        challenge, link.challenge = link.challenge, b""
        payload = cell.payload
        valid = (challenge and len(payload) == KEY_SIZE + 64 and await self.provider.ed25519_verify(
            payload[:KEY_SIZE], payload[KEY_SIZE:], LINK_AUTH_DOMAIN + challenge + self.identity.peer_id.key))
        if not valid:
            self.metrics["link_auth_failures"] += 1
            self._events.append(CloseLink(link_id, "link authentication failed"))
            await self.link_closed(link_id)
            return
        link.peer = PeerId(payload[:KEY_SIZE])
        self.metrics["links_authenticated"] += 1
        self._enqueue(link_id, 0, [encode_cell(CellCommand.AUTHENTICATED, 0)])
        await self._link_identified(link_id, link.peer)

    async def link_failed(self, peer: PeerId) -> None:
        """A ``LinkNeeded`` dial failed: circuits waiting for that peer fail."""
        for circ in self._waiting.pop(peer, []):
            await self._destroy(circ, DestroyReason.CONNECT_FAILED)

    async def link_closed(self, link_id: int) -> None:
        """The link is gone: every circuit on it is destroyed (DESTROY sent the other way), naming
        the link's peer, when known, as the one that failed, so a client builds around it."""
        link = self._links.pop(link_id, None)
        if link is None:
            return
        link.closed = True
        self._drop_queue(link_id, link)
        self._handshakes.forget(link_id)
        if link.peer is not None and self._peer_links.get(link.peer) == link_id:
            del self._peer_links[link.peer]
        for circ_id in list(link.circuits):
            route = self._routes.get((link_id, circ_id))
            if route:
                await self._destroy(route[0], DestroyReason.LINK_CLOSED, failed=link.peer)

    def take_frame(self, link_id: int, max_cells: int = MAX_CELLS_PER_FRAME) -> bytes | None:
        """The next frame to write on ``link_id`` (up to ``max_cells`` cells), or None."""
        link = self._links.get(link_id)
        if link is None or not link.queue:
            return None
        queue, queued = link.queue, self._queued
        out: list[bytes] = []
        while queue and len(out) < max_cells:
            handle, cells = queue[0]
            room = max_cells - len(out)
            if len(cells) > room:
                out.extend(cells[:room])
                queue[0] = (handle, cells[room:])
                taken = room
            else:
                out.extend(cells)
                queue.popleft()
                taken = len(cells)
            if handle:
                key = (handle, link_id)
                queued[key] -= taken
                if not queued[key]:
                    del queued[key]
            else:
                link.link_cells -= taken
        link.queued_cells -= len(out)
        self.metrics["cells_out"] += len(out)
        return b"".join(out)

    def link_rtt(self, link_id: int) -> float | None:
        """The last PING→PONG round trip on the link in seconds (this node's own queue included),
        or None before one was measured or for an unknown link."""
        link = self._links.get(link_id)
        return None if link is None else link.rtt

    def links_with_output(self) -> list[int]:
        return [link_id for link_id, link in self._links.items() if link.queue]

    def buffered_bytes(self) -> int:
        """Bytes of cells queued in this node, waiting for their link."""
        return sum(link.queued_cells for link in self._links.values()) * CELL_SIZE

    def events(self) -> list[Event]:
        """Hand over (and forget) the events produced since the last call."""
        events, self._events = self._events, []
        return events

    # ------------------------------------------------------------------ driver interface: input

    async def receive_frame(self, link_id: int, frame: bytes) -> None:
        """Process one frame from a link. Never raises for anything the peer sent."""
        link = self._links.get(link_id)
        if link is None or link.closed:
            return
        try:
            cells = parse_frame(frame)
        except ProtocolError as exc:
            self.metrics["malformed_frames"] += 1
            self._events.append(CloseLink(link_id, str(exc)))
            await self.link_closed(link_id)
            return
        link.last_rx = now = self.clock()
        self._link_timer = min(self._link_timer, now + self.limits.keepalive_interval)
        self.metrics["cells_in"] += len(cells)
        index = 0
        while index < len(cells) and link_id in self._links and not link.closed:
            cell = cells[index]
            if cell.command != CellCommand.RELAY:
                await self._on_link_cell(link_id, cell)
                index += 1
                continue
            end = index + 1
            while end < len(cells) and cells[end].command == CellCommand.RELAY \
                    and cells[end].circ_id == cell.circ_id:
                end += 1
            await self._on_relay_cells(link_id, cell.circ_id, [c.payload for c in cells[index:end]])
            index = end
        if self._handshakes:
            await self._run_handshakes()
        if self._closing:
            await self._reap()

    def read_pause(self, link_id: int) -> float:
        """Seconds the driver should wait before reading the next frame from ``link_id``: non-zero
        while its handshake queue is full, so a CREATE flood waits in the peer's socket, not here."""
        return self._handshakes.resume_after(link_id, self.clock())

    def next_deadline(self) -> float | None:
        deadline = min(min(self._deadlines.values(), default=math.inf), self._link_timer,
                       self._handshakes.next_deadline())
        return None if deadline == math.inf else deadline

    async def handle_timer(self, now: float) -> None:
        for handle, deadline in list(self._deadlines.items()):
            circ = self._circuits.get(handle)
            if circ is not None and deadline <= now:
                await self._destroy(circ, DestroyReason.TIMEOUT)
        if now >= self._link_timer:
            await self._check_links(now)
        if self._handshakes:
            await self._run_handshakes()
        if self._closing:
            await self._reap()

    # ------------------------------------------------------------------ link liveness

    def _link_deadline(self, link: _LinkState) -> float:
        """When ``link`` next needs the timer: once silent for keepalive_interval it gets a PING;
        with that PING unanswered it is closed once silent for dead_after — but never sooner than
        dead_after − keepalive_interval after the PING, so a timer that ran late (a stalled event
        loop) does not close a link whose peer was never asked."""
        limits = self.limits
        if link.ping_at <= link.last_rx:
            return link.last_rx + limits.keepalive_interval
        return max(link.last_rx + limits.dead_after, link.ping_at + limits.dead_after - limits.keepalive_interval)

    async def _check_links(self, now: float) -> None:
        for link_id, link in list(self._links.items()):
            if now < self._link_deadline(link):
                continue
            if link.ping_at <= link.last_rx:
                link.ping_at, link.ping_nonce = now, self.provider.random_bytes(8)
                self._enqueue(link_id, 0, [encode_cell(CellCommand.PING, 0, link.ping_nonce)])
                continue
            self.metrics["links_dead"] += 1
            self._events.append(CloseLink(link_id, f"the peer stopped answering: nothing received for "
                                                   f"{now - link.last_rx:.1f} s, PING unanswered"))
            await self.link_closed(link_id)
        self._link_timer = min(map(self._link_deadline, self._links.values()), default=math.inf)

    # ------------------------------------------------------------------ application interface

    async def build_circuit(self, path: Sequence[RelayInfo]) -> int:
        """Start building a circuit through ``path``; ``CircuitBuilt``/``CircuitClosed`` follows."""
        path = tuple(path)
        if not MIN_HOPS <= len(path) <= MAX_HOPS:
            raise ConfigError(f"hops must be {MIN_HOPS}..{MAX_HOPS}, got {len(path)}")
        ids = [relay.peer_id for relay in path]
        if len(set(ids)) != len(ids) or self.identity.peer_id in ids:
            raise ConfigError("a path must not contain the same peer twice, nor this node")
        now = self.clock()
        circ = OriginCircuit(self._new_handle(), path, now, now + self.limits.build_timeout)
        self._circuits[circ.handle] = circ
        self._deadlines[circ.handle] = circ.deadline
        self.metrics["circuits_started"] += 1
        await self._guarded(circ, self._when_linked(circ, path[0].peer_id))
        return circ.handle

    def circuit_path(self, circuit: int) -> tuple[PeerId, ...]:
        circ = self._origin(circuit, open_only=False)
        return tuple(relay.peer_id for relay in circ.path)

    def circuits(self) -> list[int]:
        return list(self._circuits)

    async def open_stream(self, circuit: int, host: str, port: int) -> int:
        """Send BEGIN host:port on an open circuit; ``StreamConnected`` or ``StreamEnded`` follows."""
        circ = self._origin(circuit)
        payload = format_target(host, port)
        if len(circ.edge.streams) >= self.limits.max_streams_per_circuit:
            raise InvalidState("too many streams on this circuit; build another")
        stream_id = circ.next_stream_id
        while stream_id in circ.edge.streams:
            stream_id = stream_id % 0xFFFF + 1
        circ.next_stream_id = stream_id % 0xFFFF + 1
        circ.edge.streams[stream_id] = Stream(stream_id, StreamState.CONNECTING)
        await self._send_edge(circ, [encode_relay_body(RelayCommand.BEGIN, stream_id, payload)])
        return stream_id

    async def accept_stream(self, circuit: int, stream_id: int) -> None:
        """At an edge: the target is connected; tell the client (CONNECTED)."""
        circ, stream = self._stream(circuit, stream_id)
        if stream.state != StreamState.CONNECTING:
            raise InvalidState("stream is already open")
        stream.state = StreamState.OPEN
        await self._send_edge(circ, [encode_relay_body(RelayCommand.CONNECTED, stream_id, b"")])

    async def end_stream(self, circuit: int, stream_id: int, reason: EndReason = EndReason.DONE) -> None:
        """Close a stream (END); data already sent is delivered first. Unknown streams are ignored."""
        circ = self._circuits.get(circuit)
        edge = circ.edge if circ is not None else None
        if edge is None or edge.streams.pop(stream_id, None) is None:
            return
        await self._send_edge(circ, [encode_relay_body(RelayCommand.END, stream_id, bytes([reason]))])

    async def send(self, circuit: int, stream_id: int, data: bytes) -> int:
        """Package as much of ``data`` as the windows allow; return how many bytes were taken.

        When less than offered was taken, ``StreamWritable`` announces when to offer the rest.
        """
        circ, stream = self._stream(circuit, stream_id)
        if stream.state != StreamState.OPEN:
            raise InvalidState("stream is not open yet")
        edge = circ.edge
        cells = min(stream.send.value, edge.send.value, -(-len(data) // RELAY_DATA_SIZE))
        if cells <= 0:
            stream.blocked = bool(data)
            return 0
        taken = min(len(data), cells * RELAY_DATA_SIZE)
        bodies = [encode_relay_body(RelayCommand.DATA, stream_id, data[i:i + RELAY_DATA_SIZE])
                  for i in range(0, taken, RELAY_DATA_SIZE)]
        stream.send.take(len(bodies))
        edge.send.take(len(bodies))
        stream.blocked = taken < len(data)
        await self._send_edge(circ, bodies)
        self.metrics["data_cells_sent"] += len(bodies)
        return taken

    async def consume(self, circuit: int, stream_id: int, cells: int = 1) -> None:
        """The application has used ``cells`` StreamData events: acknowledge them (stream SENDME)."""
        circ = self._circuits.get(circuit)
        stream = circ.edge.streams.get(stream_id) if circ is not None and circ.edge else None
        if stream is None:
            return
        due = stream.recv.consume(cells)
        if due:
            await self._send_edge(circ, [encode_relay_body(RelayCommand.SENDME, stream_id, b"")
                                         for _ in range(due)])

    async def destroy_circuit(self, circuit: int, reason: DestroyReason = DestroyReason.REQUESTED) -> None:
        circ = self._circuits.get(circuit)
        if circ is not None:
            await self._destroy(circ, reason)

    # ------------------------------------------------------------------ link cells

    async def _on_link_cell(self, link_id: int, cell: Cell) -> None:
        command = cell.command
        if command == CellCommand.PADDING:
            return
        if command == CellCommand.PONG:
            link = self._links[link_id]
            if link.ping_nonce and cell.payload == link.ping_nonce:
                link.rtt, link.ping_nonce = self.clock() - link.ping_at, b""
            return
        if command == CellCommand.PING:
            self._enqueue(link_id, 0, [encode_cell(CellCommand.PONG, 0, cell.payload)])
            return
        if command in (CellCommand.AUTH_CHALLENGE, CellCommand.AUTHENTICATE, CellCommand.AUTHENTICATED):
            await self._on_auth(link_id, cell)
            return
        route = self._routes.get((link_id, cell.circ_id))
        if command == CellCommand.CREATE:
            await self._on_create(link_id, cell, route)
        elif route is None:
            self.metrics["cells_unknown_circuit"] += 1
        elif command == CellCommand.DESTROY:
            reason = cell.payload[0] if cell.payload else 0
            circ, side = route
            await self._destroy(circ, DestroyReason(reason) if reason in DestroyReason._value2member_map_
                                else DestroyReason.NONE, skip=(link_id, cell.circ_id))
        elif command == CellCommand.CREATED:
            circ, side = route
            await self._guarded(circ, self._on_created(circ, side, cell))

    async def _on_create(self, link_id: int, cell: Cell, route: tuple[_Circuit, str] | None) -> None:
        link = self._links[link_id]
        if route is None and not cell.flags & FLAG_MORE:
            # Every CREATE payload spans two cells (CREATE_SIZE > BODY_SIZE): a lone last piece
            # belongs to a CREATE refused already, so it gets no second DESTROY.
            self.metrics["cells_unknown_circuit"] += 1
            return
        if route is None:
            peer_half = bool(cell.circ_id & _INITIATOR_BIT) != link.initiator
            full = (len(link.circuits) >= self.limits.max_circuits_per_link
                    or len(self._circuits) >= self.limits.max_circuits)
            if not self.accept_circuits or not peer_half or full:
                self.metrics["create_refused"] += 1
                self.metrics["create_refused_full"] += full
                self._enqueue(link_id, 0, [encode_cell(CellCommand.DESTROY, cell.circ_id,
                                                       bytes([DestroyReason.RESOURCE_LIMIT]))])
                return
            circ = RelayCircuit(self._new_handle(), link_id, cell.circ_id, link.peer)
            self._circuits[circ.handle] = circ
            self._deadlines[circ.handle] = self.clock() + self.limits.build_timeout
            self._add_route(link_id, cell.circ_id, circ, _PREV)
        else:
            circ = route[0]
            if not isinstance(circ, RelayCircuit) or circ.hop is not None or route[1] != _PREV:
                await self._destroy(circ, DestroyReason.PROTOCOL)
                return
        await self._guarded(circ, self._on_create_piece(circ, cell))

    async def _on_create_piece(self, circ: RelayCircuit, cell: Cell) -> None:
        payload = circ.create.add(cell.payload, cell.flags)
        if payload is None:
            return
        if not self._handshakes.add(circ.prev_link, (circ, payload), self.clock()):
            self.metrics["handshakes_refused_queue_full"] += 1
            raise _CircuitFailure(DestroyReason.RESOURCE_LIMIT, "too many CREATEs waiting on this link")

    async def _run_handshakes(self) -> None:
        """Answer the CREATEs whose turn has come (zmesh.admission); refuse those that waited too long."""
        now = self.clock()
        for circ, _ in self._handshakes.expired(now):
            if circ.handle in self._circuits:
                self.metrics["handshakes_expired"] += 1
                await self._destroy(circ, DestroyReason.RESOURCE_LIMIT)
        while (ready := self._handshakes.next_ready(now)) is not None:
            circ, payload = ready
            if circ.handle in self._circuits:
                await self._guarded(circ, self._answer_create(circ, payload))

    async def _answer_create(self, circ: RelayCircuit, payload: bytes) -> None:
        if circ.hop is not None:  # a second CREATE sent while the first waited its turn
            raise ProtocolError("CREATE on a circuit that has answered one")
        self.metrics["handshakes"] += 1
        reply, keys = await server_respond(self.provider, self.identity, payload)
        circ.hop = HopCrypto(self.provider, keys)
        self._deadlines.pop(circ.handle, None)
        self._enqueue(circ.prev_link, circ.handle,
                      [encode_cell(CellCommand.CREATED, circ.prev_circ, piece, flags)
                       for piece, flags in fragments(reply, BODY_SIZE)])
        self.metrics["circuits_relayed"] += 1

    async def _on_created(self, circ: _Circuit, side: str, cell: Cell) -> None:
        if side == _ORIGIN and isinstance(circ, OriginCircuit) and not circ.hops and circ.handshake:
            reply = circ.reply.add(cell.payload, cell.flags)
            if reply is not None:
                await self._hop_established(circ, reply)
        elif side == _NEXT and isinstance(circ, RelayCircuit) and circ.extend_payload:
            reply = circ.created.add(cell.payload, cell.flags)
            if reply is None:
                return
            if len(reply) != CREATED_SIZE:
                raise ProtocolError("CREATED payload has the wrong size")
            circ.extend_payload = b""
            self._deadlines.pop(circ.handle, None)
            await self._send_edge(circ, [encode_relay_body(RelayCommand.EXTENDED, 0, piece, flags)
                                         for piece, flags in fragments(reply, RELAY_DATA_SIZE)])
        else:
            raise ProtocolError("unexpected CREATED")

    # ------------------------------------------------------------------ relay cells

    async def _on_relay_cells(self, link_id: int, circ_id: int, bodies: list[bytes]) -> None:
        route = self._routes.get((link_id, circ_id))
        if route is None:
            self.metrics["cells_unknown_circuit"] += len(bodies)
            return
        circ, side = route
        await self._guarded(circ, self._relay_cells(circ, side, bodies))

    async def _relay_cells(self, circ: _Circuit, side: str, bodies: list[bytes]) -> None:
        if isinstance(circ, OriginCircuit):
            if not circ.hops:
                raise ProtocolError("RELAY cell before the circuit's first hop answered")
            peeled = await onion_decrypt(circ.hops, b"".join(bodies))
            if peeled is None:
                raise _CircuitFailure(DestroyReason.TAMPERED, "backward cell recognised by no hop")
            for hop_index, body in peeled:
                await self._origin_message(circ, hop_index, parse_relay_body(body))
                if circ.handle not in self._circuits:
                    return
            return
        hop = circ.hop
        if hop is None:
            raise ProtocolError("RELAY cell before CREATE completed")
        if side == _NEXT:
            data = await hop.backward.apply(b"".join(bodies))
            header = relay_cell_header(circ.prev_circ)
            self._enqueue(circ.prev_link, circ.handle, [header + body for body in split_bodies(data)])
            self.metrics["cells_relayed"] += len(bodies)
            return
        data = await hop.forward.apply(b"".join(bodies))
        onward: list[bytes] = []
        header = relay_cell_header(circ.next_circ)
        for body in split_bodies(data):
            state = recognize(hop.forward_digest, body)
            if state is not None:
                hop.forward_digest = state
                self._flush_onward(circ, onward)
                await self._relay_message(circ, parse_relay_body(body))
                if circ.handle not in self._circuits:
                    return
            elif circ.next_circ:
                onward.append(header + body)
            else:
                raise _CircuitFailure(DestroyReason.TAMPERED, "forward cell recognised by no hop")
        self._flush_onward(circ, onward)

    def _flush_onward(self, circ: RelayCircuit, onward: list[bytes]) -> None:
        if onward:
            self._enqueue(circ.next_link, circ.handle, onward.copy())  # the queue keeps the list
            self.metrics["cells_relayed"] += len(onward)
            onward.clear()

    async def _relay_message(self, circ: RelayCircuit, msg: RelayMessage) -> None:
        command = msg.command
        if command == RelayCommand.DROP:
            return
        if command == RelayCommand.EXTEND:
            await self._on_extend(circ, msg)
        elif command == RelayCommand.BEGIN:
            self._on_begin(circ, msg)
        elif command in (RelayCommand.DATA, RelayCommand.END, RelayCommand.SENDME) and circ.edge:
            await self._edge_message(circ, circ.edge, msg)
        else:
            raise ProtocolError(f"relay command {command.name} is not valid at a relay")

    async def _on_extend(self, circ: RelayCircuit, msg: RelayMessage) -> None:
        if circ.next_circ or circ.extend_target or circ.edge is not None or msg.stream_id:
            raise ProtocolError("EXTEND on a circuit that is already extended or in use")
        payload = circ.extend.add(msg.data, msg.flags)
        if payload is None:
            return
        if len(payload) != KEY_SIZE + CREATE_SIZE:
            raise ProtocolError("EXTEND payload has the wrong size")
        target = PeerId(payload[:KEY_SIZE])
        if target == self.identity.peer_id or target == circ.prev_peer:
            raise ProtocolError("EXTEND to this relay or back to the previous hop")
        circ.extend_target, circ.extend_payload = target, payload[KEY_SIZE:]
        self._deadlines[circ.handle] = self.clock() + self.limits.build_timeout
        await self._when_linked(circ, target)

    def _on_begin(self, circ: RelayCircuit, msg: RelayMessage) -> None:
        if circ.next_circ or circ.extend_target:
            raise ProtocolError("BEGIN must go to the circuit's last hop")
        edge = circ.edge = circ.edge or Edge()
        if not msg.stream_id or msg.stream_id in edge.streams:
            raise ProtocolError("BEGIN with a zero or duplicate stream id")
        if len(edge.streams) >= self.limits.max_streams_per_circuit:
            raise _CircuitFailure(DestroyReason.RESOURCE_LIMIT, "too many streams")
        host, port = parse_target(msg.data)
        edge.streams[msg.stream_id] = Stream(msg.stream_id, StreamState.CONNECTING)
        self._events.append(StreamRequested(circ.handle, msg.stream_id, host, port))

    async def _origin_message(self, circ: OriginCircuit, hop_index: int, msg: RelayMessage) -> None:
        command = msg.command
        last = hop_index == len(circ.hops) - 1
        if command == RelayCommand.DROP:
            return
        if command == RelayCommand.EXTENDED and last and circ.state == BuildState.BUILDING:
            reply = circ.reply.add(msg.data, msg.flags)
            if reply is not None:
                await self._hop_established(circ, reply)
        elif not last or circ.state != BuildState.OPEN:
            raise ProtocolError(f"{command.name} from a hop that may not send it")
        elif command == RelayCommand.CONNECTED:
            stream = circ.edge.streams.get(msg.stream_id)
            if stream is None or stream.state != StreamState.CONNECTING:
                raise ProtocolError("CONNECTED for a stream that is not connecting")
            stream.state = StreamState.OPEN
            self._events.append(StreamConnected(circ.handle, msg.stream_id))
        elif command in (RelayCommand.DATA, RelayCommand.END, RelayCommand.SENDME):
            await self._edge_message(circ, circ.edge, msg)
        else:
            raise ProtocolError(f"relay command {command.name} is not valid at a circuit origin")

    async def _edge_message(self, circ: _Circuit, edge: Edge, msg: RelayMessage) -> None:
        stream = edge.streams.get(msg.stream_id)
        if msg.command == RelayCommand.DATA:
            if not msg.stream_id:
                raise ProtocolError("DATA on stream 0")
            edge.recv.on_data()
            due = edge.recv.consume(1)
            if due:
                await self._send_edge(circ, [encode_relay_body(RelayCommand.SENDME, 0, b"")
                                             for _ in range(due)])
            if stream is None:  # ended by us while the peer's data was in flight
                return
            if stream.state != StreamState.OPEN:
                raise ProtocolError("DATA on a stream that is not open")
            stream.recv.on_data()
            self._events.append(StreamData(circ.handle, msg.stream_id, msg.data))
        elif msg.command == RelayCommand.END:
            if edge.streams.pop(msg.stream_id, None) is not None:
                reason = msg.data[0] if msg.data else EndReason.MISC
                self._events.append(StreamEnded(circ.handle, msg.stream_id,
                                                EndReason(reason) if reason in EndReason._value2member_map_
                                                else EndReason.MISC))
        else:  # SENDME
            if msg.stream_id == 0:
                edge.send.on_sendme()
            elif stream is not None:
                stream.send.on_sendme()
            if edge.send.value > 0:
                for blocked in edge.streams.values():
                    if blocked.blocked and blocked.send.value > 0:
                        blocked.blocked = False
                        self._events.append(StreamWritable(circ.handle, blocked.stream_id))

    # ------------------------------------------------------------------ building

    async def _when_linked(self, circ: _Circuit, peer: PeerId) -> None:
        link_id = self._peer_links.get(peer)
        if link_id is not None:
            await self._start_on_link(circ, link_id)
            return
        waiting = self._waiting.setdefault(peer, [])
        waiting.append(circ)
        if len(waiting) == 1:
            self._events.append(LinkNeeded(peer))

    async def _start_on_link(self, circ: _Circuit, link_id: int) -> None:
        circ_id = self._new_circ_id(link_id)
        if isinstance(circ, OriginCircuit):
            circ.link, circ.circ_id, circ.state = link_id, circ_id, BuildState.BUILDING
            self._add_route(link_id, circ_id, circ, _ORIGIN)
            circ.handshake = await client_start(self.provider, circ.path[0].peer_id, circ.path[0].onion_keys)
            payload = circ.handshake.create_payload()
        else:
            circ.next_link, circ.next_circ = link_id, circ_id
            self._add_route(link_id, circ_id, circ, _NEXT)
            payload = circ.extend_payload
        self._enqueue(link_id, circ.handle, [encode_cell(CellCommand.CREATE, circ_id, piece, flags)
                                             for piece, flags in fragments(payload, BODY_SIZE)])

    async def _hop_established(self, circ: OriginCircuit, reply: bytes) -> None:
        assert circ.handshake is not None
        keys = await client_finish(self.provider, circ.handshake, reply)
        circ.hops.append(HopCrypto(self.provider, keys))
        if len(circ.hops) == len(circ.path):
            circ.state, circ.handshake = BuildState.OPEN, None
            self._deadlines.pop(circ.handle, None)
            self.metrics["circuits_built"] += 1
            self._events.append(CircuitBuilt(circ.handle, tuple(r.peer_id for r in circ.path),
                                             self.clock() - circ.started))
            return
        relay = circ.path[len(circ.hops)]
        circ.handshake = await client_start(self.provider, relay.peer_id, relay.onion_keys)
        payload = relay.peer_id.key + circ.handshake.create_payload()
        await self._send_edge(circ, [encode_relay_body(RelayCommand.EXTEND, 0, piece, flags)
                                     for piece, flags in fragments(payload, RELAY_DATA_SIZE)])

    # ------------------------------------------------------------------ sending and teardown

    async def _send_edge(self, circ: _Circuit, bodies: list[bytearray]) -> None:
        """Send relay bodies from this end of ``circ`` to the other end (or, while building, to the
        origin's last established hop)."""
        if isinstance(circ, OriginCircuit):
            data = await onion_encrypt(circ.hops, len(circ.hops) - 1, bodies)
            link_id, circ_id = circ.link, circ.circ_id
        else:
            assert circ.hop is not None
            for body in bodies:
                seal(circ.hop.backward_digest, body)
            data = await circ.hop.backward.apply(b"".join(bodies))
            link_id, circ_id = circ.prev_link, circ.prev_circ
        header = relay_cell_header(circ_id)
        self._enqueue(link_id, circ.handle, [header + body for body in split_bodies(data)])

    def _enqueue(self, link_id: int, handle: int, cells: list[bytes]) -> None:
        link = self._links.get(link_id)
        if link is None or link.closed:
            return
        link.queue.append((handle, cells))
        link.queued_cells += len(cells)
        key = (handle, link_id)
        if handle:
            self._queued[key] += len(cells)
        else:
            link.link_cells += len(cells)
        limits = self.limits
        if link.link_cells > limits.max_queued_link_cells or link.queued_cells > limits.max_queued_cells_per_link:
            self._shed(link_id, link)
        elif handle and self._queued[key] > limits.max_queued_cells_per_circuit:
            raise _CircuitFailure(DestroyReason.RESOURCE_LIMIT, "circuit queue over its bound")

    def _shed(self, link_id: int, link: _LinkState) -> None:
        """The peer on ``link`` does not read what it makes this node send: drop its queue and close the
        link (at the end of this call, by ``_reap``; the driver closes it on ``CloseLink``)."""
        self._drop_queue(link_id, link)
        link.closed = True
        self.metrics["links_over_queue_bound"] += 1
        self._events.append(CloseLink(link_id, "the peer let this node's queue for it grow past its bound"))
        self._closing.append(link_id)

    def _drop_queue(self, link_id: int, link: _LinkState) -> None:
        """Forget what waits for ``link``, and its share of each circuit's queued count."""
        for handle, cells in link.queue:
            if handle:
                key = (handle, link_id)
                self._queued[key] -= len(cells)
                if not self._queued[key]:
                    del self._queued[key]
        link.queue.clear()
        link.queued_cells = link.link_cells = 0

    async def _reap(self) -> None:
        while self._closing:
            await self.link_closed(self._closing.pop())

    async def _guarded(self, circ: _Circuit, work) -> None:
        """Run ``work`` for ``circ``; any protocol or crypto failure destroys the circuit."""
        try:
            await work
        except _CircuitFailure as exc:
            self.metrics[f"circuit_failures_{exc.reason.name.lower()}"] += 1
            await self._destroy(circ, exc.reason)
        except (ProtocolError, CryptoError, ValueError):
            self.metrics["circuit_failures_protocol"] += 1
            await self._destroy(circ, DestroyReason.PROTOCOL)

    async def _destroy(self, circ: _Circuit, reason: DestroyReason,
                       skip: tuple[int, int] | None = None, failed: PeerId | None = None) -> None:
        """Forget ``circ`` and send DESTROY on each of its links except ``skip``. ``failed`` is the
        peer to blame; by default, while building, the hop that did not answer."""
        if self._circuits.pop(circ.handle, None) is None:
            return
        self._deadlines.pop(circ.handle, None)
        ends = ([(circ.link, circ.circ_id)] if isinstance(circ, OriginCircuit)
                else [(circ.prev_link, circ.prev_circ), (circ.next_link, circ.next_circ)])
        for link_id, circ_id in ends:
            if not circ_id:
                continue
            self._routes.pop((link_id, circ_id), None)
            link = self._links.get(link_id)
            if link is not None:
                link.circuits.discard(circ_id)
                if (link_id, circ_id) != skip:
                    self._enqueue(link_id, 0, [encode_cell(CellCommand.DESTROY, circ_id, bytes([reason]))])
        for waiting in self._waiting.values():
            if circ in waiting:
                waiting.remove(circ)
        if circ.edge is not None:
            for stream_id in list(circ.edge.streams):
                self._events.append(StreamEnded(circ.handle, stream_id, EndReason.DESTROYED))
            circ.edge.streams.clear()
        origin = isinstance(circ, OriginCircuit)
        if failed is None and origin and circ.state != BuildState.OPEN and len(circ.hops) < len(circ.path):
            failed = circ.path[len(circ.hops)].peer_id
        if origin or circ.edge is not None:
            self._events.append(CircuitClosed(circ.handle, reason, origin, failed))
        self.metrics["circuits_destroyed"] += 1

    # ------------------------------------------------------------------ helpers

    def _new_handle(self) -> int:
        handle = self._next_handle
        self._next_handle += 1
        return handle

    def _new_circ_id(self, link_id: int) -> int:
        link = self._links[link_id]
        base = _INITIATOR_BIT if link.initiator else 0
        for _ in range(_INITIATOR_BIT):
            candidate = base | link.next_circ
            link.next_circ = link.next_circ % (_INITIATOR_BIT - 1) + 1
            if candidate not in link.circuits:
                return candidate
        raise _CircuitFailure(DestroyReason.RESOURCE_LIMIT, "no free circuit id on the link")

    def _add_route(self, link_id: int, circ_id: int, circ: _Circuit, side: str) -> None:
        self._routes[(link_id, circ_id)] = (circ, side)
        self._links[link_id].circuits.add(circ_id)

    def _origin(self, circuit: int, open_only: bool = True) -> OriginCircuit:
        circ = self._circuits.get(circuit)
        if not isinstance(circ, OriginCircuit):
            raise InvalidState(f"no circuit {circuit} originates here (it may have been closed)")
        if open_only and circ.state != BuildState.OPEN:
            raise InvalidState("circuit is not built yet")
        return circ

    def _stream(self, circuit: int, stream_id: int) -> tuple[_Circuit, Stream]:
        circ = self._circuits.get(circuit)
        stream = circ.edge.streams.get(stream_id) if circ is not None and circ.edge else None
        if stream is None:
            raise InvalidState(f"no stream {stream_id} on circuit {circuit} (it may have ended)")
        return circ, stream
