"""Per-circuit state held by a node: origin circuits (ours) and relay circuits (through us).

Each circuit names its ``role`` and its ``state`` (enums), which is all ``zmesh.acceptance`` needs
to say what it may receive, and knows its own ends (``ends``) and how to wrap what it sends
towards its other end (``wrap``). The transitions live with the role that makes them: the client in
``zmesh.origin``, relays in ``zmesh.relaying``, streams at either end in ``zmesh.edge``. An ``Edge``
is what either end of a circuit keeps for streams and circuit-level flow control: the client at
the origin, the exit or destination at the last hop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from .cells import Reassembler
from .congestion import VegasFlow
from .flow import CircuitWindow, StreamWindow
from .handshake import ClientHandshake
from .identity import OnionKeys, PeerId
from .relaycrypto import HopCrypto, edge_seal, onion_encrypt
from .streamflow import XonXoff

MIN_HOPS, MAX_HOPS = 2, 8  # how long a circuit may be, for whoever builds or chooses one
MAX_HANDSHAKE_PAYLOAD = 4096


class RelayInfo(Protocol):
    """What a path needs of a relay; ``descriptor.Descriptor`` satisfies it."""

    peer_id: PeerId
    onion_keys: OnionKeys


class Role(Enum):
    ORIGIN = "origin"  # this node built the circuit
    RELAY = "relay"  # a hop of someone else's circuit (a middle, or the last hop: exit, destination)


class Side(Enum):
    """Which end of a circuit a (link, circuit id) route reaches."""

    ORIGIN = "origin"  # an origin circuit's only link, towards its first hop
    PREV = "prev"  # a relay circuit's link towards the origin
    NEXT = "next"  # a relay circuit's link towards the next hop, once extended


class StreamState(Enum):
    CONNECTING = "connecting"  # BEGIN sent (origin) or received and not yet accepted (edge)
    OPEN = "open"


@dataclass(slots=True)
class Stream:
    stream_id: int
    state: StreamState
    flow: StreamWindow | XonXoff = field(default_factory=StreamWindow)
    blocked: bool = False


@dataclass(slots=True)
class Edge:
    """``flow`` is fixed windows (``flow.CircuitWindow``) unless the far end negotiated congestion
    control (``congestion.VegasFlow``, docs/protocol.md §10); its streams follow the same mode."""

    streams: dict[int, Stream] = field(default_factory=dict)
    flow: CircuitWindow | VegasFlow = field(default_factory=CircuitWindow)
    xoff_cells: int = 0  # with VegasFlow: the XOFF threshold each stream gets (NodeLimits.xoff_cells)

    def stream_flow(self) -> StreamWindow | XonXoff:
        """A new stream's flow control, in the circuit's mode."""
        if isinstance(self.flow, VegasFlow):
            return XonXoff(self.xoff_cells, self.flow.cap)
        return StreamWindow()


class BuildState(Enum):
    """An origin circuit's state."""

    WAITING_LINK = "waiting-link"  # no link to the first hop yet
    BUILDING = "building"  # CREATE or an EXTEND sent, waiting for CREATED / EXTENDED
    OPEN = "open"  # every hop answered: streams may be opened
    # Onion services (zmesh.onion.endpoints): what a built circuit became.
    INTRO = "intro"  # service: ESTABLISH_INTRO sent; INTRO_ESTABLISHED, then INTRODUCE2s arrive
    INTRODUCING = "introducing"  # client: INTRODUCE1 sent, INTRODUCE_ACK awaited
    REND_WAITING = "rendezvous-waiting"  # client: ESTABLISH_RENDEZVOUS sent, RENDEZVOUS2 awaited
    SERVICE_JOINED = "service-joined"  # service: RENDEZVOUS1 sent, virtual hop added: BEGINs arrive


