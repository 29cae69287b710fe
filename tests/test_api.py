"""The Python MeshVPN API over an in-memory mesh: options, streams, messages to a PeerId."""

import asyncio

import pytest

from zmesh.aio.api import MeshOptions, MeshVPN
from zmesh.errors import ConfigError, InvalidState
from zmesh.testing.memnet import MemoryNetwork, echo_service


@pytest.mark.parametrize("options, key", [
    ({"hops": 1}, "hops"), ({"hops": 9}, "hops"), ({"hops": "3"}, "hops"),
    ({"exit": "tor"}, "exit"), ({"exit": "Cloudflare"}, "exit"),
    ({"enable_fec": True, "transport": "websocket"}, "enable_fec"),
    ({"transport": "carrier-pigeon"}, "transport"), ({"country": "Germany"}, "country"),
    ({"enable_fec": "yes"}, "enable_fec"), ({"colour": "blue"}, "colour"), ({"entry": "nobody"}, "entry"),
    ({"exclude_countries": "DE"}, "exclude_countries"), ({"exclude_countries": ["Germany"]}, "exclude_countries"),
    ({"exclude_countries": [7]}, "exclude_countries"), ({"exclude_countries": ["DE"] * 257}, "exclude_countries"),
])
def test_bad_options_are_config_errors_naming_the_key(options, key):
    with pytest.raises(ConfigError, match=key):
        MeshOptions().updated(**options)


def test_exit_proxy_and_its_alias_cloudflare_pick_only_upstream_proxy_exits(provider):
    assert MeshOptions(exit="cloudflare").exit == "proxy" == MeshOptions().updated(exit="proxy").exit

    async def main():
        net = MemoryNetwork(provider)
        for _ in range(3):
            await net.add_node()
        direct = await net.add_node(exit=True, stream_handler=echo_service)
        proxy = await net.add_node(exit=True, exit_kind="proxy", stream_handler=echo_service)
        vpn = MeshVPN(await net.add_node(), lambda: list(net.descriptors.values()), exit="cloudflare")
        try:
            last = set()
            for _ in range(5):
                await vpn.connect()
                last.add(vpn.get_stats()["path"][-1])
            await vpn.connect(exit="direct")
            assert vpn.get_stats()["path"][-1] == direct.node.identity.peer_id.text
            return last, proxy.node.identity.peer_id.text
        finally:
            await vpn.close()
            await net.close()

    last, proxy = asyncio.run(main())
    assert last == {proxy}


async def make(provider, relays=4):
    net = MemoryNetwork(provider)
    for index in range(relays):
        await net.add_node(exit=index == relays - 1, stream_handler=echo_service if index == relays - 1 else None)
    directory = lambda: list(net.descriptors.values())  # noqa: E731
    alice = MeshVPN(await net.add_node(), directory)
    bob = MeshVPN(await net.add_node(), directory)
    return net, alice, bob


def test_connect_open_stream_and_stats(provider):
    async def main():
        net, alice, _ = await make(provider)
        events = []
        alice.on("connect", events.append)
        alice.on("disconnect", events.append)
        try:
            with pytest.raises(InvalidState):
                await alice.open_stream("echo.test", 7)
            await alice.connect(hops=3)
            stream = await alice.open_stream("echo.test", 7)
            await stream.write(b"ping")
            assert await asyncio.wait_for(stream.read(), 10) == b"ping"
            stats = alice.get_stats()
            assert stats["connected"] and len(stats["path"]) == 3 and stats["bytes_out"] == 4
            assert stats["peer_id"] == alice.peer_id.text
            assert stats["transport"]["open_links"] == {"memory": 1}
            entry = next(d for d in alice.directory() if not d.capabilities.exit)
            await alice.connect(entry=entry.peer_id.text)  # a chosen first hop
            assert alice.get_stats()["path"][0] == entry.peer_id.text
            await alice.disconnect()
            assert not alice.get_stats()["connected"]
            # connect, connect (entry= on a connected MeshVPN replaces the circuit, no disconnect between), disconnect
            assert [e.get("circuit") for e in events][0] is not None and len(events) == 3
            assert "reason" in events[2] and "reason" not in events[1]
        finally:
            await alice.close()
            await net.close()

    asyncio.run(main())


