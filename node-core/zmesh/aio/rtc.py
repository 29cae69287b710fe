"""WebRTC link setup, shared by native nodes (aiortc) and tabs (the page's RTCPeerConnection).

Offers, answers and ICE candidates travel as signed messages between PeerIds through the signal
server (``zmesh.signaling``): the server checks the sender's signature and so does the recipient,
and since the DTLS fingerprint sits inside the signed SDP, the channel is bound to that PeerId.
Candidates trickle: each is sent as it is found (aiortc finds them all before it describes its
side, so it puts them in the SDP and only sends the end marker). The whole setup, from offer to
open channels, has one deadline, so ``transport: auto`` can fall back to WebSocket in bounded time.

The peer-connection machinery is behind ``RtcBackend`` (``zmesh_relay.rtclink`` for aiortc,
``zmesh.browser.rtc`` for the page); this module is the protocol and the bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import ConfigError, CryptoError, LinkClosed, ProtocolError, TransportError
from ..identity import PeerId
from ..link import Link
from ..signaling import SignalError, SignalSession
from .fec import FecChannelsLink
from .tasks import OwnedTasks

log = logging.getLogger(__name__)

MAX_SDP = 16 * 1024
MAX_CANDIDATE = 1024
MAX_PENDING_CANDIDATES = 32  # remote candidates held until the remote description is set
MAX_INCOMING = 32  # offers being answered at once; more are refused rather than queued
_LABEL = re.compile(r"[A-Za-z0-9_.-]{1,32}\Z")
_ICE_SCHEMES = ("stun:", "stuns:", "turn:", "turns:")


@dataclass(frozen=True, slots=True)
class ChannelOptions:
    """One DataChannel. Reliable and ordered unless ``max_retransmits`` or ``max_packet_lifetime``
    (ms) is set; ``negotiated_id`` makes both sides create it with that id instead of announcing it
    in-band. The default labels are ones many WebRTC apps use, not the software's name: a peer (and
    the signal server, which relays the offer) reads them; a network observer does not (DTLS)."""

    label: str = "data"
    ordered: bool = True
    max_retransmits: int | None = None
    max_packet_lifetime: int | None = None
    negotiated_id: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.label, str) or not _LABEL.match(self.label):
            raise ConfigError(f"DataChannel label {self.label!r} must be 1-32 letters, digits, '_', '.' or '-'")
        if not isinstance(self.ordered, bool):
            raise ConfigError("DataChannel 'ordered' must be true or false")
        if self.max_retransmits is not None and self.max_packet_lifetime is not None:
            raise ConfigError("set at most one of max_retransmits and max_packet_lifetime")
        for name, value, top in (("max_retransmits", self.max_retransmits, 65535),
                                 ("max_packet_lifetime", self.max_packet_lifetime, 65535),
                                 ("negotiated_id", self.negotiated_id, 1023)):
            if value is not None and (type(value) is not int or not 0 <= value <= top):
                raise ConfigError(f"DataChannel {name} must be an integer from 0 to {top}")

    @property
    def reliable(self) -> bool:
        return self.max_retransmits is None and self.max_packet_lifetime is None

    def to_wire(self) -> dict[str, Any]:
        return {"label": self.label, "ordered": self.ordered, "maxRetransmits": self.max_retransmits,
                "maxPacketLifeTime": self.max_packet_lifetime, "id": self.negotiated_id}

    @classmethod
    def from_wire(cls, data: Any) -> ChannelOptions:
        if not isinstance(data, dict):
            raise ProtocolError("a DataChannel description must be an object")
        try:
            return cls(data.get("label"), data.get("ordered"), data.get("maxRetransmits"),
                       data.get("maxPacketLifeTime"), data.get("id"))
        except ConfigError as exc:
            raise ProtocolError(f"bad DataChannel description: {exc}") from exc


FEC_CHANNEL = ChannelOptions("unreliable", ordered=False, max_retransmits=0)  # RELAY cells under FEC


@dataclass(frozen=True, slots=True)
class IceServer:
    """A STUN or TURN server (TURN usually needs ``username`` and ``credential``)."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None

    def __post_init__(self) -> None:
        if not self.urls or not all(isinstance(u, str) and u.startswith(_ICE_SCHEMES) for u in self.urls):
            raise ConfigError(f"ICE server URLs must start with one of {', '.join(_ICE_SCHEMES)}: {self.urls!r}")
        if any(u.startswith("turn") for u in self.urls) and (self.username is None) != (self.credential is None):
            raise ConfigError("a TURN server needs both a username and a credential, or neither")

    def __repr__(self) -> str:  # never print the credential
        return f"IceServer(urls={self.urls!r}, username={self.username!r})"


