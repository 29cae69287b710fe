"""Self-healing circuits (issue 17 item 2): the pure ``Healer`` on a fake clock, then ``MeshVPN``
over an in-memory mesh whose middle relay dies under a stream."""

import asyncio

import pytest

from zmesh.aio.api import MeshVPN
from zmesh.cells import DestroyReason, EndReason
from zmesh.errors import ConfigError, StreamError
from zmesh.healing import Healer, blame
from zmesh.identity import PeerId
from zmesh.testing.memnet import MemoryNetwork, echo_service
from zmesh.testing.wire import FakeClock

from .conftest import wait_until

A, B, C, D = (PeerId(bytes([n]) * 32) for n in range(1, 5))


def test_blame_names_the_known_peer_else_the_hop_after_the_entry():
    assert blame([A, B, C], D) == D  # the node's own link to D closed
    assert blame([A, B, C], None) == B  # a DESTROY came down the circuit: the entry still answers
    assert blame([A], None) is None


def test_rebuilds_are_jittered_backed_off_and_avoid_what_failed():
    clock, draws = FakeClock(), iter([0.5, 1.0, 1.0, 1.0])
    healer = Healer(clock, lambda: next(draws), first=1.0, cap=8.0, max_rounds=3)
    loss = healer.lost(7, DestroyReason.LINK_CLOSED, [A, B, C], None)
    assert (loss.circuit, loss.reason, loss.failed_hop) == (7, DestroyReason.LINK_CLOSED, B)
    assert healer.avoid == {B}
    assert healer.next_deadline() == 100.5  # uniform below the first bound (rng 0.5 of 1 s)
    assert not healer.due(100.4)
    assert healer.due(100.5) and healer.next_deadline() is None and not healer.due(200)
    clock.now = 101.0
    healer.failed(C)  # the rebuild failed at C: avoided too, next bound doubled
    assert healer.avoid == {B, C} and healer.next_deadline() == 103.0
    assert healer.due(103.0)
    healer.failed(None)
    assert healer.next_deadline() == 101.0 + 4.0 and healer.due(105.0)
    healer.failed(None)  # third round failed: max_rounds reached
    assert healer.gave_up and healer.next_deadline() is None


def test_a_circuit_that_stays_up_starts_the_backoff_over_and_one_that_flaps_does_not():
    clock = FakeClock()
    healer = Healer(clock, lambda: 1.0, first=1.0, cap=8.0)
    healer.lost(1, DestroyReason.LINK_CLOSED, [A, B], None)
    assert healer.next_deadline() == 101.0
    healer.due(101.0)
    healer.rebuilt()
    assert healer.loss is None and healer.avoid == frozenset()
    clock.now = 102.0  # died again a second after the rebuild: the bound keeps growing
    healer.lost(2, DestroyReason.LINK_CLOSED, [A, B], None)
    assert healer.next_deadline() == 104.0
    healer.due(104.0)
    healer.rebuilt()
    clock.now = 200.0  # up for longer than cap: back to the first bound
    healer.lost(3, DestroyReason.LINK_CLOSED, [A, B], None)
    assert healer.next_deadline() == 201.0
    healer.cancel()
    assert healer.next_deadline() is None and healer.loss is None


@pytest.mark.parametrize("args", [{"first": 0}, {"first": 5, "cap": 1}, {"max_rounds": 0}])
def test_bad_healer_settings_are_config_errors(args):
    with pytest.raises(ConfigError):
        Healer(FakeClock(), lambda: 0.5, **args)


async def _mesh(provider):
    net = MemoryNetwork(provider)
    for index in range(6):
        await net.add_node(exit=index >= 4, stream_handler=echo_service if index >= 4 else None)
    vpn = MeshVPN(await net.add_node(), lambda: [d for p, d in net.descriptors.items() if p not in net.unreachable])
    return net, vpn


def test_the_middle_relay_dies_the_circuit_is_rebuilt_around_it(provider):
    async def main():
        net, vpn = await _mesh(provider)
        events: list[tuple[str, object]] = []
        rebuilt = asyncio.Event()
        for name in ("connect", "disconnect", "error"):
            vpn.on(name, lambda value, name=name: events.append((name, value)))
        vpn.on("connect", lambda _: rebuilt.set())
        try:
            await vpn.connect(hops=3)
            first = vpn.get_stats()
            circuit, path = first["circuit"], [PeerId.from_text(p) for p in first["path"]]
            await vpn.connect()  # a no-op on a connected MeshVPN
            assert vpn.get_stats()["circuit"] == circuit and len([e for e in events if e[0] == "connect"]) == 1
            stream = await vpn.open_stream("echo.test", 7)
            rebuilt.clear()
            net.unreachable.add(path[1])
            await net.drivers[path[1]].close()  # the middle relay dies
            with pytest.raises(StreamError) as caught:  # the in-flight stream fails, typed
                await asyncio.wait_for(stream.read(), 10)
            assert caught.value.reason is EndReason.DESTROYED
            waiting = asyncio.create_task(vpn.open_stream("echo.test", 7))  # waits for the rebuild
            await asyncio.wait_for(rebuilt.wait(), 20)
            later = await asyncio.wait_for(waiting, 20)
            await later.write(b"again")
            assert await asyncio.wait_for(later.read(), 10) == b"again"
            disconnects = [value for name, value in events if name == "disconnect"]
            assert disconnects == [{"circuit": circuit, "reason": "LINK_CLOSED", "failed_hop": path[1].text,
                                    "rebuilding": True}]
            stats = vpn.get_stats()
            assert stats["state"] == "connected" and stats["circuit"] != circuit
            assert path[1].text not in stats["path"] and len(stats["path"]) == 3
        finally:
            await vpn.close()
            await net.close()

    asyncio.run(main())


def test_apply_config_rebuilds_on_a_path_option_and_disconnect_stops_healing(provider):
    async def main():
        net, vpn = await _mesh(provider)
        try:
            await vpn.connect(hops=3)
            circuit = vpn.get_stats()["circuit"]
            await vpn.apply_config(hops=2)
            stats = vpn.get_stats()
            assert len(stats["path"]) == 2 and stats["circuit"] != circuit
            assert circuit not in vpn.driver.node.circuits()  # the old one closed (no stream on it)
            await vpn.apply_config(hops=2)  # nothing changed: same circuit
            assert vpn.get_stats()["circuit"] == stats["circuit"]
            with pytest.raises(ConfigError):
                await vpn.apply_config(hops=12)
            assert vpn.options.hops == 2
            entry = PeerId.from_text(stats["path"][0])
            net.unreachable.add(entry)
            await net.drivers[entry].close()  # the entry dies: its own link names it
            await wait_until(lambda: vpn.keeper.healing)
            assert vpn.state == "reconnecting"
            await vpn.disconnect()
            assert vpn.state == "disconnected" and not vpn.keeper.healing
            assert len(vpn.keeper._tasks) == 0  # no rebuild left running
        finally:
            await vpn.close()
            await net.close()

    asyncio.run(main())
