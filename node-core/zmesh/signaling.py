"""The client side of the signal server's WebSocket, independent of the socket underneath.

Native nodes run it over aiohttp, tabs over the page's ``WebSocket``; both need the same
authentication and the same signed messages (WebRTC offers, answers and ICE candidates), so the
protocol lives here once. A peer proves its PeerId by signing the server's challenge; every message
carries the sender's signature over sender, recipient and payload, which the server checks and the
recipient checks again (the server is not trusted).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .crypto.provider import CryptoProvider
from .encoding import decode_base64
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


def http_answer(status: int, body: bytes, what: str) -> dict[str, Any]:
    """The JSON object of a signal server's HTTP answer to ``what``; ``SignalError`` with the
    server's code for a refusal (non-2xx), ``ProtocolError`` for a 2xx that is not a JSON object.
    One reading of the API's answers for every client of it (native, tab, onion store)."""
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested too deep
        answer = None
    if not 200 <= status < 300:
        if isinstance(answer, dict):
            error, detail = answer.get("error"), answer.get("detail")
            raise SignalError(error[:200] if isinstance(error, str) and error else f"http_{status}",
                              detail[:200] if isinstance(detail, str) else "", status=status)
        raise SignalError(f"http_{status}", "the answer was not the API's JSON", status=status)
    if not isinstance(answer, dict):
        raise ProtocolError(f"the signal server answered {what} without a JSON object")
    return answer


class TextChannel(Protocol):
    """A WebSocket carrying text messages. ``receive_text`` returns ``None`` for a non-text
    message and raises ``LinkClosed`` once the socket is closed, ``TransportError`` on timeout."""

    async def send_text(self, text: str) -> None: ...

    async def receive_text(self, timeout: float | None = None) -> str | None: ...

    async def close(self) -> None: ...


NONCE_SIZE = 32  # the server's challenge: we sign nothing longer, so it cannot make us sign its text
_MAX_ERROR_TEXT = 200  # an error code or detail from the server, as far as we repeat it


@dataclass(frozen=True, slots=True)
class Challenge:
    """The server's first message: sign ``nonce`` to prove your PeerId."""

    nonce: bytes


@dataclass(frozen=True, slots=True)
class Ready:
    """The server accepted the proof."""


@dataclass(frozen=True, slots=True)
class Relayed:
    """A message the server relayed, not yet verified against ``sender``."""

    sender: PeerId
    payload: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class DirectoryChanged:
    """The server's notice that the listing changed. It carries nothing to trust: the subscriber
    refetches what changed and verifies it."""


ServerMessage = Challenge | Ready | Relayed | DirectoryChanged | SignalError | None


def _server_text(value: object) -> str:
    return value[:_MAX_ERROR_TEXT] if isinstance(value, str) else ""


def _server_base64(data: dict[str, Any], name: str) -> bytes:
    return decode_base64(data.get(name), f"the signal server's {name!r}")


def parse_server_message(text: str | None) -> ServerMessage:
    """Decode one message from the (untrusted) server. Raises only ``ProtocolError``; a reported
    error comes back as a ``SignalError`` value, a message type we do not know as ``None``."""
    try:
        data = json.loads(text) if isinstance(text, str) else None
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        raise ProtocolError("the signal server sent something other than a JSON object")
    kind = data.get("type")
    if kind == "challenge":
        nonce = _server_base64(data, "nonce")
        if len(nonce) != NONCE_SIZE:
            raise ProtocolError(f"the signal server's challenge is not {NONCE_SIZE} bytes")
        return Challenge(nonce)
    if kind == "ready":
        return Ready()
    if kind == "directory":
        return DirectoryChanged()
    if kind == "error":
        to = data.get("to")
        return SignalError(_server_text(data.get("error")) or "error", _server_text(data.get("detail")),
                           to=to if isinstance(to, str) else None)
    if kind == "message":
        try:
            sender = PeerId.from_text(data.get("from"))  # from_text refuses non-text too
        except ConfigError as exc:
            raise ProtocolError(f"the signal server relayed a message with a bad sender: {exc}") from exc
        return Relayed(sender, _server_base64(data, "payload"), _server_base64(data, "signature"))
    return None


class SignalSession:
    """An authenticated signaling connection for ``identity`` (made by ``open``)."""

    def __init__(self, channel: TextChannel, identity: Identity, provider: CryptoProvider) -> None:
        self._channel, self._identity, self._provider = channel, identity, provider
        self._on_directory: Callable[[], None] | None = None

    @classmethod
    async def open(cls, channel: TextChannel, identity: Identity, provider: CryptoProvider,
                   timeout: float, *, on_directory: Callable[[], None] | None = None) -> SignalSession:
        """Prove ``identity``'s PeerId over a freshly opened ``channel``; closes it on failure.
        With ``on_directory`` the session subscribes to the server's "the listing changed" notices,
        and ``receive`` calls it for each (docs/signaling.md, WebSocket step 5)."""
        session = cls(channel, identity, provider)
        try:
            await session._authenticate(timeout)
            if on_directory is not None:
                session._on_directory = on_directory
                await session._send_json({"type": "subscribe", "topic": "directory"})
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
        the server reports (the socket stays usable), ``ProtocolError`` for a malformed message,
        ``CryptoError`` for one whose signature does not verify, ``LinkClosed`` once the socket is
        closed."""
        while True:
            message = parse_server_message(await self._channel.receive_text())
            if isinstance(message, SignalError):
                raise message
            if isinstance(message, Relayed):
                return await self._verified(message)
            if isinstance(message, DirectoryChanged) and self._on_directory is not None:
                self._on_directory()

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> SignalSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _verified(self, message: Relayed) -> tuple[PeerId, bytes]:
        sender, payload = message.sender, message.payload
        if not await self._provider.ed25519_verify(sender.key, message.signature,
                                                   message_transcript(sender, self.peer_id, payload)):
            raise CryptoError(f"a signaling message claiming to be from {sender.short()} does not verify")
        return sender, payload

    async def _send_json(self, data: dict[str, str]) -> None:
        await self._channel.send_text(json.dumps(data))

    async def _authenticate(self, timeout: float) -> None:
        challenge = parse_server_message(await self._channel.receive_text(timeout))
        if not isinstance(challenge, Challenge):
            raise ProtocolError("the signal server did not start with a challenge")
        signature = await self._provider.ed25519_sign(self._identity.signing_key, auth_transcript(challenge.nonce))
        await self._send_json({"type": "auth", "peer_id": self.peer_id.text,
                               "signature": base64.b64encode(signature).decode()})
        answer = parse_server_message(await self._channel.receive_text(timeout))
        if isinstance(answer, SignalError):
            raise answer
        if not isinstance(answer, Ready):
            raise ProtocolError("the signal server did not confirm the authentication")