@dataclass(frozen=True, slots=True)
class RtcOptions:
    """How this node sets up WebRTC links. ``timeout`` bounds a whole setup (offer to open). A
    second channel, if any, carries RELAY cells under Tetrys FEC (``zmesh.fec.channels``).
    ``ice_policy="relay"`` uses TURN candidates only, hiding this node's addresses from peers
    (and, with no TURN server configured, makes every WebRTC attempt fail: tests use that)."""

    ice_servers: tuple[IceServer, ...] = ()
    timeout: float = 10.0
    channels: tuple[ChannelOptions, ...] = field(default_factory=lambda: (ChannelOptions(),))
    ice_policy: str = "all"

    def __post_init__(self) -> None:
        if self.ice_policy not in ("all", "relay"):
            raise ConfigError(f"ICE policy must be 'all' or 'relay', not {self.ice_policy!r}")
        if not 0 < self.timeout <= 300:
            raise ConfigError(f"WebRTC timeout must be between 0 and 300 s, not {self.timeout}")
        if not 1 <= len(self.channels) <= 2 or len({c.label for c in self.channels}) != len(self.channels):
            raise ConfigError("a WebRTC link has one or two DataChannels with different labels")
        if not self.channels[0].reliable or not self.channels[0].ordered:
            raise ConfigError("the first DataChannel carries control cells and must be reliable and ordered")


@dataclass(frozen=True, slots=True)
class IceCandidate:
    """A trickled candidate line (``a=candidate`` value); ``candidate == ""`` marks the end."""

    candidate: str
    mid: str | None = None
    mline: int | None = None


class ChannelWaiter:
    """What every backend tracks while its peer connection comes up: the channels it expects (by
    label), which of them are open, and whether the connection failed first."""

    def __init__(self) -> None:
        self.links: dict[str, Link] = {}
        self._expected: dict[str, ChannelOptions] = {}
        self._opened: dict[str, asyncio.Future[None]] = {}
        self._failed: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def expect(self, options: ChannelOptions) -> None:
        self._expected[options.label] = options
        self._opened.setdefault(options.label, asyncio.get_running_loop().create_future())

    def announced(self, label: str) -> ChannelOptions | None:
        """The options of an in-band channel the remote side opened, if the offer announced it."""
        options = self._expected.get(label)
        return None if options is None or options.negotiated_id is not None or label in self.links else options

    def adopt(self, options: ChannelOptions, link: Link, is_open: bool) -> Callable[[], None]:
        """Record ``link``; returns the callback to run when its channel opens."""
        self.expect(options)
        self.links[options.label] = link
        opened = self._opened[options.label]

        def mark_open() -> None:
            if not opened.done():
                opened.set_result(None)
        if is_open:
            mark_open()
        return mark_open

    def fail(self, state: str) -> None:
        if not self._failed.done():
            self._failed.set_result(state)

    async def open_links(self) -> dict[str, Link]:
        waiting = {*self._opened.values(), self._failed}
        while any(not future.done() for future in self._opened.values()):
            done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if self._failed in done:
                raise TransportError(f"WebRTC connection {self._failed.result()}")
        return dict(self.links)


class RtcPeer(Protocol):
    """One RTCPeerConnection being set up, as the connector drives it."""

    async def offer(self, channels: Sequence[ChannelOptions]) -> str:
        """Create the channels and the local offer; return its SDP."""

    async def answer(self, sdp: str, channels: Sequence[ChannelOptions]) -> str:
        """Apply a remote offer announcing ``channels``; return the local answer's SDP."""

    async def accept_answer(self, sdp: str) -> None: ...

    async def add_candidate(self, candidate: IceCandidate) -> None: ...

    async def open_links(self) -> dict[str, Link]:
        """Wait until every channel is open; one ``Link`` per channel label."""

    async def close(self) -> None: ...


class RtcBackend(Protocol):
    def new_peer(self, options: RtcOptions, on_candidate: Callable[[IceCandidate], None]) -> RtcPeer:
        """A fresh peer connection; ``on_candidate`` is called for each local candidate found."""


LinkHandler = Callable[[Link, PeerId], Awaitable[None]]


