"""Circuit builds route around hops that fail (zmesh.aio.building), in an in-memory mesh whose
directory lists many relays that cannot be reached."""

import asyncio
import itertools

import pytest

from zmesh.aio.api import MeshVPN
from zmesh.aio.building import BuildPolicy, build_around_failures
from zmesh.errors import CircuitError, ConfigError
from zmesh.path import PathSelector
from zmesh.testing.memnet import MemoryNetwork, echo_service


async def mesh_with_dead_relays(provider, dead: int):
    """Two reachable relays and an exit, plus ``dead`` listed relays nobody can dial."""
    net = MemoryNetwork(provider)
    good = [await net.add_node() for _ in range(2)]
    exit_ = await net.add_node(exit=True, stream_handler=echo_service)
    for _ in range(dead):
        net.unreachable.add((await net.add_node()).node.identity.peer_id)
    peer = lambda driver: driver.node.identity.peer_id  # noqa: E731
    return net, [net.descriptors[peer(d)] for d in good], net.descriptors[peer(exit_)]


class DeadFirst(PathSelector):
    """Puts a listed-but-unreachable relay first or second in every path while one is left: the
    worst luck a client can have with a poisoned directory, made deterministic."""

    def __init__(self, dead, good, exit_):
        super().__init__()
        self.dead, self.good, self.exit = dead, good, exit_
        self.paths = 0

    def select(self, relays, *, exclude=(), **kwargs):
        self.paths += 1
        dead = [d for d in relays if d.peer_id in self.dead and d.peer_id not in exclude]
        if not dead:
            return super().select(relays, exclude=exclude, **kwargs)
        return [dead[0], self.good[0], self.exit] if self.paths % 2 else [self.good[0], dead[0], self.exit]


def test_a_client_builds_around_many_unreachable_relays(provider):
    """Ten dead relays listed (the old client gave up after 4 attempts): the build still succeeds,
    each dead hop tried once and recorded as a failure, and the circuit carries data."""
    async def main():
        net, good, exit_ = await mesh_with_dead_relays(provider, 10)
        selector = DeadFirst(net.unreachable, good, exit_)
        vpn = MeshVPN(await net.add_node(accept_circuits=False), lambda: list(net.descriptors.values()),
                      selector=selector, hops=3)
        try:
            await asyncio.wait_for(vpn.connect(), 30)
            assert selector.paths == 11
            assert {p: s.failures for p, s in selector.stats.items() if s.failures} == dict.fromkeys(net.unreachable, 1)
            stream = await vpn.open_stream("echo.test", 7)
            await stream.write(b"around them all")
            assert await asyncio.wait_for(stream.read(), 10) == b"around them all"
        finally:
            await vpn.close()
            await net.close()

    asyncio.run(main())


def test_the_attempt_cap_and_the_deadline_bound_the_search_and_say_so(provider):
    async def main():
        net, good, exit_ = await mesh_with_dead_relays(provider, 10)
        client = await net.add_node(accept_circuits=False)
        relays = list(net.descriptors.values())
        try:
            selector = DeadFirst(net.unreachable, good, exit_)
            with pytest.raises(CircuitError, match="4 attempts failed") as capped:
                await build_around_failures(client, lambda avoid, _: selector.select(relays, exclude=avoid),
                                            selector, policy=BuildPolicy(max_attempts=4))
            assert capped.value.failed_peer in net.unreachable and selector.paths == 4
            ticks = itertools.count(0, 25.0)  # each look at the clock: 25 s later
            selector = DeadFirst(net.unreachable, good, exit_)
            with pytest.raises(CircuitError, match="60 s build deadline") as late:
                await build_around_failures(client, lambda avoid, _: selector.select(relays, exclude=avoid),
                                            selector, clock=lambda: next(ticks))
            assert selector.paths == 3 and "avoided 3 relay(s)" in str(late.value)
        finally:
            await net.close()

    asyncio.run(main())


def test_running_out_of_relays_ends_with_the_last_failure(provider):
    async def main():
        net, good, exit_ = await mesh_with_dead_relays(provider, 3)
        net.unreachable.add(good[0].peer_id)
        net.unreachable.add(good[1].peer_id)
        vpn = MeshVPN(await net.add_node(accept_circuits=False), lambda: list(net.descriptors.values()), hops=3)
        try:
            with pytest.raises(CircuitError, match="no path is left") as info:
                await asyncio.wait_for(vpn.connect(), 30)
            assert "connect failed" in str(info.value) and info.value.failed_peer in net.unreachable
        finally:
            await vpn.close()
            await net.close()

    asyncio.run(main())


def test_a_chosen_entry_that_fails_is_not_routed_around(provider):
    async def main():
        net, good, exit_ = await mesh_with_dead_relays(provider, 1)
        (dead,) = net.unreachable
        vpn = MeshVPN(await net.add_node(accept_circuits=False), lambda: list(net.descriptors.values()),
                      hops=3, entry=dead.text)
        try:
            with pytest.raises(CircuitError) as info:
                await asyncio.wait_for(vpn.connect(), 30)
            assert info.value.failed_peer == dead and vpn.selector.stats[dead].failures == 1
        finally:
            await vpn.close()
            await net.close()

    asyncio.run(main())


@pytest.mark.parametrize("bad", [{"max_attempts": 0}, {"deadline": 0}, {"max_attempts": 2.5}])
def test_policy_limits_are_config_errors(bad):
    with pytest.raises(ConfigError):
        BuildPolicy(**bad)
