"""Browser adapters (imported only under Pyodide): WebSocket links and the tab's node.

Bytes cross the JS bridge as whole frames (one ``Uint8Array`` per frame, no per-byte loop). The
link applies backpressure through the socket's ``bufferedAmount``, so a fast sender cannot make the
tab buffer without bound.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
from typing import Any

import js  # type: ignore[import-not-found]
from pyodide.ffi import create_proxy, to_js  # type: ignore[import-not-found]
from pyodide.http import pyfetch  # type: ignore[import-not-found]

from .cells import MAX_FRAME_SIZE
from .crypto.webcrypto import WebCryptoProvider
from .descriptor import Capabilities, Descriptor, sign_descriptor, verify_descriptor
from .driver import NodeDriver
from .errors import ConfigError, CryptoError, LinkClosed, ProtocolError, TransportError
from .identity import Identity, PeerId
from .node import Node
from .path import listens

HIGH_WATER = 1 << 20  # bytes the browser may hold in a socket's send buffer before we wait


class BrowserWebSocketLink:
    """A ``Link`` over the page's ``WebSocket`` (binary frames)."""

    ordered = True
    reliable = True
    max_frame_size = MAX_FRAME_SIZE

    def __init__(self, socket: Any) -> None:
        self._socket = socket
        self._frames: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._proxies = [create_proxy(self._on_message), create_proxy(self._on_close)]
        socket.binaryType = "arraybuffer"
        socket.addEventListener("message", self._proxies[0])
        socket.addEventListener("close", self._proxies[1])
        socket.addEventListener("error", self._proxies[1])

    @classmethod
    async def dial(cls, url: str, timeout: float = 10.0) -> BrowserWebSocketLink:
        # Listen for messages before the socket opens: the peer may speak first (AUTH_CHALLENGE),
        # and a message event with no listener yet is simply lost.
        link = cls(js.WebSocket.new(url))
        socket = link._socket
        opened = asyncio.get_running_loop().create_future()
        on_open = create_proxy(lambda _event: opened.done() or opened.set_result(True))
        on_fail = create_proxy(lambda _event: opened.done() or opened.set_exception(
            TransportError(f"cannot open a link to {url}")))
        socket.addEventListener("open", on_open)
        socket.addEventListener("error", on_fail)
        try:
            await asyncio.wait_for(opened, timeout)
        finally:
            socket.removeEventListener("open", on_open)
            socket.removeEventListener("error", on_fail)
            on_open.destroy()
            on_fail.destroy()
        return link

    def _on_message(self, event: Any) -> None:
        data = event.data
        if isinstance(data, str) or data.byteLength > MAX_FRAME_SIZE:
            self._socket.close(1003)
            return
        self._frames.put_nowait(js.Uint8Array.new(data).to_bytes())

    def _on_close(self, _event: Any) -> None:
        self._frames.put_nowait(None)

    async def send(self, frame: bytes) -> None:
        if self._socket.readyState != 1:
            raise LinkClosed("WebSocket link is closed")
        while self._socket.bufferedAmount > HIGH_WATER:
            await asyncio.sleep(0.005)
        self._socket.send(to_js(frame))

    async def recv(self) -> bytes:
        frame = await self._frames.get()
        if frame is None:
            self._frames.put_nowait(None)
            raise LinkClosed("WebSocket link closed")
        return frame

    async def close(self) -> None:
        self._socket.close()
        self._frames.put_nowait(None)


class BrowserNode:
    """The tab's node: identity, WebCrypto, a directory view from the signal server, a driver."""

    def __init__(self, identity: Identity, provider: WebCryptoProvider) -> None:
        self.provider = provider
        self.relays: dict[PeerId, Descriptor] = {}
        self.driver = NodeDriver(Node(identity, provider, time.monotonic), dialer=self._dial)

    @classmethod
    async def start(cls, saved_identity: bytes | None = None) -> BrowserNode:
        """A node with the tab's saved identity (kept in IndexedDB by meshvpn.js) or a new one."""
        provider = WebCryptoProvider()
        identity = None
        if saved_identity:
            try:
                identity = await Identity.from_bytes(provider, saved_identity)
            except ConfigError:
                identity = None  # a corrupt saved key: start afresh rather than fail to join
        return cls(identity or await Identity.generate(provider), provider)

    def refreshed_relays(self) -> list[Descriptor]:
        """The directory as last fetched (``MeshVPN`` reads it synchronously)."""
        return list(self.relays.values())

    async def refresh(self) -> list[Descriptor]:
        """Fetch and verify the relay list from this page's own origin."""
        response = await pyfetch("/v1/relays")
        fresh = {}
        for item in (await response.json())["relays"]:
            try:
                descriptor = await verify_descriptor(self.provider, base64.b64decode(item), now=time.time())
            except (ProtocolError, CryptoError):
                continue
            fresh[descriptor.peer_id] = descriptor
        self.relays = fresh
        return list(fresh.values())

    async def offer_relay(self) -> Descriptor:
        """Help the mesh, Snowflake-style: link to a home relay (authenticating, so circuits can be
        extended to this tab over that link) and publish a descriptor reachable ``via`` it."""
        homes = [d for d in self.relays.values() if listens(d)]
        if not homes:
            raise TransportError("no relay to offer this tab through")
        home = random.choice(homes)
        await self.driver.connect(home.peer_id, authenticated=True)
        descriptor = await sign_descriptor(self.provider, self.driver.node.identity, now=int(time.time()),
                                           addresses={"via": (home.peer_id.text,)},
                                           capabilities=Capabilities(relay=True))
        response = await pyfetch("/v1/descriptors", method="POST", body=to_js(descriptor.raw),
                                 headers={"Content-Type": "application/octet-stream"})
        if response.status != 201:
            raise TransportError(f"the directory refused this tab's descriptor ({response.status})")
        return descriptor

    async def _dial(self, peer: PeerId) -> BrowserWebSocketLink:
        descriptor = self.relays.get(peer)
        urls = descriptor.addresses.get("ws", ()) if descriptor else ()
        if not urls:
            raise TransportError(f"no WebSocket address known for {peer.short()}")
        return await BrowserWebSocketLink.dial(urls[0])


async def open_mesh(options: Any) -> Any:
    """Called by ``web/meshvpn.js``: start the tab's node and return a connected ``MeshVPN``."""
    from .api import MeshVPN

    settings = options.to_py() if hasattr(options, "to_py") else dict(options)
    destination = settings.pop("destination", None)
    saved = settings.pop("saved_identity", None)
    node = await BrowserNode.start(bytes(saved) if saved is not None else None)
    await node.refresh()
    if settings.pop("relay", True):
        await node.offer_relay()
    vpn = MeshVPN(node.driver, node.refreshed_relays, **settings)
    await vpn.connect(destination)
    return vpn
