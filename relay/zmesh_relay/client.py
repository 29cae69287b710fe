"""``zmesh client``: a SOCKS5 front that carries each connection over a circuit.

Circuits are kept per SOCKS credential pair (stream isolation, like Tor's IsolateSOCKSAuth):
connections with different username/password never share a circuit. A circuit that dies is
rebuilt on the next connection, avoiding the relay that failed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

from zmesh.crypto.native import NativeCryptoProvider
from zmesh.driver import MeshStream, NodeDriver
from zmesh.errors import CircuitError, StreamError
from zmesh.identity import Identity, PeerId
from zmesh.node import Node, NodeLimits
from zmesh.path import PathSelector
from zmesh_signal.client import SignalClient

from .config import split_host_port
from .directory import Directory
from .socks5 import Socks5Server
from .transports import NativeTransports

log = logging.getLogger(__name__)
BUILD_ATTEMPTS = 4


class Client:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.provider = NativeCryptoProvider()
        self.signal = SignalClient(config["signaling.url"])
        self.directory = Directory(self.signal, self.provider)
        self.selector = PathSelector()
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
        self.socks = Socks5Server(self.open_stream)
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
                if exc.reason != "destroyed":
                    raise
                self._circuits.pop(isolation, None)  # the circuit died under us: build another
        raise CircuitError("circuits keep failing; the mesh may be unreachable", "unstable")

    async def _circuit_for(self, isolation: object, port: int) -> int:
        assert self.driver is not None
        lock = self._building.setdefault(isolation, asyncio.Lock())
        async with lock:
            circuit = self._circuits.get(isolation)
            if circuit is not None and circuit in self.driver.node.circuits():
                return circuit
            avoid: set[PeerId] = set()
            last: CircuitError | None = None
            for attempt in range(BUILD_ATTEMPTS):
                relays = await self.directory.relays(refresh=attempt > 0)
                path = self.selector.select(relays, hops=self.config["core.hops"], port=port,
                                            exclude=avoid, rng=self._rng)
                try:
                    circuit = await self.driver.build_circuit(path)
                except CircuitError as exc:
                    last = exc
                    if isinstance(exc.failed_peer, PeerId):
                        avoid.add(exc.failed_peer)
                        self.selector.record(exc.failed_peer, ok=False)
                    log.info("circuit build failed (%s); retrying", exc.reason)
                    continue
                for relay in path:
                    self.selector.record(relay.peer_id, ok=True)
                self._circuits[isolation] = circuit
                return circuit
            raise last or CircuitError("could not build a circuit", "failed")

    async def stop(self) -> None:
        if self.socks is not None:
            await self.socks.close()
        if self.driver is not None:
            await self.driver.close()
        if self.transports is not None:
            await self.transports.close()
        await self.signal.close()
