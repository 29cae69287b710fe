"""The client side of the signal server's WebSocket, independent of the socket underneath.

Native nodes run it over aiohttp, tabs over the page's ``WebSocket``; both need the same
authentication and the same signed messages (WebRTC offers, answers and ICE candidates), so the
protocol lives here once. A peer proves its PeerId by signing the server's challenge; every message
carries the sender's signature over sender, recipient and payload, which the server checks and the
recipient checks again (the server is not trusted).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Protocol

from .crypto.provider import CryptoProvider
from .errors import ConfigError, CryptoError, ProtocolError, TransportError
from .identity import Identity, PeerId

AUTH_DOMAIN = b"zmesh-signal-auth-v1\x00"
MESSAGE_DOMAIN = b"zmesh-signal-msg-v1\x00"


def auth_transcript(nonce: bytes) -> bytes:
    """What a peer signs to prove its PeerId to the server."""
    return AUTH_DOMAIN + nonce


def message_transcript(sender: PeerId, recipient: PeerId, payload: bytes) -> bytes:
    """What a sender signs for one relayed message (binds both ends, so it cannot be redirected)."""
    return MESSAGE_DOMAIN + sender.key + recipient.key + payload


class SignalError(TransportError):
    """The server refused a request: ``code`` is its short error code (``stale``, ``offline``…),
    ``status`` the HTTP status (None on the WebSocket), ``to`` the recipient an error is about."""

    def __init__(self, code: str, detail: str, *, status: int | None = None, to: str | None = None) -> None:
        super().__init__(f"signal server: {code}: {detail}" if detail else f"signal server: {code}")
        self.code, self.detail, self.status, self.to = code, detail, status, to


class TextChannel(Protocol):
    """A WebSocket carrying text messages. ``receive_text`` returns ``None`` for a non-text
    message and raises ``LinkClosed`` once the socket is closed, ``TransportError`` on timeout."""

    async def send_text(self, text: str) -> None: ...

    async def receive_text(self, timeout: float | None = None) -> str | None: ...

    async def close(self) -> None: ...


def decode_base64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise ProtocolError(f"the signal server sent a {what} that is not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise ProtocolError(f"the signal server sent a {what} that is not valid base64") from exc


class SignalSession:
    """An authenticated signaling connection for ``identity`` (made by ``open``)."""

    def __init__(self, channel: TextChannel, identity: Identity, provider: CryptoProvider) -> None:
        self._channel, self._identity, self._provider = channel, identity, provider

    @classmethod
    async def open(cls, channel: TextChannel, identity: Identity, provider: CryptoProvider,
                   timeout: float) -> SignalSession:
        """Prove ``identity``'s PeerId over a freshly opened ``channel``; closes it on failure."""
        session = cls(channel, identity, provider)
        try:
            await session._authenticate(timeout)
        except BaseException:
            await channel.close()
            raise
        return session

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
        await self._channel.close()

    async def __aenter__(self) -> SignalSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _verified(self, data: dict[str, Any]) -> tuple[PeerId, bytes]:
        try:
            sender = PeerId.from_text(data.get("from") if isinstance(data.get("from"), str) else "")
        except ConfigError as exc:
            raise ProtocolError(f"the signal server relayed a message with a bad sender: {exc}") from exc
        payload = decode_base64(data.get("payload"), "payload")
        signature = decode_base64(data.get("signature"), "signature")
        if not await self._provider.ed25519_verify(sender.key, signature,
                                                   message_transcript(sender, self.peer_id, payload)):
            raise CryptoError(f"a signaling message claiming to be from {sender.short()} does not verify")
        return sender, payload

    async def _send_json(self, data: dict[str, str]) -> None:
        await self._channel.send_text(json.dumps(data))

    async def _receive_json(self, timeout: float | None = None) -> dict[str, Any]:
        text = await self._channel.receive_text(timeout)
        try:
            data = json.loads(text) if text is not None else None
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
            self._identity.signing_key, auth_transcript(decode_base64(challenge.get("nonce"), "nonce")))
        await self._send_json({"type": "auth", "peer_id": self.peer_id.text,
                               "signature": base64.b64encode(signature).decode()})
        answer = await self._receive_json(timeout)
        if answer.get("type") == "error":
            raise SignalError(str(answer.get("error")), str(answer.get("detail", "")))
        if answer.get("type") != "ready":
            raise ProtocolError("the signal server did not confirm the authentication")
