"""Hosting an onion service (``OnionService``; docs/onion-services.md, "Introduction and rendezvous").

Keeps ``intro_points`` intro circuits (distinct relays, drawn like any path; rebuilt when one
closes, rotated after ``intro_lifetime``), republishes its descriptor whenever that set changes, and
serves introductions fairly: each intro circuit has its own bounded queue (``max_pending_per_intro``)
and the queues are taken round-robin, so a flood through one intro point cannot starve the others.
An introduction seen before (``replay_cache`` entries, keyed by a hash of its encrypted part) is
dropped before any crypto. At most ``max_rendezvous_builds`` rendezvous circuits are built at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ...cells import EndReason
from ...descriptor import Descriptor
from ...errors import CircuitError, CryptoError, ProtocolError, ZmeshError
from ...events import (
    CircuitClosed,
    Event,
    IntroduceReceived,
    IntroEstablished,
)
from ...guards import GuardManager
from ...identity import PeerId
from ...onion.address import encode_address
from ...onion.descriptor import IntroPoint, ServiceDescriptor
from ...onion.introduce import RendezvousPoint, ServiceKeys, answer_introduction, open_introduction
from ...path import PathSelector
from ..driver import IncomingStream, NodeDriver
from ..tasks import OwnedTasks
from .common import DescriptorDirectory, OnionLimits, Paths, Relays, StreamHandler, Waiters, within

log = logging.getLogger(__name__)


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
        self._paths = Paths(driver, selector, guards)
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
        self._waiters = Waiters(driver, self._on_event)
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
                await within(established, self.limits.step_timeout, "INTRO_ESTABLISHED")
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
