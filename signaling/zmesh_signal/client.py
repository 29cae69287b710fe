"""Client of the signal server, for relays, clients and tests: the directory API over HTTP and
the signaling WebSocket (whose protocol is ``zmesh.signaling``, shared with the browser).

Nothing the server returns is trusted: descriptors come back raw for the caller to verify, and
every relayed message is verified against its sender's PeerId before it is handed out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp

from zmesh.crypto.provider import CryptoProvider
from zmesh.directory_view import RelayUpdate
from zmesh.errors import LinkClosed, TransportError
from zmesh.identity import Identity
from zmesh.onion.directory import MAX_ANSWER
from zmesh.signaling import SignalError, SignalSession, http_answer

from .limits import read_limited
from .ws import WsLimits

__all__ = ["RelayUpdate", "SignalClient", "SignalError", "SignalSession"]


class _AiohttpText:
    """``zmesh.signaling.TextChannel`` over an aiohttp client WebSocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws

    async def send_text(self, text: str) -> None:
        try:
            await self._ws.send_str(text)
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise LinkClosed(f"the signaling socket is closed: {exc}") from exc

    async def receive_text(self, timeout: float | None = None) -> str | None:
        try:
            msg = await self._ws.receive(timeout=timeout)
        except TimeoutError as exc:
            raise TransportError("the signal server did not answer in time") from exc
        if msg.type is aiohttp.WSMsgType.CLOSE:  # the code the server sent, e.g. 4000: replaced
            reason = f": {msg.extra}" if msg.extra else ""
            raise LinkClosed(f"the signal server closed the socket (code {msg.data}{reason})")
        if msg.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            raise LinkClosed(f"the signaling socket is closed (code {self._ws.close_code})")
        return msg.data if msg.type is aiohttp.WSMsgType.TEXT else None

    async def close(self) -> None:
        await self._ws.close()


class SignalClient:
    """The directory API (publish and list descriptors) and the signaling WebSocket of one server,
    or of several sharing one directory (``base_url`` "http://a,http://b"): a server that cannot
    be reached hands over to the next one for the following calls."""

    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self._urls = [url.strip().rstrip("/") for url in base_url.split(",")]
        self._current = 0
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    @property
    def base_url(self) -> str:
        """The server the next call goes to."""
        return self._urls[self._current]

    def _unreachable(self, what: str, exc: Exception) -> TransportError:
        """The current server failed: the next call tries the next one."""
        failed = self.base_url
        self._current = (self._current + 1) % len(self._urls)
        return TransportError(f"cannot {what} at {failed}: {exc}")

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout))
        return self._session

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            async with self._http().request(method, self.base_url + path, **kwargs) as response:
                status, body = response.status, await response.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._unreachable("reach the signal server", exc) from exc
        return http_answer(status, body, f"{method} {path}")

    async def request(self, method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
        """One HTTP exchange with any URL (``zmesh.onion.directory.HttpClient``): the status and
        the body, which may be at most ``MAX_ANSWER`` bytes (``TooLarge`` beyond)."""
        headers = {"Content-Type": "application/octet-stream"} if body is not None else None
        try:
            async with self._http().request(method, url, data=body, headers=headers) as response:
                return response.status, await read_limited(response.content, declared=response.content_length,
                                                           limit=MAX_ANSWER)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise TransportError(f"cannot reach {url.split('/v1/')[0]}: {exc}") from exc

    async def publish(self, raw: bytes) -> dict[str, Any]:
        """Publish a signed descriptor; returns ``{"peer_id", "expires"}``. ``SignalError`` with
        code ``stale`` means the server already holds one at least as recent."""
        return await self._request("POST", "/v1/descriptors", data=raw,
                                   headers={"Content-Type": "application/octet-stream"})

    async def relays(self, flag: str | None = None, country: str | None = None) -> list[bytes]:
        """Raw live descriptors, optionally only ``flag`` ("relay"/"exit") and ``country``; the
        caller must verify each one."""
        return (await self.relay_updates(flag=flag, country=country)).relays

    async def relay_updates(self, since: str | None = None, *, flag: str | None = None,
                            country: str | None = None) -> RelayUpdate:
        """What changed since ``since`` (a cursor from the previous answer), or the whole listing
        without one; the answer comes gzip-compressed."""
        params = {k: v for k, v in (("since", since), ("flag", flag), ("country", country)) if v}
        return RelayUpdate.from_answer(await self._request("GET", "/v1/relays", params=params))

    async def connect_ws(self, identity: Identity, provider: CryptoProvider, *,
                         on_directory: Callable[[], None] | None = None) -> SignalSession:
        """Open the signaling WebSocket and prove ``identity``'s PeerId to the server (subscribed
        to directory notices with ``on_directory``: ``SignalSession.open``)."""
        try:
            ws = await self._http().ws_connect(self.base_url + "/v1/ws", max_msg_size=WsLimits().max_message)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._unreachable("open the signaling socket", exc) from exc
        return await SignalSession.open(_AiohttpText(ws), identity, provider, self._timeout,
                                        on_directory=on_directory)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> SignalClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
