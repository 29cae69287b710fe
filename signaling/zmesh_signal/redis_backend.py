"""Several signal servers on one Redis answer as one (docs/signaling.md, "Several servers").

What lives in Redis, under one key prefix, every key with a TTL or a cap:

- the listing: ``d:<peer>`` holds a listed raw descriptor with its expiry as the key's TTL;
  ``expires`` and ``published`` (sorted sets, at most ``capacity`` members) index it;
- its change log for ``?since=``: ``changed`` (peer → sequence number, members of the listing
  only), ``removed`` (tombstones, at most ``max_tombstones``), ``seq``, ``horizon``, ``epoch``;
- rate-limit buckets ``rl:<kind>:<client>`` (a token bucket in Lua, TTL: until it would be full);
- routes ``peer:<peer>`` → the id of the server holding that peer's socket (TTL ``presence_ttl``,
  refreshed while the socket is open);
- onion-service descriptors ``o:<blinded key hex>`` (a hash: revision, expiry, blob; TTL until it
  expires) indexed by ``onion-expires`` (a sorted set, at most ``onion_capacity`` members).

Each server subscribes to its own channel ``server:<id>`` (messages for its peers, errors for its
senders, "your peer signed in elsewhere") and to ``presence`` (who signed in or out, so every
server lists tabs alike; and "the listing changed", so every server's subscribed sockets hear of
a relay that published to another). Admission (pending set, probes, per-source limits) stays in this
server's pure ``Directory``; whatever it lists or unlists is written here, and every read of the
listing comes from here, so all servers and a restarted one serve the same directory at once.

When Redis cannot be reached every call raises ``BackendUnavailable`` (a 503 for HTTP, an
``unavailable`` error on the socket); listing changes not yet written are kept and written when
Redis is back; ``health()`` says ``degraded`` meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from zmesh.backoff import Backoff
from zmesh.crypto.provider import CryptoProvider
from zmesh.descriptor import Descriptor, verify_descriptor
from zmesh.errors import ConfigError, ZmeshError
from zmesh.identity import PeerId
from zmesh.onion.descriptor import SealedInfo

from .backend import BackendUnavailable, LocalPeers, MemoryBackend
from .directory import Changes, Directory, Stored, matches, needs_probe
from .limits import check_rate
from .onion_store import OnionStored

log = logging.getLogger(__name__)

# A change of the listing gets the next sequence number: listed/replaced peers in ``changed``,
# unlisted ones in ``removed`` (the oldest forgotten beyond the cap; ``horizon`` remembers how far).
_NOTE = """
local function note(peer, listed)
  local seq = redis.call('INCR', KEYS[5])
  if listed then
    redis.call('ZADD', KEYS[3], seq, peer)
    redis.call('ZREM', KEYS[4], peer)
  else
    redis.call('ZREM', KEYS[3], peer)
    redis.call('ZADD', KEYS[4], seq, peer)
    while redis.call('ZCARD', KEYS[4]) > tonumber(ARGV[1]) do
      local oldest = redis.call('ZPOPMIN', KEYS[4])
      redis.call('SET', KEYS[6], oldest[2])
    end
  end
end
local function unlist(peer)
  redis.call('DEL', ARGV[2] .. peer)
  redis.call('ZREM', KEYS[1], peer)
  redis.call('ZREM', KEYS[2], peer)
  note(peer, false)
end
"""
# KEYS: expires, published, changed, removed, seq, horizon. ARGV: max_tombstones, key prefix, ...
_LIST = _NOTE + """
local peer, raw, published, expires, ttl, cap = ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6], ARGV[7], tonumber(ARGV[8])
local current = redis.call('ZSCORE', KEYS[2], peer)
if current and tonumber(current) > published then return 'stale' end
if not current and redis.call('ZCARD', KEYS[1]) >= cap then return 'full' end
redis.call('SET', ARGV[2] .. peer, raw, 'PX', ttl)
redis.call('ZADD', KEYS[1], expires, peer)
redis.call('ZADD', KEYS[2], published, peer)
note(peer, true)
return 'ok'
"""
_UNLIST = _NOTE + """
local peer, published = ARGV[3], tonumber(ARGV[4])
local current = redis.call('ZSCORE', KEYS[2], peer)
if not current or tonumber(current) ~= published then return 0 end
unlist(peer)
return 1
"""
_PRUNE = _NOTE + """
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
for _, peer in ipairs(gone) do unlist(peer) end
return #gone
"""
# The onion store's rules (zmesh_signal.onion_store) in one atomic step. Revisions are decimal
# text (64-bit: beyond a Lua number's exact range), compared by length then bytes. KEYS: the
# entry, the expiry index. ARGV: hex key, blob, revision, expires, now, capacity, TTL in ms.
_ONION_PUT = """
local function less(a, b) if #a ~= #b then return #a < #b end return a < b end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[5])
local current = redis.call('HMGET', KEYS[1], 'revision', 'expires')
if current[1] and tonumber(current[2]) > tonumber(ARGV[5]) then
  if less(ARGV[3], current[1]) then return 'stale' end
  if ARGV[3] == current[1] then return 'replay' end
