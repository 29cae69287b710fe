"""Circuits on demand for a stream front (``zmesh client``'s SOCKS): ``CircuitPlan`` put to work.

The plan (``zmesh.circuit_plan``) says which circuit a stream goes on; this module builds what it
lacks (with ``build_around_failures``, the one retry policy), keeps the pool of clean circuits
filled in the background (at most ``pool_builds`` at once, backing off after a failed build),
closes circuits that are dirty past the limit once their last stream ends, and forgets circuits
the node lost. Its streams tell it when they end (``TrackedStream.close``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..backoff import Backoff
from ..cells import EndReason
from ..circuit_plan import CircuitPlan, IsolationKey, PlannedCircuit
from ..descriptor import Descriptor
from ..errors import CircuitError, StreamError, ZmeshError
from ..events import CircuitClosed, Event
from ..identity import PeerId
from ..path import PathSelector
from .building import BuildPolicy, build_around_failures
from .driver import MeshStream, NodeDriver
from .multipath import MultipathStream
from .multipath_link import LegPartners
from .tasks import OwnedTasks

log = logging.getLogger(__name__)

# Stream failures that count against the exit's trust score. A refused connection, a name that does
# not resolve or a port its policy refuses are the destination's (or the user's) doing; a destroyed
# circuit is counted against the hop that failed, when the circuit is rebuilt.
EXIT_FAULTS = frozenset({EndReason.MISC, EndReason.TIMEOUT, EndReason.PROTOCOL, EndReason.UPSTREAM_FAILED})

# choose(port or None for a pool circuit, relays to avoid, refetch the directory first?) -> a path
ChooseFor = Callable[[int | None, frozenset[PeerId], bool], Awaitable[list[Descriptor]]]


class TrackedStream:
    """A ``MeshStream`` that tells the manager when it ends, so its circuit can be retired."""

    def __init__(self, stream: MeshStream | MultipathStream, ended: Callable[[], Awaitable[None]]) -> None:
        self.inner = stream
        self.circuit = stream.circuit
        self._ended: Callable[[], Awaitable[None]] | None = ended

    async def read(self) -> bytes:
        return await self.inner.read()

    async def write(self, data: bytes) -> None:
        await self.inner.write(data)

    async def close(self, reason: EndReason = EndReason.DONE) -> None:
        try:
            await self.inner.close(reason)
        finally:
            ended, self._ended = self._ended, None
            if ended is not None:
                await ended()


class CircuitManager:
    """Streams onto circuits by isolation key, a refilled pool, and retirement after dirtiness."""

    def __init__(self, driver: NodeDriver, choose: ChooseFor, selector: PathSelector, plan: CircuitPlan, *,
                 build_policy: BuildPolicy | None = None, retry: Backoff | None = None,
                 first_hop: Callable[[PeerId, bool], None] | None = None,
                 partners: LegPartners | None = None) -> None:
        self.driver = driver
        self.partners = partners  # multipath: each stream also takes its circuit's partner (zmesh.aio.multipath_link)
        self.plan = plan
        self._choose = choose
        self._selector = selector
        self._build_policy = build_policy or BuildPolicy()
        self._retry = retry or Backoff(first=1.0, cap=60.0)
        self._first_hop = first_hop  # told each build's first-hop outcome (entry guards count them)
        self._retry_at = 0.0  # no pool build before this (plan clock), after a failed one
        self._pending: dict[bytes, asyncio.Future[None]] = {}  # builds in flight, by isolation digest
        self._changed = asyncio.Event()
        self._tasks = OwnedTasks("circuit manager")
        self._watch_circuits()

    def _watch_circuits(self) -> None:
        previous = self.driver.on_event

        def on_event(event: Event) -> None:
            if previous is not None:
                previous(event)
            if isinstance(event, CircuitClosed):
                self._changed.set()
        self.driver.on_event = on_event

    def start(self) -> None:
        self._tasks.spawn(self._upkeep())

    async def open_stream(self, host: str, port: int, key: IsolationKey) -> TrackedStream:
        """A stream to ``host:port`` on a circuit of ``key`` (built if none may take it). A circuit
        that dies under the BEGIN is replaced once. The exit's part in the outcome is fed to the
        selector's trust scores."""
        for _ in range(2):
            planned = await self._attach(key, port)
            circuit, exit_peer = planned.handle, planned.path[-1]
            try:
                stream = await (self.driver.open_stream(circuit, host, port) if self.partners is None
                                else self.partners.open(circuit, list(planned.path), host, port))
            except BaseException as exc:
                self._changed.set()
                await self._detached(circuit)
                if isinstance(exc, StreamError) and exc.reason in EXIT_FAULTS:
                    self._selector.record_stream(exit_peer, ok=False)
                if not (isinstance(exc, StreamError) and exc.reason is EndReason.DESTROYED):
                    raise
                self.plan.forget(circuit)  # the circuit died under us: build another
                continue
            self._selector.record_stream(exit_peer, ok=True)
            self._changed.set()  # a pool circuit may have been claimed: plan its refill
            return TrackedStream(stream, functools.partial(self._detached, circuit))
        raise CircuitError("circuits keep failing; the mesh may be unreachable")

    async def _attach(self, key: IsolationKey, port: int) -> PlannedCircuit:
        while True:
            self.plan.keep_only(set(self.driver.node.circuits()))
            circuit = self.plan.attach(key, port)
            if circuit is not None:
                return circuit
            pending = self._pending.get(key.digest)
            if pending is not None:  # one build per key at a time; then try again
                await asyncio.shield(pending)
                continue
            done = self._pending[key.digest] = asyncio.get_running_loop().create_future()
            try:
                handle, path = await self._build(port, frozenset(self.plan.exits_in_use(key)))
                self.plan.add(handle, [hop.peer_id for hop in path], path[-1].allows_port, isolation=key)
            finally:
                del self._pending[key.digest]
                done.set_result(None)

    async def _build(self, port: int | None, busy: frozenset[PeerId] = frozenset()) -> tuple[int, list[Descriptor]]:
        """Build a circuit for ``port`` (None: any exit), off the ``busy`` relays if a path remains."""
        async def choose(avoid: frozenset[PeerId], refetch: bool) -> list[Descriptor]:
            if busy:
                with contextlib.suppress(CircuitError):
                    return await self._choose(port, avoid | busy, refetch)
            return await self._choose(port, avoid, refetch)
        return await build_around_failures(self.driver, choose, self._selector, policy=self._build_policy,
                                           first_hop=self._first_hop)

    async def _detached(self, circuit: int) -> None:
        if self.plan.detach(circuit):
            await self._destroy(circuit)
            if self.partners is not None:
                await self.partners.forget(circuit)

    async def _destroy(self, circuit: int) -> None:
        try:
            await self.driver.destroy_circuit(circuit)
        except ZmeshError as exc:  # the driver is closing: nothing left to tidy
            log.debug("could not close a retired circuit: %s", exc)

    # ---------------------------------------------------------------- background

    async def _upkeep(self) -> None:
        """Refill the pool and close idle circuits past the limit, waking at the plan's deadline,
        after a retry delay, or when a circuit was claimed or closed."""
        loop, clock = asyncio.get_running_loop(), self.plan.clock
        while True:
            self._changed.clear()
            self.plan.keep_only(set(self.driver.node.circuits()))
            for circuit in self.plan.expired_idle():
                await self._destroy(circuit)
            if clock() >= self._retry_at:
                for _ in range(self.plan.pool_wanted()):
                    self.plan.pool_building += 1
                    self._tasks.spawn(self._build_pool_circuit())
            deadlines = [d for d in (self.plan.next_deadline(), self._retry_at) if d is not None and d > clock()]
            alarm = loop.call_later(max(0.0, min(deadlines) - clock()), self._changed.set) if deadlines else None
            try:
                await self._changed.wait()
            finally:
                if alarm is not None:
                    alarm.cancel()

    async def _build_pool_circuit(self) -> None:
        try:
            handle, path = await self._build(None)
        except ZmeshError as exc:
            self._retry_at = self.plan.clock() + self._retry.delay()
            log.info("could not build a pool circuit (%s); trying again later", exc)
        else:
            self._retry.failures = 0
            self.plan.add(handle, [hop.peer_id for hop in path], path[-1].allows_port)
        finally:
            self.plan.pool_building -= 1
            self._changed.set()

    def snapshot(self) -> list[dict[str, Any]]:
        """The control port's view of the circuits, without the ones the node lost."""
        self.plan.keep_only(set(self.driver.node.circuits()))
        return self.plan.snapshot()

    async def close(self) -> None:
        await self._tasks.close()