def test_messages_reach_a_destination_in_order(provider):
    async def main():
        net, alice, bob = await make(provider)
        received = []
        bob.on("message", received.append)
        try:
            await alice.connect(destination=bob.peer_id.text, hops=3)
            assert alice.get_stats()["path"][-1] == bob.peer_id.text
            messages = [f"message {i}".encode() * (i + 1) for i in range(50)]
            for message in messages:
                await alice.send(message)
            got = [await asyncio.wait_for(bob.receive(), 10) for _ in messages]
            assert got == messages and received == messages
        finally:
            await alice.close()
            await bob.close()
            await net.close()

    asyncio.run(main())


def test_send_without_destination_is_invalid_state(provider):
    async def main():
        net, alice, _ = await make(provider)
        try:
            await alice.connect()
            with pytest.raises(InvalidState):
                await alice.send(b"to whom?")
            with pytest.raises(ConfigError):
                await alice.connect(destination="not-a-peer-id")
        finally:
            await alice.close()
            await net.close()

    asyncio.run(main())


def test_excluded_countries_are_normalised_and_kept_out_of_the_path(provider):
    """MeshOptions.exclude_countries reaches path selection: the only other exit's country is
    excluded, so every circuit ends at the one that is left."""
    async def main():
        net = MemoryNetwork(provider)
        for _ in range(3):
            await net.add_node()
        kept = await net.add_node(exit=True, stream_handler=echo_service)
        await net.add_node(exit=True, stream_handler=echo_service, country="FR")
        assert MeshOptions(exclude_countries=["fr"]).exclude_countries == ("FR",)
        vpn = MeshVPN(await net.add_node(), lambda: list(net.descriptors.values()), exclude_countries=["fr"])
        for _ in range(10):
            await vpn.connect()
            assert vpn.get_stats()["path"][-1] == kept.node.identity.peer_id.text
            await vpn.disconnect()
        await net.close()


def test_a_circuit_dirty_past_the_limit_is_replaced_before_a_new_stream_and_closed_after_its_last(provider):
    """Issue 11: MeshVPN does not reuse one circuit forever. On a fake clock: after
    ``max_dirtiness`` seconds of use the next stream goes on a new circuit; the open stream keeps
    its circuit until it ends, and that circuit is closed then."""
    from zmesh.circuit_plan import CircuitPolicy

    async def main():
        net = MemoryNetwork(provider)
        for index in range(4):
            await net.add_node(exit=index == 3, stream_handler=echo_service if index == 3 else None)
        now = [0.0]
        alice = MeshVPN(await net.add_node(), lambda: list(net.descriptors.values()),
                        circuit_policy=CircuitPolicy(max_dirtiness=60), clock=lambda: now[0])
        try:
            await alice.connect(hops=3)
            first = await alice.open_stream("echo.test", 7)
            old = alice.get_stats()["circuit"]
            now[0] += 59
            await (await alice.open_stream("echo.test", 7)).close()
            assert alice.get_stats()["circuit"] == old  # not yet past the limit
            now[0] += 1
            second = await alice.open_stream("echo.test", 7)
            assert second.circuit != old == first.circuit
            assert set(alice.driver.node.circuits()) == {old, second.circuit}  # the old one still carries `first`
            await first.write(b"still here")
            assert await asyncio.wait_for(first.read(), 10) == b"still here"
            await first.close()
            await (await alice.open_stream("echo.test", 7)).close()
            assert alice.driver.node.circuits() == [second.circuit]  # closed once its last stream ended
        finally:
            await alice.close()
            await net.close()

    asyncio.run(main())
