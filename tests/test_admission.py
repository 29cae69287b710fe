"""Bounds a hostile peer meets at a node (issue 19, defects 3 and 6), in memory on a fake clock:
link-level queues a non-reading peer fills, global link and circuit caps, and fair, rate-limited
handshake work (zmesh.admission, after Tor's onion-skin queue)."""

import asyncio
import os

import pytest

from zmesh.admission import HandshakeQueue
from zmesh.cells import (
    BODY_SIZE,
    CELL_SIZE,
    MAX_CELLS_PER_FRAME,
    CellCommand,
    DestroyReason,
    encode_cell,
    fragments,
    parse_frame,
)
from zmesh.errors import CircuitError, ConfigError
from zmesh.events import CloseLink
from zmesh.handshake import CREATE_SIZE, client_start
from zmesh.identity import Identity
from zmesh.node import Node, NodeLimits
from zmesh.testing.memnet import MemoryNetwork
from zmesh.testing.wire import FakeClock

from .conftest import wait_until

PEER_BIT = 0x8000_0000  # circuit ids a dialer picks carry its initiator bit


def create_cells(circ_id: int, payload: bytes) -> list[bytes]:
    return [encode_cell(CellCommand.CREATE, circ_id, piece, flags) for piece, flags in fragments(payload, BODY_SIZE)]


def flood_frames(first_id: int, frames: int) -> list[bytes]:
    """Frames full of CREATEs with random handshake data: free for an attacker."""
    per_frame = MAX_CELLS_PER_FRAME // len(create_cells(0, bytes(CREATE_SIZE)))
    ids = iter(range(first_id, first_id + frames * per_frame))
    return [b"".join(cell for _ in range(per_frame) for cell in create_cells(PEER_BIT | next(ids),
                                                                           os.urandom(CREATE_SIZE)))
            for _ in range(frames)]


def commands(node: Node, link: int) -> list[tuple[CellCommand, int, bytes]]:
    out = []
    while (frame := node.take_frame(link)) is not None:
        out += [(cell.command, cell.circ_id, cell.payload[:1]) for cell in parse_frame(frame)]
    return out


async def relay_with_links(provider, links: int, limits: NodeLimits | None = None):
    clock = FakeClock()
    identity = await Identity.generate(provider)
    node = Node(identity, provider, clock, limits=limits)
    ids = [await node.link_opened(None, initiator=False) for _ in range(links)]
    for link in ids:
        commands(node, link)  # the AUTH_CHALLENGE greeting
    return node, identity, ids, clock


# ---------------------------------------------------------------- defect 3: link-level queues


def test_a_peer_that_pings_and_never_reads_loses_its_link_with_a_bounded_queue(provider):
    async def main():
        node, _, (link,), _ = await relay_with_links(provider, 1)
        frame = encode_cell(CellCommand.PING, 0, b"12345678") * MAX_CELLS_PER_FRAME
        peak = frames = 0
        closes = []
        while not closes and frames < 1000:
            await node.receive_frame(link, frame)
            frames += 1
            peak = max(peak, node.buffered_bytes())
            closes = [event for event in node.events() if isinstance(event, CloseLink)]
        limit = NodeLimits().max_queued_link_cells
        assert frames * MAX_CELLS_PER_FRAME > limit  # the bound, not the loop's end, stopped it
        assert peak <= limit * CELL_SIZE and node.buffered_bytes() == 0
        assert [event.link for event in closes] == [link] and node.metrics["links_over_queue_bound"] == 1
        assert node.take_frame(link) is None
        await node.receive_frame(link, frame)  # the link is gone: later frames cost nothing
        assert node.buffered_bytes() == 0 and node.metrics["links_over_queue_bound"] == 1

    asyncio.run(main())


def test_an_honest_burst_of_destroys_fits_the_tightest_allowed_link_bound(provider):
    """Closing a link DESTROYs every circuit on it towards the next hop, all queued at once: the
    bound must hold max_circuits_per_link of them, and NodeLimits refuses a bound that could not."""
    limits = NodeLimits(max_circuits_per_link=24, max_queued_link_cells=25)
    with pytest.raises(ConfigError, match="max_queued_link_cells"):
        NodeLimits(max_circuits_per_link=24, max_queued_link_cells=24)

    async def main():
        net = MemoryNetwork(provider, limits=limits)
        try:
            client, middle, exit_ = [await net.add_node() for _ in range(3)]
            path = [net.descriptors[d.node.identity.peer_id] for d in (middle, exit_)]
            for _ in range(limits.max_circuits_per_link):
                await client.build_circuit(path)
            relay = middle.node
            assert len(relay.circuits()) == limits.max_circuits_per_link
            (to_middle,) = client.links().values()
            await to_middle.close()  # the middle DESTROYs every circuit towards the exit in one call
            await wait_until(lambda: not relay.circuits() and not exit_.node.circuits())
            assert relay.metrics["links_over_queue_bound"] == 0 and relay.metrics["circuits_destroyed"] == 24
        finally:
            await net.close()

    asyncio.run(main())


