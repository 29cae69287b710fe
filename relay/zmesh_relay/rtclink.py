"""WebRTC DataChannel links for native nodes: the aiortc backend of ``zmesh.aio.rtc``.

The signaling protocol (signed offers, answers and candidates, one deadline) is ``zmesh.aio.rtc``'s,
shared with the page; here are only the aiortc peer connection and the DataChannel ``Link``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.sdp import candidate_from_sdp

from zmesh.aio.link import CloseOnce
from zmesh.aio.rtc import ChannelOptions, ChannelWaiter, IceCandidate, RtcOptions
from zmesh.cells import MAX_FRAME_SIZE
from zmesh.errors import LinkClosed, ProtocolError
from zmesh.link import Link

HIGH_WATER = 1 << 20


class RtcLink:
    """A ``zmesh.link.Link`` over one DataChannel (closing it closes the peer connection)."""

    transport = "webrtc"
    max_frame_size = MAX_FRAME_SIZE

    def __init__(self, close_pc: CloseOnce, channel: RTCDataChannel, options: ChannelOptions) -> None:
        self._close_pc, self._channel = close_pc, channel
        self.ordered, self.reliable = options.ordered, options.reliable
        self._frames: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._writable = asyncio.Event()
        self._writable.set()
        channel.bufferedAmountLowThreshold = HIGH_WATER // 4
        # Attached at once: aiortc delivers messages that arrive before a handler to nobody.
        channel.on("message", self._on_message)
        channel.on("close", self._on_close)
        channel.on("bufferedamountlow", self._writable.set)

    def _on_close(self) -> None:
        self._frames.put_nowait(None)
        self._writable.set()  # a sender waiting for room must see the close, not wait forever

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
            if self._channel.readyState != "open":
                raise LinkClosed("DataChannel is closed")
        self._channel.send(frame)

    async def recv(self) -> bytes:
        frame = await self._frames.get()
        if frame is None:
            self._frames.put_nowait(None)
            raise LinkClosed("DataChannel closed")
        return frame

    async def close(self) -> None:
        self._on_close()
        await self._close_pc()


class AiortcPeer:
    """``zmesh.aio.rtc.RtcPeer`` on aiortc. aiortc gathers every candidate before it describes its
    side, so they go out inside the SDP and only the end marker is trickled."""

    def __init__(self, options: RtcOptions, on_candidate: Callable[[IceCandidate], None]) -> None:
        servers = [RTCIceServer(list(s.urls), s.username, s.credential) for s in options.ice_servers]
        self._pc = RTCPeerConnection(RTCConfiguration(servers, RTCIceTransportPolicy(options.ice_policy)))
        self._close = CloseOnce(self._pc.close)  # shared by the peer's links: one close of the connection
        self._on_candidate = on_candidate
        self._channels = ChannelWaiter()

        @self._pc.on("connectionstatechange")
        def on_state() -> None:  # ICE or DTLS gave up: fail now rather than at the deadline
            if self._pc.connectionState in ("failed", "closed"):
                self._channels.fail(self._pc.connectionState)

    async def offer(self, channels: Sequence[ChannelOptions]) -> str:
        for options in channels:
            self._adopt(self._create(options), options)
        await self._pc.setLocalDescription(await self._pc.createOffer())
        self._on_candidate(IceCandidate(""))
        return self._pc.localDescription.sdp

    async def answer(self, sdp: str, channels: Sequence[ChannelOptions]) -> str:
        for options in channels:
            if options.negotiated_id is not None:
                self._adopt(self._create(options), options)
            else:
                self._channels.expect(options)

        @self._pc.on("datachannel")
        def on_channel(channel: RTCDataChannel) -> None:  # synchronous, so no message is missed
            options = self._channels.announced(channel.label)
            if options is None:
                channel.close()  # a channel the offer did not announce
                return
            self._adopt(channel, options)

        await self._pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
        await self._pc.setLocalDescription(await self._pc.createAnswer())
        self._on_candidate(IceCandidate(""))
        return self._pc.localDescription.sdp

    async def accept_answer(self, sdp: str) -> None:
        await self._pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))

    async def add_candidate(self, candidate: IceCandidate) -> None:
        if not candidate.candidate:
            await self._pc.addIceCandidate(None)
            return
        try:
            parsed = candidate_from_sdp(candidate.candidate.removeprefix("candidate:"))
        except (AssertionError, ValueError, IndexError) as exc:
            raise ProtocolError("an ICE candidate aiortc cannot parse") from exc
        parsed.sdpMid, parsed.sdpMLineIndex = candidate.mid, candidate.mline
        if parsed.sdpMid is None and parsed.sdpMLineIndex is None:
            parsed.sdpMLineIndex = 0
        await self._pc.addIceCandidate(parsed)

    async def open_links(self) -> dict[str, Link]:
        return await self._channels.open_links()

    async def close(self) -> None:
        await self._close()

    def _create(self, options: ChannelOptions) -> RTCDataChannel:
        return self._pc.createDataChannel(
            options.label, ordered=options.ordered, maxRetransmits=options.max_retransmits,
            maxPacketLifeTime=options.max_packet_lifetime, negotiated=options.negotiated_id is not None,
            id=options.negotiated_id)

    def _adopt(self, channel: RTCDataChannel, options: ChannelOptions) -> None:
        mark_open = self._channels.adopt(options, RtcLink(self._close, channel, options), channel.readyState == "open")
        channel.on("open", mark_open)


class AiortcBackend:
    """``zmesh.aio.rtc.RtcBackend`` for native nodes."""

    def new_peer(self, options: RtcOptions, on_candidate: Callable[[IceCandidate], None]) -> AiortcPeer:
        return AiortcPeer(options, on_candidate)
