"""WebRTC DataChannel links for native nodes (aiortc), set up through the signal server.

Offers and answers travel as *signed* messages between PeerIds over ``SignalSocket`` (the server
checks the sender's signature and the recipient checks it again), so nobody can inject an SDP in
another node's name. aiortc gathers its ICE candidates before it produces a description, so the
offer and answer carry them all (no trickle). One reliable, ordered channel labelled ``zmesh``
carries whole frames; an unordered channel for FEC is the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable

from aiortc import RTCConfiguration, RTCDataChannel, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from zmesh.cells import MAX_FRAME_SIZE
from zmesh.errors import CryptoError, LinkClosed, ProtocolError, TransportError
from zmesh.identity import PeerId
from zmesh_signal.client import SignalError, SignalSocket

log = logging.getLogger(__name__)

LABEL = "zmesh"
HIGH_WATER = 1 << 20
MAX_SDP = 16 * 1024


class RtcLink:
    """A ``zmesh.link.Link`` over one reliable, ordered DataChannel."""

    ordered = True
    reliable = True
    max_frame_size = MAX_FRAME_SIZE

    def __init__(self, pc: RTCPeerConnection, channel: RTCDataChannel) -> None:
        self._pc, self._channel = pc, channel
        self._frames: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._writable = asyncio.Event()
        self._writable.set()
        channel.bufferedAmountLowThreshold = HIGH_WATER // 4
        # Attached at once: aiortc delivers messages that arrive before a handler to nobody.
        channel.on("message", self._on_message)
        channel.on("close", lambda: self._frames.put_nowait(None))
        channel.on("bufferedamountlow", self._writable.set)

    def _on_message(self, message: bytes | str) -> None:
        if isinstance(message, str) or len(message) > MAX_FRAME_SIZE:
            self._channel.close()  # frames are binary and bounded; anything else ends the link
            return
        self._frames.put_nowait(message)

    async def send(self, frame: bytes) -> None:
        if self._channel.readyState != "open":
            raise LinkClosed("DataChannel is closed")
        while self._channel.bufferedAmount > HIGH_WATER:
            self._writable.clear()
            await self._writable.wait()
        self._channel.send(frame)

    async def recv(self) -> bytes:
        frame = await self._frames.get()
        if frame is None:
            self._frames.put_nowait(None)
            raise LinkClosed("DataChannel closed")
        return frame

    async def close(self) -> None:
        self._frames.put_nowait(None)
        await self._pc.close()


LinkHandler = Callable[[RtcLink, PeerId], Awaitable[None]]


class RtcConnector:
    """Dials and answers WebRTC links for one node through its authenticated signaling socket."""

    def __init__(self, socket: SignalSocket, on_link: LinkHandler, *, ice_servers: list[str] = (),
                 timeout: float = 15.0) -> None:
        self.socket = socket
        self.on_link = on_link
        self.timeout = timeout
        self._config = RTCConfiguration([RTCIceServer(url) for url in ice_servers])
        self._pending: dict[str, asyncio.Future] = {}
        self._tasks: set[asyncio.Task] = set()
        self.rejected = 0
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def dial(self, peer: PeerId) -> RtcLink:
        """Offer a link to ``peer``; ``TransportError`` if no answer or ICE fails within the timeout."""
        pc = RTCPeerConnection(self._config)
        channel = pc.createDataChannel(LABEL, ordered=True)
        link = RtcLink(pc, channel)
        opened = asyncio.get_running_loop().create_future()
        channel.on("open", lambda: opened.done() or opened.set_result(None))
        offer_id = os.urandom(8).hex()
        answered = self._pending[offer_id] = asyncio.get_running_loop().create_future()
        try:
            await pc.setLocalDescription(await pc.createOffer())
            await self.socket.send(peer, _encode("offer", offer_id, pc.localDescription))
            async with asyncio.timeout(self.timeout):
                await pc.setRemoteDescription(await answered)
                await opened
        except (TimeoutError, ValueError, SignalError) as exc:
            await pc.close()
            raise TransportError(f"no WebRTC link to {peer.short()}: {exc or 'timed out'}") from exc
        finally:
            self._pending.pop(offer_id, None)
        return link

    async def _read(self) -> None:
        while True:
            try:
                sender, payload = await self.socket.receive()
                kind, offer_id, description = _decode(payload)
            except (ProtocolError, CryptoError, SignalError) as exc:
                self.rejected += 1  # forged, malformed or bounced messages change nothing
                log.debug("ignoring a signaling message: %s", exc)
                continue
            except LinkClosed:
                return
            if kind == "answer":
                future = self._pending.get(offer_id)
                if future is not None and not future.done():
                    future.set_result(description)
            else:
                task = asyncio.get_running_loop().create_task(self._answer(sender, offer_id, description))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _answer(self, sender: PeerId, offer_id: str, offer: RTCSessionDescription) -> None:
        pc = RTCPeerConnection(self._config)
        ready: asyncio.Future[RtcLink] = asyncio.get_running_loop().create_future()

        @pc.on("datachannel")
        def on_channel(channel: RTCDataChannel) -> None:  # synchronous, so no message is missed
            if channel.label == LABEL and not ready.done():
                ready.set_result(RtcLink(pc, channel))

        try:
            await pc.setRemoteDescription(offer)
            await pc.setLocalDescription(await pc.createAnswer())
            await self.socket.send(sender, _encode("answer", offer_id, pc.localDescription))
            async with asyncio.timeout(self.timeout):
                link = await ready
        except (TimeoutError, ValueError) as exc:
            self.rejected += 1
            log.debug("WebRTC offer from %s failed: %s", sender.short(), exc)
            await pc.close()
            return
        await self.on_link(link, sender)

    async def close(self) -> None:
        self._reader.cancel()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(self._reader, *self._tasks, return_exceptions=True)


def _encode(kind: str, offer_id: str, description: RTCSessionDescription) -> bytes:
    return json.dumps({"kind": kind, "id": offer_id, "type": description.type, "sdp": description.sdp}).encode()


def _decode(payload: bytes) -> tuple[str, str, RTCSessionDescription]:
    """A signed offer/answer from a peer: shape-checked before aiortc sees it."""
    if len(payload) > MAX_SDP:
        raise ProtocolError("SDP message too large")
    try:
        data = json.loads(payload)
        kind, offer_id, sdp_type, sdp = data["kind"], data["id"], data["type"], data["sdp"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolError("malformed WebRTC signaling message") from exc
    if kind not in ("offer", "answer") or sdp_type != kind or not isinstance(sdp, str) \
            or not isinstance(offer_id, str) or len(offer_id) > 64 or not sdp.startswith("v=0"):
        raise ProtocolError("WebRTC signaling message has the wrong shape")
    return kind, offer_id, RTCSessionDescription(sdp=sdp, type=sdp_type)
