"""Issue 20 item 2: how many peer links a node keeps scales with the network it sees (the QNet
tiers 8 / 50 / 100 / 500), idle ones are closed first, and beyond that inbound ones are refused."""

import asyncio
import time

import pytest

from zmesh.errors import ConfigError
from zmesh.events import CloseLink
from zmesh.limits import NodeLimits, PeerTiers
from zmesh.link import LinkRole
from zmesh.testing.wire import Wire


def test_the_default_tiers_are_the_documents():
    tiers = PeerTiers()
    assert [tiers.limit(n) for n in (0, 5, 9, 10, 99, 100, 999, 1000, 50_000)] == [8, 8, 8, 50, 50, 100, 100, 500, 500]
    assert PeerTiers.parse("auto") == tiers and PeerTiers.parse("12").limit(5000) == 12


@pytest.mark.parametrize("text", ["", "-3", "0", "lots", "8.5", "²", "٣"])
def test_a_bad_peer_limit_is_a_config_error(text):
    with pytest.raises(ConfigError):
        PeerTiers.parse(text)


def test_tiers_must_grow():
    with pytest.raises(ConfigError):
        PeerTiers(tiers=((100, 50), (10, 8)))
    with pytest.raises(ConfigError):
        PeerTiers(tiers=((10, 80), (100, 50)))


def peer_links(node) -> list[int]:
    return [link for link, (role, peer) in node.link_peers().items() if role is LinkRole.RELAY and peer is not None]


async def relay_in_a_network_of(provider, size: int, busy: int):
    """A relay seeing ``size`` nodes, with ``busy`` peers whose links to it each carry a circuit
    (a client's 2-hop circuit through the peer, then the relay)."""
    wire = Wire()
    relay = await wire.add(provider)
    await relay.set_network_size(size)
    client = await wire.add(provider, accept_circuits=False)
    peers = []
    for _ in range(busy):
        peer = await wire.add(provider)
        await wire.connect(peer, relay, LinkRole.RELAY)
        await wire.pump()
        await client.build_circuit([peer.identity, relay.identity])
        await wire.pump()
        peers.append(peer)
    return wire, relay, peers


def test_a_relay_in_a_five_node_network_refuses_a_ninth_peer_when_the_eight_carry_circuits(provider):
    async def main():
        wire, relay, _ = await relay_in_a_network_of(provider, 5, busy=8)
        assert len(peer_links(relay)) == 8 and all(relay._links[link].circuits for link in peer_links(relay))
        late = await wire.add(provider)
        await wire.connect(late, relay, LinkRole.RELAY)
        await wire.pump()
        assert len(peer_links(relay)) == 8 and relay.metrics["links_refused_peer_limit"] == 1
        (closed,) = [e for e in wire.events[relay] if isinstance(e, CloseLink)]
        assert closed.reason == "this node keeps at most 8 peer links in a network of 5 nodes"
        assert late.identity.peer_id not in {peer for _, peer in relay.link_peers().values()}
    asyncio.run(main())


def test_an_idle_peer_link_is_closed_first_so_a_new_peer_gets_in(provider):
    async def main():
        wire, relay, busy = await relay_in_a_network_of(provider, 5, busy=7)
        idle = await wire.add(provider)
        await wire.connect(idle, relay, LinkRole.RELAY)
        await wire.pump()
        assert len(peer_links(relay)) == 8
        newcomer = await wire.add(provider)
        await wire.connect(newcomer, relay, LinkRole.RELAY)
        await wire.pump()
        held = {peer for _, peer in relay.link_peers().values()}
        assert newcomer.identity.peer_id in held and idle.identity.peer_id not in held
        assert all(peer.identity.peer_id in held for peer in busy)  # links with circuits are kept
        assert relay.metrics["links_refused_peer_limit"] == 0 and relay.metrics["peer_links_closed_for_limit"] == 1
    asyncio.run(main())


def test_clients_anonymous_links_do_not_count_as_peers(provider):
    async def main():
        wire, relay, _ = await relay_in_a_network_of(provider, 5, busy=8)
        for _ in range(20):  # twenty clients, each a link that proves nothing
            client = await wire.add(provider, accept_circuits=False)
            await wire.connect(client, relay, LinkRole.CLIENT)
        await wire.pump()
        assert len(relay.link_peers()) == 8 + 20  # the busy peers' relay links, and these
        assert relay.metrics["links_refused_peer_limit"] == 0
    asyncio.run(main())


def test_a_network_that_shrinks_closes_idle_peer_links_down_to_the_new_tier(provider):
    async def main():
        wire = Wire()
        relay = await wire.add(provider, limits=NodeLimits(peer_tiers=PeerTiers(tiers=((10, 3),), largest=6)))
        await relay.set_network_size(50)
        for _ in range(6):
            await wire.connect(await wire.add(provider), relay, LinkRole.RELAY)
        await wire.pump()
        assert len(peer_links(relay)) == 6
        await relay.set_network_size(4)
        assert len(peer_links(relay)) == 3 and relay.metrics["peer_links_closed_for_limit"] == 3
    asyncio.run(main())


def test_before_the_node_has_seen_a_directory_only_max_links_applies(provider):
    async def main():
        wire = Wire()
        relay = await wire.add(provider)
        for _ in range(12):
            await wire.connect(await wire.add(provider), relay, LinkRole.RELAY)
        await wire.pump()
        assert len(peer_links(relay)) == 12 and relay.peer_limit() is None
    asyncio.run(main())


def test_a_real_relay_in_a_five_relay_network_keeps_eight_peer_links_closing_the_idlest(provider, tmp_path):
    """Real processes: five relays, and nine peers (relaying nodes of this test, over real WebSocket
    links) that prove their PeerId to relay 1. The ninth makes relay 1 close the longest-silent idle
    one, as its private /metrics count; clients' links are never touched."""
    from zmesh.aio.driver import NodeDriver
    from zmesh.identity import Identity, PeerId
    from zmesh.node import Node
    from zmesh_relay import wslink

    from .conftest import wait_until
    from .test_native_mesh import Process

    processes = [Process("signal", "--listen", "127.0.0.1:0")]
    url = processes[0].address[0]
    try:
        for number in range(1, 6):
            metrics = ["--metrics", "127.0.0.1:0"] if number == 1 else []
            processes.append(Process("relay", "--signal", url, "--listen", f"127.{number}.0.1:0", *metrics,
                                     "--data-dir", str(tmp_path / f"r{number}"),
                                     env={"ZMESH_TRANSPORT_KIND": "websocket"}))
        relay = processes[1]
        link_url, peer_text = relay.address[0], relay.address[1]
        relay_peer = PeerId.from_text(peer_text)

        async def main():
            async def dial(_peer, _role):
                return await wslink.open_link(link_url)
            drivers = []
            try:
                for _ in range(9):
                    node = Node(await Identity.generate(provider), provider, time.monotonic)
                    driver = NodeDriver(node, dialer=dial)
                    drivers.append(driver)
                    await driver.connect(relay_peer, authenticated=True)
                await wait_until(lambda: not drivers[0].links())  # the first, longest silent, was closed
                assert all(driver.links() for driver in drivers[1:])
            finally:
                for driver in drivers:
                    await driver.close()
        asyncio.run(main())
        scrape = relay.scrape()
        assert scrape("zmesh_links_dropped_total", reason="peer_limit") == 1
        assert scrape("zmesh_links_refused_total", reason="peer_limit") == 0
    finally:
        for process in reversed(processes):
            process.stop()