class _Attempt:
    """One link being set up with one peer: remote candidates wait until the remote description
    is set, local ones until ours has been sent (the recipient needs the description first)."""

    def __init__(self, connector: RtcConnector, peer: PeerId, attempt_id: str) -> None:
        self.peer, self.id = peer, attempt_id
        self.answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.rtc = connector.backend.new_peer(connector.options, self._local_candidate)
        self._connector = connector
        self._remote_set = False
        self._remote_pending: list[IceCandidate] = []
        self._described = False
        self._local_pending: list[IceCandidate] = []

    def _local_candidate(self, candidate: IceCandidate) -> None:
        if self._described:
            self._connector._send_soon(self.peer, _encode("candidate", self.id, **_candidate_fields(candidate)))
        else:
            self._local_pending.append(candidate)

    async def described(self, kind: str, sdp: str, **extra: Any) -> None:
        await self._connector.signal.send(self.peer, _encode(kind, self.id, sdp=sdp, **extra))
        self._described = True
        for candidate in self._local_pending:
            await self._connector.signal.send(self.peer, _encode("candidate", self.id, **_candidate_fields(candidate)))
        self._local_pending.clear()

    async def remote_described(self) -> None:
        self._remote_set = True
        for candidate in self._remote_pending:
            await self.rtc.add_candidate(candidate)
        self._remote_pending.clear()

    async def remote_candidate(self, candidate: IceCandidate) -> None:
        if self._remote_set:
            await self.rtc.add_candidate(candidate)
        elif len(self._remote_pending) < MAX_PENDING_CANDIDATES:
            self._remote_pending.append(candidate)
        else:
            raise ProtocolError("too many ICE candidates before the description")


class RtcConnector:
    """Dials and answers WebRTC links for one node over its signaling session. Offers from others
    are answered only with ``accept`` (a client that never relays need not be reachable)."""

    def __init__(self, signal: SignalSession, backend: RtcBackend, on_link: LinkHandler,
                 options: RtcOptions | None = None, *, accept: bool = True) -> None:
        self.signal = signal
        self.backend = backend
        self.on_link = on_link
        self.options = options or RtcOptions()
        self.accept = accept
        self.rejected = 0  # forged, malformed, unexpected or refused signaling messages
        self._attempts: dict[tuple[PeerId, str], _Attempt] = {}
        self._incoming = 0
        self._tasks = OwnedTasks("WebRTC connector")
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def dial(self, peer: PeerId) -> Link:
        """Offer a link to ``peer``; ``TransportError`` if it refuses, or nothing is open by the deadline."""
        attempt = _Attempt(self, peer, os.urandom(8).hex())
        self._attempts[(peer, attempt.id)] = attempt
        links = None
        try:
            async with asyncio.timeout(self.options.timeout):
                sdp = await attempt.rtc.offer(self.options.channels)
                await attempt.described("offer", sdp, channels=[c.to_wire() for c in self.options.channels])
                await attempt.rtc.accept_answer(await attempt.answer)
                await attempt.remote_described()
                links = await attempt.rtc.open_links()
        except (TimeoutError, SignalError, ProtocolError, LinkClosed, TransportError, ValueError) as exc:
            why = "no answer or no ICE connection in time" if isinstance(exc, TimeoutError) else exc
            raise TransportError(f"no WebRTC link to {peer.short()}: {why}") from exc
        finally:
            self._attempts.pop((peer, attempt.id), None)
            if links is None:  # failed or cancelled: its peer connection goes too
                await attempt.rtc.close()
        return _compose(self.options.channels, links)

    async def _read(self) -> None:
        while True:
            try:
                sender, payload = await self.signal.receive()
                message = _decode(payload)
                await self._dispatch(sender, message)
            except SignalError as exc:
                self._bounced(exc)
            except (ProtocolError, CryptoError, ValueError) as exc:  # ValueError: a WebRTC stack refused it
                self.rejected += 1  # forged or malformed messages change nothing
                log.debug("ignoring a signaling message: %s", exc)
            except LinkClosed:
                return

    def _bounced(self, exc: SignalError) -> None:
        """The server could not deliver to a peer (offline, busy): fail that peer's dials now."""
        for (peer, _), attempt in list(self._attempts.items()):
            if peer.text == exc.to and not attempt.answer.done():
                attempt.answer.set_exception(exc)

    async def _dispatch(self, sender: PeerId, message: dict[str, Any]) -> None:
        kind, attempt = message["kind"], self._attempts.get((sender, message["id"]))
        if kind == "offer":
            if attempt is not None:
                raise ProtocolError("a second offer with the same id")
            if not self.accept or self._incoming >= MAX_INCOMING:
                self._send_soon(sender, _encode("reject", message["id"], reason="not accepting WebRTC links"))
                raise ProtocolError("offer refused")
            self._incoming += 1
            attempt = self._attempts[(sender, message["id"])] = _Attempt(self, sender, message["id"])
            self._tasks.spawn(self._answer(attempt, message))
        elif attempt is None:
            raise ProtocolError(f"a WebRTC {kind} for no attempt of ours")
        elif kind == "answer":
            if not attempt.answer.done():
                attempt.answer.set_result(message["sdp"])
        elif kind == "reject":
            if not attempt.answer.done():
                attempt.answer.set_exception(TransportError(f"{sender.short()} refused: {message['reason']}"))
        else:
            await attempt.remote_candidate(message["candidate"])

    async def _answer(self, attempt: _Attempt, offer: dict[str, Any]) -> None:
        sender = attempt.peer
        try:
            async with asyncio.timeout(self.options.timeout):
                sdp = await attempt.rtc.answer(offer["sdp"], offer["channels"])
                await attempt.remote_described()
                await attempt.described("answer", sdp)
                links = await attempt.rtc.open_links()
        except (TimeoutError, SignalError, ProtocolError, LinkClosed, TransportError, ValueError) as exc:
            self.rejected += 1
            log.info("WebRTC offer from %s failed: %s", sender.short(), exc or "timed out")
            await attempt.rtc.close()
            return
        finally:
            self._attempts.pop((sender, attempt.id), None)
            self._incoming -= 1
        await self.on_link(_compose(offer["channels"], links), sender)

    def _send_soon(self, peer: PeerId, payload: bytes) -> None:
        async def send() -> None:
            with contextlib.suppress(LinkClosed, TransportError):
                await self.signal.send(peer, payload)
        self._tasks.spawn(send())

    async def wait_closed(self) -> None:
        """Return once the signaling session has closed: no link can be set up any more."""
        await asyncio.wait({self._reader})

    async def close(self) -> None:
        """Stop answering and dialing, and close the signaling session (the connector owns it)."""
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self._tasks.close()
        await self.signal.close()


