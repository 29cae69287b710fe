"""WebSocket signaling: authenticated PeerIds exchange small signed messages through the server.

A peer proves its PeerId by signing a fresh challenge; every message it sends carries its own
signature over sender, recipient and payload, which the server checks and forwards unchanged so
the recipient can check it again (the server is not trusted). Each connection has a bounded
outbox drained by its own task, so a recipient that stops reading costs a sender an error
("busy"), never a stalled handler or unbounded memory.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from zmesh.crypto.provider import CryptoProvider
from zmesh.encoding import decode_base64
from zmesh.errors import ConfigError, ProtocolError
from zmesh.identity import PeerId
from zmesh.signaling import auth_transcript, message_transcript

from .backend import BackendUnavailable, MemoryBackend
from .limits import TokenBucket
from .metrics import SignalMetrics

CLOSE_REPLACED = 4000


@dataclass(frozen=True, slots=True)
class WsLimits:
    """Per-connection limits. ``max_payload`` is 47 KiB so that its base64 plus the JSON envelope
    still fits one ``max_message`` frame in both directions."""

    max_message: int = 64 * 1024
    max_payload: int = 47 * 1024
    rate: float = 50.0
    burst: float = 100.0
    max_bad_messages: int = 10
    auth_timeout: float = 30.0
    heartbeat: float = 30.0
    outbox: int = 64
    announce_interval: float = 1.0  # at most one "directory" notice per this many seconds (coalesced)


class _Reject(ProtocolError):
    """A message the server answers with ``{"type": "error", ...}``; ``bad`` ones count towards
    closing the connection. The parsers below raise nothing else, whatever a peer sends."""

    def __init__(self, code: str, detail: str, *, bad: bool = True, **extra: str) -> None:
        super().__init__(detail)
        self.code, self.detail, self.bad, self.extra = code, detail, bad, extra

    def reply(self) -> dict[str, str]:
        return {"type": "error", "error": self.code, "detail": self.detail, **self.extra}


def parse_message(text: str) -> dict[str, Any]:
    """One message from a peer as a JSON object with a string ``type``; ``_Reject`` otherwise."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _Reject("bad_message", "messages are JSON objects") from exc
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise _Reject("bad_message", "messages are JSON objects with a string 'type'")
    return data


def _peer_field(data: dict[str, Any], name: str) -> PeerId:
    value = data.get(name)
    if not isinstance(value, str):
        raise _Reject("bad_message", f"'{name}' must be a PeerId in text form")
    try:
        return PeerId.from_text(value)
    except ConfigError as exc:
        raise _Reject("bad_message", f"'{name}': {exc}") from exc


def _b64_field(data: dict[str, Any], name: str) -> bytes:
    try:
        return decode_base64(data.get(name), f"'{name}'")
    except ProtocolError as exc:
        raise _Reject("bad_message", str(exc)) from exc


def auth_fields(data: dict[str, Any]) -> tuple[PeerId, bytes]:
    """The claimed PeerId and challenge signature of an ``auth`` message."""
    if data["type"] != "auth":
        raise _Reject("auth_failed", "the first message must be auth")
    return _peer_field(data, "peer_id"), _b64_field(data, "signature")


def send_fields(data: dict[str, Any]) -> tuple[PeerId, bytes, bytes]:
    """Recipient, payload and signature of a ``send`` message."""
    return _peer_field(data, "to"), _b64_field(data, "payload"), _b64_field(data, "signature")


async def prepare(ws: web.WebSocketResponse, request: web.Request) -> None:
    """``ws.prepare(request)``, with the ``ValueError`` aiohttp raises for a non-ASCII
    Sec-WebSocket-Key turned into the 400 any other bad handshake gets (aiohttp answers it 500)."""
    try:
        await ws.prepare(request)
    except ValueError as exc:
        raise web.HTTPBadRequest(text="Handshake error: malformed Sec-WebSocket-Key") from exc


class _Connection:
    """An authenticated socket and its outbox."""

    def __init__(self, ws: web.WebSocketResponse, peer: PeerId, outbox: int) -> None:
        self.ws, self.peer = ws, peer
        self._outbox: asyncio.Queue[str] = asyncio.Queue(outbox)
        self.subscribed = False  # to "directory" notices

    def offer(self, message: dict[str, str]) -> bool:
        """Queue ``message`` for this peer; False if its outbox is full (it is not reading)."""
        try:
            self._outbox.put_nowait(json.dumps(message))
        except asyncio.QueueFull:
            return False
        return True

    async def pump(self) -> None:
        """Send queued messages until cancelled or the socket breaks (then close it)."""
        try:
            while True:
                await self.ws.send_str(await self._outbox.get())
        except ConnectionError:
            await self.ws.close()


