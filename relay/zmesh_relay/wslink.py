"""WebSocket links (aiohttp): one binary WebSocket message per zmesh frame.

Relays listen on ``relay.ws_path`` (default ``/v1/link``), published in their link address;
anyone may dial. Dialing follows ``zmesh.netaddr``: the URL is built from a parsed host, port and
path, the host is resolved and checked here, and the connection goes to a checked address within
one deadline. The link itself does not authenticate the dialer — the circuit handshake
authenticates every relay a client talks to, so an inbound link's peer is unknown (``None``) to
the node, exactly like Tor's client connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from zmesh.cells import MAX_FRAME_SIZE
from zmesh.errors import LinkClosed, TransportError
from zmesh.netaddr import LINK_PATH, IPAddress, LinkAddress, check_resolved
from zmesh_signal.ws import prepare

from .resolve import Resolver, resolve

__all__ = ["LINK_PATH", "WebSocketLink", "accept", "checked_addresses", "dial", "open_link"]

DIAL_TIMEOUT = 10.0  # seconds for a whole dial, unless transport.dial_timeout says otherwise
CLOSE_TIMEOUT = 5.0  # seconds for the closing handshake before the connection is simply dropped
# What a dial sends besides the WebSocket upgrade's own headers: what a common browser sends, so a
# plain ws:// link (or the host behind a TLS proxy) does not read "Python/3.x aiohttp/3.x".
DIAL_HEADERS = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                              "Chrome/131.0.0.0 Safari/537.36"}
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
        """Close within ``CLOSE_TIMEOUT``: a peer that never reads would otherwise hold the closing
        handshake (and its socket) forever on a full send buffer. After the bound the connection is
        dropped: the handler returns, or the dialed link's session closes its transport."""
        self._closed.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._ws.close()
        if self._session is not None:
            await self._session.close()


class _Pinned(AbstractResolver):
    """Answers aiohttp with the addresses ``dial`` resolved and checked, so the connection goes to
    one of those and DNS cannot re-point it between the check and the connect."""

    def __init__(self, addresses: list[IPAddress]) -> None:
        self._addresses = addresses

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [ResolveResult(hostname=host, host=str(address), port=port, proto=0, flags=socket.AI_NUMERICHOST,
                              family=socket.AF_INET6 if address.version == 6 else socket.AF_INET)
                for address in self._addresses]

    async def close(self) -> None:
        pass


async def _refuse_redirect(_session: aiohttp.ClientSession, _context: object,
                           params: aiohttp.TraceRequestRedirectParams) -> None:
    """A link address is host and port: a relay answering the upgrade with a redirect does not
    get to send this node anywhere else (aiohttp follows redirects of a WebSocket upgrade)."""
    raise TransportError(f"{params.url.host} answered the link upgrade with a redirect ({params.response.status})")


_NO_REDIRECTS = aiohttp.TraceConfig()
_NO_REDIRECTS.on_request_redirect.append(_refuse_redirect)
_NO_REDIRECTS.freeze()


async def checked_addresses(address: LinkAddress, *, allow_private: bool,
                            resolver: Resolver | None = None) -> list[IPAddress]:
    """Resolve ``address``'s host here and check every answer (``zmesh.netaddr`` rules):
    the addresses a dial may connect to, or ``TransportError``."""
    address.check(allow_private=allow_private)
    try:
        found = await resolve(address.host, address.port, resolver)
    except OSError as exc:
        raise TransportError(f"no link to {address}: {exc}") from exc
    return check_resolved(address.host, found, allow_private=allow_private)


async def dial(address: LinkAddress, *, allow_private: bool, timeout: float = DIAL_TIMEOUT,
               resolver: Resolver | None = None, headers: dict[str, str] | None = None) -> WebSocketLink:
    """Open a link to a relay's ``address``; ``TransportError`` if it fails or is refused.

    ``timeout`` bounds the whole dial — resolving, TCP, TLS and the WebSocket upgrade. Non-public
    addresses (after resolution) are refused unless ``allow_private`` (a declared private network)."""
    async def checked() -> list[IPAddress]:
        return await checked_addresses(address, allow_private=allow_private, resolver=resolver)

    # A pinned address is checked against its pin (aiohttp compares the certificate's SHA-256)
    # instead of a certificate authority; an unpinned wss:// one against the system's authorities.
    tls = aiohttp.Fingerprint(address.pin) if address.pin is not None else True
    return await open_link(address.url, timeout=timeout, checked=checked, tls=tls, headers=headers)


async def open_link(url: str, *, timeout: float = DIAL_TIMEOUT,
                    checked: Callable[[], Awaitable[list[IPAddress]]] | None = None,
                    tls: aiohttp.Fingerprint | bool = True, headers: dict[str, str] | None = None) -> WebSocketLink:
    """The link at ``url``, all within ``timeout`` seconds; a dial that fails or times out leaves
    nothing open. ``checked`` resolves and checks the host first and the connection goes to one of its
    addresses (``dial``); without it aiohttp resolves — only for URLs a tool or benchmark chose
    itself, never for a descriptor's address. ``tls`` is how a ``wss://`` server is checked.
    ``headers`` replace aiohttp's own (its ``User-Agent: Python/… aiohttp/…`` names the software)."""
    try:
        async with asyncio.timeout(timeout):
            resolver = _Pinned(await checked()) if checked is not None else None
            connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False)
            session = aiohttp.ClientSession(connector=connector, trace_configs=[_NO_REDIRECTS],
                                            headers=DIAL_HEADERS if headers is None else headers,
                                            skip_auto_headers=("User-Agent",))
            try:
                ws = await session.ws_connect(url, max_msg_size=MAX_MESSAGE, heartbeat=30.0, ssl=tls,
                                              timeout=aiohttp.ClientWSTimeout(ws_close=5.0))
            except BaseException:  # also the deadline's cancellation: close what this dial opened
                await session.close()
                raise
    except TimeoutError as exc:
        raise TransportError(f"no link to {url} within {timeout:g} s") from exc
    except aiohttp.ServerFingerprintMismatch as exc:
        raise TransportError(f"{url} presented a certificate that does not match its descriptor's pin") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise TransportError(f"cannot open a link to {url}: {exc}") from exc
    return WebSocketLink(ws, session)


async def hide_server(_request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: no ``Server: Python/… aiohttp/…`` on a relay's answers (upgrades,
    /healthz, errors), which would tell a prober what answered (docs/anonymity.md)."""
    response.headers.popall("Server", None)


async def accept(request: web.Request) -> tuple[web.WebSocketResponse, WebSocketLink]:
    """Upgrade an inbound request to a link (aiohttp answers non-WebSocket requests with 400)."""
    # No permessage-deflate (browsers ask for it): cells are encrypted, so compressing them only
    # costs CPU (bench/webrtc.py measured tabs' WebSocket links slowed by it).
    ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, heartbeat=30.0, compress=False)
    await prepare(ws, request)
    return ws, WebSocketLink(ws)
