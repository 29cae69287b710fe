"""``zmesh.connect``: a connected ``MeshVPN`` over real native transports, in one line.

    async with zmesh.connect("http://signal.example:8080", hops=3) as vpn:
        response = await vpn.fetch("http://example.org/")

or ``vpn = await zmesh.connect(...)`` and later ``await vpn.close()``. ``https://`` runs TLS end to end
over the stream with the standard library's ``ssl`` (the system's roots; pass
``tls=stdlib_connector([pem])`` from ``zmesh.native.tls`` to trust more CAs). ``vpn.open_stream`` and
``vpn.fetch`` also reach ``.mesh`` onion services (descriptors from the signal server's store). Like
``zmesh client``, the node has a fresh identity, publishes nothing and answers no WebRTC offers;
settings beyond the ``MeshVPN`` options come from the usual configuration (``ZMESH_*`` environment,
``zmesh.toml``).
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

from zmesh.aio.api import MeshVPN
from zmesh.aio.driver import NodeDriver
from zmesh.aio.onion import StoreDescriptors
from zmesh.consensus_view import ConsensusView
from zmesh.directory_view import DirectoryView
from zmesh.identity import Identity
from zmesh.native.crypto import NativeCryptoProvider
from zmesh.native.tls import stdlib_connector
from zmesh.node import Node, NodeLimits
from zmesh_signal.client import SignalClient

from . import config as settings
from .authority_client import AuthorityClient, open_consensus_view
from .transports import NativeTransports


class NativeMeshVPN(MeshVPN):
    """A ``MeshVPN`` that owns its node's transports and signal client: ``close`` ends them too."""

    def __init__(self, driver: NodeDriver, directory: DirectoryView | ConsensusView, transports: NativeTransports,
                 signal: SignalClient, signal_url: str, authorities: AuthorityClient | None = None,
                 **options: Any) -> None:
        super().__init__(driver, directory.live,
                         descriptors=StoreDescriptors(signal, signal_url, driver.node.provider), **options)
        self._transports, self._signal, self._authorities = transports, signal, authorities

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            await self.driver.close()
            await self._transports.close()
            await self._signal.close()
            if self._authorities is not None:
                await self._authorities.close()


async def open_native_mesh(signal_url: str, destination: str | None = None, *,
                           authorities: list[str] | None = None, **options: Any) -> NativeMeshVPN:
    """Start a client node on ``signal_url``'s mesh and build its circuit (``MeshVPN.connect``).
    ``authorities`` (``URL#FINGERPRINT``, else ``directory.authorities`` from the configuration):
    take relays only from their signed consensus, never from the signal server."""
    config = settings.load(flags={"signaling.url": signal_url, "anonymity.cover": options.pop("cover", None),
                                  "directory.authorities": authorities})
    provider = NativeCryptoProvider()
    signal = SignalClient(config["signaling.url"])
    client = AuthorityClient(config["directory.authorities"]) if config["directory.authorities"] else None
    directory: DirectoryView | ConsensusView = DirectoryView(signal.relay_updates, provider)
    if client is not None:
        directory = await open_consensus_view(config, client, provider, config["client.data_dir"])
    identity = await Identity.generate(provider)
    node = Node(identity, provider, time.monotonic, accept_circuits=False,
                limits=NodeLimits(build_timeout=config["core.build_timeout"],
                                  cc_max_window=config["core.cc_max_window"]))
    node.padding_policy = settings.padding_policy(config)
    node.setup_padding = settings.setup_padding(config)
    transports = NativeTransports(config, signal, directory, identity, provider)
    driver = NodeDriver(node, dialer=transports.dialer)
    options.setdefault("tls", stdlib_connector())
    vpn = NativeMeshVPN(driver, directory, transports, signal, config["signaling.url"].split(",")[0], client,
                        **options)
    try:
        await transports.start()
        await directory.relays(refresh=client is None)
        await vpn.connect(destination)
    except BaseException:
        await vpn.close()
        raise
    return vpn


class Connecting:
    """What ``zmesh.connect`` returns: await it for the ``MeshVPN``, or use it as ``async with``
    to have it closed at the end of the block."""

    def __init__(self, signal_url: str, destination: str | None, options: dict[str, Any]) -> None:
        self._args = (signal_url, destination)
        self._options = options
        self._vpn: NativeMeshVPN | None = None

    def __await__(self) -> Generator[Any, None, NativeMeshVPN]:
        return open_native_mesh(*self._args, **self._options).__await__()

    async def __aenter__(self) -> NativeMeshVPN:
        self._vpn = await open_native_mesh(*self._args, **self._options)
        return self._vpn

    async def __aexit__(self, *_exc: object) -> None:
        if self._vpn is not None:
            await self._vpn.close()
