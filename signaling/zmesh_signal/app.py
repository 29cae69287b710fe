"""``zmesh signal``: directory of signed descriptors, WebSocket signaling between PeerIds, static
files — all on one origin, in memory (docs/signaling.md).

Nothing a client sends is trusted: descriptors are verified before they are stored (and again by
whoever fetches them), WebSocket peers prove their PeerId by signing a challenge, and every
relayed message carries the sender's signature so the recipient can check it end to end.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import mimetypes
import os
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from zmesh.crypto.native import NativeCryptoProvider
from zmesh.descriptor import MAX_DESCRIPTOR_SIZE, Descriptor, verify_descriptor
from zmesh.errors import ConfigError, CryptoError, ProtocolError
from zmesh.identity import PeerId

log = logging.getLogger(__name__)
# Browsers load ES modules and WebAssembly only with these types (the page boots Pyodide from here).
mimetypes.add_type("text/javascript", ".mjs")
mimetypes.add_type("application/wasm", ".wasm")

AUTH_DOMAIN = b"zmesh-signal-auth-v1\x00"
MESSAGE_DOMAIN = b"zmesh-signal-msg-v1\x00"
MAX_WS_MESSAGE = 64 * 1024
MAX_PAYLOAD = 48 * 1024
MAX_BAD_MESSAGES = 10


class TokenBucket:
    """``rate`` tokens per second up to ``burst``: a cheap per-key rate limit."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self._state: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        """0 if allowed, else seconds until a token is available."""
        now = time.monotonic()
        tokens, last = self._state.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1:
            self._state[key] = (tokens - 1, now)
            if len(self._state) > 10_000:  # forget the oldest keys: bounded memory
                for stale in list(self._state)[:5_000]:
                    del self._state[stale]
            return 0.0
        self._state[key] = (tokens, now)
        return (1 - tokens) / self.rate


def error(status: int, code: str, detail: str, **headers: str) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status, headers=headers)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("zmesh_signal_requests", "HTTP requests", ["route", "status"],
                                registry=self.registry)
        self.descriptors = Counter("zmesh_signal_descriptors", "descriptor submissions", ["result"],
                                   registry=self.registry)
        self.ws_connections = Gauge("zmesh_signal_ws_connections", "authenticated WebSockets",
                                    registry=self.registry)
        self.ws_messages = Counter("zmesh_signal_ws_messages", "WebSocket messages", ["result"],
                                   registry=self.registry)
        self.relays = Gauge("zmesh_signal_live_relays", "live relay descriptors", registry=self.registry)


class SignalServer:
    def __init__(self, *, web_root: Path | None = None, post_rate: float = 20.0, post_burst: float = 40.0,
                 ws_rate: float = 50.0, ws_burst: float = 100.0) -> None:
        self.provider = NativeCryptoProvider()
        self.web_root = web_root
        self.descriptors: dict[PeerId, Descriptor] = {}
        self.sockets: dict[PeerId, web.WebSocketResponse] = {}
        self.metrics = Metrics()
        self.post_limit = TokenBucket(post_rate, post_burst)
        self.ws_rate, self.ws_burst = ws_rate, ws_burst

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors], client_max_size=MAX_DESCRIPTOR_SIZE)
        app.router.add_get("/healthz", self.health)
        app.router.add_get("/metrics", self.export_metrics)
        app.router.add_post("/v1/descriptors", self.publish)
        app.router.add_get("/v1/relays", self.list_relays)
        app.router.add_get("/v1/relays/{peer}", self.get_relay)
        app.router.add_get("/v1/ws", self.websocket)
        if self.web_root is not None and self.web_root.is_dir():
            app.router.add_get("/", self.index)
            app.router.add_static("/", self.web_root, show_index=False)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        """Every answer is JSON with an error code: never a traceback or an HTML error page."""
        try:
            response = await handler(request)
        except web.HTTPRequestEntityTooLarge:
            response = error(413, "too_large", f"the body exceeds {MAX_DESCRIPTOR_SIZE} bytes")
        except web.HTTPException as exc:
            response = error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "other"
        self.metrics.requests.labels(route, str(response.status)).inc()
        return response

    def live(self) -> list[Descriptor]:
        now = time.time()
        for peer in [p for p, d in self.descriptors.items() if not d.is_live(now)]:
            del self.descriptors[peer]
        self.metrics.relays.set(len(self.descriptors))
        return list(self.descriptors.values())

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "relays": len(self.live())})

    async def export_metrics(self, request: web.Request) -> web.Response:
        self.live()
        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def index(self, request: web.Request) -> web.FileResponse:
        assert self.web_root is not None
        return web.FileResponse(self.web_root / "index.html")

    async def publish(self, request: web.Request) -> web.Response:
        wait = self.post_limit.take(request.remote or "?")
        if wait:
            return error(429, "rate_limited", "too many submissions; slow down",
                         **{"Retry-After": str(max(1, round(wait)))})
        if (request.content_length or 0) > MAX_DESCRIPTOR_SIZE:
            self.metrics.descriptors.labels("too_large").inc()
            return error(413, "too_large", f"a descriptor is at most {MAX_DESCRIPTOR_SIZE} bytes")
        raw = await request.content.read(MAX_DESCRIPTOR_SIZE + 1)
        if len(raw) > MAX_DESCRIPTOR_SIZE:
            self.metrics.descriptors.labels("too_large").inc()
            return error(413, "too_large", f"a descriptor is at most {MAX_DESCRIPTOR_SIZE} bytes")
        try:
            descriptor = await verify_descriptor(self.provider, raw, now=time.time())
        except ProtocolError as exc:
            self.metrics.descriptors.labels("malformed").inc()
            return error(400, "malformed", str(exc))
        except CryptoError as exc:
            self.metrics.descriptors.labels("invalid").inc()
            return error(422, "invalid", str(exc))
        current = self.descriptors.get(descriptor.peer_id)
        if current is not None and current.published >= descriptor.published:
            self.metrics.descriptors.labels("stale").inc()
            return error(409, "stale", "a descriptor at least as new is already stored")
        self.descriptors[descriptor.peer_id] = descriptor
        self.metrics.descriptors.labels("accepted").inc()
        return web.json_response({"peer_id": descriptor.peer_id.text, "expires": descriptor.expires}, status=201)

    async def list_relays(self, request: web.Request) -> web.Response:
        flag, country = request.query.get("flag"), request.query.get("country", "").upper()
        if flag not in (None, "exit", "relay"):
            return error(400, "bad_query", "flag must be exit or relay")
        relays = [d for d in self.live()
                  if (flag != "exit" or d.capabilities.exit) and (flag != "relay" or d.capabilities.relay)
                  and (not country or d.capabilities.country == country)]
        return web.json_response({"relays": [base64.b64encode(d.raw).decode() for d in relays]})

    async def get_relay(self, request: web.Request) -> web.Response:
        try:
            peer = PeerId.from_text(request.match_info["peer"])
        except ConfigError as exc:
            return error(400, "bad_peer_id", str(exc))
        descriptor = self.descriptors.get(peer)
        if descriptor is None or not descriptor.is_live(time.time()):
            return error(404, "not_found", "no live descriptor for that PeerId")
        return web.json_response({"descriptor": base64.b64encode(descriptor.raw).decode()})

    # ------------------------------------------------------------------ WebSocket signaling

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_WS_MESSAGE, heartbeat=30.0)
        await ws.prepare(request)
        nonce = os.urandom(32)
        await ws.send_json({"type": "challenge", "nonce": base64.b64encode(nonce).decode()})
        peer = await self._authenticate(ws, nonce)
        if peer is None:
            return ws
        previous = self.sockets.pop(peer, None)
        if previous is not None:
            await previous.close(code=4000, message=b"replaced by a newer connection")
        self.sockets[peer] = ws
        self.metrics.ws_connections.set(len(self.sockets))
        await ws.send_json({"type": "ready", "peer_id": peer.text})
        try:
            await self._relay_messages(ws, peer)
        finally:
            if self.sockets.get(peer) is ws:
                del self.sockets[peer]
            self.metrics.ws_connections.set(len(self.sockets))
        return ws

    async def _authenticate(self, ws: web.WebSocketResponse, nonce: bytes) -> PeerId | None:
        try:
            msg = await ws.receive(timeout=30)
            data = json.loads(msg.data) if msg.type == WSMsgType.TEXT else None
            if not isinstance(data, dict) or data.get("type") != "auth":
                raise ValueError("expected an auth message")
            peer = PeerId.from_text(data["peer_id"])
            signature = base64.b64decode(data["signature"], validate=True)
        except (ValueError, KeyError, TypeError, ConfigError, TimeoutError):
            await ws.send_json({"type": "error", "error": "auth_failed", "detail": "send a signed auth message"})
            await ws.close(code=1008)
            return None
        if not await self.provider.ed25519_verify(peer.key, signature, AUTH_DOMAIN + nonce):
            await ws.send_json({"type": "error", "error": "auth_failed", "detail": "bad signature"})
            await ws.close(code=1008)
            return None
        return peer

    async def _relay_messages(self, ws: web.WebSocketResponse, sender: PeerId) -> None:
        bucket, bad = TokenBucket(self.ws_rate, self.ws_burst), 0
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                break
            if bucket.take("ws"):
                await ws.send_json({"type": "error", "error": "rate_limited"})
                continue
            problem = await self._handle(ws, sender, msg.data)
            if problem is not None:
                bad += 1
                self.metrics.ws_messages.labels("rejected").inc()
                await ws.send_json({"type": "error", **problem})
                if bad >= MAX_BAD_MESSAGES:
                    await ws.close(code=1008, message=b"too many bad messages")
                    return

    async def _handle(self, ws: web.WebSocketResponse, sender: PeerId, text: str) -> dict | None:
        try:
            data = json.loads(text)
            kind = data["type"]
        except (ValueError, KeyError, TypeError):
            return {"error": "bad_message", "detail": "messages are JSON objects with a type"}
        if kind == "ping":
            await ws.send_json({"type": "pong"})
            return None
        if kind != "send":
            return {"error": "bad_message", "detail": f"unknown message type {kind!r}"}
        try:
            recipient = PeerId.from_text(data["to"])
            payload = base64.b64decode(data["payload"], validate=True)
            signature = base64.b64decode(data["signature"], validate=True)
        except (ValueError, KeyError, TypeError, ConfigError):
            return {"error": "bad_message", "detail": "send needs to, payload and signature"}
        if len(payload) > MAX_PAYLOAD:
            return {"error": "too_large", "detail": f"payload is limited to {MAX_PAYLOAD} bytes"}
        signed = MESSAGE_DOMAIN + sender.key + recipient.key + payload
        if not await self.provider.ed25519_verify(sender.key, signature, signed):
            return {"error": "bad_signature", "detail": "the message signature does not verify"}
        target = self.sockets.get(recipient)
        if target is None or target.closed:
            return {"error": "offline", "to": recipient.text}
        await target.send_json({"type": "message", "from": sender.text, "payload": data["payload"],
                                "signature": data["signature"]})
        self.metrics.ws_messages.labels("relayed").inc()
        return None


async def run_server(host: str, port: int, *, web_root: Path | None = None,
                     ready: Callable[[int], None] | None = None) -> None:
    """Serve until cancelled; ``ready(bound_port)`` once listening (port 0 picks one)."""
    runner = web.AppRunner(SignalServer(web_root=web_root).app(), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("signal server on http://%s:%d", host, bound)
        if ready is not None:
            ready(bound)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
