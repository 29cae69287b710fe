"""``zmesh service``: host an onion service (docs/onion-services.md), forwarding its streams to
local TCP servers like Tor's HiddenServicePort.

The service key (``service.data_dir``/``service.key``, 0600) is the ``.mesh`` address; the node
that carries the service's circuits gets a fresh identity each run and relays nothing, so no relay
can tie the service to a PeerId it knows. A BEGIN on a joined rendezvous circuit for a virtual port
in ``service.forward`` is connected to its target; any other port is refused with END
``SERVICE_PORT``, and a target that refuses gets END ``CONNECT_REFUSED``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from zmesh.aio.driver import IncomingStream, NodeDriver
from zmesh.aio.onion import DescriptorDirectory, OnionLimits, OnionService, StoreDescriptors
from zmesh.cells import EndReason
from zmesh.descriptor import Descriptor
from zmesh.directory_view import DirectoryView
from zmesh.identity import Identity
from zmesh.native.crypto import NativeCryptoProvider
from zmesh.node import Node, NodeLimits
from zmesh.onion.introduce import ServiceKeys
from zmesh.path import PathSelector
from zmesh_signal.client import SignalClient

from .config import control_address
from .control import ControlServer
from .guard_file import open_guards
from .keys import load_or_create_service_key
from .splice import splice
from .transports import NativeTransports

log = logging.getLogger(__name__)

class Service:
    def __init__(self, config: dict[str, Any], descriptors: DescriptorDirectory | None = None) -> None:
        """``descriptors``: where onion descriptors are published and looked up (default: the signal
        server's store, ``/v1/onion/``)."""
        self.config = config
        self.forwards = {vport: (host, port) for vport, host, port in config["service.forward"]}
        self.provider = NativeCryptoProvider()
        self.signal = SignalClient(config["signaling.url"])
        self.directory = DirectoryView(self.signal.relay_updates, self.provider)
        self.descriptors = descriptors or StoreDescriptors(
            self.signal, config["signaling.url"].split(",")[0], self.provider,
            authorized_clients=[bytes.fromhex(key) for key in config["service.authorized_clients"]])
        self.limits = OnionLimits(intro_points=config["service.intro_points"],
                                  intro_lifetime=config["service.intro_lifetime"])
        # Entry guards kept with the service key: a service that drew a new first hop for every
        # circuit would soon use a relay of whoever floods it with introductions (guard discovery).
        self.guards = open_guards(config["service.data_dir"])
        self.transports: NativeTransports | None = None
        self.driver: NodeDriver | None = None
        self.onion: OnionService | None = None
        self.address = ""
        self.control_address = control_address(config)  # refused before anything starts
        self.control: ControlServer | None = None
        self.control_port = 0

    async def start(self) -> None:
        seed = await load_or_create_service_key(self.provider, self.config["service.data_dir"])
        keys = await ServiceKeys.from_seed(self.provider, seed)
        identity = await Identity.generate(self.provider)  # the carrier node's: fresh, never the service key
        log.info("this run's node identity: %s", identity.peer_id.text)  # the service's own log only
        node = Node(identity, self.provider, time.monotonic, accept_circuits=False,
                    limits=NodeLimits(build_timeout=self.config["core.build_timeout"]))
        self.transports = NativeTransports(self.config, self.signal, self.directory, identity, self.provider)
        await self.transports.start()
        self.driver = NodeDriver(node, dialer=self.transports.dialer)
        self.onion = OnionService(self.driver, keys, self._relays, self.descriptors, self._forward,
                                  selector=PathSelector(), guards=self.guards, limits=self.limits)
        self.address = await self.onion.start()
        if self.control_address is not None:
            self.control = ControlServer(self.status)
            self.control_port = await self.control.start(*self.control_address)

    async def _relays(self, refresh: bool) -> list[Descriptor]:
        return await self.directory.relays(refresh=refresh)

    async def _forward(self, request: IncomingStream) -> None:
        target = self.forwards.get(request.port)
        if target is None:
            await request.reject(EndReason.SERVICE_PORT)
            return
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(*target), 10)
        except (OSError, TimeoutError):
            log.info("service target for virtual port %d refused", request.port)
            await request.reject(EndReason.CONNECT_REFUSED)
            return
        stream = await request.accept()
        await splice(stream, reader, writer, end_on_tcp_eof=True)

    def status(self) -> dict[str, Any]:
        """What the control port serves at ``/v1/circuits``: the intro and service-rendezvous circuits."""
        return {"guards": [], "circuits": self.driver.node.onion_circuits() if self.driver is not None else []}

    async def stop(self) -> None:
        if self.control is not None:
            await self.control.close()
        if self.onion is not None:
            await self.onion.close()
        if self.driver is not None:
            await self.driver.close()
        if self.transports is not None:
            await self.transports.close()
        await self.signal.close()


