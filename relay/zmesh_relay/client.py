"""``zmesh client``: a SOCKS5 front that carries each connection over a circuit.

Which circuit is ``zmesh.aio.circuits``' job: connections with different SOCKS username/password
(and, with ``client.isolate_destination``, different hosts) never share a circuit, a circuit takes
new connections for ``client.max_circuit_dirtiness`` seconds after its first, and a pool of
``client.circuit_pool`` clean circuits is kept built. ``client.control`` serves the circuits as
JSON (``docs/control.md``). A connection takes a circuit whose exit's published
policy admits its port, built for it if none does; a port no exit admits is refused at once (SOCKS
0x02) without building anything. ``client.exit_kind`` and ``client.exit_country`` narrow the exits
drawn (docs/exits.md). With ``client.multipath`` each connection is split over its circuit and a
second one to the same exit (``zmesh.aio.multipath_link``).
Every circuit enters at an entry guard (``self.guards``, ``zmesh.guards``), saved in ``client.data_dir``.
A ``*.mesh`` name is an onion service: resolved here (``zmesh.aio.onion.OnionClient``: descriptor,
rendezvous, the joined circuit reused), never by DNS or an exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any

from zmesh.aio.circuits import CircuitManager, TrackedStream
from zmesh.aio.consensus_refresh import keep_fresh
from zmesh.aio.driver import MeshStream, NodeDriver
from zmesh.aio.multipath_link import LegPartners
from zmesh.aio.onion import DescriptorDirectory, OnionClient, StoreDescriptors
from zmesh.circuit_plan import CircuitPlan
from zmesh.consensus_view import ConsensusView
from zmesh.descriptor import Descriptor
from zmesh.directory_view import DirectoryView
from zmesh.errors import CircuitError
from zmesh.identity import Identity, PeerId
from zmesh.native.crypto import NativeCryptoProvider
from zmesh.node import Node, NodeLimits
from zmesh.onion.address import is_mesh_name
from zmesh.path import PathSelector
from zmesh_signal.client import SignalClient

from .authority_client import AuthorityClient, open_consensus_view
from .config import circuit_policy, control_address, padding_policy, setup_padding, socks_limits, split_host_port
from .control import ControlServer
from .guard_file import open_guards
from .keys import load_or_create_client_auth_key
from .socks5 import Credentials, Socks5Server
from .transports import NativeTransports
from .trust_file import TrustFile

log = logging.getLogger(__name__)

class Client:
    def __init__(self, config: dict[str, Any], descriptors: DescriptorDirectory | None = None) -> None:
        """``descriptors``: where onion descriptors are published and looked up (default: the signal
        server's store, ``/v1/onion/``)."""
        self.config = config
        self.control_address = control_address(config)  # refused before anything starts
        self.provider = NativeCryptoProvider()
        self.signal = SignalClient(config["signaling.url"])
        self.descriptors = descriptors  # None: the signal server's store, made in start() (the auth key)
        self.directory: DirectoryView | ConsensusView = DirectoryView(self.signal.relay_updates, self.provider)
        self.authorities = AuthorityClient(config["directory.authorities"]) if config["directory.authorities"] else None
        self.selector = PathSelector()
        self.trust_file = TrustFile(config["client.data_dir"], self.selector.trust)
        self.guards = open_guards(config["client.data_dir"])
        self.plan = CircuitPlan(circuit_policy(config), clock=time.monotonic)
        self.driver: NodeDriver | None = None
        self.circuits: CircuitManager | None = None
        self.onion: OnionClient | None = None
        self.transports: NativeTransports | None = None
        self.socks: Socks5Server | None = None
        self.control: ControlServer | None = None
        self.socks_port = 0
        self.control_port = 0
        self._rng = random.SystemRandom()
        self._fresh: asyncio.Task | None = None

    async def start(self) -> None:
        if self.descriptors is None:  # first: a bad key file is refused before anything starts
            key_file = self.config["client.client_auth_key"]
            secret = await load_or_create_client_auth_key(self.provider, key_file) if key_file else None
            self.descriptors = StoreDescriptors(self.signal, self.config["signaling.url"].split(",")[0],
                                                self.provider, client_secret=secret)
        # A fresh identity per run: a client has no reason to be recognisable across restarts.
        identity = await Identity.generate(self.provider)
        log.info("this run's node identity: %s", identity.peer_id.text)  # the client's own log only
        if self.authorities is not None:  # the consensus is then the only source of relays
            view = await open_consensus_view(self.config, self.authorities, self.provider,
                                             self.config["client.data_dir"])
            await view.relays()  # a refused consensus stops the start with the reason
            self.directory, self.guards.eligible = view, view.is_guard
            self._fresh = asyncio.get_running_loop().create_task(keep_fresh(view))
        node = Node(identity, self.provider, time.monotonic, accept_circuits=False,
                    limits=NodeLimits(build_timeout=self.config["core.build_timeout"],
                                      cc_max_window=self.config["core.cc_max_window"]))
        node.padding_policy = padding_policy(self.config)
        node.setup_padding = setup_padding(self.config)
        # No inbound handler: a client answers no WebRTC offers and publishes nothing.
        self.transports = NativeTransports(self.config, self.signal, self.directory, identity, self.provider)
        await self.transports.start()
        self.driver = NodeDriver(node, dialer=self.transports.dialer)
        partners = LegPartners(self.driver, self._choose_leg, self.selector, first_hop=self.guards.first_hop) \
            if self.config["client.multipath"] else None
        self.circuits = CircuitManager(self.driver, self._choose, self.selector, self.plan,
                                       first_hop=self.guards.first_hop, partners=partners)
        self.circuits.start()
        self.onion = OnionClient(self.driver, self._relays, self.descriptors, selector=self.selector,
                                 guards=self.guards, rng=self._rng)
        self.socks = Socks5Server(self.open_stream, socks_limits(self.config))
        host, port = split_host_port(self.config["client.socks"])
        self.socks_port = await self.socks.start(host, port)
        log.info("SOCKS5 on %s:%d", host, self.socks_port)
        if self.control_address is not None:
            self.control = ControlServer(self.status)
            self.control_port = await self.control.start(*self.control_address)

    async def _choose(self, port: int | None, avoid: frozenset[PeerId], refetch: bool) -> list[Descriptor]:
        relays = await self.directory.relays(refresh=refetch)
        return self.guards.select(self.selector, relays, hops=self.config["core.hops"], port=port, exclude=avoid,
                                  country=self.config["client.exit_country"] or None,
                                  exit_kind=self.config["client.exit_kind"] or None,
                                  exclude_countries=self.config["path.exclude_countries"], rng=self._rng)

    async def _relays(self, refresh: bool) -> list[Descriptor]:
        return await self.directory.relays(refresh=refresh)

    async def _choose_leg(self, exit_peer: PeerId, avoid: frozenset[PeerId], refetch: bool) -> list[Descriptor]:
        """A multipath stream's second leg: a path to ``exit_peer`` through none of ``avoid``."""
        relays = await self.directory.relays(refresh=refetch)
        exit = next((r for r in relays if r.peer_id == exit_peer), None)
        if exit is None:
            raise CircuitError("the multipath exit is no longer in the directory")
        return self.guards.select(self.selector, relays, hops=self.config["core.hops"], destination=exit,
                                  exclude=avoid, exclude_countries=self.config["path.exclude_countries"],
                                  rng=self._rng)

    async def open_stream(self, host: str, port: int, credentials: Credentials | None) -> TrackedStream | MeshStream:
        """Called by the SOCKS server for each CONNECT."""
        assert self.circuits is not None and self.onion is not None
        if is_mesh_name(host):
            return await self.onion.open_stream(host, port)
        key = self.plan.key_for(credentials, host)
        return await self.circuits.open_stream(host, port, key)

    def status(self) -> dict[str, Any]:
        """What the control port serves at ``/v1/circuits``."""
        circuits = self.circuits.snapshot() if self.circuits is not None else []
        if self.driver is not None:
            circuits += self.driver.node.onion_circuits()
        return {"guards": [peer.text for peer in self.guards.primary()], "circuits": circuits}

    async def stop(self) -> None:
        if self._fresh is not None:
            self._fresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fresh
        if self.control is not None:
            await self.control.close()
        if self.socks is not None:
            await self.socks.close()
        if self.circuits is not None:
            await self.circuits.close()
        if self.driver is not None:
            await self.driver.close()
        if self.transports is not None:
            await self.transports.close()
        await self.signal.close()
        if self.authorities is not None:
            await self.authorities.close()
        self.trust_file.save()
