"""Reaching an onion service (``OnionClient``; docs/onion-services.md, "Introduction and rendezvous").

Caches descriptors (``descriptor_ttl``) and joined circuits (one per address, reused for later
streams), draws a rendezvous relay, and introduces itself through the intro points in random order
until one acknowledges.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from ...descriptor import Descriptor
from ...errors import CircuitError, ZmeshError
from ...events import (
    CircuitClosed,
    Event,
    IntroduceAcked,
    RendezvousEstablished,
    RendezvousJoined,
)
from ...guards import GuardManager
from ...identity import OnionKeys, PeerId
from ...onion.address import decode_address
from ...onion.descriptor import ServiceDescriptor
from ...onion.introduce import RendezvousPoint, seal_introduction
from ...onion.wire import COOKIE_SIZE, IntroduceStatus
from ...path import PathSelector
from ..driver import MeshStream, NodeDriver
from .common import DescriptorDirectory, OnionLimits, Paths, Relays, Waiters, within

log = logging.getLogger(__name__)


class OnionClient:
    """Streams to ``.mesh`` addresses over ``driver``'s node: descriptor lookup, rendezvous, reuse."""

    def __init__(self, driver: NodeDriver, relays: Relays, directory: DescriptorDirectory, *,
                 selector: PathSelector | None = None, guards: GuardManager | None = None,
                 limits: OnionLimits | None = None, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.driver, self.relays, self.directory = driver, relays, directory
        self._paths = Paths(driver, selector, guards)
        self.limits = limits or OnionLimits()
        self._clock = clock
        self._rng = rng or random.SystemRandom()
        self._descriptors: OrderedDict[str, tuple[float, ServiceDescriptor]] = OrderedDict()
        self._joined: OrderedDict[str, int] = OrderedDict()
        self._connecting: dict[str, asyncio.Future] = {}
        self._waiters = Waiters(driver, self._on_event)

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
            await within(established, self.limits.step_timeout, "RENDEZVOUS_ESTABLISHED")
            point = RendezvousPoint(path[-1].peer_id, path[-1].onion_keys.x25519, cookie)
            keys = OnionKeys(descriptor.x25519_public, descriptor.mlkem768_public)
            self._rng.shuffle(intros)
            joined = self._waiters.expect(rend, RendezvousJoined)  # before any INTRODUCE1: the service may be quick
            for relay, intro in intros:
                encrypted, handshake = await seal_introduction(self.driver.node.provider, service_key, keys,
                                                               intro.auth_key, point)
                await self.driver.call(self.driver.node.await_rendezvous, rend, handshake)
                if await self._introduce(relays, relay, intro.auth_key, encrypted, exclude={path[-1].peer_id}):
                    await within(asyncio.shield(joined), self.limits.step_timeout, "the service's RENDEZVOUS2")
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
            ack = await within(acked, self.limits.step_timeout, "INTRODUCE_ACK")
            if ack.status != IntroduceStatus.SUCCESS:
                log.info("intro point refused the introduction: %s", IntroduceStatus(ack.status).name.lower())
            return ack.status == IntroduceStatus.SUCCESS
        except CircuitError as exc:
            log.info("introduction failed: %s", exc)
            return False
        finally:
            self._waiters.cancel(circuit)
            await self.driver.destroy_circuit(circuit)
