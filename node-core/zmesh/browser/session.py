"""``TabMesh``: the tab's node and its ``MeshVPN`` under one owner, what ``web/meshvpn.js`` holds.

``open_mesh`` (``zmesh.browser.tab``) makes one; ``web/meshvpn.js`` calls ``update_config``,
``disconnect`` and ``stats`` on it, and hears ``connect``/``disconnect``/``error`` through the
``events`` function it passed in. The states and transitions are in docs/browser.md.

Options change on the running node: ``MeshVPN.apply_config`` rebuilds the circuit when a path option
changed, after ``_adapt`` here has made the links fit: a forced transport closes the tab's links of
the other transport (their circuits with them; the home link a relaying tab is reachable through is
kept), so the rebuilt circuit's links are dialed over the new one. FEC and ICE settings apply to
WebRTC links dialed from then on; ``extraCAs`` to ``https://`` fetches from then on.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import js  # type: ignore[import-not-found]
from pyodide.ffi import to_js  # type: ignore[import-not-found]

from .. import errors
from ..aio.api import MeshOptions, MeshVPN
from ..aio.rtc import FEC_CHANNEL, ChannelOptions, IceServer, RtcOptions
from ..errors import CircuitError, ConfigError, ProtocolError, StreamError, TransportError, ZmeshError
from .tls import TlsliteConnector

log = logging.getLogger(__name__)

FORWARDED = ("connect", "disconnect", "error")  # "message" meshvpn.js hears from the MeshVPN itself
TAB_SETTINGS = ("ice_servers", "ice_policy", "webrtc_timeout", "extra_cas", "destination")


def error_code(exc: ZmeshError) -> str:
    """The ``code`` of a ``MeshError``: the reason's name (``CONNECT_REFUSED``, ``LINK_CLOSED``...),
    else that of its nearest class in ``zmesh.errors`` in capitals (``ConfigError`` → ``CONFIG_ERROR``,
    ``FECError`` → ``FEC_ERROR``): a closed set, which meshvpn.d.ts declares."""
    reason = exc.reason if isinstance(exc, CircuitError | StreamError) else None
    if reason is not None:
        return reason.name
    declared = next(cls for cls in type(exc).__mro__ if cls.__module__ == errors.__name__)
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", declared.__name__).upper()


def channels(enable_fec: bool) -> tuple[ChannelOptions, ...]:
    return (ChannelOptions(), *((FEC_CHANNEL,) if enable_fec else ()))


def rtc_options(settings: dict[str, Any], enable_fec: bool, base: RtcOptions | None = None) -> RtcOptions:
    """RtcOptions from the page's settings (``ice_servers``, ``webrtc_timeout``, ``ice_policy``)."""
    base = base or RtcOptions()
    servers = base.ice_servers if "ice_servers" not in settings else tuple(
        IceServer(tuple(s["urls"]), s.get("username"), s.get("credential")) for s in settings["ice_servers"])
    return RtcOptions(servers, settings.get("webrtc_timeout", base.timeout), channels(enable_fec),
                      settings.get("ice_policy", base.ice_policy))


class TabMesh:
    """The tab's ``node`` (a ``BrowserNode``) and ``vpn``; ``events(name, payload)`` is the page's."""

    def __init__(self, node: Any, vpn: MeshVPN, rtc: RtcOptions, events: Callable[[str, Any], Any] | None) -> None:
        self.node, self.vpn, self.rtc = node, vpn, rtc
        self.closed = False
        self.destination: str | None = None
        vpn.on_config = self._adapt
        if events is not None:
            for name in FORWARDED:
                vpn.on(name, lambda value, name=name: events(name, self._payload(name, value)))

    def _payload(self, name: str, value: Any) -> Any:
        if name == "error":
            value = {"type": type(value).__name__, "message": str(value), "code": error_code(value)}
        elif name == "connect":
            value = self.vpn.get_stats()
        return to_js(value, dict_converter=js.Object.fromEntries)

    @property
    def relaying(self) -> bool:
        return not self.closed and self.node.relay

    def stats(self) -> dict[str, Any]:
        return {**self.vpn.get_stats(), "relaying": self.relaying}

    async def connect(self) -> None:
        """Build a circuit (again, after a ``disconnect`` that kept relaying); no-op if connected."""
        await self.vpn.connect(self.destination)

    async def update_config(self, options: Any) -> None:
        """Apply the page's options (already checked by meshvpn.js, checked again here) now."""
        settings = options.to_py() if hasattr(options, "to_py") else dict(options)
        tab = {key: settings.pop(key) for key in TAB_SETTINGS if key in settings}
        self.vpn.options.updated(**settings)  # a bad value is refused before anything changes
        if "extra_cas" in tab:
            self.vpn.tls = TlsliteConnector(tab["extra_cas"])
        if tab.keys() & {"ice_servers", "ice_policy", "webrtc_timeout"}:
            self._set_rtc(rtc_options(tab, self.vpn.options.enable_fec, self.rtc))
        await self.vpn.apply_config(**settings)
        if "destination" in tab and tab["destination"] != self.destination:
            self.destination = tab["destination"]
            if self.vpn.connected or self.vpn.keeper.healing:
                await self.vpn.connect(self.destination)

    def _set_rtc(self, rtc: RtcOptions) -> None:
        self.rtc = rtc
        for connector in (self.node.dialer.rtc, self.node.dialer.client_rtc):
            if connector is not None:
                connector.options = rtc

    async def _adapt(self, old: MeshOptions, new: MeshOptions) -> None:
        if new.enable_fec != old.enable_fec:
            self._set_rtc(replace(self.rtc, channels=channels(new.enable_fec)))
        if new.transport == old.transport:
            return
        if new.transport != "websocket" and self.node.dialer.rtc is None:
            try:
                await self.node.start_webrtc(self.rtc)
            except (TransportError, ProtocolError) as exc:
                if new.transport == "webrtc":
                    raise ConfigError(f"transport 'webrtc' is not available in this tab: {exc}") from exc
                log.warning("no WebRTC in this tab (links use WebSocket): %s", exc)
        if new.transport != "auto":
            home = getattr(self.node, "_home_link", None)
            for link in list(self.node.driver.links().values()):
                if link is not home and getattr(link, "transport", "").split("+")[0] != new.transport:
                    await link.close()

    async def disconnect(self, keep_relaying: bool = False) -> None:
        """Destroy the circuits; unless ``keep_relaying`` (and this tab relays), also close the
        signaling sessions and every link, so the tab leaves the directory."""
        await self.vpn.disconnect()
        if keep_relaying and self.node.relay:
            return
        self.closed = True
        await self.vpn.close()
        await self.node.close()
