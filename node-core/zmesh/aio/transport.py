"""Choosing the transport of each link: WebRTC or WebSocket, the other as the fallback.

A peer takes WebRTC links if its descriptor publishes an ``rtc`` address, WebSocket links if it
publishes a ``ws`` one. With ``auto`` (the default) one is tried and, if it fails or misses its
deadline, the other; ``webrtc`` and ``websocket`` force one. The same dialer serves native nodes
and tabs; what it did is kept in ``stats`` for the dashboard and the private ``/metrics``.

A WebSocket address reaches the transport as a parsed ``LinkAddress``, never as the publisher's
URL. A peer whose dial just failed is not dialed again for ``redial_after`` seconds: a hostile
client EXTENDing to an unreachable relay over and over costs a relay one dial per interval.

A WebRTC offer names the signaling session it came from, so a client link (``LinkRole.CLIENT``,
the ones a node's own circuits use) is never dialed through a session signed in as the node
itself: it goes through ``client_rtc``, a session under a throwaway identity, or over WebSocket.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from ..backoff import Backoff
from ..descriptor import Descriptor
from ..errors import ConfigError, TransportError, ZmeshError
from ..identity import PeerId
from ..link import Link, LinkRole
from ..netaddr import LinkAddress
from .rtc import RtcConnector

log = logging.getLogger(__name__)

TRANSPORTS = ("auto", "webrtc", "websocket")
RTC_ADDRESS = {"rtc": ("signal",)}  # published by nodes that answer WebRTC offers via the signal server
MAX_REMEMBERED_FAILURES = 1024  # peers whose recent dial failure is remembered (oldest forgotten first)


def check_transport(mode: str) -> str:
    if mode not in TRANSPORTS:
        raise ConfigError(f"transport must be one of {', '.join(TRANSPORTS)}, got {mode!r}")
    return mode


def check_redial_after(seconds: float) -> float:
    if not 0 <= seconds <= 300:
        raise ConfigError(f"redial_after must be 0..300 seconds, not {seconds}")
    return seconds


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
    next link; ``rtc`` (a ``zmesh.aio.rtc.RtcConnector``) is None while this node has no WebRTC (then
    ``auto`` means WebSocket). With ``rtc_names_node`` (its session is signed in as this node, which
    answers offers), client links use ``client_rtc`` instead, or no WebRTC while that is None.

    With ``auto`` a tab tries WebRTC first. A native node (``websocket_first``) tries WebSocket
    first where the peer has one, because aiortc's DataChannels measured about 100× slower
    than WebSocket between two native nodes (``bench/webrtc.py``); either way the other transport
    is the fallback."""

    def __init__(self, lookup: Callable[[PeerId], Awaitable[Descriptor | None]], *,
                 websocket: Callable[[LinkAddress], Awaitable[Link]],
                 rtc: RtcConnector | None, mode: Callable[[], str], websocket_first: bool = False,
                 rtc_names_node: bool = False, redial_after: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        check_redial_after(redial_after)
        self._lookup, self._websocket, self.rtc, self.mode = lookup, websocket, rtc, mode
        self.rtc_names_node, self.client_rtc = rtc_names_node, None
        self.websocket_first, self.redial_after, self._clock = websocket_first, redial_after, clock
        self._failed: dict[PeerId, tuple[float, str]] = {}  # peer → (when it may be dialed again, why not)
        self._counts: dict[str, int | float | str | None] = {
            "webrtc": 0, "websocket": 0, "fallbacks": 0, "last_fallback": None, "last_fallback_after": None,
            "not_retried": 0}

    @property
    def stats(self) -> dict[str, int | float | str | None]:
        """Links dialed per transport, fallbacks (the last one's reason and how many seconds the
        failed attempt took), dials refused because the peer failed just before, WebRTC
        signaling messages refused, whether signaling is up."""
        return {**self._counts, "signaling": self.rtc is not None,
                "rejected_signals": self.rtc.rejected if self.rtc is not None else 0}

    async def __call__(self, peer: PeerId, role: LinkRole = LinkRole.CLIENT) -> Link:
        mode = check_transport(self.mode())
        failed = self._failed.get(peer)
        if failed is not None:
            if self._clock() < failed[0]:
                self._counts["not_retried"] += 1
                raise TransportError(f"{failed[1]} (not retried for {self.redial_after:g} s)")
            del self._failed[peer]
        try:
            link = await self._dial(peer, mode, self.connector(role))
        except TransportError as exc:
            if self.redial_after:
                if len(self._failed) >= MAX_REMEMBERED_FAILURES:
                    del self._failed[next(iter(self._failed))]
                self._failed[peer] = (self._clock() + self.redial_after, str(exc))
            raise
        return link

    def connector(self, role: LinkRole) -> RtcConnector | None:
        """The WebRTC connector a link for ``role`` may be dialed through (see the class doc)."""
        return self.client_rtc if role is LinkRole.CLIENT and self.rtc_names_node else self.rtc

    async def _dial(self, peer: PeerId, mode: str, connector: RtcConnector | None) -> Link:
        descriptor = await self._lookup(peer)
        if descriptor is None:
            raise TransportError(f"{peer.short()} is not in the directory")
        attempts = []
        if mode != "webrtc" and descriptor.addresses.get("ws"):
            address = LinkAddress.parse(descriptor.addresses["ws"][0])
            attempts.append(("websocket", lambda: self._websocket(address)))
        if mode != "websocket" and connector is not None and takes_webrtc(descriptor):
            rtc, first = connector, mode == "webrtc" or not self.websocket_first
            attempts.insert(0 if first else 1, ("webrtc", lambda: rtc.dial(peer)))
        if not attempts:
            raise TransportError(self._unreachable(peer, mode, descriptor, connector))
        failures, started = [], time.monotonic()
        for kind, dial in attempts:
            try:
                link = await dial()
            except TransportError as exc:
                failures.append(f"{kind}: {exc}")
                failed_after, started = time.monotonic() - started, time.monotonic()
                continue
            self._counts[kind] += 1
            if failures:
                self._counts["fallbacks"] += 1
                self._counts["last_fallback"] = failures[-1]
                self._counts["last_fallback_after"] = round(failed_after, 3)
                log.info("link to %s fell back to %s after %s", peer.short(), kind, failures[-1])
            return link
        raise TransportError(f"no link to {peer.short()}: " + "; ".join(failures))

    def _unreachable(self, peer: PeerId, mode: str, descriptor: Descriptor, connector: RtcConnector | None) -> str:
        if mode == "webrtc" and connector is None:
            return "transport is webrtc but this node has no WebRTC for this link (no signaling socket)"
        if mode == "webrtc" or not descriptor.addresses.get("ws") and takes_webrtc(descriptor):
            return f"{peer.short()} cannot be reached over WebRTC from here and has no WebSocket address"
        return f"no {'WebSocket ' if mode == 'websocket' else ''}address known for {peer.short()}"


async def keep_signaling(dialer: TransportDialer, open_connector: Callable[[], Awaitable[RtcConnector]],
                         slot: str = "rtc") -> None:
    """Keep ``dialer.rtc`` (or ``dialer.client_rtc``, by ``slot``) on a live signaling session,
    which is what makes this node reachable over WebRTC: when the session closes (server restart,
    network blip) open another after a jittered backoff. Meanwhile ``auto`` dials use WebSocket
    and offers to this node bounce."""
    if slot not in ("rtc", "client_rtc"):
        raise ConfigError(f"no connector slot {slot!r}")
    backoff = Backoff()
    while True:
        current = getattr(dialer, slot)
        if current is not None:
            await current.wait_closed()
            backoff.closed()
            setattr(dialer, slot, None)
            await current.close()
            log.warning("the signaling session closed; reconnecting")
        await asyncio.sleep(backoff.delay())
        try:
            setattr(dialer, slot, await open_connector())
            backoff.opened()
        except ZmeshError as exc:  # whatever a hostile or broken server sends: try again later
            log.info("signaling reconnect failed: %s", exc)
