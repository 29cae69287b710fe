"""Linking multipath legs on the asyncio driver (docs/protocol.md "Multipath"): the client opens
and links the legs (``open_multipath``; ``LegPartners`` builds each circuit's second leg), the exit
joins them into sets and hands each set to its stream handler as one stream (``MultipathExit``).
The stream itself is ``zmesh.aio.multipath.MultipathStream``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable

from ..cells import DestroyReason, EndReason
from ..descriptor import Descriptor
from ..errors import MultipathError, StreamError, ZmeshError, reason_words
from ..identity import PeerId
from ..multipath.linking import LinkRegistry
from ..multipath.sequencing import DEFAULT_WINDOW
from ..multipath.wire import (
    MAX_LEGS,
    MULTIPATH_PORT,
    MessageReader,
    MultipathCommand,
    encode_link,
    encode_linked,
    parse_link,
)
from ..path import PathSelector
from .building import BuildPolicy, build_around_failures
from .driver import IncomingStream, MeshStream, NodeDriver, StreamHandler
from .multipath import LINK_TIMEOUT, MultipathStream

log = logging.getLogger(__name__)


async def open_multipath(driver: NodeDriver, circuits: list[int], host: str, port: int, *,
                         window: int = DEFAULT_WINDOW) -> MultipathStream | MeshStream:
    """A stream to ``host:port`` over ``circuits`` (which must end at the same exit), returned once
    leg 0 is linked and the exit connected; the other legs link in the background. An exit without
    the multipath service gets a plain stream on ``circuits[0]``."""
    try:
        first = await driver.open_stream(circuits[0], "", MULTIPATH_PORT)
    except StreamError as exc:
        if exc.reason is not EndReason.EXIT_POLICY:
            raise
        log.info("the exit has no multipath service: one circuit only")
        return await driver.open_stream(circuits[0], host, port)
    nonce = secrets.token_bytes(32)
    stream = MultipathStream(driver, window=window)
    leg = stream.add_leg(0, first, linked=False)
    try:
        await first.write(encode_link(nonce, 0, host, port))
        async with asyncio.timeout(LINK_TIMEOUT):
            await asyncio.shield(leg.linked)
    except TimeoutError as exc:
        await stream.close(EndReason.TIMEOUT)
        raise StreamError("the exit did not link the multipath stream", EndReason.TIMEOUT) from exc
    except StreamError as exc:
        await stream.close(exc.reason)
        raise StreamError(f"stream refused: {reason_words(exc.reason)}", exc.reason) from exc
    for index, circuit in enumerate(circuits[1:MAX_LEGS], start=1):
        stream._tasks.spawn(_join(driver, stream, index, circuit, nonce))
    return stream


async def _join(driver: NodeDriver, stream: MultipathStream, index: int, circuit: int, nonce: bytes) -> None:
    """Link one more leg; a leg that cannot join leaves the stream on the legs it has."""
    try:
        leg_stream = await driver.open_stream(circuit, "", MULTIPATH_PORT)
        leg = stream.add_leg(index, leg_stream, linked=False)
        await leg_stream.write(encode_link(nonce, index))
        async with asyncio.timeout(LINK_TIMEOUT):
            await asyncio.shield(leg.linked)
    except (ZmeshError, TimeoutError) as exc:
        log.info("multipath leg %d did not join: %s", index, exc)


class _LinkedRequest:
    """Leg 0's LINK, put to the exit's stream handler as if it were a BEGIN for its target."""

    def __init__(self, exit: MultipathExit, leg: MeshStream, stream: MultipathStream, host: str, port: int,
                 reader: MessageReader, early: list) -> None:
        self._exit, self._leg, self._stream = exit, leg, stream
        self._reader, self._early = reader, early
        self.circuit, self.stream_id = leg.circuit, leg.stream_id
        self.host, self.port = host, port

    async def accept(self) -> MultipathStream:
        await self._leg.write(encode_linked(0))
        self._stream.add_leg(0, self._leg, linked=True, reader=self._reader, early=self._early)
        return self._stream

    async def reject(self, reason: EndReason) -> None:
        await self._stream.close(reason)
        await self._leg.close(reason)


class MultipathExit:
    """The exit's multipath service: links legs into sets (``zmesh.multipath.linking``) and hands
    each set, as one stream, to the exit's stream handler (``wrap``)."""

    def __init__(self, driver: NodeDriver, *, window: int = DEFAULT_WINDOW, max_sets: int = 1024) -> None:
        self.driver = driver
        self.window = window
        self.registry: LinkRegistry[MultipathStream] = LinkRegistry(driver.node.clock, max_sets=max_sets,
                                                                     link_timeout=LINK_TIMEOUT)

    def wrap(self, handler: StreamHandler) -> StreamHandler:
        """``handler`` for ordinary BEGINs; leg streams (empty host, ``MULTIPATH_PORT``) here first."""
        async def serve(request: IncomingStream) -> None:
            if request.host == "" and request.port == MULTIPATH_PORT:
                await self.serve(request, handler)
            else:
                await handler(request)
        return serve

    async def serve(self, request: IncomingStream, handler: StreamHandler) -> None:
        leg = await request.accept()
        reader = MessageReader()
        try:
            messages: list = []
            async with asyncio.timeout(LINK_TIMEOUT):
                while not messages:
                    data = await leg.read()
                    if not data:
                        return
                    messages = reader.feed(data)
            command, body = messages[0]
            if command is not MultipathCommand.LINK:
                raise MultipathError(f"a leg must begin with LINK, not {command.name}", DestroyReason.MP_PROTOCOL)
            nonce, index, target = parse_link(body)
            if target is not None:
                stream = MultipathStream(self.driver, window=self.window,
                                         on_close=lambda: self.registry.remove(nonce))
                self.registry.create(nonce, leg.circuit, stream)
                self.driver.node.metrics["multipath_sets"] += 1
                try:
                    await handler(_LinkedRequest(self, leg, stream, *target, reader, messages[1:]))
                finally:
                    await stream.close(EndReason.MISC)  # nothing if the handler closed it
                return
            joined = self.registry.join(nonce, index, leg.circuit)
            self.driver.node.metrics["multipath_legs_joined"] += 1
            await leg.write(encode_linked(index))
            joined.state.add_leg(index, leg, linked=True, reader=reader, early=messages[1:])
        except MultipathError as exc:
            log.info("multipath leg refused: %s", exc)
            self.driver.node.metrics[f"multipath_refused_{exc.reason.name.lower()}"] += 1
            await self.driver.destroy_circuit(leg.circuit, exc.reason)
        except TimeoutError:
            await leg.close(EndReason.TIMEOUT)