def test_a_closed_link_leaves_no_queued_count_behind(provider):
    """CREATED answers wait on the link as circuit cells; once the link is gone, nothing of them may
    stay counted (the per-circuit counts would otherwise grow with every link that closes busy)."""

    async def main():
        node, identity, (link,), _ = await relay_with_links(provider, 1)
        for circ_id in (1, 2, 3):
            payload = (await client_start(provider, identity.peer_id, identity.onion_keys)).create_payload()
            for cell in create_cells(PEER_BIT | circ_id, payload):
                await node.receive_frame(link, cell)
        assert node.buffered_bytes() > 0  # the three CREATEDs were never taken
        await node.link_closed(link)
        assert node.buffered_bytes() == 0 and not node._queued  # white-box: the count this test guards

    asyncio.run(main())


def test_the_total_per_link_bound_closes_a_link_whose_link_cells_alone_are_within_theirs(provider):
    """CREATED answers are circuit cells: 8 of them plus 3 refusals pass the total of 10 while the
    link cells (3) are far from their own bound (9)."""
    limits = NodeLimits(max_circuits_per_link=8, max_queued_link_cells=9, max_queued_cells_per_circuit=1,
                        max_queued_cells_per_link=10)
    with pytest.raises(ConfigError, match="max_queued_cells_per_link"):
        NodeLimits(max_circuits_per_link=8, max_queued_link_cells=9, max_queued_cells_per_circuit=1,
                   max_queued_cells_per_link=9)

    async def main():
        node, identity, (link,), _ = await relay_with_links(provider, 1, limits)
        for circ_id in range(1, 12):
            payload = (await client_start(provider, identity.peer_id, identity.onion_keys)).create_payload()
            for cell in create_cells(PEER_BIT | circ_id, payload):
                await node.receive_frame(link, cell)
            if circ_id < 11:
                assert node.buffered_bytes() == circ_id * CELL_SIZE
        assert [event.link for event in node.events() if isinstance(event, CloseLink)] == [link]
        assert node.metrics["links_over_queue_bound"] == 1 and node.buffered_bytes() == 0 and not node.circuits()

    asyncio.run(main())


# ---------------------------------------------------------------- defect 6: global caps


def test_links_beyond_the_global_cap_are_closed_at_once_and_counted(provider):
    async def main():
        node, _, links, _ = await relay_with_links(provider, 3, NodeLimits(max_links=2))
        closes = [event.link for event in node.events() if isinstance(event, CloseLink)]
        assert closes == [links[2]] and node.metrics["links_refused"] == 1
        assert links[2] not in node.links_with_output()
        await node.receive_frame(links[2], create_cells(PEER_BIT | 1, bytes(CREATE_SIZE))[0])
        assert node.circuits() == []  # its frames reach nothing

    asyncio.run(main())


def test_circuits_beyond_the_global_cap_fail_with_resource_limit(provider):
    async def main():
        net = MemoryNetwork(provider, limits=NodeLimits(max_circuits=1))
        try:
            client, middle, exit_ = [await net.add_node() for _ in range(3)]
            path = [net.descriptors[d.node.identity.peer_id] for d in (middle, exit_)]
            await client.build_circuit(path)
            with pytest.raises(CircuitError) as info:
                await client.build_circuit(path)
            assert info.value.reason is DestroyReason.RESOURCE_LIMIT and CREATE_SIZE > BODY_SIZE  # one per CREATE
            assert middle.node.metrics["create_refused_full"] == 1 and len(middle.node.circuits()) == 1
        finally:
            await net.close()

    asyncio.run(main())


# ---------------------------------------------------------------- defect 6: handshake fairness


