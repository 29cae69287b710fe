"""The page's WebRTC backend for ``zmesh.aio.rtc`` (imported only under Pyodide).

Python drives the browser's own ``RTCPeerConnection`` through Pyodide's FFI: the page trickles
its ICE candidates as it finds them, and each DataChannel becomes a ``BrowserChannelLink``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import js  # type: ignore[import-not-found]
from pyodide.ffi import JsException, create_proxy, to_js  # type: ignore[import-not-found]

from ..aio.rtc import ChannelOptions, ChannelWaiter, IceCandidate, RtcOptions
from ..errors import ProtocolError
from ..link import Link
from .links import BrowserChannelLink


def _js(value: Any) -> Any:
    return to_js(value, dict_converter=js.Object.fromEntries)


def _channel_init(options: ChannelOptions) -> Any:
    init: dict[str, Any] = {"ordered": options.ordered}
    if options.max_retransmits is not None:
        init["maxRetransmits"] = options.max_retransmits
    if options.max_packet_lifetime is not None:
        init["maxPacketLifeTime"] = options.max_packet_lifetime
    if options.negotiated_id is not None:
        init.update(negotiated=True, id=options.negotiated_id)
    return _js(init)


class BrowserRtcPeer:
    """``zmesh.aio.rtc.RtcPeer`` on the page's ``RTCPeerConnection``."""

    def __init__(self, options: RtcOptions, on_candidate: Callable[[IceCandidate], None]) -> None:
        servers = [{k: v for k, v in (("urls", list(s.urls)), ("username", s.username),
                                      ("credential", s.credential)) if v is not None}
                   for s in options.ice_servers]
        self._pc = js.RTCPeerConnection.new(_js({"iceServers": servers, "iceTransportPolicy": options.ice_policy}))
        self._on_candidate = on_candidate
        self._channels = ChannelWaiter()
        self._proxies = [create_proxy(self._candidate), create_proxy(self._state)]
        self._pc.addEventListener("icecandidate", self._proxies[0])
        self._pc.addEventListener("connectionstatechange", self._proxies[1])

    def _candidate(self, event: Any) -> None:
        # JS null arrives as Pyodide's JsNull, not None: read fields defensively
        c = event.candidate
        line = getattr(c, "candidate", None)
        if not isinstance(line, str) or not line:
            self._on_candidate(IceCandidate(""))
            return
        mid, mline = getattr(c, "sdpMid", None), getattr(c, "sdpMLineIndex", None)
        self._on_candidate(IceCandidate(line, mid if isinstance(mid, str) else None,
                                        mline if isinstance(mline, int) else None))

    def _state(self, _event: Any) -> None:  # ICE or DTLS gave up: fail now rather than at the deadline
        if self._pc.connectionState in ("failed", "closed"):
            self._channels.fail(self._pc.connectionState)

    async def offer(self, channels: Sequence[ChannelOptions]) -> str:
        for options in channels:
            self._adopt(self._pc.createDataChannel(options.label, _channel_init(options)), options)
        await self._pc.setLocalDescription(await self._pc.createOffer())
        return self._pc.localDescription.sdp

    async def answer(self, sdp: str, channels: Sequence[ChannelOptions]) -> str:
        for options in channels:
            if options.negotiated_id is not None:
                self._adopt(self._pc.createDataChannel(options.label, _channel_init(options)), options)
            else:
                self._channels.expect(options)

        def on_channel(event: Any) -> None:
            options = self._channels.announced(event.channel.label)
            if options is None:
                event.channel.close()  # a channel the offer did not announce
                return
            self._adopt(event.channel, options)

        self._proxies.append(create_proxy(on_channel))
        self._pc.addEventListener("datachannel", self._proxies[-1])
        await self._describe(self._pc.setRemoteDescription(_js({"type": "offer", "sdp": sdp})))
        await self._pc.setLocalDescription(await self._pc.createAnswer())
        return self._pc.localDescription.sdp

    async def accept_answer(self, sdp: str) -> None:
        await self._describe(self._pc.setRemoteDescription(_js({"type": "answer", "sdp": sdp})))

    async def add_candidate(self, candidate: IceCandidate) -> None:
        init = {"candidate": candidate.candidate, "sdpMid": candidate.mid, "sdpMLineIndex": candidate.mline}
        if candidate.mid is None and candidate.mline is None:
            init["sdpMLineIndex"] = 0
        await self._describe(self._pc.addIceCandidate(_js(init)))

    async def open_links(self) -> dict[str, Link]:
        return await self._channels.open_links()

    async def close(self) -> None:
        self._close()

    def _close(self) -> None:
        self._pc.close()
        for proxy in self._proxies:
            proxy.destroy()
        self._proxies.clear()

    @staticmethod
    async def _describe(promise: Any) -> None:
        """Await a description or candidate the browser may reject as malformed."""
        try:
            await promise
        except JsException as exc:
            raise ProtocolError(f"the browser rejected the peer's WebRTC data: {exc}") from exc

    def _adopt(self, channel: Any, options: ChannelOptions) -> None:
        link = BrowserChannelLink(channel, "webrtc", ordered=options.ordered, reliable=options.reliable,
                                  on_close=self._close)
        mark_open = self._channels.adopt(options, link, channel.readyState == "open")
        self._proxies.append(create_proxy(lambda _event: mark_open()))
        channel.addEventListener("open", self._proxies[-1])


class BrowserRtcBackend:
    def new_peer(self, options: RtcOptions, on_candidate: Callable[[IceCandidate], None]) -> BrowserRtcPeer:
        return BrowserRtcPeer(options, on_candidate)
