"""Onion services over a ``NodeDriver``: hosting one (``OnionService``) and reaching one
(``OnionClient``); docs/onion-services.md, "Introduction and rendezvous".

The protocol is the node's (``zmesh.points`` at relays, ``zmesh.onion.endpoints`` at the ends); this
module decides which circuits to build and when, and waits for the node's events. Where descriptors
live is behind ``DescriptorDirectory``: ``StoreDescriptors`` is the signal server's ``/v1/onion/``
store, over any ``HttpClient`` (natively the ``SignalClient``, in a tab the page's fetch). Every
circuit is a normal 3-hop path, entering at entry guards when there is a ``GuardManager`` (``_Paths``).

Service: keeps ``intro_points`` intro circuits (distinct relays, drawn like any path; rebuilt when one
closes, rotated after ``intro_lifetime``), republishes its descriptor whenever that set changes, and
serves introductions fairly: each intro circuit has its own bounded queue (``max_pending_per_intro``)
and the queues are taken round-robin, so a flood through one intro point cannot starve the others.
An introduction seen before (``replay_cache`` entries, keyed by a hash of its encrypted part) is
dropped before any crypto. At most ``max_rendezvous_builds`` rendezvous circuits are built at once.

Client: caches descriptors (``descriptor_ttl``) and joined circuits (one per address, reused for
later streams), draws a rendezvous relay, and introduces itself through the intro points in random
order until one acknowledges.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import random
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..cells import EndReason
from ..crypto.provider import CryptoProvider
from ..descriptor import Descriptor
from ..errors import CircuitError, ConfigError, CryptoError, ProtocolError, ZmeshError
from ..events import (
    CircuitClosed,
    Event,
    IntroduceAcked,
    IntroduceReceived,
    IntroEstablished,
    RendezvousEstablished,
    RendezvousJoined,
)
from ..guards import GuardManager
from ..identity import OnionKeys, PeerId
from ..onion.address import decode_address, encode_address
from ..onion.blinding import DEFAULT_PERIOD, time_period
from ..onion.descriptor import IntroPoint, ServiceDescriptor, seal_descriptor
from ..onion.directory import HttpClient, fetch_descriptor, publish_descriptor
from ..onion.introduce import RendezvousPoint, ServiceKeys, answer_introduction, open_introduction, seal_introduction
from ..onion.wire import COOKIE_SIZE, IntroduceStatus
from ..path import PathSelector
from .building import build_around_failures
from .driver import IncomingStream, MeshStream, NodeDriver
from .tasks import OwnedTasks

log = logging.getLogger(__name__)

Relays = Callable[[bool], Awaitable[list[Descriptor]]]  # relays(refresh) -> the directory's relays
StreamHandler = Callable[[IncomingStream], Awaitable[None]]


class DescriptorDirectory(Protocol):
    """Where service descriptors are published and looked up (the signal server's ``/v1/onion/`` store)."""

    async def publish(self, keys: ServiceKeys, descriptor: ServiceDescriptor) -> None: ...

    async def lookup(self, address: str) -> ServiceDescriptor: ...


@dataclass(frozen=True, slots=True)
class OnionLimits:
    """Bounds and timings of both ends, with safe defaults."""

    intro_points: int = 3
    intro_lifetime: float = 6 * 3600.0
    max_pending_per_intro: int = 16
    replay_cache: int = 4096
    max_rendezvous_builds: int = 8
    step_timeout: float = 30.0  # one INTRO_ESTABLISHED / INTRODUCE_ACK / RENDEZVOUS2 wait
    republish_interval: float = 3600.0  # descriptors live 3 h at the store: republish well before
    descriptor_ttl: float = 600.0
    max_cached: int = 256  # descriptors and joined circuits the client keeps

    def __post_init__(self) -> None:
        for name in ("intro_points", "max_pending_per_intro", "replay_cache", "max_rendezvous_builds", "max_cached"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= 1 << 20:
                raise ConfigError(f"onion {name} must be an integer 1..{1 << 20}, got {value!r}")
        if not 1 <= self.intro_points <= 10:
            raise ConfigError(f"onion intro_points must be 1..10, got {self.intro_points}")
        for name in ("intro_lifetime", "step_timeout", "descriptor_ttl", "republish_interval"):
            if not 0 < getattr(self, name) <= 7 * 86400:
                raise ConfigError(f"onion {name} must be more than 0 and at most a week, got {getattr(self, name)}")


class _Waiters:
    """Futures for the node's onion events, by (circuit, event type); a closed circuit fails its own."""

    def __init__(self, driver: NodeDriver, also: Callable[[Event], None]) -> None:
        self._futures: dict[tuple[int, type], asyncio.Future] = {}
        previous = driver.on_event

        def on_event(event: Event) -> None:
            if previous is not None:
                previous(event)
            also(event)
            if isinstance(event, CircuitClosed):
                for key in [k for k in self._futures if k[0] == event.circuit]:
                    future = self._futures.pop(key)
                    if not future.done():
                        future.set_exception(CircuitError(f"circuit closed ({event.reason.name.lower()})",
                                                          event.reason))
                return
            future = self._futures.pop((getattr(event, "circuit", 0), type(event)), None)
            if future is not None and not future.done():
                future.set_result(event)

        driver.on_event = on_event

    def expect(self, circuit: int, kind: type) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self._futures[(circuit, kind)] = future
        return future

    def cancel(self, circuit: int) -> None:
        for key in [k for k in self._futures if k[0] == circuit]:
            self._futures.pop(key).cancel()


async def _within(future: Awaitable[Any], timeout: float, what: str) -> Any:
    try:
        return await asyncio.wait_for(future, timeout)
    except TimeoutError:
        raise CircuitError(f"{what} did not come within {timeout:g} s") from None


class _Paths:
    """How both ends draw and build their 3-hop circuits: the normal path selection, entering at an
    entry guard when there is a guard manager (an onion service most of all: Tor's guard-discovery
    attacks are on services that draw a new first hop per circuit)."""

    def __init__(self, driver: NodeDriver, selector: PathSelector | None, guards: GuardManager | None) -> None:
        self.driver, self.selector, self.guards = driver, selector or PathSelector(), guards

    async def build(self, relays: list[Descriptor], *, exclude: Iterable[PeerId] = (), pinned: Iterable[PeerId] = (),
                    chosen: Callable[[list[Descriptor]], None] | None = None,
                    **path: Any) -> tuple[int, list[Descriptor]]:
        """Build a circuit on ``relays`` (``PathSelector.select`` keywords), around failed hops;
        ``chosen(path)`` is told each path drawn, before it is built."""
        me = self.driver.node.identity.peer_id
        # a fixed last hop is never drawn as the entry (a guard that is the rendezvous point, say)
        avoid_always = frozenset(exclude) | {me} | ({path["destination"].peer_id} if "destination" in path else set())

        def choose(avoid: frozenset[PeerId], refetch: bool) -> list[Descriptor]:
            kwargs = {"hops": 3, "exclude": avoid | avoid_always, **path}
            drawn = (self.guards.select(self.selector, relays, **kwargs) if self.guards is not None
                     else self.selector.select(relays, **kwargs))
            if chosen is not None:
                chosen(drawn)
            return drawn

        return await build_around_failures(self.driver, choose, self.selector, pinned=frozenset(pinned),
                                           first_hop=None if self.guards is None else self.guards.first_hop)


@dataclass(slots=True, eq=False)
class _Intro:
    circuit: int
    relay: PeerId
    auth_private: bytes
    auth_key: bytes
    since: float
    pending: deque[bytes] = field(default_factory=deque)


class OnionService:
    """One onion service on ``driver``'s node (which should accept no circuits: it is no relay)."""

    def __init__(self, driver: NodeDriver, keys: ServiceKeys, relays: Relays, directory: DescriptorDirectory,
                 handler: StreamHandler, *, selector: PathSelector | None = None, guards: GuardManager | None = None,
                 limits: OnionLimits | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.driver, self.keys, self.relays, self.directory = driver, keys, relays, directory
        self._paths = _Paths(driver, selector, guards)
        self.limits = limits or OnionLimits()
        self.address = encode_address(keys.public)
        self.metrics: dict[str, int] = {"introduce_replayed": 0, "introduce_dropped_queue_full": 0,
                                        "introduce_invalid": 0, "rendezvous_joined": 0, "rendezvous_failed": 0}
        self._clock = clock
        self._handler = handler
        self._intros: dict[int, _Intro] = {}
        self._reserved: set[PeerId] = set()  # intro relays of builds under way
        self._retiring: list[int] = []  # rotated intro circuits, open until a descriptor without them is out
        self._joined: set[int] = set()
        self._replays: OrderedDict[bytes, None] = OrderedDict()
        self._changed = asyncio.Event()
        self._work = asyncio.Event()
        self._published = asyncio.Event()
        self._published_at = -math.inf
        self._builds = asyncio.Semaphore(self.limits.max_rendezvous_builds)
        self._tasks = OwnedTasks("onion service")
        self._waiters = _Waiters(driver, self._on_event)
        self._next = driver.stream_handler
        driver.stream_handler = self._serve_stream

    async def start(self) -> str:
        """Build the intro circuits, publish, and return the ``.mesh`` address."""
        self._tasks.spawn(self._maintain())
        self._tasks.spawn(self._serve_introductions())
        await self._published.wait()
        return self.address

    # ---------------------------------------------------------------- intro points

    async def _maintain(self) -> None:
        while True:
            now = self._clock()
            for intro in [i for i in self._intros.values() if now - i.since >= self.limits.intro_lifetime]:
                self._intros.pop(intro.circuit)  # rotated: closed once a descriptor without it is published
                self._retiring.append(intro.circuit)
            missing = self.limits.intro_points - len(self._intros)
            if missing > 0:
                results = await asyncio.gather(*(self._new_intro() for _ in range(missing)), return_exceptions=True)
                for result in results:
                    if isinstance(result, ZmeshError):
                        log.info("an intro circuit failed: %s", result)
                    elif isinstance(result, BaseException):  # our bug, or a cancellation: not swallowed
                        raise result
            stale = self._clock() - self._published_at >= self.limits.republish_interval
            if self._intros and (missing > 0 or stale or not self._published.is_set()):
                try:
                    await self._publish()
                except ZmeshError as exc:  # the store refused or is unreachable: try again soon
                    log.warning("publishing the descriptor failed: %s", exc)
                else:
                    retiring, self._retiring = self._retiring, []
                    for circuit in retiring:
                        await self.driver.destroy_circuit(circuit)
            self._changed.clear()
            soonest = min([i.since + self.limits.intro_lifetime for i in self._intros.values()]
                          + [self._published_at + self.limits.republish_interval])
            wait = max(0.5, soonest - self._clock()) if len(self._intros) == self.limits.intro_points else 1.0
            # a call_later wake-up, not wait_for: see zmesh.aio.driver._timer_loop
            alarm = asyncio.get_running_loop().call_later(wait, self._changed.set)
            try:
                await self._changed.wait()
            finally:
                alarm.cancel()

    async def _new_intro(self) -> None:
        relays = await self.relays(False)
        mine: set[PeerId] = set()  # the relay this build has reserved, so concurrent builds pick others

        def reserve(path: list[Descriptor]) -> None:
            self._reserved -= mine
            mine.clear()
            mine.add(path[-1].peer_id)
            self._reserved |= mine

        try:
            taken = {i.relay for i in self._intros.values()} | self._reserved
            circuit, path = await self._paths.build(relays, exclude=taken, exit_required=False, chosen=reserve)
            auth_private, auth_key = await self.driver.node.provider.ed25519_generate()
            established = self._waiters.expect(circuit, IntroEstablished)
            try:
                await self.driver.call(self.driver.node.establish_intro, circuit, auth_private, auth_key)
                await _within(established, self.limits.step_timeout, "INTRO_ESTABLISHED")
            except BaseException:
                await self.driver.destroy_circuit(circuit)
                raise
            self._intros[circuit] = _Intro(circuit, path[-1].peer_id, auth_private, auth_key, self._clock())
        finally:
            self._reserved -= mine

    async def _publish(self) -> None:
        onion = self.keys.onion.public
        descriptor = ServiceDescriptor(tuple(IntroPoint(i.relay.text, i.auth_key) for i in self._intros.values()),
                                       onion.x25519, onion.mlkem768)
        await self.directory.publish(self.keys, descriptor)
        self._published_at = self._clock()
        self._published.set()

    def _on_event(self, event: Event) -> None:
        if isinstance(event, CircuitClosed):
            if self._intros.pop(event.circuit, None) is not None:
                self._changed.set()
            self._joined.discard(event.circuit)
        elif isinstance(event, IntroduceReceived):
            intro = self._intros.get(event.circuit)
            if intro is None or event.auth_key != intro.auth_key:
                self.metrics["introduce_invalid"] += 1
            elif self._replayed(event.encrypted):
                self.metrics["introduce_replayed"] += 1
            elif len(intro.pending) >= self.limits.max_pending_per_intro:
                self.metrics["introduce_dropped_queue_full"] += 1
            else:
                intro.pending.append(event.encrypted)
                self._work.set()

    # ---------------------------------------------------------------- introductions

    async def _serve_introductions(self) -> None:
        """Round-robin over the intro circuits' queues: one introduction from each in turn."""
        while True:
            await self._work.wait()
            self._work.clear()
            while any(i.pending for i in self._intros.values()):
                for intro in list(self._intros.values()):
                    if intro.pending:
                        await self._builds.acquire()
                        self._tasks.spawn(self._rendezvous(intro.auth_key, intro.pending.popleft()))

    def _replayed(self, encrypted: bytes) -> bool:
        digest = hashlib.sha256(encrypted).digest()
        if digest in self._replays:
            return True
        self._replays[digest] = None
        if len(self._replays) > self.limits.replay_cache:
            self._replays.popitem(last=False)
        return False

    async def _rendezvous(self, auth_key: bytes, encrypted: bytes) -> None:
        try:
            provider = self.driver.node.provider
            try:
                point, create = await open_introduction(provider, self.keys.public, self.keys.onion, auth_key,
                                                        encrypted)
            except (ProtocolError, CryptoError):
                self.metrics["introduce_invalid"] += 1
                return
            rp, relays = await self._find_relay(point)
            circuit, _ = await self._paths.build(relays, destination=rp, pinned={rp.peer_id})
            reply, keys = await answer_introduction(provider, self.keys.public, self.keys.onion, create)
            await self.driver.call(self.driver.node.join_rendezvous, circuit, point.cookie, reply, keys)
            self._joined.add(circuit)
            self.metrics["rendezvous_joined"] += 1
        except ZmeshError as exc:
            self.metrics["rendezvous_failed"] += 1
            log.info("a rendezvous failed: %s", exc)
        finally:
            self._builds.release()

    async def _find_relay(self, point: RendezvousPoint) -> tuple[Descriptor, list[Descriptor]]:
        """The rendezvous relay from this service's own directory (refetched once), and that directory:
        a client can only send the service to a listed relay, with the onion key the client saw."""
        for refresh in (False, True):
            relays = await self.relays(refresh)
            found = next((r for r in relays if r.peer_id == point.relay), None)
            if found is not None and found.onion_keys.x25519 == point.onion_key_id:
                return found, relays
        raise CircuitError("the introduction names a rendezvous relay this service's directory does not list")

    # ---------------------------------------------------------------- streams

    async def _serve_stream(self, request: IncomingStream) -> None:
        if request.circuit in self._joined:
            await self._handler(request)
        elif self._next is not None:
            await self._next(request)
        else:
            await request.reject(EndReason.EXIT_POLICY)

    async def close(self) -> None:
        await self._tasks.close()
        for circuit in [*self._intros, *self._joined, *self._retiring]:
            await self.driver.destroy_circuit(circuit)


class OnionClient:
    """Streams to ``.mesh`` addresses over ``driver``'s node: descriptor lookup, rendezvous, reuse."""

    def __init__(self, driver: NodeDriver, relays: Relays, directory: DescriptorDirectory, *,
                 selector: PathSelector | None = None, guards: GuardManager | None = None,
                 limits: OnionLimits | None = None, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.driver, self.relays, self.directory = driver, relays, directory
        self._paths = _Paths(driver, selector, guards)
        self.limits = limits or OnionLimits()
        self._clock = clock
        self._rng = rng or random.SystemRandom()
        self._descriptors: OrderedDict[str, tuple[float, ServiceDescriptor]] = OrderedDict()
        self._joined: OrderedDict[str, int] = OrderedDict()
        self._connecting: dict[str, asyncio.Future] = {}
        self._waiters = _Waiters(driver, self._on_event)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, CircuitClosed):
            for address in [a for a, c in self._joined.items() if c == event.circuit]:
                del self._joined[address]

    async def forget(self, address: str, *, descriptor: bool = False) -> None:
        """Close the joined circuit kept for ``address``, so the next stream makes a new rendezvous;
        with ``descriptor`` drop the cached descriptor too (it is looked up again)."""
        circuit = self._joined.pop(address.lower(), None)
        if circuit is not None:
            await self.driver.destroy_circuit(circuit)
        if descriptor:
            self._descriptors.pop(address.lower(), None)

    async def open_stream(self, address: str, port: int) -> MeshStream:
        """A stream to ``port`` of the service at ``address`` (``<base32>.mesh``)."""
        address = address.lower()
        service_key = decode_address(address)
        circuit = await self.circuit_for(address, service_key)
        return await self.driver.open_stream(circuit, "", port)

    async def circuit_for(self, address: str, service_key: bytes) -> int:
        """The joined circuit to ``address``: the cached one, or a new rendezvous (one at a time per address)."""
        circuit = self._joined.get(address)
        if circuit is not None and circuit in self.driver.node.circuits():
            return circuit
        pending = self._connecting.get(address)
        if pending is not None:
            return await asyncio.shield(pending)
        future = self._connecting[address] = asyncio.get_running_loop().create_future()
        try:
            circuit = await self._rendezvous(address, service_key)
            future.set_result(circuit)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here if nobody else waits
            raise
        finally:
            del self._connecting[address]
        self._joined[address] = circuit
        while len(self._joined) > self.limits.max_cached:
            self._joined.popitem(last=False)
        return circuit

    async def _descriptor(self, address: str, refresh: bool) -> ServiceDescriptor:
        cached = self._descriptors.get(address)
        if cached is not None and not refresh and self._clock() - cached[0] < self.limits.descriptor_ttl:
            return cached[1]
        descriptor = await self.directory.lookup(address)
        self._descriptors[address] = (self._clock(), descriptor)
        self._descriptors.move_to_end(address)
        while len(self._descriptors) > self.limits.max_cached:
            self._descriptors.popitem(last=False)
        return descriptor

    async def _rendezvous(self, address: str, service_key: bytes) -> int:
        failure: ZmeshError | None = None
        for refresh in (False, True):  # a stale cached descriptor gets one refetch
            descriptor = await self._descriptor(address, refresh)
            try:
                return await self._join(descriptor, service_key)
            except ZmeshError as exc:
                failure = exc
                log.info("rendezvous failed (%s)%s", exc, "; refetching the descriptor" if not refresh else "")
        assert failure is not None
        raise failure

    async def _join(self, descriptor: ServiceDescriptor, service_key: bytes) -> int:
        relays = await self.relays(False)
        by_id = {r.peer_id.text: r for r in relays}
        intros = [(by_id[p.relay_id], p) for p in descriptor.intro_points if p.relay_id in by_id]
        if not intros:
            raise CircuitError("none of the service's intro points is in the directory")
        rend, path = await self._paths.build(relays, exclude={relay.peer_id for relay, _ in intros},
                                             exit_required=False)
        try:
            cookie = self.driver.node.provider.random_bytes(COOKIE_SIZE)
            established = self._waiters.expect(rend, RendezvousEstablished)
            await self.driver.call(self.driver.node.establish_rendezvous, rend, cookie)
            await _within(established, self.limits.step_timeout, "RENDEZVOUS_ESTABLISHED")
            point = RendezvousPoint(path[-1].peer_id, path[-1].onion_keys.x25519, cookie)
            keys = OnionKeys(descriptor.x25519_public, descriptor.mlkem768_public)
            self._rng.shuffle(intros)
            joined = self._waiters.expect(rend, RendezvousJoined)  # before any INTRODUCE1: the service may be quick
            for relay, intro in intros:
                encrypted, handshake = await seal_introduction(self.driver.node.provider, service_key, keys,
                                                               intro.auth_key, point)
                await self.driver.call(self.driver.node.await_rendezvous, rend, handshake)
                if await self._introduce(relays, relay, intro.auth_key, encrypted, exclude={path[-1].peer_id}):
                    await _within(asyncio.shield(joined), self.limits.step_timeout, "the service's RENDEZVOUS2")
                    return rend
            raise CircuitError("no intro point of the service accepted the introduction")
        except BaseException:
            self._waiters.cancel(rend)
            await self.driver.destroy_circuit(rend)
            raise

    async def _introduce(self, relays: Iterable[Descriptor], intro: Descriptor, auth_key: bytes, encrypted: bytes,
                         exclude: set[PeerId]) -> bool:
        """Send one INTRODUCE1 through ``intro``; whether it was acknowledged as forwarded."""
        relays = list(relays)
        try:
            circuit, _ = await self._paths.build(relays, destination=intro, exclude=exclude, pinned={intro.peer_id})
        except CircuitError as exc:
            log.info("no circuit to an intro point: %s", exc)
            return False
        try:
            acked = self._waiters.expect(circuit, IntroduceAcked)
            await self.driver.call(self.driver.node.introduce, circuit, auth_key, encrypted)
            ack = await _within(acked, self.limits.step_timeout, "INTRODUCE_ACK")
            if ack.status != IntroduceStatus.SUCCESS:
                log.info("intro point refused the introduction: %s", IntroduceStatus(ack.status).name.lower())
            return ack.status == IntroduceStatus.SUCCESS
        except CircuitError as exc:
            log.info("introduction failed: %s", exc)
            return False
        finally:
            self._waiters.cancel(circuit)
            await self.driver.destroy_circuit(circuit)


class StoreDescriptors:
    """``DescriptorDirectory`` on the signal server's ``/v1/onion/`` store (``zmesh.onion.directory``).

    A service seals each descriptor for the current time period and the next (the store's overlap
    rule), with a revision that only grows (milliseconds of wall time, or one more than the last);
    a client fetches the descriptor of an address and opens it (``client_secret``: its X25519 key
    when the service authorises clients)."""

    def __init__(self, http: HttpClient, signal_url: str, provider: CryptoProvider, *,
                 clock: Callable[[], float] = time.time, client_secret: bytes | None = None) -> None:
        self._http, self._url, self._provider = http, signal_url, provider
        self._clock, self._client_secret = clock, client_secret
        self._revision = 0

    async def publish(self, keys: ServiceKeys, descriptor: ServiceDescriptor) -> None:
        now = self._clock()
        self._revision = max(self._revision + 1, int(now * 1000))
        current = time_period(now, DEFAULT_PERIOD)
        for period in (current, current + 1):
            sealed = await seal_descriptor(self._provider, keys.seed, descriptor, now=now, revision=self._revision,
                                           period=period)
            await publish_descriptor(self._http, self._url, sealed)

    async def lookup(self, address: str) -> ServiceDescriptor:
        return await fetch_descriptor(self._http, self._url, self._provider, address, now=self._clock(),
                                      client_secret=self._client_secret)
