"""Links: framed message pipes between two peers.

A ``Link`` moves whole frames (``bytes``). Real links are WebSocket, WebRTC DataChannels (native
aiortc or the browser's) — the adapters live outside the pure core; the in-memory pair for tests is
``zmesh.testing.memlink``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


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
