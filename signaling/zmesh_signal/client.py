"""Client of the signal server, for relays, clients and tests: the directory API over HTTP and
the signaling WebSocket.

Nothing the server returns is trusted: descriptors come back raw for the caller to verify, and
every relayed message is verified here against its sender's PeerId before it is handed out.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import aiohttp

from zmesh.crypto.provider import CryptoProvider
from zmesh.errors import ConfigError, CryptoError, LinkClosed, ProtocolError, TransportError
from zmesh.identity import Identity, PeerId

from .ws import WsLimits, auth_transcript, message_transcript


class SignalError(TransportError):
    """The server refused a request: ``code`` is its short error code (``stale``, ``offline``…),
    ``status`` the HTTP status (None on the WebSocket), ``to`` the recipient an error is about."""

    def __init__(self, code: str, detail: str, *, status: int | None = None, to: str | None = None) -> None:
        super().__init__(f"signal server: {code}: {detail}" if detail else f"signal server: {code}")
        self.code, self.detail, self.status, self.to = code, detail, status, to


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise ProtocolError(f"the signal server sent a {what} that is not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise ProtocolError(f"the signal server sent a {what} that is not valid base64") from exc


class SignalSocket:
    """An authenticated signaling connection for ``identity``."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, identity: Identity, provider: CryptoProvider) -> None:
        self._ws, self._identity, self._provider = ws, identity, provider

    @property
    def peer_id(self) -> PeerId:
        return self._identity.peer_id

    async def send(self, to: PeerId, payload: bytes) -> None:
        """Sign and send ``payload`` to ``to``. Delivery problems (``offline``, ``busy``) come back
        later from ``receive()`` as ``SignalError``."""
        signature = await self._provider.ed25519_sign(
            self._identity.signing_key, message_transcript(self.peer_id, to, payload))
        await self._send_json({"type": "send", "to": to.text, "payload": base64.b64encode(payload).decode(),
                               "signature": base64.b64encode(signature).decode()})

    async def receive(self) -> tuple[PeerId, bytes]:
        """The next verified message as ``(sender, payload)``. Raises ``SignalError`` for an error
        the server reports (the socket stays usable), ``CryptoError`` for a message whose
        signature does not verify, ``LinkClosed`` once the socket is closed."""
        while True:
            data = await self._receive_json()
            if data.get("type") == "error":
                raise SignalError(str(data.get("error")), str(data.get("detail", "")), to=data.get("to"))
            if data.get("type") == "message":
                return await self._verified(data)

    async def close(self) -> None:
        await self._ws.close()

    async def __aenter__(self) -> SignalSocket:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _verified(self, data: dict[str, Any]) -> tuple[PeerId, bytes]:
        try:
            sender = PeerId.from_text(data.get("from") if isinstance(data.get("from"), str) else "")
        except ConfigError as exc:
            raise ProtocolError(f"the signal server relayed a message with a bad sender: {exc}") from exc
        payload, signature = _b64(data.get("payload"), "payload"), _b64(data.get("signature"), "signature")
        if not await self._provider.ed25519_verify(sender.key, signature,
                                                   message_transcript(sender, self.peer_id, payload)):
            raise CryptoError(f"a signaling message claiming to be from {sender.short()} does not verify")
        return sender, payload

    async def _send_json(self, data: dict[str, str]) -> None:
        try:
            await self._ws.send_str(json.dumps(data))
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise LinkClosed(f"the signaling socket is closed: {exc}") from exc

    async def _receive_json(self, timeout: float | None = None) -> dict[str, Any]:
        try:
            msg = await self._ws.receive(timeout=timeout)
        except TimeoutError as exc:
            raise TransportError("the signal server did not answer in time") from exc
        if msg.type is aiohttp.WSMsgType.CLOSE:  # the code the server sent, e.g. 4000: replaced
            reason = f": {msg.extra}" if msg.extra else ""
            raise LinkClosed(f"the signal server closed the socket (code {msg.data}{reason})")
        if msg.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            raise LinkClosed(f"the signaling socket is closed (code {self._ws.close_code})")
        try:
            data = json.loads(msg.data) if msg.type is aiohttp.WSMsgType.TEXT else None
        except (ValueError, RecursionError):
            data = None
        if not isinstance(data, dict):
            raise ProtocolError("the signal server sent something other than a JSON object")
        return data

    async def _authenticate(self, timeout: float) -> None:
        challenge = await self._receive_json(timeout)
        if challenge.get("type") != "challenge":
            raise ProtocolError("the signal server did not start with a challenge")
        signature = await self._provider.ed25519_sign(
            self._identity.signing_key, auth_transcript(_b64(challenge.get("nonce"), "nonce")))
        await self._send_json({"type": "auth", "peer_id": self.peer_id.text,
                               "signature": base64.b64encode(signature).decode()})
        answer = await self._receive_json(timeout)
        if answer.get("type") == "error":
            raise SignalError(str(answer.get("error")), str(answer.get("detail", "")))
        if answer.get("type") != "ready":
            raise ProtocolError("the signal server did not confirm the authentication")


class SignalClient:
    """The directory API (publish and list descriptors) and the signaling WebSocket of one server."""

    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout))
        return self._session

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            async with self._http().request(method, self.base_url + path, **kwargs) as response:
                status, body = response.status, await response.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise TransportError(f"cannot reach the signal server at {self.base_url}: {exc}") from exc
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if not 200 <= status < 300:
            if isinstance(answer, dict):
                raise SignalError(str(answer.get("error", status)), str(answer.get("detail", "")), status=status)
            raise SignalError(f"http_{status}", "the answer was not the API's JSON", status=status)
        if not isinstance(answer, dict):
            raise ProtocolError(f"the signal server answered {method} {path} without a JSON object")
        return answer

    async def publish(self, raw: bytes) -> dict[str, Any]:
        """Publish a signed descriptor; returns ``{"peer_id", "expires"}``. ``SignalError`` with
        code ``stale`` means the server already holds one at least as recent."""
        return await self._request("POST", "/v1/descriptors", data=raw,
                                   headers={"Content-Type": "application/octet-stream"})

    async def relays(self, flag: str | None = None, country: str | None = None) -> list[bytes]:
        """Raw live descriptors, optionally only ``flag`` ("relay"/"exit") and ``country``; the
        caller must verify each one."""
        params = {k: v for k, v in (("flag", flag), ("country", country)) if v}
        listed = (await self._request("GET", "/v1/relays", params=params)).get("relays")
        if not isinstance(listed, list):
            raise ProtocolError("the signal server's relay list is malformed")
        return [_b64(item, "descriptor") for item in listed]

    async def connect_ws(self, identity: Identity, provider: CryptoProvider) -> SignalSocket:
        """Open the signaling WebSocket and prove ``identity``'s PeerId to the server."""
        try:
            ws = await self._http().ws_connect(self.base_url + "/v1/ws", max_msg_size=WsLimits().max_message)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise TransportError(f"cannot open the signaling socket at {self.base_url}: {exc}") from exc
        sock = SignalSocket(ws, identity, provider)
        try:
            await sock._authenticate(self._timeout)
        except BaseException:
            await ws.close()
            raise
        return sock

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> SignalClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
