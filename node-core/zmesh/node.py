"""The node state machine: links in, cells through, events out (sans-IO; docs/protocol.md §6).

One ``Node`` is every role at once: circuit origin (client), relay (middle hop) and edge (exit or
destination at a circuit's last hop). It never touches sockets, tasks or timers. A driver
(``zmesh.aio.driver``) feeds it frames with ``receive_frame``, pulls frames to write with
``take_frame``, drains ``events()``, calls ``handle_timer`` at ``next_deadline()`` and waits
``read_pause(link)`` before reading a link's next frame (a CREATE flood waits in the peer's socket).
Its methods are coroutines only because the crypto provider is (WebCrypto); the driver must call
them one at a time.

Peer input never raises out of ``receive_frame``: a malformed frame closes the link, a bad cell on a
circuit destroys that circuit (DESTROY both ways), and the metrics count what happened. A mistake of
our own (``InvalidState`` from an encoder, or any other exception) does raise: it is not the peer's
fault and must not pass for one.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

from .acceptance import CELL_TABLE, INNER_HOP, RELAY_TABLE, refuse
from .admission import HandshakeQueue
from .cells import Cell, CellCommand, DestroyReason, EndReason, RelayCommand, RelayMessage, encode_cell, parse_frame
from .circuit import BuildState, OriginCircuit, RelayCircuit, Role, Side
from .crypto.provider import CryptoProvider
from .edge import EdgeRole
from .errors import CryptoError, ProtocolError
from .events import CircuitClosed, CloseLink, Event, LinkNeeded, StreamEnded
from .histogram import BUILD_SECONDS_BUCKETS, Histogram
from .identity import Identity, PeerId
from .limits import NodeLimits
from .link import LinkRole
from .links import LINK_AUTH_DOMAIN, CircuitFailure, LinkState, LinkTable
from .negotiation import NegotiationRole, PathNegotiation
from .onion.endpoints import OnionEndpointRole
from .onionkeys import OnionKeyRing, OnionKeySet
from .origin import OriginRole
from .padnego import PaddingRole
from .points import PointRole
from .relaying import RelayRole
from .setuppad import SetupPaddingRole

__all__ = ["LINK_AUTH_DOMAIN", "Node", "NodeLimits"]

_Circuit = OriginCircuit | RelayCircuit
_NONE: dict = {}


class Node(LinkTable, OriginRole, RelayRole, EdgeRole, NegotiationRole, PointRole, OnionEndpointRole, PaddingRole,
           SetupPaddingRole):
    """Protocol state of one mesh node. ``clock`` returns seconds (monotonic).

    The facade: input, output, timers, routing to the circuit a cell belongs to, and teardown. The
    roles live in their own modules (``zmesh.links``, ``zmesh.origin``, ``zmesh.relaying``,
    ``zmesh.edge``, ``zmesh.negotiation``, ``zmesh.points``, ``zmesh.onion.endpoints``) and share this
    object's state; ``zmesh.acceptance`` says which handler, if any, takes each cell and message.
    """

    def __init__(self, identity: Identity, provider: CryptoProvider, clock: Callable[[], float], *,
                 accept_circuits: bool = True, limits: NodeLimits | None = None,
                 onion_ring: OnionKeyRing | None = None) -> None:
        self.identity = identity
        # The onion keys CREATEs are answered with. Its owner (the relay, the tab) rotates it; by
        # default the identity's own set, which no one rotates.
        self.onion_ring = onion_ring or OnionKeyRing(OnionKeySet.of(identity), since=clock(), clock=clock)
        self.provider = provider
        self.clock = clock
        self.accept_circuits = accept_circuits
        self.limits = limits or NodeLimits()
        self.metrics: Counter[str] = Counter()  # plain counts, read by an exporter (zmesh_relay.metrics)
        self.build_seconds = Histogram(BUILD_SECONDS_BUCKETS)  # how long this node's own circuits took to build
        self._links: dict[int, LinkState] = {}
        self._peer_links: dict[tuple[LinkRole, PeerId], int] = {}  # the link each role uses to each peer
        self.network_size: int | None = None  # nodes in the directory this node reads (peer limits)
        self._next_link = 1
        self._routes: dict[tuple[int, int], tuple[_Circuit, Side]] = {}
        self._circuits: dict[int, _Circuit] = {}
        self._next_handle = 1
        self._waiting: dict[tuple[LinkRole, PeerId], list[_Circuit]] = {}
        self._deadlines: dict[int, float] = {}
        # No link needs handle_timer before this. It may be early, never late: a frame only lowers
        # it to its own link's new deadline (O(1)); handle_timer recomputes it over all links.
        self._link_timer = math.inf
        self._queued: Counter[tuple[int, int]] = Counter()
        self._setup_padders = {}  # circuit handle -> its circuit-setup machine (zmesh.setuppad)
        self._cc_windows: dict[int, int] = {}  # circuit handle -> congestion window negotiated (zmesh.negotiation)
        self._cc_paths: dict[int, PathNegotiation] = {}  # origin circuits still negotiating
        self._events: list[Event] = []
        limits = self.limits
        self._handshakes: HandshakeQueue[tuple[RelayCircuit, bytes]] = HandshakeQueue(
            rate=limits.handshake_rate, burst=limits.handshake_burst,
            max_pending=limits.max_pending_handshakes_per_link, max_delay=limits.handshake_queue_delay)
        self._init_points()
        self._closing: list[int] = []  # links over their queue bound, closed at the end of the call
        self._cell_handlers = {key: getattr(self, name) for key, name in CELL_TABLE.items()}
        # by state, then command: a state names its role (BuildState or RelayState), and two small
        # lookups cost a third of one on a three-enum key, once per relay message
        self._relay_handlers: dict[object, dict[object, Callable]] = {}
        for (_role, state, command), name in RELAY_TABLE.items():
            self._relay_handlers.setdefault(state, {})[command] = getattr(self, name)

    def events(self) -> list[Event]:
        """Hand over (and forget) the events produced since the last call."""
        events, self._events = self._events, []
        return events

    def circuits(self) -> list[int]:
        return list(self._circuits)

    def circuit_counts(self) -> dict[str, int]:
        """Open circuits by role: ``origin`` (built by this node) and ``relay`` (through or ending here)."""
        counts = dict.fromkeys((role.value for role in Role), 0)
        for circ in self._circuits.values():
            counts[circ.role.value] += 1
        return counts

    def circuit_flow(self, circuit: int) -> tuple[float | None, int] | None:
        """``(smoothed RTT in s or None, DATA cells its window allows now)`` of a circuit this node
        is an end of (what a multipath scheduler picks legs by); None for any other circuit."""
        circ = self._circuits.get(circuit)
        if circ is None or circ.edge is None:
            return None
        flow = circ.edge.flow
        return getattr(flow, "ewma_rtt", 0.0) or None, flow.room()

    async def destroy_circuit(self, circuit: int, reason: DestroyReason = DestroyReason.REQUESTED) -> None:
        circ = self._circuits.get(circuit)
        if circ is not None:
            await self._destroy(circ, reason)

    async def link_failed(self, peer: PeerId, role: LinkRole) -> None:
        """A ``LinkNeeded`` dial failed: circuits waiting for that link fail."""
        for circ in self._waiting.pop((role, peer), []):
            await self._destroy(circ, DestroyReason.CONNECT_FAILED)

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
            self.metrics["bytes_in"] += len(frame)
            self._events.append(CloseLink(link_id, str(exc)))
            await self.link_closed(link_id)
            return
        link.last_rx = now = self.clock()
        self._link_timer = min(self._link_timer, now + self.limits.keepalive_interval)
        self.metrics["cells_in"] += len(cells)
        self.metrics["bytes_in"] += len(frame)
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
            await self._on_circuit_cell(link_id, cell, [c.payload for c in cells[index:end]])
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
                       self._handshakes.next_deadline(), self._pad_timer, self._setup_timer)
        return None if deadline == math.inf else deadline

    async def handle_timer(self, now: float) -> None:
        for handle, deadline in list(self._deadlines.items()):
            circ = self._circuits.get(handle)
            if circ is not None and deadline <= now:
                await self._destroy(circ, DestroyReason.TIMEOUT)
        if now >= self._link_timer:
            await self._check_links(now)
        if now >= self._pad_timer:
            self._run_padders(now)
        if now >= self._setup_timer:
            await self._run_setup_padders(now)
        if self._handshakes:
            await self._run_handshakes()
        if self._closing:
            await self._reap()

    # ------------------------------------------------------------------ routing

    async def _on_link_cell(self, link_id: int, cell: Cell) -> None:
        command = cell.command
        if command == CellCommand.PADDING:
            self.metrics["padding_cells_in"] += 1
            return
        if command == CellCommand.PONG:
            self._on_pong(link_id, cell)
        elif command == CellCommand.PING:
            self._on_ping(link_id, cell)
        elif command in (CellCommand.AUTH_CHALLENGE, CellCommand.AUTHENTICATE, CellCommand.AUTHENTICATED):
            await self._on_auth(link_id, cell)
        elif command == CellCommand.DESTROY:
            route = self._routes.get((link_id, cell.circ_id))
            if route is None:
                self.metrics["cells_unknown_circuit"] += 1
                return
            reason = cell.payload[0] if cell.payload else 0
            await self._destroy(route[0], DestroyReason(reason) if reason in DestroyReason._value2member_map_
                                else DestroyReason.NONE, skip=(link_id, cell.circ_id))
        elif command == CellCommand.CREATE and (link_id, cell.circ_id) not in self._routes:
            await self._on_create(link_id, cell)
        else:
            await self._on_circuit_cell(link_id, cell, cell)

    async def _on_circuit_cell(self, link_id: int, cell: Cell, arg: Cell | list[bytes]) -> None:
        """A CREATE, CREATED or a run of RELAY cells on a known circuit: to the handler the acceptance
        table names for the circuit's role and state and the side it came from."""
        route = self._routes.get((link_id, cell.circ_id))
        if route is None:
            self.metrics["cells_unknown_circuit"] += len(arg) if isinstance(arg, list) else 1
            return
        circ, side = route
        handler = self._cell_handlers.get((circ.role, circ.state, side, cell.command))
        await self._guarded(circ, handler(circ, arg) if handler else self._refuse_cell(circ, side, cell.command))

    @staticmethod
    async def _refuse_cell(circ: _Circuit, side: Side, command: CellCommand) -> None:
        """A cell no table entry takes: refused like any peer fault (inside ``_guarded``)."""
        raise refuse(circ.role, circ.state, command, f" from {side.value}")

    async def _dispatch(self, circ: _Circuit, msg: RelayMessage, inner: bool = False) -> None:
        """A recognised relay message from the circuit's far end (``inner``: from an origin's hop
        before the last), to its handler; an unknown command is counted and dropped."""
        handler = None if inner and msg.command not in INNER_HOP else \
            self._relay_handlers.get(circ.state, _NONE).get(msg.command)
        if handler is not None:
            await handler(circ, msg)
        elif isinstance(msg.command, RelayCommand):  # known, but not here: a peer fault
            raise refuse(circ.role, circ.state, msg.command, " from a hop before the last" if inner else "")
        else:  # a newer peer's command (cells.parse_relay_body): forward compatible
            self.metrics["relay_unknown_commands"] += 1

    async def _when_linked(self, circ: _Circuit, peer: PeerId) -> None:
        """Start ``circ`` on a link to ``peer`` of the role it needs, asking for one if there is none:
        a circuit this node builds for itself goes only on a client link, on which this node proved
        nothing; one it relays goes only on a relay link (docs/protocol.md §3)."""
        role = LinkRole.CLIENT if circ.role is Role.ORIGIN else LinkRole.RELAY
        key = (role, peer)
        link_id = self._peer_links.get(key)
        if link_id is not None:
            await self._start_on_link(circ, link_id)
            return
        waiting = self._waiting.setdefault(key, [])
        waiting.append(circ)
        if len(waiting) == 1:
            self._events.append(LinkNeeded(peer, role))

    async def _link_identified(self, link_id: int, peer: PeerId) -> None:
        key = (self._links[link_id].role, peer)
        self._peer_links.setdefault(key, link_id)
        for circ in self._waiting.pop(key, []):
            if circ.handle in self._circuits:
                await self._guarded(circ, self._start_on_link(circ, link_id))

    async def _start_on_link(self, circ: _Circuit, link_id: int) -> None:
        circ_id = self._new_circ_id(link_id)
        start = self._start_origin if circ.role is Role.ORIGIN else self._start_extend
        await start(circ, link_id, circ_id)

    # ------------------------------------------------------------------ teardown

    async def _guarded(self, circ: _Circuit, work) -> None:
        """Run ``work`` for ``circ``; a peer's fault (a protocol or crypto failure) destroys the circuit.

        Nothing else is caught: our own mistakes (``InvalidState``, or any other exception) are not
        the peer's fault, and must not pass for a protocol failure."""
        try:
            await work
        except CircuitFailure as exc:
            self.metrics[f"circuit_failures_{exc.reason.name.lower()}"] += 1
            await self._destroy(circ, exc.reason)
        except (ProtocolError, CryptoError):
            self.metrics["circuit_failures_protocol"] += 1
            await self._destroy(circ, DestroyReason.PROTOCOL)

    async def _destroy(self, circ: _Circuit, reason: DestroyReason,
                       skip: tuple[int, int] | None = None, failed: PeerId | None = None) -> None:
        """Forget ``circ`` and send DESTROY on each of its links except ``skip``. ``failed`` is the
        peer to blame; by default, while building, the hop that did not answer."""
        if self._circuits.pop(circ.handle, None) is None:
            return
        self._deadlines.pop(circ.handle, None)
        self._cc_windows.pop(circ.handle, None)
        self._cc_paths.pop(circ.handle, None)
        for link_id, circ_id in circ.ends():
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
        origin = circ.role is Role.ORIGIN
        building = origin and circ.state in (BuildState.WAITING_LINK, BuildState.BUILDING)
        if failed is None and building and len(circ.hops) < len(circ.path):
            failed = circ.path[len(circ.hops)].peer_id
        if origin or circ.edge is not None:
            self._events.append(CircuitClosed(circ.handle, reason, origin, failed))
        self.metrics["circuits_destroyed"] += 1
        self.metrics[f"circuits_closed_{reason.name.lower()}"] += 1
        if building:
            self.metrics[f"circuit_build_failures_{reason.name.lower()}"] += 1
        partner = self._circuits.get(self._forget_point(circ)) if not origin else None
        if partner is not None:  # the other side of a joined rendezvous
            await self._destroy(partner, DestroyReason.REND_CLOSED)

    def _new_handle(self) -> int:
        handle = self._next_handle
        self._next_handle += 1
        return handle
