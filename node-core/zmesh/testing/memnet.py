"""A whole mesh inside one process, on in-memory links: for protocol tests and benchmarks only.

``MemoryNetwork`` keeps a driver per peer and dials by connecting a ``memory_link_pair`` between
two of them. Real deployments use the WebSocket/WebRTC adapters instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..aio.driver import IncomingStream, NodeDriver, StreamHandler
from ..cells import EndReason
from ..crypto.provider import CryptoProvider
from ..descriptor import Capabilities, Descriptor, sign_descriptor
from ..errors import TransportError
from ..identity import Identity, PeerId
from ..link import Link
from ..node import Node, NodeLimits
from ..onionkeys import OnionKeyRing
from .memlink import memory_link_pair


class MemoryNetwork:
    """Nodes reachable by PeerId over bounded in-memory links, all on ``clock`` (a test passes a
    ``FakeClock`` and tells each driver ``clock_moved`` when it moves it)."""

    def __init__(self, provider: CryptoProvider, *, link_capacity: int = 256 * 1024,
                 limits: NodeLimits | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.provider = provider
        self.clock = clock
        self.link_capacity = link_capacity
        self.limits = limits
        self.drivers: dict[PeerId, NodeDriver] = {}
        self.descriptors: dict[PeerId, Descriptor] = {}
        self.links: list[tuple[PeerId, PeerId, Link, Link]] = []
        self.unreachable: set[PeerId] = set()  # nodes that cannot listen, like browser tabs

    async def add_node(self, *, exit: bool = False, country: str | None = None, exit_kind: str = "direct",
                       reachable: bool = True, accept_circuits: bool = True,
                       stream_handler: StreamHandler | None = None,
                       onion_ring: OnionKeyRing | None = None) -> NodeDriver:
        """A node; ``reachable=False`` makes one that can only dial out (a browser tab): others reach
        it over the relay links it opened and authenticated (``NodeDriver.connect(..., authenticated=True)``).
        ``onion_ring``: onion keys the test rotates (then ``republish``)."""
        identity = await Identity.generate(self.provider)
        node = Node(identity, self.provider, self.clock, accept_circuits=accept_circuits, limits=self.limits,
                    onion_ring=onion_ring)
        driver = NodeDriver(node, dialer=lambda peer, _role, me=identity.peer_id: self._dial(me, peer),
                            stream_handler=stream_handler)
        self.drivers[identity.peer_id] = driver
        if not reachable:
            self.unreachable.add(identity.peer_id)
        self.descriptors[identity.peer_id] = await sign_descriptor(
            self.provider, identity, now=int(time.time()),
            addresses={"memory": (identity.peer_id.text,)},
            capabilities=Capabilities(relay=True, exit=exit, country=country, bandwidth=10_000_000,
                                      exit_kind=exit_kind),
            exit_ports=((1, 65535),) if exit else (), onion=node.onion_ring.current.public)
        return driver

    async def republish(self, peer: PeerId) -> Descriptor:
        """Sign ``peer``'s descriptor again with its current onion keys (after a rotation)."""
        old, node = self.descriptors[peer], self.drivers[peer].node
        self.descriptors[peer] = await sign_descriptor(
            self.provider, node.identity, now=int(time.time()), addresses=old.addresses,
            capabilities=old.capabilities, exit_ports=old.exit_ports, onion=node.onion_ring.current.public)
        return self.descriptors[peer]

    async def _dial(self, me: PeerId, peer: PeerId) -> Link:
        remote = self.drivers.get(peer)
        if remote is None or peer in self.unreachable:
            raise TransportError(f"no node {peer.short()} to dial in this memory network")
        ours, theirs = memory_link_pair(capacity_bytes=self.link_capacity)
        # The listener learns who dialed only if the dialer authenticates (as on real links).
        await remote.add_link(theirs, None, initiator=False)
        self.links.append((me, peer, ours, theirs))
        return ours

    def queued_bytes(self, peer: PeerId) -> int:
        """What ``peer`` buffers: cells queued in its node plus bytes it wrote not yet read."""
        own = sum(link.queued_bytes for me, _, link, _ in self.links if me == peer)
        own += sum(link.queued_bytes for _, them, _, link in self.links if them == peer)
        return self.drivers[peer].node.buffered_bytes() + own

    async def close(self) -> None:
        for driver in self.drivers.values():
            await driver.close()


def blob_service(payload: bytes) -> StreamHandler:
    """A stream handler that answers every BEGIN with ``payload`` and then ends the stream."""

    async def serve(request: IncomingStream) -> None:
        stream = await request.accept()
        await stream.write(payload)
        await stream.close(EndReason.DONE)

    return serve


async def echo_service(request: IncomingStream) -> None:
    """A stream handler that sends back whatever it reads until the client ends the stream."""
    stream = await request.accept()
    while data := await stream.read():
        await stream.write(data)
    await stream.close()