def test_handshake_queue_serves_links_round_robin_within_their_rates():
    queue = HandshakeQueue(rate=10.0, burst=5, max_pending=8, max_delay=2.0)
    assert [queue.add(1, f"flood{i}", 0.0) for i in range(10)] == [True] * 8 + [False] * 2
    assert queue.resume_after(1, 0.0) == pytest.approx(0.1) and queue.resume_after(2, 0.0) == 0
    queue.add(2, "honest", 0.0)
    assert [queue.next_ready(0.0) for _ in range(3)] == ["flood0", "honest", "flood1"]
    assert queue.resume_after(1, 0.0) > 0  # not read again until half of its queue is done
    assert [queue.next_ready(0.0) for _ in range(4)] == ["flood2", "flood3", "flood4", None]  # burst spent
    assert queue.resume_after(1, 0.0) == 0 and queue.add(1, "flood8", 0.0)
    assert queue.next_deadline() == pytest.approx(0.1)  # the next token
    assert queue.next_ready(0.1) == "flood5" and queue.next_ready(0.1) is None
    assert queue.expired(2.0) == [] and queue.expired(2.01) == ["flood6", "flood7", "flood8"]
    assert queue.next_deadline() == float("inf") and queue.forget(1) == [] and queue.forget(3) == []
    with pytest.raises(ConfigError, match="rate"):
        HandshakeQueue(rate=0, burst=1, max_pending=1, max_delay=1.0)


def test_a_create_flood_gets_its_rate_and_an_honest_create_is_answered_at_once(provider):
    """One link sends frames full of random CREATEs without pause; another sends one real CREATE.
    The flood gets handshake_rate (its excess refused with RESOURCE_LIMIT, its reads paused), and
    the honest CREATE is answered in the call that received it, after at most one flood handshake."""
    limits = NodeLimits()

    async def main():
        node, identity, (flood, honest), clock = await relay_with_links(provider, 2, limits)
        next_id = 1
        for _ in range(10):  # 10 frames at once: the burst is done, the queue fills, the rest refused
            for frame in flood_frames(next_id, 1):
                await node.receive_frame(flood, frame)
            next_id += MAX_CELLS_PER_FRAME // 2
        assert node.metrics["handshakes"] == limits.handshake_burst
        refused = [cell for cell in commands(node, flood) if cell[0] == CellCommand.DESTROY
                   and cell[2] == bytes([DestroyReason.RESOURCE_LIMIT])]
        assert len(refused) == 10 * 32 - limits.handshake_burst - limits.max_pending_handshakes_per_link
        assert node.read_pause(flood) > 0 and node.read_pause(honest) == 0
        for _ in range(20):  # 2 s of flooding: whenever the driver lets it read, it sends another frame
            clock.now += 0.1
            await node.handle_timer(clock.now)
            if node.read_pause(flood) == 0:
                await node.receive_frame(flood, flood_frames(next_id, 1)[0])
                next_id += MAX_CELLS_PER_FRAME // 2
        assert node.metrics["handshakes"] <= limits.handshake_burst + 2.0 * limits.handshake_rate + 1
        before = node.metrics["handshakes"]
        clock.now += 0.02  # the flood has two tokens again, and a full queue
        state = await client_start(provider, identity.peer_id, identity.onion_keys)
        for cell in create_cells(PEER_BIT | 1, state.create_payload()):
            await node.receive_frame(honest, cell)
        assert [cell[0] for cell in commands(node, honest)] == [CellCommand.CREATED]
        assert node.metrics["handshakes"] - before <= 3  # flood, honest, flood: one turn each

    asyncio.run(main())


def test_creates_that_wait_longer_than_the_queue_delay_are_refused(provider):
    limits = NodeLimits(handshake_rate=1.0, handshake_burst=1)

    async def main():
        node, _, (link,), clock = await relay_with_links(provider, 1, limits)
        await node.receive_frame(link, flood_frames(1, 1)[0])
        commands(node, link)
        clock.now += limits.handshake_queue_delay + 0.01
        await node.handle_timer(clock.now)
        destroys = [cell for cell in commands(node, link) if cell[0] == CellCommand.DESTROY]
        assert node.metrics["handshakes_expired"] == len(destroys) == 32 - 1  # all but the one done at once
        assert node.metrics["handshakes"] == 1

    asyncio.run(main())


def test_a_create_repeated_while_the_first_waits_gets_one_answer_then_a_destroy(provider):
    async def main():
        node, identity, (link,), clock = await relay_with_links(provider, 1, NodeLimits(handshake_rate=1.0,
                                                                                         handshake_burst=1))
        payload = (await client_start(provider, identity.peer_id, identity.onion_keys)).create_payload()
        for circ_id in (1, 2, 2):  # 1 takes the only token; 2 waits, and its CREATE comes again
            for cell in create_cells(PEER_BIT | circ_id, payload):
                await node.receive_frame(link, cell)
        for _ in range(2):
            clock.now += 1.0
            await node.handle_timer(clock.now)
        answers = [(command, circ_id & ~PEER_BIT) for command, circ_id, _ in commands(node, link)]
        assert answers == [(CellCommand.CREATED, 1), (CellCommand.CREATED, 2), (CellCommand.DESTROY, 2)]

    asyncio.run(main())
