"""Choosing the transport of each link: WebRTC or WebSocket, the other as the fallback.

A peer takes WebRTC links if its descriptor publishes an ``rtc`` address, WebSocket links if it
publishes a ``ws`` one. With ``auto`` (the default) one is tried and, if it fails or misses its
deadline, the other; ``webrtc`` and ``websocket`` force one. The same dialer serves native nodes
and tabs; what it did is kept in ``stats`` for the dashboard and ``/healthz``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable

from .descriptor import Descriptor
from .errors import ConfigError, TransportError
from .identity import PeerId
from .link import Link

log = logging.getLogger(__name__)

TRANSPORTS = ("auto", "webrtc", "websocket")
RTC_ADDRESS = {"rtc": ("signal",)}  # published by nodes that answer WebRTC offers via the signal server


def check_transport(mode: str) -> str:
    if mode not in TRANSPORTS:
        raise ConfigError(f"transport must be one of {', '.join(TRANSPORTS)}, got {mode!r}")
    return mode


def count_by_transport(links: Iterable[Link]) -> dict[str, int]:
    """How many open links use each transport (``webrtc``, ``websocket``, ``memory``)."""
    counts: dict[str, int] = {}
    for link in links:
        kind = getattr(link, "transport", "other")
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def takes_webrtc(descriptor: Descriptor) -> bool:
    return bool(descriptor.addresses.get("rtc"))


class TransportDialer:
    """A ``NodeDriver`` dialer. ``mode`` is read at each dial, so a changed setting applies to the
    next link; ``webrtc`` is None where this node has no WebRTC (then ``auto`` means WebSocket).

    With ``auto`` a tab tries WebRTC first. A native node (``websocket_first``) tries WebSocket
    first where the peer has one, because aiortc's DataChannels measured several times slower
    than WebSocket between two native nodes (``bench/webrtc.py``); either way the other transport
    is the fallback."""

    def __init__(self, lookup: Callable[[PeerId], Awaitable[Descriptor | None]], *,
                 websocket: Callable[[str], Awaitable[Link]],
                 webrtc: Callable[[PeerId], Awaitable[Link]] | None,
                 mode: Callable[[], str], websocket_first: bool = False) -> None:
        self._lookup, self._websocket, self.webrtc, self.mode = lookup, websocket, webrtc, mode
        self.websocket_first = websocket_first
        self.stats: dict[str, int | str | None] = {"webrtc": 0, "websocket": 0, "fallbacks": 0,
                                                   "last_fallback": None}

    async def __call__(self, peer: PeerId) -> Link:
        mode = check_transport(self.mode())
        descriptor = await self._lookup(peer)
        if descriptor is None:
            raise TransportError(f"{peer.short()} is not in the directory")
        attempts = []
        if mode != "webrtc" and descriptor.addresses.get("ws"):
            attempts.append(("websocket", lambda: self._websocket(descriptor.addresses["ws"][0])))
        if mode != "websocket" and self.webrtc is not None and takes_webrtc(descriptor):
            webrtc = self.webrtc
            attempts.insert(0 if mode == "webrtc" or not self.websocket_first else 1, ("webrtc", lambda: webrtc(peer)))
        if not attempts:
            raise TransportError(self._unreachable(peer, mode, descriptor))
        failures = []
        for kind, dial in attempts:
            try:
                link = await dial()
            except TransportError as exc:
                failures.append(f"{kind}: {exc}")
                continue
            self.stats[kind] += 1
            if failures:
                self.stats["fallbacks"] += 1
                self.stats["last_fallback"] = failures[-1]
                log.info("link to %s fell back to %s after %s", peer.short(), kind, failures[-1])
            return link
        raise TransportError(f"no link to {peer.short()}: " + "; ".join(failures))

    def _unreachable(self, peer: PeerId, mode: str, descriptor: Descriptor) -> str:
        if mode == "webrtc" and self.webrtc is None:
            return "transport is webrtc but this node has no WebRTC (no signaling socket)"
        if mode == "webrtc" or not descriptor.addresses.get("ws") and takes_webrtc(descriptor):
            return f"{peer.short()} cannot be reached over WebRTC from here and has no WebSocket address"
        return f"no {'WebSocket ' if mode == 'websocket' else ''}address known for {peer.short()}"
