"""Link liveness (docs/protocol.md §3): an idle link is PINGed, a link whose peer stopped answering
is closed, and the circuits over it end naming that peer so a client builds around it. Time is the
node's own clock: the sans-IO tests move a fake one; the driver tests use tiny intervals."""

import asyncio
import time

import pytest

from tests.conftest import wait_until
from zmesh.aio.api import MeshVPN
from zmesh.aio.driver import NodeDriver
from zmesh.cells import CellCommand, DestroyReason, encode_cell, parse_frame
from zmesh.errors import ConfigError, LinkClosed
from zmesh.events import CircuitBuilt, CircuitClosed, CloseLink
from zmesh.identity import Identity
from zmesh.node import Node, NodeLimits
from zmesh.path import PathSelector
from zmesh.testing.memlink import memory_link_pair
from zmesh.testing.memnet import MemoryNetwork, echo_service
from zmesh.testing.wire import FakeClock, Wire

SHORT = NodeLimits(keepalive_interval=0.1, dead_after=0.5)  # for real time: small, yet far above loop hiccups


async def one_link(provider):
    """A node with one link, opened at t=100 to a peer that says nothing unless the test does."""
    clock = FakeClock()
    node = Node(await Identity.generate(provider), provider, clock)
    link = await node.link_opened((await Identity.generate(provider)).peer_id, initiator=True)
    return node, link, clock


def sent(node, link):
    """The commands of the cells the node wants to write on ``link`` now."""
    frame = node.take_frame(link)
    return [] if frame is None else [cell.command for cell in parse_frame(frame)]


def take_ping(node, link):
    (cell,) = parse_frame(node.take_frame(link))
    assert cell.command == CellCommand.PING and len(cell.payload) == 8
    return cell.payload


@pytest.mark.parametrize("limits, key", [
    ({"keepalive_interval": 0}, "keepalive_interval"),
    ({"dead_after": 15.0}, "dead_after"),
    ({"keepalive_interval": 60.0}, "dead_after"),
])
def test_limits_need_dead_after_beyond_the_keepalive_interval(limits, key):
    with pytest.raises(ConfigError, match=key):
        NodeLimits(**limits)
    assert (NodeLimits().keepalive_interval, NodeLimits().dead_after) == (15.0, 45.0)


def test_an_idle_link_gets_one_ping_after_the_interval(provider):
    async def main():
        node, link, clock = await one_link(provider)
        assert node.next_deadline() == 115.0
        clock.now = 114.9
        await node.handle_timer(114.9)
        assert sent(node, link) == []
        clock.now = 115.0
        await node.handle_timer(115.0)
        take_ping(node, link)
        clock.now = 130.0
        await node.handle_timer(130.0)  # one PING outstanding at a time
        assert sent(node, link) == [] and node.next_deadline() == 145.0

    asyncio.run(main())


def test_a_link_receiving_traffic_is_not_pinged(provider):
    async def main():
        node, link, clock = await one_link(provider)
        for t in (110.0, 120.0, 130.0):
            clock.now = t
            await node.receive_frame(link, encode_cell(CellCommand.PADDING, 0))
            # traffic does not move the timer (that would cost O(links) per frame): it wakes early,
            # finds nothing due and sets itself to the real deadline
            clock.now = t + 5.0
            assert node.next_deadline() == t + 5.0
            await node.handle_timer(t + 5.0)
            assert sent(node, link) == [] and node.next_deadline() == t + 15.0
        clock.now = 145.0
        await node.handle_timer(145.0)
        take_ping(node, link)

    asyncio.run(main())


def test_a_pong_resets_the_idle_clock_and_measures_the_round_trip(provider):
    async def main():
        node, link, clock = await one_link(provider)
        clock.now = 115.0
        await node.handle_timer(115.0)
        nonce = take_ping(node, link)
        assert node.link_rtt(link) is None
        clock.now = 115.25
        await node.receive_frame(link, encode_cell(CellCommand.PONG, 0, b"not the nonce"))
        assert node.link_rtt(link) is None  # any frame is a sign of life, but only the echo is timed
        await node.receive_frame(link, encode_cell(CellCommand.PONG, 0, nonce))
        assert node.link_rtt(link) == pytest.approx(0.25)
        assert node.next_deadline() == 130.25  # the next PING is due an interval after the answer
        clock.now = 130.25
        await node.handle_timer(130.25)
        take_ping(node, link)
        clock.now = 145.0  # dead_after since the link opened, but it answered at 115.25
        await node.handle_timer(145.0)
        assert node.metrics["links_dead"] == 0 and node.events() == []

    asyncio.run(main())


def test_a_silent_link_is_closed_after_dead_after(provider):
    async def main():
        node, link, clock = await one_link(provider)
        for t in (115.0, 144.9):
            clock.now = t
            await node.handle_timer(t)
        take_ping(node, link)
        assert node.events() == []
        clock.now = 145.0
        await node.handle_timer(145.0)
        (event,) = node.events()
        assert isinstance(event, CloseLink) and event.link == link and "stopped answering" in event.reason
        assert node.metrics["links_dead"] == 1 and node.next_deadline() is None
        assert node.take_frame(link) is None and node.link_rtt(link) is None

    asyncio.run(main())


