"""The links of a native node: WebSocket always, WebRTC (aiortc) through the signal server unless
``transport.kind`` is ``websocket``; the signaling session is kept up by ``keep_signaling``.
WebSocket dials get ``transport.dial_timeout`` and reach non-public addresses only with
``network.allow_private_addresses``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from zmesh.aio.notices import RefetchOnNotice
from zmesh.aio.rtc import LinkHandler, RtcConnector
from zmesh.aio.transport import RTC_ADDRESS, TransportDialer, keep_signaling
from zmesh.crypto.provider import CryptoProvider
from zmesh.directory_view import DirectoryView
from zmesh.errors import ZmeshError
from zmesh.identity import Identity
from zmesh.link import Link
from zmesh.netaddr import LinkAddress
from zmesh_signal.client import SignalClient

from . import wslink
from .config import rtc_options
from .rtclink import AiortcBackend

log = logging.getLogger(__name__)


class NativeTransports:
    """Dials links for a ``NodeDriver`` (``dialer``) and, with ``on_inbound``, answers WebRTC offers.
    Then its signaling session is signed in as the node, so the node's own client links (its own
    circuits, e.g. a service hosted on a relay) go over WebSocket only (``TransportDialer``)."""

    def __init__(self, config: dict[str, Any], signal: SignalClient, directory: DirectoryView,
                 identity: Identity, provider: CryptoProvider, on_inbound: LinkHandler | None = None) -> None:
        self.config, self._signal, self._identity, self._provider = config, signal, identity, provider
        self._directory = directory
        self._notices = RefetchOnNotice(directory.refresh)  # the view and peer limit follow pushed changes
        self._on_inbound = on_inbound
        self.dialer = TransportDialer(directory.find, websocket=self._dial_websocket, rtc=None,
                                      mode=lambda: config["transport.kind"], websocket_first=True,
                                      rtc_names_node=on_inbound is not None,
                                      redial_after=config["transport.redial_after"])
        self._supervisor: asyncio.Task | None = None

    async def _dial_websocket(self, address: LinkAddress) -> Link:
        return await wslink.dial(address, timeout=self.config["transport.dial_timeout"],
                                 allow_private=self.config["network.allow_private_addresses"],
                                 headers=self.config["transport.ws_headers"])

    @property
    def uses_webrtc(self) -> bool:
        return self.config["transport.kind"] != "websocket"

    def addresses(self) -> dict[str, tuple[str, ...]]:
        """What to add to this node's descriptor: the ``rtc`` marker if it answers WebRTC offers."""
        return dict(RTC_ADDRESS) if self.uses_webrtc and self._on_inbound is not None else {}

    async def start(self) -> None:
        if not self.uses_webrtc:
            return
        try:
            self.dialer.rtc = await self._open()
        except ZmeshError as exc:
            log.warning("no signaling socket yet (WebRTC waits, WebSocket works): %s", exc)
        self._supervisor = asyncio.get_running_loop().create_task(keep_signaling(self.dialer, self._open))

    async def _open(self) -> RtcConnector:
        session = await self._signal.connect_ws(self._identity, self._provider, on_directory=self._notices)
        return RtcConnector(session, AiortcBackend(), self._on_inbound or _unused, rtc_options(self.config),
                            accept=self._on_inbound is not None)

    async def close(self) -> None:
        await self._notices.close()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self.dialer.rtc is not None:
            await self.dialer.rtc.close()


async def _unused(link: Link, peer: Any) -> None:
    """The inbound handler of a connector that refuses every offer: never called."""
    raise AssertionError("a connector with accept=False handed over a link")
