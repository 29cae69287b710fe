"""``zmesh client``: a SOCKS5 front that carries each connection over a circuit.

Circuits are kept per SOCKS credential pair (stream isolation, like Tor's IsolateSOCKSAuth):
connections with different username/password never share a circuit. A circuit that dies is
rebuilt on the next connection; builds route around the hops that fail (``zmesh.aio.building``).
Every circuit enters at an entry guard (``self.guards``, ``zmesh.guards``), saved in ``client.data_dir``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

from zmesh.aio.building import build_around_failures
from zmesh.aio.driver import MeshStream, NodeDriver
from zmesh.cells import EndReason
from zmesh.descriptor import Descriptor
from zmesh.directory_view import DirectoryView
from zmesh.errors import CircuitError, StreamError
from zmesh.identity import Identity, PeerId
from zmesh.native.crypto import NativeCryptoProvider
from zmesh.node import Node, NodeLimits
from zmesh.path import PathSelector
from zmesh_signal.client import SignalClient

from .config import socks_limits, split_host_port
from .guard_file import open_guards
from .socks5 import Socks5Server
from .transports import NativeTransports

log = logging.getLogger(__name__)


class Client:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.provider = NativeCryptoProvider()
        self.signal = SignalClient(config["signaling.url"])
        self.directory = DirectoryView(self.signal.relay_updates, self.provider)
        self.selector = PathSelector()
        self.guards = open_guards(config["client.data_dir"])
        self.driver: NodeDriver | None = None
        self.transports: NativeTransports | None = None
        self.socks: Socks5Server | None = None
        self.socks_port = 0
        self._circuits: dict[object, int] = {}
        self._building: dict[object, asyncio.Lock] = {}
        self._rng = random.SystemRandom()

    async def start(self) -> None:
        # A fresh identity per run: a client has no reason to be recognisable across restarts.
        identity = await Identity.generate(self.provider)
        node = Node(identity, self.provider, time.monotonic, accept_circuits=False,
                    limits=NodeLimits(build_timeout=self.config["core.build_timeout"]))
        # No inbound handler: a client answers no WebRTC offers and publishes nothing.
        self.transports = NativeTransports(self.config, self.signal, self.directory, identity, self.provider)
        await self.transports.start()
        self.driver = NodeDriver(node, dialer=self.transports.dialer)
        self.socks = Socks5Server(self.open_stream, socks_limits(self.config))
        host, port = split_host_port(self.config["client.socks"])
        self.socks_port = await self.socks.start(host, port)
        log.info("SOCKS5 on %s:%d", host, self.socks_port)

    async def open_stream(self, host: str, port: int, isolation: object) -> MeshStream:
        """Called by the SOCKS server for each CONNECT."""
        assert self.driver is not None
        for _ in range(2):
            circuit = await self._circuit_for(isolation, port)
            try:
                return await self.driver.open_stream(circuit, host, port)
            except StreamError as exc:
                if exc.reason is not EndReason.DESTROYED:
                    raise
                self._circuits.pop(isolation, None)  # the circuit died under us: build another
        raise CircuitError("circuits keep failing; the mesh may be unreachable")

    async def _circuit_for(self, isolation: object, port: int) -> int:
        assert self.driver is not None
        lock = self._building.setdefault(isolation, asyncio.Lock())
        async with lock:
            circuit = self._circuits.get(isolation)
            if circuit is not None and circuit in self.driver.node.circuits():
                return circuit

            async def choose(avoid: frozenset[PeerId], refetch: bool) -> list[Descriptor]:
                relays = await self.directory.relays(refresh=refetch)
                return self.guards.select(self.selector, relays, hops=self.config["core.hops"], port=port,
                                          exclude=avoid, exclude_countries=self.config["path.exclude_countries"],
                                          rng=self._rng)

            circuit, _ = await build_around_failures(self.driver, choose, self.selector,
                                                     first_hop=self.guards.first_hop)
            self._circuits[isolation] = circuit
            return circuit

    async def stop(self) -> None:
        if self.socks is not None:
            await self.socks.close()
        if self.driver is not None:
            await self.driver.close()
        if self.transports is not None:
            await self.transports.close()
        await self.signal.close()
