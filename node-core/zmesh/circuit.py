"""Per-circuit state held by a node: origin circuits (ours) and relay circuits (through us).

Plain data: all transitions live in ``node.Node``. An ``Edge`` is what either end of a circuit keeps
for streams and circuit-level flow control: the client at the origin, the exit or destination at
the last hop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from .cells import Reassembler
from .flow import (
    CIRCUIT_INCREMENT,
    CIRCUIT_WINDOW,
    STREAM_INCREMENT,
    STREAM_WINDOW,
    ReceiveWindow,
    SendWindow,
)
from .handshake import ClientHandshake
from .identity import OnionKeys, PeerId
from .relaycrypto import HopCrypto

MIN_HOPS, MAX_HOPS = 2, 8  # how long a circuit may be, for whoever builds or chooses one
MAX_HANDSHAKE_PAYLOAD = 4096


class RelayInfo(Protocol):
    """What a path needs of a relay; ``descriptor.Descriptor`` satisfies it."""

    peer_id: PeerId
    onion_keys: OnionKeys


class StreamState(Enum):
    CONNECTING = "connecting"  # BEGIN sent (origin) or received and not yet accepted (edge)
    OPEN = "open"


@dataclass(slots=True)
class Stream:
    stream_id: int
    state: StreamState
    send: SendWindow = field(default_factory=lambda: SendWindow(STREAM_WINDOW, STREAM_INCREMENT))
    recv: ReceiveWindow = field(default_factory=lambda: ReceiveWindow(STREAM_WINDOW, STREAM_INCREMENT))
    blocked: bool = False


@dataclass(slots=True)
class Edge:
    streams: dict[int, Stream] = field(default_factory=dict)
    send: SendWindow = field(default_factory=lambda: SendWindow(CIRCUIT_WINDOW, CIRCUIT_INCREMENT))
    recv: ReceiveWindow = field(default_factory=lambda: ReceiveWindow(CIRCUIT_WINDOW, CIRCUIT_INCREMENT))


class BuildState(Enum):
    WAITING_LINK = "waiting-link"
    BUILDING = "building"
    OPEN = "open"


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


@dataclass(slots=True, eq=False)
class RelayCircuit:
    handle: int
    prev_link: int
    prev_circ: int
    prev_peer: PeerId | None
    hop: HopCrypto | None = None
    create: Reassembler = field(default_factory=lambda: Reassembler(MAX_HANDSHAKE_PAYLOAD))
    extend: Reassembler = field(default_factory=lambda: Reassembler(MAX_HANDSHAKE_PAYLOAD))
    created: Reassembler = field(default_factory=lambda: Reassembler(MAX_HANDSHAKE_PAYLOAD))
    extend_target: PeerId | None = None
    extend_payload: bytes = b""
    deadline: float | None = None
    next_link: int = -1
    next_circ: int = 0
    edge: Edge | None = None