def test_a_late_timer_pings_before_it_gives_up(provider):
    """A stalled event loop must not close a link whose peer was never asked to answer."""
    async def main():
        node, link, clock = await one_link(provider)
        clock.now = 200.0
        await node.handle_timer(200.0)
        take_ping(node, link)
        assert node.events() == [] and node.next_deadline() == 230.0
        clock.now = 230.0
        await node.handle_timer(230.0)
        assert isinstance(node.events()[0], CloseLink)

    asyncio.run(main())


def test_a_circuit_over_a_silent_peer_closes_naming_it(provider):
    async def main():
        wire = Wire()
        client = await wire.add(provider, accept_circuits=False)
        first, second = await wire.add(provider), await wire.add(provider)
        circuit = await client.build_circuit([first.identity, second.identity])
        await wire.pump()
        assert any(isinstance(e, CircuitBuilt) for e in wire.events[client])
        await wire.advance(115.0)  # idle links: PINGs both ways, all answered
        await wire.advance(130.0)
        assert client.circuits() == [circuit] and not any(d.metrics["links_dead"] for d in wire.nodes.values())
        wire.silent.add(first)  # from t=130 on
        for t in (145.0, 174.9):  # a PING at 145, unanswered
            await wire.advance(t)
        assert client.circuits() == [circuit]
        await wire.advance(175.0)  # 45 s after the last frame from `first`
        assert client.metrics["links_dead"] == 1 and client.circuits() == []
        closed = [e for e in wire.events[client] if isinstance(e, CircuitClosed)]
        assert [(c.circuit, c.reason, c.origin, c.failed_peer) for c in closed] == [
            (circuit, DestroyReason.LINK_CLOSED, True, first.identity.peer_id)]
        assert any(isinstance(e, CloseLink) for e in wire.events[client])

    asyncio.run(main())


def test_the_driver_drops_a_link_whose_far_side_stops_answering(provider):
    async def main():
        node = Node(await Identity.generate(provider), provider, time.monotonic, limits=SHORT)
        driver = NodeDriver(node)
        dropped = asyncio.Event()
        driver.on_event = lambda e: dropped.set() if isinstance(e, CloseLink) else None
        ours, theirs = memory_link_pair()
        try:
            link = await driver.add_link(ours, (await Identity.generate(provider)).peer_id, initiator=True)
            # The far side answers seven PINGs (they span more than dead_after), then stops reading.
            for _ in range(7):
                (cell,) = parse_frame(await asyncio.wait_for(theirs.recv(), 10))
                assert cell.command == CellCommand.PING
                await theirs.send(encode_cell(CellCommand.PONG, 0, cell.payload))
            await wait_until(lambda: node.link_rtt(link) is not None)
            assert link in driver.links() and not dropped.is_set()
            await asyncio.wait_for(dropped.wait(), 10)
            await wait_until(lambda: link not in driver.links())
            with pytest.raises(LinkClosed):  # the driver closed the link itself
                while True:
                    await theirs.recv()
            assert node.metrics["links_dead"] == 1
        finally:
            await driver.close()

    asyncio.run(main())


def test_a_client_builds_around_a_relay_that_hangs(provider):
    """A first hop that takes the link but never answers: the dead link fails the build long before
    the build timeout, naming that relay, and MeshVPN builds a circuit around it."""
    async def main():
        net = MemoryNetwork(provider, limits=SHORT)
        hung, good = await net.add_node(), await net.add_node()
        exit_ = await net.add_node(exit=True, stream_handler=echo_service)

        async def never_answer(link, peer, *, initiator):
            pass  # the link is left unread: like a host that froze

        hung.add_link = never_answer
        descriptors = {d: net.descriptors[d.node.identity.peer_id] for d in (hung, good, exit_)}

        class HungFirst(PathSelector):
            def select(self, relays, *, exclude=(), **kwargs):
                if descriptors[hung].peer_id not in exclude:
                    return [descriptors[hung], descriptors[exit_]]
                return super().select(relays, exclude=exclude, **kwargs)

        vpn = MeshVPN(await net.add_node(accept_circuits=False), lambda: list(net.descriptors.values()),
                      selector=HungFirst(), hops=2)
        try:
            await asyncio.wait_for(vpn.connect(), 10)
            assert vpn.get_stats()["path"] == [descriptors[good].peer_id.text, descriptors[exit_].peer_id.text]
            assert vpn.driver.node.metrics["links_dead"] == 1
            assert vpn.selector.trust.records[descriptors[hung].peer_id].builds_failed == 1
            stream = await vpn.open_stream("echo.test", 7)
            await stream.write(b"around")
            assert await asyncio.wait_for(stream.read(), 10) == b"around"
        finally:
            await vpn.close()
            await net.close()

    asyncio.run(main())
