"""Reachability probes: before a relay is listed, the server opens a link to its published
WebSocket address and completes a circuit handshake (CREATE → CREATED, docs/protocol.md §4) with
its published onion keys, then tears the circuit down.

That proves what clients need from a listed relay: something answers at that address, speaks the
link protocol and holds the descriptor's onion keys. Each probe has one overall deadline (TCP
connect, WebSocket upgrade and handshake together), so an address that accepts TCP and then
says nothing (a tarpit) costs a prober slot for at most that long. ``Prober`` runs a bounded
number of probes at once, taking pending descriptors from the directory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from zmesh.cells import BODY_SIZE, CellCommand, Reassembler, encode_cell, fragments, parse_frame
from zmesh.crypto.provider import CryptoProvider
from zmesh.descriptor import Descriptor
from zmesh.errors import CircuitError, ConfigError, ProtocolError, TransportError, ZmeshError
from zmesh.handshake import CREATED_SIZE, client_finish, client_start
from zmesh.link import Link
from zmesh.netaddr import LinkAddress
from zmesh_relay import wslink

log = logging.getLogger(__name__)

T = TypeVar("T")
PROBE_CIRCUIT = 0x8000_0001  # the dialer's half of the circuit-id space; the only circuit it opens


async def dial_link(url: str, timeout: float, *, allow_private: bool) -> Link:
    """Open a link to ``url`` for a probe: the one place the signal server dials out, with the
    nodes' own rules (a strict link address, no non-public address unless ``allow_private``, one
    deadline over resolving, TCP and the upgrade)."""
    return await wslink.dial(LinkAddress.parse(url), allow_private=allow_private, timeout=timeout)


async def probe_relay(provider: CryptoProvider, descriptor: Descriptor, *, timeout: float = 10.0,
                      allow_private: bool = False) -> str:
    """Complete a circuit handshake with ``descriptor``'s relay at one of its ``ws`` addresses,
    all within ``timeout`` seconds; return the address that answered. Raises ``TransportError``
    (nothing answered in time, or a refused address), ``CryptoError`` (wrong keys) or
    ``ProtocolError`` (not a relay)."""
    async def handshake(link: Link) -> None:
        await circuit_handshake(provider, descriptor, link)

    url, _ = await try_addresses(descriptor, handshake, timeout=timeout, allow_private=allow_private,
                                  failed="is not reachable")
    return url


async def try_addresses(descriptor: Descriptor, test: Callable[[Link], Awaitable[T]], *, timeout: float,
                         allow_private: bool, failed: str) -> tuple[str, T]:
    """Run ``test`` on a link to each ``ws`` address of ``descriptor`` in turn until one passes, all
    within ``timeout`` seconds; the address and its result, or ``TransportError`` naming every
    address's failure (``failed`` says what the relay then is)."""
    failures = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for url in descriptor.addresses.get("ws", ()):
        try:
            async with asyncio.timeout_at(deadline):
                link = await dial_link(url, max(0.001, deadline - loop.time()), allow_private=allow_private)
                try:
                    return url, await test(link)
                finally:
                    await link.close()
        except TimeoutError:
            failures.append("no answer in time")
            break
        except ZmeshError as exc:
            failures.append(str(exc))
    reasons = "; ".join(failures) or "no ws address"
    raise TransportError(f"relay {descriptor.peer_id.short()} {failed}: {reasons}")


async def circuit_handshake(provider: CryptoProvider, descriptor: Descriptor, link: Link) -> None:
    """CREATE → CREATED with the descriptor's onion keys on ``link``, then DESTROY (also the
    directory authorities' reachability test, zmesh_relay.measure)."""
    state = await client_start(provider, descriptor.peer_id, descriptor.onion_keys)
    await link.send(b"".join(encode_cell(CellCommand.CREATE, PROBE_CIRCUIT, piece, flags)
                             for piece, flags in fragments(state.create_payload(), BODY_SIZE)))
    reply = Reassembler(CREATED_SIZE)
    while True:
        for cell in parse_frame(await link.recv()):
            if cell.circ_id != PROBE_CIRCUIT:
                continue  # link-level cells (the relay's AUTH_CHALLENGE, PING) do not concern a probe
            if cell.command == CellCommand.DESTROY:
                raise CircuitError("the relay refused the probe's circuit")
            if cell.command != CellCommand.CREATED:
                raise ProtocolError(f"the relay answered CREATE with {cell.command.name}")
            whole = reply.add(cell.payload, cell.flags)
            if whole is not None:
                await client_finish(provider, state, whole)
                await link.send(encode_cell(CellCommand.DESTROY, PROBE_CIRCUIT))
                return


class Prober:
    """Up to ``concurrency`` probes at once, fed by ``take`` (the next pending descriptor or
    None) and reporting to ``report(descriptor, reachable)``; ``wake()`` after adding work."""

    def __init__(self, provider: CryptoProvider, take: Callable[[], Descriptor | None],
                 report: Callable[[Descriptor, bool], None], *, concurrency: int = 32,
                 timeout: float = 10.0, allow_private: bool = False) -> None:
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError(f"probe concurrency must be a positive integer, got {concurrency!r}")
        if not timeout > 0:
            raise ConfigError(f"probe timeout must be > 0 seconds, got {timeout!r}")
        self._provider, self._take, self._report = provider, take, report
        self.concurrency, self.timeout, self.allow_private = concurrency, timeout, allow_private
        self._work = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._worker()) for _ in range(self.concurrency)]

    def wake(self) -> None:
        self._work.set()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _worker(self) -> None:
        while True:
            descriptor = self._take()
            if descriptor is None:
                self._work.clear()
                await self._work.wait()
                continue
            try:
                await probe_relay(self._provider, descriptor, timeout=self.timeout,
                                  allow_private=self.allow_private)
                reachable = True
            except ZmeshError as exc:
                log.info("not listing %s: %s", descriptor.peer_id.short(), exc)
                reachable = False
            self._report(descriptor, reachable)
