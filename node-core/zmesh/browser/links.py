"""The page's message pipes (imported only under Pyodide): links over ``WebSocket`` and
``RTCDataChannel``, and the text socket the signaling session runs on.

Bytes cross the JS bridge as whole frames (one ``Uint8Array`` per frame, no per-byte loop), and
``recv`` hands the node every frame that has arrived at once, joined up to ``MAX_FRAME_SIZE``: the
node's per-frame work (one crypto call per hop per run of cells, its lock, its events) is then paid
per batch rather than per small frame a relay happened to send. Links apply backpressure through
``bufferedAmount``, so a fast sender cannot make the tab buffer without bound.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import js  # type: ignore[import-not-found]
from pyodide.ffi import create_proxy, to_js  # type: ignore[import-not-found]

from ..cells import CELL_SIZE, MAX_FRAME_SIZE
from ..errors import ConfigError, LinkClosed, TransportError

HIGH_WATER = 1 << 20  # bytes the browser may hold in a socket's send buffer before we wait
MAX_QUEUED_BYTES = 16 << 20  # bytes received and not yet taken by the node, per link
MAX_QUEUED_SIGNALS = 256  # signaling messages received and not yet handled


def _checked(max_queued: int) -> int:
    if max_queued < MAX_FRAME_SIZE:
        raise ConfigError(f"max_queued must be at least one frame ({MAX_FRAME_SIZE} bytes), got {max_queued}")
    return max_queued


def _whole(frame: bytes) -> bool:
    return bool(frame) and not len(frame) % CELL_SIZE


async def _opened(target: Any, what: str, timeout: float) -> None:
    """Wait for a page WebSocket or RTCDataChannel to open; ``TransportError`` if it fails."""
    opened = asyncio.get_running_loop().create_future()
    on_open = create_proxy(lambda _event: opened.done() or opened.set_result(True))
    on_fail = create_proxy(lambda _event: opened.done() or opened.set_exception(
        TransportError(f"cannot open {what}")))
    target.addEventListener("open", on_open)
    target.addEventListener("error", on_fail)
    try:
        await asyncio.wait_for(opened, timeout)
    except TimeoutError as exc:
        raise TransportError(f"{what} did not open in time") from exc
    finally:
        target.removeEventListener("open", on_open)
        target.removeEventListener("error", on_fail)
        on_open.destroy()
        on_fail.destroy()


class BrowserChannelLink:
    """A ``Link`` over the page's ``WebSocket`` or ``RTCDataChannel`` (binary frames; both have
    the same events, ``send`` and ``bufferedAmount``). Listeners are attached at once: the peer
    may speak first (AUTH_CHALLENGE), and a message event with no listener yet is simply lost.

    A page cannot pause a socket's reading, so what has arrived and the node has not yet taken is
    bounded by ``max_queued`` bytes: a peer that sends past it (far beyond what flow control lets
    a legitimate peer have in flight on the circuits of one link) gets its link closed."""

    max_frame_size = MAX_FRAME_SIZE

    def __init__(self, target: Any, transport: str, *, ordered: bool = True, reliable: bool = True,
                 on_close: Any = None, max_queued: int = MAX_QUEUED_BYTES) -> None:
        self._target, self.transport, self.ordered, self.reliable = target, transport, ordered, reliable
        self._on_close_hook = on_close  # e.g. closing the RTCPeerConnection that owns a DataChannel
        self._frames: deque[bytes] = deque()
        self._queued, self._max_queued = 0, _checked(max_queued)
        self._arrived = asyncio.Event()
        self._ended = False  # no frame comes after those in ``_frames``
        self._closed = asyncio.Event()
        self._proxies = [create_proxy(self._on_message), create_proxy(self._on_close)]
        target.binaryType = "arraybuffer"
        target.addEventListener("message", self._proxies[0])
        target.addEventListener("close", self._proxies[1])
        target.addEventListener("error", self._proxies[1])

    @classmethod
    async def dial(cls, url: str, timeout: float = 10.0, *, max_queued: int = MAX_QUEUED_BYTES) -> BrowserChannelLink:
        """A WebSocket link to ``url`` open within ``timeout`` seconds; one that fails or misses
        the deadline is closed, so a tarpit keeps no socket of this tab."""
        limit = _checked(max_queued)  # before a socket exists to leak
        link = cls(js.WebSocket.new(url), "websocket", max_queued=limit)
        try:
            await _opened(link._target, f"a link to {url}", timeout)
        except BaseException:
            await link.close()
            raise
        return link

    def _on_message(self, event: Any) -> None:
        data = event.data
        if self._ended:
            return  # closed for a fault: what is still arriving is not read
        # Frames are binary and bounded, and the node takes them fast enough: anything else ends
        # the link, and only what already arrived (at most ``max_queued``) is still handed over
        # (close() without a code: a page's WebSocket refuses 1003 or 1008, a DataChannel takes none).
        if isinstance(data, str) or data.byteLength > MAX_FRAME_SIZE \
                or self._queued + data.byteLength > self._max_queued:
            self._target.close()
            self._end()
            return
        self._queued += data.byteLength
        self._frames.append(js.Uint8Array.new(data).to_bytes())
        self._arrived.set()

    def _end(self) -> None:
        self._ended = True
        self._arrived.set()
        self._closed.set()

    def _on_close(self, _event: Any) -> None:
        self._end()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def send(self, frame: bytes) -> None:
        if self._target.readyState not in (1, "open"):
            raise LinkClosed(f"{self.transport} link is closed")
        while self._target.bufferedAmount > HIGH_WATER:
            await asyncio.sleep(0.005)
        self._target.send(to_js(frame))

    async def recv(self) -> bytes:
        """The next frame, or the frames that have arrived joined (whole cells, at most
        ``MAX_FRAME_SIZE``). A frame of no whole cells (or none) is handed over alone, for the node
        to refuse as it would anyway."""
        if self._frames:
            # Yield once even so: the crypto rarely awaits, and without this a reader with frames
            # queued would keep the page's main thread (and the stream readers sending SENDMEs)
            # for as long as frames keep arriving. Frames that arrive meanwhile join the batch.
            await asyncio.sleep(0)
        while not self._frames:
            if self._ended:
                raise LinkClosed(f"{self.transport} link closed")
            self._arrived.clear()
            await self._arrived.wait()
        frames = self._frames
        first = frames.popleft()
        batch, size = [first], len(first)
        if _whole(first):
            while frames and _whole(frames[0]) and size + len(frames[0]) <= MAX_FRAME_SIZE:
                size += len(frames[0])
                batch.append(frames.popleft())
        self._queued -= size
        return b"".join(batch) if len(batch) > 1 else first

    async def close(self) -> None:
        self._target.close()
        self._end()
        if self._on_close_hook is not None:
            self._on_close_hook()


class BrowserTextSocket:
    """``zmesh.signaling.TextChannel`` over the page's ``WebSocket``: the signaling connection."""

    def __init__(self, socket: Any) -> None:
        self._socket = socket
        self._messages: asyncio.Queue[str | None | BaseException] = asyncio.Queue()
        self._proxies = [create_proxy(self._on_message), create_proxy(self._on_close)]
        socket.addEventListener("message", self._proxies[0])
        socket.addEventListener("close", self._proxies[1])

    @classmethod
    async def open(cls, url: str, timeout: float = 10.0) -> BrowserTextSocket:
        channel = cls(js.WebSocket.new(url))
        await _opened(channel._socket, "the signaling socket", timeout)
        return channel

    def _on_message(self, event: Any) -> None:
        if self._messages.qsize() >= MAX_QUEUED_SIGNALS:  # a flood we cannot keep up with: end it
            self._socket.close(1008)
            return
        self._messages.put_nowait(event.data if isinstance(event.data, str) else None)

    def _on_close(self, event: Any) -> None:
        self._messages.put_nowait(LinkClosed(f"the signal server closed the socket (code {event.code})"))

    async def send_text(self, text: str) -> None:
        if self._socket.readyState != 1:
            raise LinkClosed("the signaling socket is closed")
        self._socket.send(text)

    async def receive_text(self, timeout: float | None = None) -> str | None:
        try:
            item = await asyncio.wait_for(self._messages.get(), timeout)
        except TimeoutError as exc:
            raise TransportError("the signal server did not answer in time") from exc
        if isinstance(item, BaseException):
            self._messages.put_nowait(item)
            raise item
        return item

    async def close(self) -> None:
        self._socket.close()
