"""Links: framed message pipes between two peers.

A ``Link`` moves whole frames (``bytes``). Real links are WebSocket, WebRTC DataChannels (native
aiortc or the browser's) — the adapters live outside the pure core; the in-memory pair for tests is
``zmesh.testing.memlink``.
"""

from __future__ import annotations

from enum import Enum
from typing import Protocol, runtime_checkable


class LinkRole(Enum):
    """Which of a node's two roles a link serves. One link never serves both, so the peer on a link
    that carries this node's own circuits never learns who built them (docs/protocol.md §3).

    ``CLIENT``: a link this node opened and proved nothing on; it carries only circuits this node
    builds for itself. ``RELAY``: a link a peer opened to this node, or one this node opened and
    authenticated on (a tab's link to its home relay); it carries circuits extended through or to
    this node, never this node's own.
    """

    CLIENT = "client"
    RELAY = "relay"


@runtime_checkable
class Link(Protocol):
    """A framed, bidirectional pipe. ``ordered``/``reliable`` describe delivery guarantees;
    ``transport`` names what carries it (``webrtc``, ``websocket``, ``memory``) for stats."""

    transport: str
    ordered: bool
    reliable: bool
    max_frame_size: int

    async def send(self, frame: bytes) -> None:
        """Queue one frame; waits while the link is congested. Raises ``LinkClosed``."""

    async def recv(self) -> bytes:
        """Return the next frame; raises ``LinkClosed`` once the link is closed."""

    async def close(self) -> None:
        """Close both directions; pending ``recv`` calls raise ``LinkClosed``."""