class SignalHub:
    """The ``/v1/ws`` endpoint: authenticates peers and relays their signed messages."""

    def __init__(self, provider: CryptoProvider, metrics: SignalMetrics, limits: WsLimits, *,
                 backend: MemoryBackend) -> None:
        """``backend`` hears each PeerId sign in and leave (the directory lists a tab only while
        it is signed in) and routes messages to peers connected to other servers."""
        self._provider, self._metrics, self._limits = provider, metrics, limits
        self._backend = backend
        self._peers: dict[PeerId, _Connection] = {}
        self._open: set[web.WebSocketResponse] = set()
        self._announce: asyncio.TimerHandle | None = None  # the next "directory" notice, if one is due
        self._announced_at = float("-inf")

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=self._limits.max_message, heartbeat=self._limits.heartbeat)
        await prepare(ws, request)
        self._open.add(ws)
        self._metrics.ws_connections.inc()
        try:
            peer = await self._authenticate(ws)
            if peer is not None:
                await self._serve(_Connection(ws, peer, self._limits.outbox))
        except ConnectionError:
            pass  # the peer vanished while we wrote to it: nobody is left to answer
        finally:
            self._open.discard(ws)
            self._metrics.ws_connections.dec()
            await ws.close()
        return ws

    async def close_all(self, _app: web.Application | None = None) -> None:
        """Close every socket (1001, going away): an ``on_shutdown`` hook, so that stopping the
        server does not wait for clients to hang up."""
        if self._announce is not None:
            self._announce.cancel()
            self._announce = None
        for ws in list(self._open):
            await ws.close(code=1001, message=b"server shutting down")

    async def _authenticate(self, ws: web.WebSocketResponse) -> PeerId | None:
        nonce = self._provider.random_bytes(32)
        await ws.send_json({"type": "challenge", "nonce": base64.b64encode(nonce).decode()})
        try:
            msg = await ws.receive(timeout=self._limits.auth_timeout)
        except TimeoutError:
            return await self._refuse(ws, "no auth message in time")
        if msg.type is WSMsgType.BINARY:
            return await self._refuse(ws, "messages are JSON text")
        if msg.type is not WSMsgType.TEXT:
            return None  # closed, or refused by aiohttp itself (e.g. 1009 for an oversized frame)
        try:
            peer, signature = auth_fields(parse_message(msg.data))
        except _Reject as exc:
            return await self._refuse(ws, exc.detail)
        if not await self._provider.ed25519_verify(peer.key, signature, auth_transcript(nonce)):
            return await self._refuse(ws, "the challenge signature does not verify for that PeerId")
        return peer

    @staticmethod
    async def _refuse(ws: web.WebSocketResponse, detail: str) -> None:
        await ws.send_json({"type": "error", "error": "auth_failed", "detail": detail})
        await ws.close(code=1008, message=b"authentication failed")

    async def _serve(self, conn: _Connection) -> None:
        previous, self._peers[conn.peer] = self._peers.get(conn.peer), conn
        try:
            await self._backend.signed_in(conn.peer)
        except BackendUnavailable:
            if self._peers.get(conn.peer) is conn:
                del self._peers[conn.peer]
            await conn.ws.send_json(_unavailable().reply())
            await conn.ws.close(code=1011, message=b"the shared store is unreachable")
            return
        conn.offer({"type": "ready", "peer_id": conn.peer.text})
        try:
            if previous is not None:
                await previous.ws.close(code=CLOSE_REPLACED, message=b"replaced by a newer connection")
            async with asyncio.TaskGroup() as tasks:
                pump = tasks.create_task(conn.pump())
                await self._read(conn)
                pump.cancel()
        finally:
            if self._peers.get(conn.peer) is conn:
                del self._peers[conn.peer]
                await self._backend.signed_out(conn.peer)

    def deliver(self, recipient: PeerId, message: dict[str, str]) -> str | None:
        """Queue ``message`` for ``recipient`` if it is connected here; else the error code."""
        target = self._peers.get(recipient)
        if target is None:
            return "offline"
        return None if target.offer(message) else "busy"

    def report(self, sender: PeerId, code: str, recipient: PeerId) -> None:
        """A message ``sender`` sent through another server failed there: tell it as if here."""
        conn = self._peers.get(sender)
        if conn is not None and code in _UNDELIVERED:
            conn.offer(_undelivered(code, recipient).reply())

    async def kick(self, peer: PeerId) -> None:
        """``peer`` signed in on another server: this older socket goes (4000)."""
        conn = self._peers.get(peer)
        if conn is not None:
            await conn.ws.close(code=CLOSE_REPLACED, message=b"replaced by a newer connection")

    def directory_changed(self) -> None:
        """Schedule one "directory" notice to every subscribed socket, at most one per
        ``announce_interval``: a burst of publications costs each subscriber one notice (and one
        refetch of what changed), whatever its size. A subscriber whose outbox is full misses that
        notice; the next one, or its own periodic refetch, brings it up to date."""
        if self._announce is not None:
            return  # the notice already due covers this change too
        loop = asyncio.get_running_loop()
        delay = max(0.0, self._announced_at + self._limits.announce_interval - loop.time())
        self._announce = loop.call_later(delay, self._send_notices)

    def _send_notices(self) -> None:
        self._announce = None
        self._announced_at = asyncio.get_running_loop().time()
        for conn in self._peers.values():
            if conn.subscribed:
                self._metrics.ws_messages.labels("directory_notice" if conn.offer({"type": "directory"})
                                                 else "directory_notice_dropped").inc()

    async def _read(self, conn: _Connection) -> None:
        loop = asyncio.get_running_loop()
        bucket = TokenBucket(self._limits.rate, self._limits.burst, now=loop.time())
        bad = 0
        async for msg in conn.ws:
            if msg.type is WSMsgType.ERROR:
                return  # aiohttp has closed it (e.g. 1009 for an oversized frame)
            try:
                if bucket.take(loop.time()):
                    raise _Reject("rate_limited", "too many messages; slow down", bad=False)
                if msg.type is not WSMsgType.TEXT:
                    raise _Reject("bad_message", "messages are JSON text")
                reply = await self._dispatch(conn, parse_message(msg.data))
            except _Reject as exc:
                self._metrics.ws_messages.labels(exc.code).inc()
                bad += exc.bad
                if bad >= self._limits.max_bad_messages:
                    await conn.ws.close(code=1008, message=b"too many bad messages")
                    return
                reply = exc.reply()
            if reply is not None and not conn.offer(reply):
                await conn.ws.close(code=1008, message=b"not reading replies")
                return

    async def _dispatch(self, conn: _Connection, data: dict[str, Any]) -> dict[str, str] | None:
        """Act on one message; return the reply to its sender, if any."""
        if data["type"] == "ping":
            return {"type": "pong"}
        if data["type"] == "send":
            await self._relay(conn.peer, data)
            return None
        if data["type"] == "subscribe":
            if data.get("topic") != "directory":
                raise _Reject("bad_message", "the only topic is 'directory'")
            conn.subscribed = True
            return {"type": "subscribed", "topic": "directory"}
        raise _Reject("bad_message", f"unknown message type {data['type'][:32]!r}")

    async def _relay(self, sender: PeerId, data: dict[str, Any]) -> None:
        recipient, payload, signature = send_fields(data)
        if len(payload) > self._limits.max_payload:
            raise _Reject("too_large", f"a payload is at most {self._limits.max_payload} bytes")
        if not await self._provider.ed25519_verify(sender.key, signature,
                                                   message_transcript(sender, recipient, payload)):
            raise _Reject("bad_signature", "the message signature does not verify for your PeerId")
        message = {"type": "message", "from": sender.text, "payload": base64.b64encode(payload).decode(),
                   "signature": base64.b64encode(signature).decode()}
        code = self.deliver(recipient, message)
        if code == "offline":
            try:
                code = await self._backend.forward(recipient, message, reply_to=sender)
            except BackendUnavailable as exc:
                raise _unavailable(to=recipient.text) from exc
        if code is not None:
            raise _undelivered(code, recipient)
        self._metrics.ws_messages.labels("relayed").inc()


_UNDELIVERED = {"offline": "the recipient is not connected",
                "busy": "the recipient is not reading; try again later"}


def _undelivered(code: str, recipient: PeerId) -> _Reject:
    """The same error for a recipient that is offline or busy, whichever server it was on."""
    return _Reject(code, _UNDELIVERED[code], bad=False, to=recipient.text)


def _unavailable(**extra: str) -> _Reject:
    return _Reject("unavailable", "the shared store (Redis) is unreachable; try again shortly", bad=False, **extra)