ChooseLeg = Callable[[PeerId, frozenset[PeerId], bool], Awaitable[list[Descriptor]]]


class LegPartners:
    """The client's second legs: for each circuit multipath streams start on, one more circuit to
    the same exit through none of its other relays (``choose_leg(exit, avoid, refetch)`` draws that
    path), built on first use and kept while the first circuit is."""

    def __init__(self, driver: NodeDriver, choose_leg: ChooseLeg, selector: PathSelector, *,
                 build_policy: BuildPolicy | None = None,
                 first_hop: Callable[[PeerId, bool], None] | None = None) -> None:
        self.driver = driver
        self._choose = choose_leg
        self._selector = selector
        self._policy = build_policy
        self._first_hop = first_hop
        self._partners: dict[int, int] = {}
        self._lock = asyncio.Lock()  # one partner build at a time

    async def open(self, circuit: int, path: list[PeerId], host: str, port: int) -> MultipathStream | MeshStream:
        """A multipath stream on ``circuit`` (whose hops are ``path``) and its partner; without a
        partner (no disjoint path, or its build failed) a plain stream on ``circuit``."""
        async with self._lock:
            partner = self._partners.get(circuit)
            if partner is None or partner not in self.driver.node.circuits():
                try:
                    partner = self._partners[circuit] = await self._build(path)
                except ZmeshError as exc:
                    log.info("no second multipath leg (%s): one circuit only", exc)
                    self._partners.pop(circuit, None)
                    return await self.driver.open_stream(circuit, host, port)
        return await open_multipath(self.driver, [circuit, partner], host, port)

    async def _build(self, path: list[PeerId]) -> int:
        # the exit is avoided too: it is the path's given last hop, never to be drawn as its entry
        exit_peer, others = path[-1], frozenset(path)

        async def choose(avoid: frozenset[PeerId], refetch: bool) -> list[Descriptor]:
            return await self._choose(exit_peer, avoid | others, refetch)
        handle, _ = await build_around_failures(self.driver, choose, self._selector, policy=self._policy,
                                                pinned={exit_peer}, first_hop=self._first_hop)
        return handle

    async def forget(self, circuit: int) -> None:
        """``circuit`` is being closed: close its partner too."""
        partner = self._partners.pop(circuit, None)
        if partner is not None:
            with contextlib.suppress(ZmeshError):
                await self.driver.destroy_circuit(partner)
