"""Events the node state machine hands to its driver (frozen, like h11's events).

Circuits are named by a node-local integer handle; streams by (circuit, stream_id).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from .cells import DestroyReason, EndReason
from .identity import PeerId
from .link import LinkRole


@dataclass(frozen=True, slots=True)
class LinkNeeded:
    """Open a link to ``peer`` for ``role`` and report it with ``Node.link_opened(peer,
    initiator=True, role=role)`` (or ``link_failed(peer, role)``)."""

    peer: PeerId
    role: LinkRole


@dataclass(frozen=True, slots=True)
class LinkAuthenticated:
    """The listener on ``link`` accepted this node's proof of identity."""

    link: int


@dataclass(frozen=True, slots=True)
class CloseLink:
    """The peer on this link broke the protocol or stopped answering PINGs; close the link."""

    link: int
    reason: str


@dataclass(frozen=True, slots=True)
class CircuitBuilt:
    circuit: int
    path: tuple[PeerId, ...]
    build_seconds: float


@dataclass(frozen=True, slots=True)
class CircuitClosed:
    circuit: int
    reason: DestroyReason
    origin: bool
    failed_peer: PeerId | None = None  # while building: the hop that did not answer; else a lost link's peer


@dataclass(frozen=True, slots=True)
class StreamRequested:
    """A BEGIN reached this node as the circuit's last hop: accept or end it."""

    circuit: int
    stream_id: int
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class StreamConnected:
    circuit: int
    stream_id: int


class StreamData(NamedTuple):
    """Data for the application; report it with ``Node.consume`` once it has been used.

    A NamedTuple, not a dataclass like its siblings: one is made per DATA cell."""

    circuit: int
    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamEnded:
    circuit: int
    stream_id: int
    reason: EndReason


@dataclass(frozen=True, slots=True)
class StreamWritable:
    """The stream's send window reopened after ``Node.send`` had accepted less than offered."""

    circuit: int
    stream_id: int


@dataclass(frozen=True, slots=True)
class IntroEstablished:
    """A service's intro point accepted its ESTABLISH_INTRO (zmesh.onion.endpoints)."""

    circuit: int


@dataclass(frozen=True, slots=True)
class IntroduceReceived:
    """An INTRODUCE2 reached a service over one of its intro circuits: its encrypted part is for
    ``zmesh.onion.introduce.open_introduction``."""

    circuit: int
    auth_key: bytes
    encrypted: bytes


@dataclass(frozen=True, slots=True)
class IntroduceAcked:
    circuit: int
    status: int  # zmesh.onion.wire.IntroduceStatus


@dataclass(frozen=True, slots=True)
class RendezvousEstablished:
    circuit: int


@dataclass(frozen=True, slots=True)
class RendezvousJoined:
    """A client's rendezvous circuit now ends at the service (its virtual hop): open streams on it."""

    circuit: int


OnionEvent = IntroEstablished | IntroduceReceived | IntroduceAcked | RendezvousEstablished | RendezvousJoined

Event = (LinkNeeded | LinkAuthenticated | CloseLink | CircuitBuilt | CircuitClosed | StreamRequested | StreamConnected
         | StreamData | StreamEnded | StreamWritable | OnionEvent)