def _compose(channels: Sequence[ChannelOptions], links: dict[str, Link]) -> Link:
    """The node's link over the open channels: the first alone, or with a second one carrying the
    RELAY cells under forward error correction."""
    if len(channels) == 1:
        return links[channels[0].label]
    return FecChannelsLink(links[channels[0].label], links[channels[1].label])


def _candidate_fields(candidate: IceCandidate) -> dict[str, Any]:
    return {"candidate": candidate.candidate, "mid": candidate.mid, "mline": candidate.mline}


def _encode(kind: str, attempt_id: str, **fields: Any) -> bytes:
    return json.dumps({"kind": kind, "id": attempt_id, **fields}).encode()


def _decode(payload: bytes) -> dict[str, Any]:
    """A signed WebRTC signaling message from a peer, shape-checked before any WebRTC stack sees it."""
    if len(payload) > MAX_SDP + 1024:
        raise ProtocolError("WebRTC signaling message too large")
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("malformed WebRTC signaling message") from exc
    if not isinstance(data, dict):
        raise ProtocolError("malformed WebRTC signaling message")
    kind, attempt_id = data.get("kind"), data.get("id")
    if not isinstance(attempt_id, str) or not 1 <= len(attempt_id) <= 64:
        raise ProtocolError("WebRTC signaling message without a valid id")
    if kind in ("offer", "answer"):
        sdp = data.get("sdp")
        if not isinstance(sdp, str) or not sdp.startswith("v=0") or len(sdp) > MAX_SDP:
            raise ProtocolError(f"a WebRTC {kind} without a valid SDP")
        message = {"kind": kind, "id": attempt_id, "sdp": sdp}
        if kind == "offer":
            channels = data.get("channels")
            if not isinstance(channels, list) or not 1 <= len(channels) <= 2:
                raise ProtocolError("a WebRTC offer must announce one or two DataChannels")
            message["channels"] = [ChannelOptions.from_wire(c) for c in channels]
            try:
                RtcOptions(channels=tuple(message["channels"]))
            except ConfigError as exc:
                raise ProtocolError(f"a WebRTC offer with unusable channels: {exc}") from exc
        return message
    if kind == "candidate":
        line, mid, mline = data.get("candidate"), data.get("mid"), data.get("mline")
        if not isinstance(line, str) or len(line) > MAX_CANDIDATE \
                or not (mid is None or isinstance(mid, str) and len(mid) <= 32) \
                or not (mline is None or type(mline) is int and 0 <= mline < 16):
            raise ProtocolError("a malformed ICE candidate")
        return {"kind": kind, "id": attempt_id, "candidate": IceCandidate(line, mid, mline)}
    if kind == "reject":
        reason = data.get("reason")
        return {"kind": kind, "id": attempt_id, "reason": reason[:200] if isinstance(reason, str) else "refused"}
    raise ProtocolError(f"unknown WebRTC signaling message kind {kind!r}")
