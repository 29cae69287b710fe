"""What both ends of an onion service share over a ``NodeDriver`` (``zmesh.aio.onion``): the
limits, the wait for the node's onion events, and how their 3-hop circuits are drawn and built."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from ...descriptor import Descriptor
from ...errors import CircuitError, ConfigError
from ...events import (
    CircuitClosed,
    Event,
)
from ...guards import GuardManager
from ...identity import PeerId
from ...onion.descriptor import ServiceDescriptor
from ...onion.introduce import ServiceKeys
from ...path import PathSelector
from ..building import build_around_failures
from ..driver import IncomingStream, NodeDriver

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


class Waiters:
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


async def within(future: Awaitable[Any], timeout: float, what: str) -> Any:
    try:
        return await asyncio.wait_for(future, timeout)
    except TimeoutError:
        raise CircuitError(f"{what} did not come within {timeout:g} s") from None


class Paths:
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


