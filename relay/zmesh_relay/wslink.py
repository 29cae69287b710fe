"""WebSocket links (aiohttp): one binary WebSocket message per zmesh frame.

Relays listen on ``/v1/link``; anyone may dial. The link itself does not authenticate the dialer —
the circuit handshake authenticates every relay a client talks to, so an inbound link's peer is
unknown (``None``) to the node, exactly like Tor's client connections.
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from zmesh.cells import MAX_FRAME_SIZE
from zmesh.errors import LinkClosed, TransportError

LINK_PATH = "/v1/link"
# aiohttp refuses a message whose size *reaches* max_msg_size, so allow one byte more than a frame.
MAX_MESSAGE = MAX_FRAME_SIZE + 1


class WebSocketLink:
    """A ``zmesh.link.Link`` over an aiohttp WebSocket (either side)."""

    transport = "websocket"
    ordered = True
    reliable = True
    max_frame_size = MAX_FRAME_SIZE

    def __init__(self, ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                 session: aiohttp.ClientSession | None = None) -> None:
        self._ws = ws
        self._session = session  # owned by a dialed link, closed with it
        self._closed = asyncio.Event()

    async def wait_closed(self) -> None:
        """An aiohttp handler must outlive its WebSocket: it waits here."""
        await self._closed.wait()

    async def send(self, frame: bytes) -> None:
        if self._ws.closed:
            raise LinkClosed("WebSocket link is closed")
        try:
            await self._ws.send_bytes(frame)
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            raise LinkClosed(f"WebSocket link failed: {exc}") from exc

    async def recv(self) -> bytes:
        msg = await self._ws.receive()
        if msg.type == aiohttp.WSMsgType.BINARY:
            return msg.data
        if msg.type == aiohttp.WSMsgType.TEXT:
            await self._ws.close(code=1003, message=b"binary frames only")
        self._closed.set()
        raise LinkClosed("WebSocket link closed")

    async def close(self) -> None:
        self._closed.set()
        await self._ws.close()
        if self._session is not None:
            await self._session.close()


async def dial(url: str, *, timeout: float = 10.0) -> WebSocketLink:
    """Open a link to a relay's ``ws://host:port/v1/link``; ``TransportError`` if it fails."""
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=timeout))
    try:
        ws = await session.ws_connect(url, max_msg_size=MAX_MESSAGE, heartbeat=30.0,
                                      timeout=aiohttp.ClientWSTimeout(ws_close=5.0))
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        await session.close()
        raise TransportError(f"cannot open a link to {url}: {exc}") from exc
    except asyncio.CancelledError:  # a caller's deadline (the signal server's probes have one)
        await session.close()
        raise
    return WebSocketLink(ws, session)


async def accept(request: web.Request) -> tuple[web.WebSocketResponse, WebSocketLink]:
    """Upgrade an inbound request to a link (aiohttp answers non-WebSocket requests with 400)."""
    # No permessage-deflate (browsers ask for it): cells are encrypted, so compressing them only
    # costs CPU (bench/webrtc.py measured tabs' WebSocket links slowed by it).
    ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, heartbeat=30.0, compress=False)
    await ws.prepare(request)
    return ws, WebSocketLink(ws)
