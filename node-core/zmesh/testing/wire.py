"""Sans-IO nodes joined by hand on one fake clock: protocol tests without a driver, links or sleeps."""

from __future__ import annotations

from typing import Any

from ..crypto.provider import CryptoProvider
from ..events import LinkNeeded
from ..identity import Identity, PeerId
from ..link import LinkRole
from ..node import Node


class FakeClock:
    """A clock a test moves by setting ``now`` (starts at 100.0 so 0 never reads as unset)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Wire:
    """``pump`` moves frames between the nodes and opens the links they ask for; a node in
    ``silent`` still receives but everything it writes is lost (a peer that hung without closing
    its links). ``events`` keeps every event each node reported."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.nodes: dict[PeerId, Node] = {}
        self.ends: dict[tuple[Node, int], tuple[Node, int]] = {}  # (node, link) -> (far node, far link)
        self.events: dict[Node, list[object]] = {}
        self.silent: set[Node] = set()

    async def add(self, provider: CryptoProvider, **kwargs: Any) -> Node:
        """A new node on this wire's clock (``kwargs`` go to ``Node``)."""
        node = Node(await Identity.generate(provider), provider, self.clock, **kwargs)
        self.nodes[node.identity.peer_id] = node
        self.events[node] = []
        return node

    async def connect(self, dialer: Node, listener: Node, role: LinkRole = LinkRole.CLIENT) -> None:
        near = await dialer.link_opened(listener.identity.peer_id, initiator=True, role=role)
        far = await listener.link_opened(None, initiator=False)
        self.ends[(dialer, near)], self.ends[(listener, far)] = (listener, far), (dialer, near)

    async def pump(self) -> None:
        """Deliver until no node has anything left to write."""
        moved = True
        while moved:
            moved = False
            for node in list(self.nodes.values()):
                await self._take_events(node)
                for link in node.links_with_output():
                    moved = True
                    await self._deliver(node, link)

    async def step(self) -> bool:
        """Deliver one frame (the first node's with any), so a test can act between two frames;
        whether there was one."""
        for node in list(self.nodes.values()):
            await self._take_events(node)
            for link in node.links_with_output():
                await self._deliver(node, link)
                return True
        return False

    async def _take_events(self, node: Node) -> None:
        for event in node.events():
            self.events[node].append(event)
            if isinstance(event, LinkNeeded):
                await self.connect(node, self.nodes[event.peer], event.role)

    async def _deliver(self, node: Node, link: int) -> None:
        frame = node.take_frame(link)
        far = self.ends.get((node, link))
        if far is not None and node not in self.silent:
            await far[0].receive_frame(far[1], frame)

    async def advance(self, to: float) -> None:
        """Move the clock to ``to``, run every node's timer, then pump."""
        self.clock.now = to
        for node in self.nodes.values():
            await node.handle_timer(to)
        await self.pump()
