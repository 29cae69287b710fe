"""``zmesh signal``: the relay directory, WebSocket signaling between PeerIds, the onion-service
descriptor store (``/v1/onion/…``, docs/onion-services.md) and the static files of ``web/``, all on
one origin; its state in memory or shared with other servers through Redis
(``backend.py``, docs/signaling.md).

Nothing a client sends is trusted: descriptors are verified before they are stored (and again by
whoever fetches them), WebSocket peers prove their PeerId (``ws.py``). Every answer, error or
not, is JSON with a short code — never a traceback or an HTML page.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from zmesh.descriptor import DEFAULT_LIFETIME, MAX_DESCRIPTOR_SIZE, Descriptor, verify_descriptor
from zmesh.errors import ConfigError, CryptoError, ProtocolError, TransportError
from zmesh.identity import PeerId
from zmesh.native.crypto import NativeCryptoProvider
from zmesh.netaddr import descriptor_refusal
from zmesh.onion.descriptor import MAX_LIFETIME as MAX_ONION_LIFETIME
from zmesh.onion.descriptor import MAX_SEALED_SIZE, check_sealed

from .backend import BackendUnavailable, MemoryBackend
from .directory import FLAGS, Directory, Stored
from .limits import KeyedLimiter, TooLarge, check_rate, read_limited
from .metrics import SignalMetrics, scrape
from .onion_store import OnionStore, OnionStored
from .probe import Prober
from .ws import SignalHub, WsLimits

log = logging.getLogger(__name__)

_COUNTRY = re.compile(r"[A-Z]{2}")
_CURSOR = re.compile(r"[0-9a-f]{16}:[0-9]{1,18}")
_BLINDED_KEY = re.compile(r"[0-9a-f]{64}")
_ERROR_CODES = {400: "bad_request", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
                413: "too_large", 429: "rate_limited"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class SignalConfig:
    """Everything a server instance may be given; the defaults suit a public server.

    ``clock`` is the wall clock used to check descriptor times (tests move it instead of waiting).
    ``allow_private_addresses`` lists relays on loopback, private and link-local addresses: for a
    private test network only (``network.allow_private_addresses``).
    ``verify_reachability=False`` lists descriptors without probing them or requiring their peer
    to be signed in: only for unit tests of the store, never for a server anyone uses.
    ``redis`` (``redis://HOST:PORT/DB``) shares the listing, rate limits and routes with every
    server on that Redis (``redis_backend.py``); None keeps everything in this process.
    ``presence_ttl`` is how long Redis remembers a peer's server after that server last said so.
    Onion-service descriptors: at most ``max_onion_descriptors`` live ones (a blob is at most
    ``MAX_SEALED_SIZE``, 8 KiB, so 32 MiB at the default), each PUT also spending a token of a
    per-address bucket (``onion_put_rate``/``onion_put_burst``; a service PUTs two descriptors,
    this period's and the next, whenever its intro points change), none expiring more than
    ``onion_max_lifetime`` seconds ahead. A PUT for a blinded key not stored yet also spends a
    token of a slower bucket (``onion_new_key_rate``/``onion_new_key_burst``, one a minute after a
    burst of 8): updates stay cheap, but one address can no longer fill the store with fresh keys
    (it holds at most ``burst + lifetime × rate`` of them, 728 at the defaults, not 4096).
    """

    web_root: Path | None = None
    post_rate: float = 20.0
    post_burst: float = 40.0
    get_rate: float = 200.0
    get_burst: float = 400.0
    max_descriptors: int = 10_000
    max_pending: int = 256
    max_per_source: int = 8
    max_lifetime: int = DEFAULT_LIFETIME
    verify_reachability: bool = True
    probe_concurrency: int = 32
    probe_timeout: float = 10.0
    reprobe_interval: float = 600.0
    ws: WsLimits = field(default_factory=WsLimits)
    clock: Callable[[], float] = time.time
    allow_private_addresses: bool = False
    redis: str | None = None
    presence_ttl: float = 30.0
    max_onion_descriptors: int = 4096
    onion_put_rate: float = 0.5
    onion_put_burst: float = 20.0
    onion_max_lifetime: int = MAX_ONION_LIFETIME
    onion_new_key_rate: float = 1 / 60
    onion_new_key_burst: float = 8.0

    def __post_init__(self) -> None:
        if not isinstance(self.max_lifetime, int) or self.max_lifetime < 60:
            raise ConfigError(f"max_lifetime must be at least 60 seconds, got {self.max_lifetime!r}")
        if not isinstance(self.onion_max_lifetime, int) or not 60 <= self.onion_max_lifetime <= MAX_ONION_LIFETIME:
            raise ConfigError(f"onion_max_lifetime must be 60 to {MAX_ONION_LIFETIME} seconds, "
                              f"got {self.onion_max_lifetime!r}")
        if not isinstance(self.max_onion_descriptors, int) or self.max_onion_descriptors < 1:
            raise ConfigError(f"max_onion_descriptors must be a positive integer, got {self.max_onion_descriptors!r}")
        check_rate(self.onion_put_rate, self.onion_put_burst)
        check_rate(self.onion_new_key_rate, self.onion_new_key_burst)
        if self.redis is not None and not self.redis.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"signaling.redis must be a redis://HOST:PORT/DB URL, got {self.redis!r}")


def _backend(config: SignalConfig, directory: Directory, provider: NativeCryptoProvider) -> MemoryBackend:
    """In memory (the default), or shared with every server on ``config.redis``."""
    if config.redis is None:
        return MemoryBackend(directory, KeyedLimiter(config.post_rate, config.post_burst),
                             KeyedLimiter(config.get_rate, config.get_burst),
                             onion_puts=KeyedLimiter(config.onion_put_rate, config.onion_put_burst),
                             onion_new_keys=KeyedLimiter(config.onion_new_key_rate, config.onion_new_key_burst),
                             onion=OnionStore(config.max_onion_descriptors))
    from .redis_backend import RedisBackend  # redis is needed only by servers that use it

    return RedisBackend(config.redis, directory, provider, post=(config.post_rate, config.post_burst),
                        get=(config.get_rate, config.get_burst), capacity=config.max_descriptors,
                        onion_put=(config.onion_put_rate, config.onion_put_burst),
                        onion_new_key=(config.onion_new_key_rate, config.onion_new_key_burst),
                        onion_capacity=config.max_onion_descriptors,
                        presence_ttl=config.presence_ttl, clock=config.clock)


def json_error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    """The one error shape of the HTTP API."""
    return web.json_response({"error": code, "detail": detail}, status=status, headers=headers)


def http_error(exc: web.HTTPException) -> web.Response:
    """An aiohttp 4xx (no route, wrong method, bad WebSocket handshake…) in the JSON error shape."""
    return json_error(exc.status, _ERROR_CODES.get(exc.status, exc.reason.lower().replace(" ", "_")), exc.reason)


class _Api:
    """The HTTP handlers and the state they share."""

    def __init__(self, config: SignalConfig, metrics: SignalMetrics) -> None:
        self.config, self.metrics = config, metrics
        self.provider = NativeCryptoProvider()
        self.directory = Directory(config.max_descriptors, max_pending=config.max_pending,
                                   max_per_source=config.max_per_source,
                                   reprobe_interval=config.reprobe_interval,
                                   verify=config.verify_reachability,
                                   on_listing=lambda *change: self.backend.listing_changed(*change))
        self.backend = _backend(config, self.directory, self.provider)
        self.prober = Prober(self.provider, self.directory.next_pending, self._probed,
                             concurrency=config.probe_concurrency, timeout=config.probe_timeout,
                             allow_private=config.allow_private_addresses)

    async def start(self, hub: SignalHub) -> None:
        await self.backend.start(hub)
        self.prober.start()

    async def stop(self, _app: web.Application) -> None:
        await self.prober.stop()
        await self.backend.stop()

    def _probed(self, descriptor: Descriptor, reachable: bool) -> None:
        outcome = self.backend.probed(descriptor, reachable, self.config.clock())
        self.metrics.probes.labels("reachable" if reachable else "unreachable").inc()
        if outcome is Stored.FULL:
            log.warning("a relay proved reachable but proven relays fill the directory (max_descriptors)")

    async def health(self, request: web.Request) -> web.Response:
        """``ok``, or ``degraded`` (503, so a load balancer steers clients away) while the shared
        store is unreachable."""
        status = await self.backend.health()
        try:
            relays: int | None = await self.backend.count(self.config.clock())
        except BackendUnavailable:
            relays = None
        return web.json_response({"status": status, "relays": relays,
                                  "pending": self.directory.pending_count()},
                                 status=200 if status == "ok" else 503)

    async def export_metrics(self, request: web.Request) -> web.Response:
        with contextlib.suppress(BackendUnavailable):  # then the gauge keeps its last value
            self.metrics.live_relays.set(await self.backend.count(self.config.clock()))
        return scrape(self.metrics.registry)

    async def publish(self, request: web.Request) -> web.Response:
        try:
            raw = await read_limited(request.content, declared=request.content_length, limit=MAX_DESCRIPTOR_SIZE)
            descriptor = await verify_descriptor(self.provider, raw, now=self.config.clock())
        except TooLarge as exc:
            return self._rejected(413, "too_large", str(exc))
        except ProtocolError as exc:
            return self._rejected(400, "malformed", str(exc))
        except CryptoError as exc:
            return self._rejected(422, "invalid", str(exc))
        private = descriptor_refusal(descriptor.addresses, allow_private=self.config.allow_private_addresses)
        if private is not None:
            return self._rejected(403, "private_address", f"{private}; this directory lists public relays only "
                                  "(a private test network sets network.allow_private_addresses on it)")
        if descriptor.expires - descriptor.published > self.config.max_lifetime:
            return self._rejected(422, "invalid", f"descriptor lifetime is over {self.config.max_lifetime} s")
        outcome = await self.backend.put(descriptor, self.config.clock(), source=request.remote or "unknown")
        if outcome is Stored.STALE:
            return self._rejected(409, "stale", "a descriptor at least as recent is stored for this peer")
        if outcome is Stored.FULL:
            return self._rejected(503, "full", "the directory is full; try again later", {"Retry-After": "60"})
        if outcome is Stored.SOURCE_LIMIT:
            return self._rejected(429, "source_limit", f"your address already publishes {self.config.max_per_source}"
                                  " peers; let one expire first", {"Retry-After": "60"})
        if outcome is Stored.PENDING:
            self.prober.wake()
        self.metrics.descriptors.labels("accepted").inc()
        return web.json_response({"peer_id": descriptor.peer_id.text, "expires": descriptor.expires,
                                  "status": outcome.value}, status=201 if outcome is Stored.LISTED else 202)

    def _rejected(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> web.Response:
        self.metrics.descriptors.labels(code).inc()
        return json_error(status, code, detail, headers)

    async def list_relays(self, request: web.Request) -> web.Response:
        flag, country, since = (request.query.get(k) for k in ("flag", "country", "since"))
        if flag is not None and flag not in FLAGS:
            return json_error(400, "bad_query", f"flag must be one of: {', '.join(FLAGS)}")
        if country is not None:
            if not country.isascii() or not _COUNTRY.fullmatch(country := country.upper()):  # "ß".upper() is "SS"
                return json_error(400, "bad_query", "country must be a two-letter ISO 3166 code like DE")
        if since is not None and not _CURSOR.fullmatch(since):
            return json_error(400, "bad_query", "since must be a cursor from an earlier answer")
        changes = await self.backend.changes(self.config.clock(), since, flag=flag, country=country)
        response = web.json_response({"relays": [base64.b64encode(d.raw).decode() for d in changes.listed],
                                      "removed": [peer.text for peer in changes.removed],
                                      "cursor": changes.cursor, "full": changes.full})
        response.enable_compression()  # gzip or deflate when the client accepts it (aiohttp's clients and browsers do)
        return response

    async def get_relay(self, request: web.Request) -> web.Response:
        try:
            peer = PeerId.from_text(request.match_info["peer_id"])
        except ConfigError as exc:
            return json_error(400, "bad_peer_id", str(exc))
        descriptor = await self.backend.get(peer, self.config.clock())
        if descriptor is None:
            return json_error(404, "not_found", "no live descriptor for that PeerId")
        return web.json_response({"descriptor": base64.b64encode(descriptor.raw).decode()})

    async def put_onion(self, request: web.Request) -> web.Response:
        """Store a sealed onion descriptor under its blinded key, after checking what the store can
        check (``check_sealed``). Blinded keys are never logged: each names one service's period."""
        key = _blinded_key(request)
        if key is None:
            return json_error(400, "bad_key", "the path must end in the blinded key as 64 lowercase hex digits")
        wait = await self.backend.take("onion", request.remote or "unknown")
        if wait:
            return json_error(429, "rate_limited", "too many onion descriptors from your address; slow down",
                              {"Retry-After": str(math.ceil(wait))})
        now = self.config.clock()
        try:
            raw = await read_limited(request.content, declared=request.content_length, limit=MAX_SEALED_SIZE)
            info = await check_sealed(self.provider, raw, now=now, max_lifetime=self.config.onion_max_lifetime)
        except TooLarge as exc:
            return json_error(413, "too_large", str(exc))
        except ProtocolError as exc:
            return json_error(400, "malformed", str(exc))
        except CryptoError as exc:
            return json_error(422, "invalid", str(exc))
        if info.blinded_key != key:
            return json_error(400, "key_mismatch", "the descriptor is signed by another blinded key than the path")
        if await self.backend.onion_get(key, now) is None:
            wait = await self.backend.take("onion_new", request.remote or "unknown")
            if wait:
                return json_error(429, "rate_limited", "too many new onion services from your address; slow down",
                                  {"Retry-After": str(math.ceil(wait))})
        outcome = await self.backend.onion_put(info, raw, now)
        if outcome is OnionStored.STALE:
            return json_error(409, "stale", "a higher revision is stored for this blinded key")
        if outcome is OnionStored.REPLAY:
            return json_error(409, "replay", "this revision is already stored for this blinded key")
        if outcome is OnionStored.FULL:
            return json_error(507, "full", "the onion descriptor store is full; try again later", {"Retry-After": "60"})
        return web.json_response({"revision": info.revision, "expires": info.expires}, status=201)

    async def get_onion(self, request: web.Request) -> web.Response:
        key = _blinded_key(request)
        if key is None:
            return json_error(400, "bad_key", "the path must end in the blinded key as 64 lowercase hex digits")
        now = self.config.clock()
        raw = await self.backend.onion_get(key, now)
        if raw is not None:
            try:  # checked again: a shared store is writable by more than this server
                await check_sealed(self.provider, raw, now=now, max_lifetime=self.config.onion_max_lifetime)
            except (ProtocolError, CryptoError) as exc:
                log.warning("not serving a stored onion descriptor that no longer checks: %s", exc)
                raw = None
        if raw is None:
            return json_error(404, "not_found", "no live onion descriptor for that blinded key")
        return web.json_response({"descriptor": base64.b64encode(raw).decode()})


def _blinded_key(request: web.Request) -> bytes | None:
    text = request.match_info["key"]
    return bytes.fromhex(text) if _BLINDED_KEY.fullmatch(text) else None


def _static(web_root: Path) -> Handler:
    """Files under ``web_root`` (``/`` is its index.html); anything that is not a regular file
    inside it — missing, a directory, or outside through ``..`` or a symlink — is a JSON 404."""
    root = web_root.resolve()

    async def static(request: web.Request) -> web.StreamResponse:
        try:
            target = (root / (request.match_info["path"] or "index.html")).resolve()
            inside = target.is_relative_to(root) and target.is_file()
        except (OSError, ValueError):
            inside = False
        if not inside:
            return json_error(404, "not_found", "there is no such file")
        return web.FileResponse(target)

    return static


def _route_label(request: web.Request) -> str:
    """A bounded label for metrics: the route pattern, never the raw path."""
    resource = request.match_info.route.resource
    return "unmatched" if resource is None else resource.canonical


def _json_errors(metrics: SignalMetrics) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Turn every error into the JSON shape and count every answer by route and status."""
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = http_error(exc)
        except BackendUnavailable as exc:
            log.warning("refusing %s: %s", _route_label(request), exc)
            response = json_error(503, "unavailable", "the shared store (Redis) is unreachable; try again shortly",
                                  {"Retry-After": "5"})
        except Exception:
            log.exception("unexpected error in %s", _route_label(request))
            response = json_error(500, "internal", "the server failed on this request; it has been logged")
        metrics.requests.labels(_route_label(request), str(response.status)).inc()
        return response

    return middleware


def _rate_limit(backend: MemoryBackend) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Per client IP: writes are limited tightly, reads generously. ``/healthz`` still answers
        (``degraded``) when the shared buckets cannot be reached."""
        kind = "get" if request.method in ("GET", "HEAD") else "post"
        try:
            wait = await backend.take(kind, request.remote or "unknown")
        except BackendUnavailable:
            if request.path != "/healthz":
                raise
            wait = 0.0
        if wait:
            return json_error(429, "rate_limited", "too many requests from your address; slow down",
                              {"Retry-After": str(math.ceil(wait))})
        return await handler(request)

    return middleware


def create_app(config: SignalConfig | None = None) -> web.Application:
    """A fresh server: its own directory, sockets, limits and metrics registry."""
    config = config or SignalConfig()
    metrics = SignalMetrics()
    api = _Api(config, metrics)
    hub = SignalHub(api.provider, metrics, config.ws, backend=api.backend)
    app = web.Application(middlewares=[_json_errors(metrics), _rate_limit(api.backend)],
                          client_max_size=MAX_DESCRIPTOR_SIZE)
    app.on_startup.append(lambda _app: api.start(hub))
    app.on_shutdown.append(hub.close_all)
    app.on_cleanup.append(api.stop)
    app.router.add_get("/healthz", api.health)
    app.router.add_get("/metrics", api.export_metrics)
    app.router.add_post("/v1/descriptors", api.publish)
    app.router.add_get("/v1/relays", api.list_relays)
    app.router.add_get("/v1/relays/{peer_id}", api.get_relay)
    app.router.add_put("/v1/onion/{key}", api.put_onion)
    app.router.add_get("/v1/onion/{key}", api.get_onion)
    app.router.add_get("/v1/ws", hub.handle)
    if config.web_root is not None and config.web_root.is_dir():
        app.router.add_get("/{path:.*}", _static(config.web_root))
    return app


@asynccontextmanager
async def serving(config: SignalConfig, host: str, port: int) -> AsyncIterator[int]:
    """Run a server while the block runs; yields the bound port (the OS picks one for port 0)."""
    runner = web.AppRunner(create_app(config), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise TransportError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def run_server(host: str, port: int, *, web_root: Path | None = None,
                     ready: Callable[[int], None] | None = None, allow_private_addresses: bool = False,
                     max_per_source: int = 8, redis: str | None = None) -> None:
    """Serve until cancelled; call ``ready(bound_port)`` once listening."""
    config = SignalConfig(web_root=web_root, allow_private_addresses=allow_private_addresses,
                          max_per_source=max_per_source, redis=redis)
    async with serving(config, host, port) as bound:
        log.info("signal server listening on %s:%d", host, bound)
        if ready is not None:
            ready(bound)
        await asyncio.Event().wait()