class RelayState(Enum):
    """A relay circuit's state, from the first CREATE piece to forwarding."""

    AWAITING_CREATE = "awaiting-create"  # CREATE pieces arriving
    HANDSHAKE_QUEUED = "handshake-queued"  # the whole CREATE waits its turn (zmesh.admission)
    OPEN = "open"  # CREATED sent: this is the circuit's last hop, and may be extended or used
    EDGE = "edge"  # the last hop with streams: the circuit's exit or destination
    EXTENDING = "extending"  # EXTEND received: linking to the next hop and waiting for its CREATED
    FORWARDING = "forwarding"  # EXTENDED sent: cells pass through both ways
    # Onion services (zmesh.points): the last hop as an introduction or rendezvous point.
    INTRO_POINT = "intro-point"  # ESTABLISH_INTRO accepted: INTRODUCE2s go down this circuit
    INTRODUCING = "introducing"  # INTRODUCE1 pieces arriving
    INTRODUCED = "introduced"  # INTRODUCE1 handled: one per circuit
    REND_POINT = "rendezvous-point"  # ESTABLISH_RENDEZVOUS accepted: waiting for the service's RENDEZVOUS1
    JOINED = "joined"  # spliced to the other side's circuit: cells pass through, unread


class Purpose(Enum):
    """What an origin circuit is for, as the control port lists it (docs/control.md)."""

    GENERAL = "general"  # exits and destinations
    INTRO = "intro"  # a service's circuit to one of its introduction points
    INTRODUCING = "introducing"  # a client's circuit carrying an INTRODUCE1
    RENDEZVOUS = "rendezvous"  # a client's circuit to its rendezvous point, waiting or joined
    SERVICE_RENDEZVOUS = "service-rendezvous"  # a service's circuit to a client's rendezvous point


@dataclass(slots=True, eq=False)
class OriginCircuit:
    handle: int
    path: tuple[RelayInfo, ...]
    started: float
    deadline: float | None
    link: int = -1
    circ_id: int = 0
    state: BuildState = BuildState.WAITING_LINK
    hops: list[HopCrypto] = field(default_factory=list)
    handshake: ClientHandshake | None = None
    reply: Reassembler = field(default_factory=lambda: Reassembler(MAX_HANDSHAKE_PAYLOAD))
    edge: Edge = field(default_factory=Edge)
    next_stream_id: int = 1
    purpose: Purpose = Purpose.GENERAL
    role = Role.ORIGIN

    def ends(self) -> list[tuple[int, int]]:
        return [(self.link, self.circ_id)]

    async def wrap(self, bodies: list[bytearray]) -> tuple[int, int, bytes]:
        """Seal and onion-encrypt bodies for the last established hop: (link, circuit id, data)."""
        return self.link, self.circ_id, await onion_encrypt(self.hops, len(self.hops) - 1, bodies)


@dataclass(slots=True, eq=False)
class RelayCircuit:
    handle: int
    prev_link: int
    prev_circ: int
    prev_peer: PeerId | None
    hop: HopCrypto | None = None
    create: Reassembler = field(default_factory=lambda: Reassembler(MAX_HANDSHAKE_PAYLOAD))
    # the one fragmented request a last hop takes: an EXTEND, or (at an intro point) an INTRODUCE1
    extend: Reassembler = field(default_factory=lambda: Reassembler(MAX_HANDSHAKE_PAYLOAD))
    created: Reassembler = field(default_factory=lambda: Reassembler(MAX_HANDSHAKE_PAYLOAD))
    state: RelayState = RelayState.AWAITING_CREATE
    extend_payload: bytes = b""  # the CREATE to send the next hop, while EXTENDING
    next_link: int = -1
    next_circ: int = 0
    edge: Edge | None = None
    point_key: bytes = b""  # at an intro point its auth key, at a rendezvous point its cookie
    joined: int = 0  # at a rendezvous point, once joined: the other side's circuit
    role = Role.RELAY

    def ends(self) -> list[tuple[int, int]]:
        return [(self.prev_link, self.prev_circ), (self.next_link, self.next_circ)]

    async def wrap(self, bodies: list[bytearray]) -> tuple[int, int, bytes]:
        """Seal bodies this last hop sends the origin: (link, circuit id, data)."""
        assert self.hop is not None
        return self.prev_link, self.prev_circ, await edge_seal(self.hop, bodies)