elseif redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[6]) then
  return 'full'
end
redis.call('HSET', KEYS[1], 'revision', ARGV[3], 'expires', ARGV[4], 'blob', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
return 'stored'
"""
# A token bucket on Redis's own clock (servers' clocks may differ). KEYS: bucket; ARGV: rate, burst.
_TAKE = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local state = redis.call('HMGET', KEYS[1], 'tokens', 'last')
local tokens, last = tonumber(state[1]) or burst, tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'last', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return tostring(wait)
"""
# Routes, each one round trip, atomic. KEYS: the peer's route. ARGV: this server's id, then:
# sign in (TTL, presence channel, presence message, server channel prefix, kick message): take the
# route, announce it, and tell the server that held it (if another) to close its older socket;
_SIGN_IN = """
local previous = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
if previous and previous ~= ARGV[1] then redis.call('PUBLISH', ARGV[5] .. previous, ARGV[6]) end
return 1
"""
# sign out (presence channel, message): forget the route only if it is still ours (the peer may
# have signed in on another server since), and announce that;
_SIGN_OUT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""
# forward (server channel prefix, message): publish to the recipient's server; -1 when it has no
# route or its route is here (so it is offline), else how many servers heard (0: that one is gone).
_FORWARD = """
local server = redis.call('GET', KEYS[1])
if not server or server == ARGV[1] then return -1 end
return redis.call('PUBLISH', ARGV[2] .. server, ARGV[3])
"""


class _Batches:
    """Calls made by many coroutines at once go to Redis as one pipeline: one round trip and one
    write per batch instead of per call, so the cost per signed message stays flat as senders
    multiply (bench/signaling.py). One batch is in flight at a time; what arrives meanwhile is the
    next. Each caller awaits its own answer, so the queue holds at most one call per caller
    (a socket's reader, an HTTP request); a batch holds at most ``max_batch`` calls."""

    def __init__(self, redis: aioredis.Redis, max_batch: int = 256) -> None:
        self._redis, self._max = redis, max_batch
        self._queue: list[tuple[Callable[[Any], Any], asyncio.Future]] = []
        self._sender: asyncio.Task | None = None

    async def call(self, add: Callable[[Any], Any]) -> Any:
        """``add(pipeline)`` queues one command; its answer (or its error, raised here)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((add, future))
        if self._sender is None:
            self._sender = loop.create_task(self._send())
        return await future

    async def _send(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:self._max], self._queue[self._max:]
                try:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for add, _ in batch:
                            add(pipe)
                        results = await pipe.execute(raise_on_error=False)
                except (RedisError, OSError, TimeoutError) as exc:
                    results = [exc] * len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():  # its caller may have been cancelled
                        if isinstance(result, Exception):
                            future.set_exception(result)
                        else:
                            future.set_result(result)
        finally:
            self._sender = None

    async def close(self) -> None:
        """Stop sending; queued callers get a ``ConnectionError``."""
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        for _, future in self._queue:
            if not future.done():
                future.set_exception(ConnectionError("the signal server is stopping"))
        self._queue = []

class RedisBackend(MemoryBackend):
    """The listing, rate limits and routes in Redis at ``url`` (``redis://HOST:PORT/DB``)."""

    name = "redis"

    def __init__(self, url: str, directory: Directory, provider: CryptoProvider, *,
                 post: tuple[float, float], get: tuple[float, float], capacity: int,
                 onion_put: tuple[float, float] = (0.5, 20.0), onion_new_key: tuple[float, float] = (1 / 60, 8.0),
                 onion_capacity: int = 4096,
                 max_tombstones: int | None = None, presence_ttl: float = 30.0,
                 prefix: str = "zmesh:signal:", max_connections: int = 64,
                 clock: Callable[[], float] = time.time) -> None:
        for rate, burst in (post, get, onion_put, onion_new_key):
            check_rate(rate, burst)
        if not isinstance(onion_capacity, int) or onion_capacity < 1:
            raise ConfigError(f"max_onion_descriptors must be a positive integer, got {onion_capacity!r}")
        if not presence_ttl >= 3:
            raise ConfigError(f"presence_ttl must be at least 3 seconds, got {presence_ttl!r}")
        try:
            pool = aioredis.BlockingConnectionPool.from_url(
                url, max_connections=max_connections, timeout=5, socket_timeout=5, socket_connect_timeout=2)
        except ValueError as exc:
            raise ConfigError(f"signaling.redis: {exc} (expected redis://HOST:PORT/DB)") from exc
        self.directory, self._provider, self._clock = directory, provider, clock
        self._redis = aioredis.Redis(connection_pool=pool)
        self._rates = {"post": post, "get": get, "onion": onion_put, "onion_new": onion_new_key}
        self._capacity, self._max_tombstones = capacity, max_tombstones or capacity
        self._onion_capacity = onion_capacity
        self._presence_ttl, self._prefix = presence_ttl, prefix
        self.server_id = secrets.token_hex(8)
        self._index = [prefix + name for name in ("expires", "published", "changed", "removed", "seq", "horizon")]
        self._list, self._unlist, self._prune, self._onion_put = (
            self._redis.register_script(s) for s in (_LIST, _UNLIST, _PRUNE, _ONION_PUT))
        self._batches = _Batches(self._redis)
        self._dirty: dict[PeerId, tuple[Descriptor | None, Descriptor | None]] = {}  # listing changes to write
        self._gone: set[PeerId] = set()  # sign-outs not yet written
        self._local: set[PeerId] = set()  # signed in on this server
        self._verified: OrderedDict[bytes, Descriptor] = OrderedDict()  # raw → parsed, at most ``capacity``
        self._peers: LocalPeers | None = None
        self._wake = asyncio.Event()
        self._reachable = True
        self._tasks: list[asyncio.Task] = []
        self._stopped = asyncio.Event()  # set by stop (a cancel alone may be swallowed)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, peers: LocalPeers) -> None:
        self._peers = peers
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._keep_writing()), loop.create_task(self._keep_listening()),
                       loop.create_task(self._keep_routes())]

    async def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self._batches.close()
        try:
            await self._flush()
            if self._local:
                await self._redis.delete(*(self._route(peer) for peer in self._local))
        except BackendUnavailable as exc:
            log.warning("stopping with changes not written to Redis: %s", exc)
        except RedisError as exc:
            log.warning("could not remove this server's routes from Redis: %s", exc)
        await self._redis.aclose()

    async def health(self) -> str:
        try:
            await self._io(self._redis.ping())
        except BackendUnavailable:
            return "degraded"
        return "ok" if self._reachable and not self._dirty and not self._gone else "degraded"

    async def _io(self, call: Any) -> Any:
        """Await one Redis call; any failure is ``BackendUnavailable`` (and ``health`` degraded)."""
        try:
            result = await call
        except (RedisError, OSError, TimeoutError) as exc:
            self._reachable = False
            raise BackendUnavailable(f"the shared store (Redis) is unreachable: {exc}") from exc
        self._reachable = True
        return result

    def _key(self, name: str) -> str:
        return self._prefix + name

    def _route(self, peer: PeerId) -> str:
        return f"{self._prefix}peer:{peer.text}"

    def _channel(self, server: str) -> str:
        return f"{self._prefix}server:{server}"

    # ------------------------------------------------------------------ rate limits

    async def take(self, kind: str, key: str) -> float:
        rate, burst = self._rates[kind]
        bucket = self._key(f"rl:{kind}:{key}")
        return float(await self._io(self._batches.call(lambda pipe: pipe.eval(_TAKE, 1, bucket, rate, burst))))

    # ------------------------------------------------------------------ the listing

    def listing_changed(self, peer: PeerId, old: Descriptor | None, new: Descriptor | None) -> None:
        """The local directory listed, replaced or unlisted ``peer``: write it (soon)."""
        first = self._dirty[peer][0] if peer in self._dirty else old
        self._dirty[peer] = (first, new)
        self._wake.set()

    async def _flush(self) -> dict[PeerId, str]:
        """Write pending listing changes; return the peers Redis refused (``stale``, ``full``)."""
        batch, self._dirty = self._dirty, {}
        if not batch:
            return {}
        written = [peer for peer, (old, new) in batch.items() if (old or new) is not None]
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for peer in written:
                    old, new = batch[peer]
                    head = [self._max_tombstones, self._key("d:"), peer.text]
                    if new is not None:
                        ttl = max(1000, int((new.expires - self._clock()) * 1000))
                        await self._list(keys=self._index, args=[*head, new.raw, new.published, new.expires, ttl,
                                                                 self._capacity], client=pipe)
                    elif old is not None:
                        await self._unlist(keys=self._index, args=[*head, old.published], client=pipe)
                results = await self._io(pipe.execute())
        except BackendUnavailable:
            for peer, (old, new) in batch.items():  # keep them for the next try, newest state last
                self._dirty[peer] = (old, self._dirty[peer][1] if peer in self._dirty else new)
            raise
        refused = {peer: result.decode() for peer, result in zip(written, results, strict=True)
                   if isinstance(result, bytes) and result != b"ok"}
        for peer, why in refused.items():
            log.warning("Redis refused to list %s (%s)", peer.short(), why)
        for peer, result in zip(written, results, strict=True):
            old, new = batch[peer]
            relay = new if new is not None and needs_probe(new) else None
            if result in (b"ok", 1) and (relay is not None or (old is not None and needs_probe(old))):
                await self._announce_relay(peer, relay)
        if len(refused) < len(written):  # the listing in Redis changed: every server tells its subscribers
            assert self._peers is not None
            self._peers.directory_changed()
            await self._publish(self._key("presence"), {"directory": True})
        return refused

    async def _announce_relay(self, peer: PeerId, listed: Descriptor | None) -> None:
        """Tell the other servers that a relay is listed (until when) or not, for the tabs posted
        to them that name it as their ``via``; a server that missed this learns it when such a
        tab is posted (``put``)."""
        await self._publish(self._key("presence"),
                            {"relay": peer.text, "expires": None if listed is None else listed.expires})

    async def put(self, descriptor: Descriptor, now: float, source: str) -> Stored:
        peer = descriptor.peer_id
        vias = [] if needs_probe(descriptor) else list(descriptor.addresses.get("via", ()))
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zscore(self._key("published"), peer.text)
            pipe.exists(self._route(peer))
            published, signed_in = await self._io(pipe.execute())
        if published is not None and published >= descriptor.published:
            return Stored.STALE
        for via in await self._descriptors(vias, now):  # a tab's home relay, listed by any server
            if via is not None and needs_probe(via):
                self.directory.set_listed_elsewhere(via.peer_id, via.expires)
        if signed_in:  # signed in on some server: a tab is listed wherever it posts
            self.directory.set_present(peer, True)
        outcome = self.directory.put(descriptor, now, source=source)
        refused = await self._flush()
        if refused.get(peer) == "full":
            return Stored.FULL
        if refused.get(peer) == "stale":
            return Stored.STALE
        return outcome

    async def changes(self, now: float, cursor: str | None, *, flag: str | None,
                      country: str | None) -> Changes:
        since = _cursor_seq(cursor)
        async with self._redis.pipeline(transaction=True) as pipe:
            await self._prune(keys=self._index, args=[self._max_tombstones, self._key("d:"), now], client=pipe)
            pipe.mget(self._key("epoch"), self._key("seq"), self._key("horizon"))
            if since is not None:
                pipe.zrangebyscore(self._key("changed"), f"({since[1]}", "+inf")
                pipe.zrangebyscore(self._key("removed"), f"({since[1]}", "+inf")
            results = await self._io(pipe.execute())
        epoch, seq, horizon = (None if v is None else v.decode() for v in results[1])
        if epoch is None:
            epoch = await self._new_epoch()
        seq_now = int(seq or 0)
        current = f"{epoch}:{seq_now}"
        if since is None or since[0] != epoch or not int(horizon or 0) <= since[1] <= seq_now:
            peers = [p.decode() for p in await self._io(self._redis.zrange(self._key("expires"), 0, -1))]
            listed = [d for d in await self._descriptors(peers, now) if d is not None]
            return Changes([d for d in listed if matches(d, flag, country)], [], current, True)
        changed, removed = [p.decode() for p in results[2]], [p.decode() for p in results[3]]
        found = await self._descriptors(changed, now)
        listed = [d for d in found if d is not None and matches(d, flag, country)]
        listed_peers = {d.peer_id for d in listed}
        gone = [PeerId.from_text(p) for p in changed + removed]
        return Changes(listed, [p for p in gone if p not in listed_peers], current, False)

    async def _new_epoch(self) -> str:
        await self._io(self._redis.set(self._key("epoch"), secrets.token_hex(8), nx=True))
        return (await self._io(self._redis.get(self._key("epoch")))).decode()

    async def _descriptors(self, peers: list[str], now: float) -> list[Descriptor | None]:
        """The listed descriptors of ``peers`` (None where there is none any more), verified again:
        whoever can write to Redis still cannot list a descriptor nobody signed."""
        if not peers:
            return []
        raws = await self._io(self._redis.mget([self._key(f"d:{p}") for p in peers]))
        return [None if raw is None else await self._verify(raw, now) for raw in raws]

    async def _verify(self, raw: bytes, now: float) -> Descriptor | None:
        descriptor = self._verified.get(raw)
        if descriptor is None:
            try:
                descriptor = await verify_descriptor(self._provider, raw, now=now)
            except ZmeshError as exc:
                log.warning("ignoring a descriptor in Redis that does not verify: %s", exc)
                return None
            self._verified[raw] = descriptor
            while len(self._verified) > self._capacity:
                self._verified.popitem(last=False)
        return descriptor if now < descriptor.expires else None

    async def get(self, peer: PeerId, now: float) -> Descriptor | None:
        return (await self._descriptors([peer.text], now))[0]

    async def count(self, now: float) -> int:
        return int(await self._io(self._redis.zcount(self._key("expires"), f"({now}", "+inf")))

    # ------------------------------------------------------------------ onion descriptors

    async def onion_put(self, info: SealedInfo, blob: bytes, now: float) -> OnionStored:
        key = info.blinded_key.hex()
        ttl = max(1000, int((info.expires - now) * 1000))
        outcome = await self._io(self._onion_put(
            keys=[self._key(f"o:{key}"), self._key("onion-expires")],
            args=[key, blob, str(info.revision), info.expires, now, self._onion_capacity, ttl]))
        return OnionStored(outcome.decode())

    async def onion_get(self, key: bytes, now: float) -> bytes | None:
        """Whatever Redis holds; the caller checks it again, since anyone who can write to Redis
        could have put it there."""
        blob, expires = await self._io(self._redis.hmget(self._key(f"o:{key.hex()}"), "blob", "expires"))
        return blob if blob is not None and expires is not None and now < float(expires) else None

    # ------------------------------------------------------------------ presence and routing

    async def signed_in(self, peer: PeerId) -> None:
        presence = self._message({"peer": peer.text, "present": True})
        kick = self._message({"kind": "kick", "peer": peer.text})
        try:
            await self._route_call(_SIGN_IN, peer, int(self._presence_ttl), self._key("presence"), presence,
                                   self._channel(""), kick)
        except BackendUnavailable:
            self._gone.add(peer)  # the socket is refused: take the route back once Redis answers
            self._wake.set()
            raise
        self._gone.discard(peer)
        self.directory.set_present(peer, True)
        self._local.add(peer)

    async def signed_out(self, peer: PeerId) -> None:
        self._local.discard(peer)
        try:
            await self._sign_out(peer)
        except BackendUnavailable:
            self._gone.add(peer)  # written by ``_keep_writing`` once Redis is back
            self._wake.set()

    async def _sign_out(self, peer: PeerId) -> None:
        absent = self._message({"peer": peer.text, "present": False})
        if await self._route_call(_SIGN_OUT, peer, self._key("presence"), absent):
            self.directory.set_present(peer, False)

    async def forward(self, recipient: PeerId, message: dict[str, str], *, reply_to: PeerId) -> str | None:
        routed = self._message({"kind": "message", "to": recipient.text, "message": message,
                                "reply": self.server_id, "from": reply_to.text})
        heard = await self._route_call(_FORWARD, recipient, self._channel(""), routed)
        return None if heard > 0 else "offline"  # no route, or nobody subscribed: that server is gone

    async def _route_call(self, script: str, peer: PeerId, *args: Any) -> Any:
        route = self._route(peer)
        return await self._io(self._batches.call(lambda pipe: pipe.eval(script, 1, route, self.server_id, *args)))

    def _message(self, data: dict[str, Any]) -> str:
        return json.dumps({**data, "server": self.server_id})

    async def _publish(self, channel: str, data: dict[str, Any]) -> int:
        message = self._message(data)
        return int(await self._io(self._batches.call(lambda pipe: pipe.publish(channel, message))))

    async def _on_message(self, channel: str, data: dict[str, Any]) -> None:
        assert self._peers is not None
        if channel == self._key("presence"):
            if data["server"] == self.server_id:
                return
            if "directory" in data:
                self._peers.directory_changed()
            elif "relay" in data:
                expires = data["expires"]
                self.directory.set_listed_elsewhere(PeerId.from_text(data["relay"]),
                                                    None if expires is None else float(expires))
            else:
                self.directory.set_present(PeerId.from_text(data["peer"]), bool(data["present"]))
        elif data["kind"] == "message":
            code = self._peers.deliver(PeerId.from_text(data["to"]), data["message"])
            if code is not None:
                await self._publish(self._channel(data["reply"]),
                                    {"kind": "error", "to": data["from"], "code": code, "about": data["to"]})
        elif data["kind"] == "error":
            self._peers.report(PeerId.from_text(data["to"]), data["code"], PeerId.from_text(data["about"]))
        elif data["kind"] == "kick":
            await self._peers.kick(PeerId.from_text(data["peer"]))

    # ------------------------------------------------------------------ background tasks

    async def _keep_listening(self) -> None:
        """Hear this server's channel and presence changes; resubscribe after a lost connection."""
        backoff = Backoff()
        while not self._stopped.is_set():
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel(self.server_id), self._key("presence"))
                    backoff.opened()
                    while not self._stopped.is_set():  # checked each second: redis-py may swallow a cancel
                        item = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                        if item is not None and item["type"] == "message":
                            await self._handle(item["channel"].decode(), item["data"])
            except (RedisError, OSError) as exc:
                if self._stopped.is_set():
                    return
                self._reachable = False
                backoff.closed()
                log.warning("lost the Redis subscription (%s); resubscribing", exc)
            await asyncio.sleep(backoff.delay())

    async def _handle(self, channel: str, raw: bytes) -> None:
        try:
            await self._on_message(channel, json.loads(raw))
        except (ValueError, KeyError, TypeError, ConfigError) as exc:
            log.warning("ignoring a malformed message on %s: %s", channel, exc)
        except BackendUnavailable as exc:
            log.warning("could not answer a routed message: %s", exc)

    async def _keep_writing(self) -> None:
        """Write listing changes and sign-outs as they come, retrying while Redis is away. Checks
        ``_stopped`` too: redis-py can swallow a cancel that lands inside a pipeline."""
        while not self._stopped.is_set():
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._flush()
                for peer in list(self._gone):
                    await self._sign_out(peer)
                    self._gone.discard(peer)
            except BackendUnavailable as exc:
                log.warning("listing changes wait for Redis: %s", exc)
                await asyncio.sleep(1.0)
                self._wake.set()

    async def _keep_routes(self) -> None:
        """Refresh the routes of peers signed in here before they expire (and after an outage)."""
        while not self._stopped.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), self._presence_ttl / 3)
            if self._stopped.is_set() or not self._local:
                continue
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for peer in self._local:
                        pipe.set(self._route(peer), self.server_id, ex=int(self._presence_ttl))
                    await self._io(pipe.execute())
            except BackendUnavailable as exc:
                log.warning("could not refresh routes: %s", exc)


def _cursor_seq(cursor: str | None) -> tuple[str, int] | None:
    if cursor is None:
        return None
    epoch, _, seq = cursor.partition(":")
    return (epoch, int(seq)) if seq.isdigit() and len(seq) <= 18 else None
