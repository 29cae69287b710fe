"""Onion key rotation (docs/protocol.md §4, "Onion key rotation"; zmesh.onionkeys): the ring's
schedule on a fake clock, its saved state, a CREATE for a key the relay no longer holds, a
rotation between a client's directory fetch and its build, and real relays that rotate every
couple of seconds while a client builds with the descriptors it fetched before."""

from __future__ import annotations

import asyncio
import math
import os
import stat

import pytest

from tests.conftest import wait_until
from zmesh.aio.api import MeshVPN
from zmesh.cells import DestroyReason
from zmesh.encoding import pack_canonical, unpack_canonical
from zmesh.errors import CircuitError, ConfigError
from zmesh.events import CircuitClosed
from zmesh.identity import OnionKeys
from zmesh.onionkeys import DEFAULT_ONION_KEY_GRACE, MAX_RETIRED, OnionKeyRing, OnionKeySet, check_schedule
from zmesh.testing.memnet import MemoryNetwork, echo_service
from zmesh.testing.wire import FakeClock, Wire
from zmesh_relay import config as settings
from zmesh_relay.keys import ONION_FILE, load_or_create_onion_ring, save_onion_ring

LIFETIME, GRACE = 100.0, 30.0


async def ring_on(provider, clock, **schedule) -> OnionKeyRing:
    return await OnionKeyRing.generate(provider, clock, **{"lifetime": LIFETIME, "grace": GRACE, **schedule})


# ---------------------------------------------------------------- the schedule, pure


def test_the_ring_rotates_at_its_lifetime_and_honours_the_old_key_until_the_grace_ends(provider):
    async def main():
        clock = FakeClock()
        ring = await ring_on(provider, clock)
        first = ring.current
        assert ring.next_deadline() == 100.0 + LIFETIME
        clock.now = 199.9
        assert not await ring.handle_timer(provider) and ring.current is first
        clock.now = 200.0
        assert await ring.handle_timer(provider)
        second = ring.current
        assert second.key_id != first.key_id and second.public.mlkem768 != first.public.mlkem768
        assert ring.find(second.key_id) is second and ring.find(first.key_id) is first
        assert ring.next_deadline() == 200.0 + GRACE  # the grace end comes before the next rotation
        clock.now = 229.9
        assert ring.find(first.key_id) is first
        clock.now = 230.0  # refused from here on, even before the timer forgets it
        assert ring.find(first.key_id) is None and ring.find(second.key_id) is second
        assert not await ring.handle_timer(provider) and ring.retired() == []
        assert ring.next_deadline() == 200.0 + LIFETIME
        assert ring.find(os.urandom(32)) is None
        assert first.key_id[:4].hex() in repr(first) and first.x25519_private.hex() not in repr(first)

    asyncio.run(main())


def test_a_grace_longer_than_the_lifetime_keeps_each_retired_set_for_all_of_it(provider):
    async def main():
        clock = FakeClock()
        ring = await ring_on(provider, clock, lifetime=10.0, grace=35.0)
        sets = [ring.current]
        for step in range(1, 5):
            clock.now = 100.0 + 10.0 * step
            assert await ring.handle_timer(provider)
            sets.append(ring.current)
        # t = 140: the sets retired at 110, 120, 130 and 140 are all inside their 35 s
        assert [ring.find(keys.key_id) for keys in sets] == sets
        clock.now = 145.0  # the first set was retired at 110: 35 s are over
        assert ring.find(sets[0].key_id) is None and ring.find(sets[1].key_id) is sets[1]

    asyncio.run(main())


@pytest.mark.parametrize("lifetime, grace", [(0, 0), (8 * 86400, 0), (True, 0), (10, -1),
                                             (10, MAX_RETIRED * 10 + 1), (10, math.nan), ("10", 1)])
def test_a_schedule_the_ring_cannot_keep_is_a_config_error(lifetime, grace):
    with pytest.raises(ConfigError, match="onion_key"):
        check_schedule(lifetime, grace)


def test_the_relay_settings_are_validated_together_and_default_to_a_day_and_a_descriptor_lifetime():
    config = settings.load(env={})
    assert config["relay.onion_key_lifetime"] == 86400 and config["relay.onion_key_grace"] == 3 * 3600 + 300
    assert DEFAULT_ONION_KEY_GRACE == 3 * 3600 + 300
    with pytest.raises(ConfigError, match="relay.onion_key_grace .*set both"):
        settings.load(env={}, flags={"relay.onion_key_lifetime": 2})
    config = settings.load(env={}, flags={"relay.onion_key_lifetime": 2, "relay.onion_key_grace": 30})
    assert (config["relay.onion_key_lifetime"], config["relay.onion_key_grace"]) == (2.0, 30.0)
    with pytest.raises(ConfigError, match="relay.onion_key_lifetime"):
        settings.load(env={"ZMESH_RELAY_ONION_KEY_LIFETIME": "0"})


# ---------------------------------------------------------------- saved state


def test_the_state_round_trips_and_keeps_only_what_is_still_honoured(provider):
    async def main():
        clock = FakeClock()
        ring = await ring_on(provider, clock)
        old = ring.current
        clock.now = 200.0
        await ring.handle_timer(provider)
        again = await OnionKeyRing.from_bytes(provider, ring.to_bytes(), clock, lifetime=LIFETIME, grace=GRACE)
        assert again.current.public == ring.current.public and again.current.mlkem_seed == ring.current.mlkem_seed
        assert again.find(old.key_id).public == old.public and again.next_deadline() == ring.next_deadline()
        clock.now = 230.0  # the retired set's grace is over: it is not written any more
        assert unpack_canonical(ring.to_bytes(), max_size=4096, what="state")["retired"] == []

    asyncio.run(main())


def _state(ring_bytes: bytes, **changes) -> bytes:
    fields = unpack_canonical(ring_bytes, max_size=4096, what="state")
    fields.update(changes)
    return pack_canonical(fields)


def test_a_damaged_state_is_a_config_error_that_says_what_to_do(provider):
    async def main():
        clock = FakeClock()
        good = (await ring_on(provider, clock)).to_bytes()
        entry = unpack_canonical(good, max_size=4096, what="state")["current"]
        damaged = [
            good[:-1], good + b"\x00", b"", os.urandom(64),
            _state(good, v=2), _state(good, extra=1),
            _state(good, current={**entry, "x25519": entry["x25519"][:31]}),
            _state(good, current={**entry, "mlkem768_seed": b"\x00" * 63}),
            _state(good, current={**entry, "at": math.inf}),
            _state(good, current={**entry, "at": 5}),
            _state(good, current=[entry]),
            _state(good, retired=[entry] * (MAX_RETIRED + 1)),
            _state(good, retired={"a": entry}),
        ]
        for data in damaged:
            with pytest.raises(ConfigError, match="move"):
                await OnionKeyRing.from_bytes(provider, data, clock, lifetime=LIFETIME, grace=GRACE)

    asyncio.run(main())


def test_a_relay_restarted_inside_the_grace_period_still_holds_the_old_keys(provider, tmp_path):
    async def main():
        clock = FakeClock()
        ring = await load_or_create_onion_ring(provider, tmp_path, clock, lifetime=LIFETIME, grace=GRACE)
        path = tmp_path / ONION_FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        old = ring.current
        clock.now = 200.0
        await ring.handle_timer(provider)
        save_onion_ring(ring, tmp_path)
        assert sorted(os.listdir(tmp_path)) == [ONION_FILE] and stat.S_IMODE(path.stat().st_mode) == 0o600
        clock.now = 210.0  # "restart"
        restarted = await load_or_create_onion_ring(provider, tmp_path, clock, lifetime=LIFETIME, grace=GRACE)
        assert restarted.current.public == ring.current.public
        assert restarted.find(old.key_id).public == old.public
        path.chmod(0o644)
        with pytest.raises(ConfigError, match="chmod 600"):
            await load_or_create_onion_ring(provider, tmp_path, clock, lifetime=LIFETIME, grace=GRACE)

    asyncio.run(main())


# ---------------------------------------------------------------- the responder


def test_a_create_for_a_key_the_relay_does_not_hold_is_destroyed_as_outdated(provider):
    """Typed, not a generic protocol failure: the client can tell a rotated key from a broken relay."""
    async def main():
        wire = Wire()
        client, relay = await wire.add(provider, accept_circuits=False), await wire.add(provider)
        other, exit_ = await wire.add(provider), await wire.add(provider)
        stranger = await OnionKeySet.generate(provider)

        class Stale:
            peer_id = relay.identity.peer_id
            onion_keys = OnionKeys(stranger.public.x25519, stranger.public.mlkem768)

        class Listed:
            def __init__(self, node):
                self.peer_id, self.onion_keys = node.identity.peer_id, node.identity.onion_keys

        await client.build_circuit([Stale(), Listed(exit_)])
        await client.build_circuit([Listed(other), Stale()])  # the outdated hop is the second: via EXTEND
        await wire.pump()
        closed = [e for e in wire.events[client] if isinstance(e, CircuitClosed)]
        assert [(e.reason, e.failed_peer) for e in closed] == [(DestroyReason.ONION_KEY_OUTDATED, Stale.peer_id)] * 2
        assert relay.metrics["create_refused_onion_key"] == 2 and not relay.circuits() and not other.circuits()

    asyncio.run(main())


# ---------------------------------------------------------------- in-memory mesh


async def rotating_mesh(provider, wall: FakeClock):
    net = MemoryNetwork(provider)
    relays = [await net.add_node(onion_ring=await ring_on(provider, wall)) for _ in range(2)]
    relays.append(await net.add_node(exit=True, stream_handler=echo_service,
                                     onion_ring=await ring_on(provider, wall)))
    return net, [driver.node for driver in relays]


async def rotate_all(provider, net: MemoryNetwork, nodes, wall: FakeClock, to: float) -> None:
    wall.now = to
    for node in nodes:
        await node.onion_ring.handle_timer(provider)
        await net.republish(node.identity.peer_id)


def test_an_onion_key_rotation_during_a_circuit_build_does_not_fail_that_build(provider):
    """The client takes the directory, every relay rotates (and republishes) before the CREATE and
    the EXTENDs reach it, and the build succeeds on the retired keys. After the grace period the same
    old descriptors fail with the typed reason; a client that refetches once then succeeds."""
    async def main():
        wall = FakeClock()
        net, nodes = await rotating_mesh(provider, wall)
        fetched = list(net.descriptors.values())  # the client's directory fetch
        await rotate_all(provider, net, nodes, wall, 100.0 + LIFETIME)
        assert all(net.descriptors[d.peer_id].onion_keys != d.onion_keys for d in fetched)
        try:
            during = MeshVPN(await net.add_node(accept_circuits=False), lambda: fetched, hops=3)
            await asyncio.wait_for(during.connect(), 30)
            stream = await during.open_stream("echo.test", 7)
            await stream.write(b"built on retired keys")
            assert await asyncio.wait_for(stream.read(), 10) == b"built on retired keys"
            assert all(node.metrics["create_refused_onion_key"] == 0 for node in nodes)
            await during.close()

            wall.now = 100.0 + LIFETIME + GRACE  # the grace period is over
            stale = MeshVPN(await net.add_node(accept_circuits=False), lambda: fetched, hops=3)
            with pytest.raises(CircuitError, match="onion key outdated .*refetch the descriptor") as refused:
                await asyncio.wait_for(stale.connect(), 30)
            assert refused.value.reason is DestroyReason.ONION_KEY_OUTDATED
            await stale.close()

            listing = {"now": fetched}
            refetches = []

            async def refetch():
                refetches.append(1)
                listing["now"] = [net.descriptors[node.identity.peer_id] for node in nodes]

            retry = MeshVPN(await net.add_node(accept_circuits=False), lambda: listing["now"], refresh=refetch, hops=3)
            await asyncio.wait_for(retry.connect(), 30)
            assert refetches == [1] and not any(r.builds_failed for r in retry.selector.trust.records.values())
            await retry.close()
        finally:
            await net.close()

    asyncio.run(main())


# ---------------------------------------------------------------- real processes


def test_real_relays_rotate_and_a_client_holding_the_old_descriptors_still_builds(tmp_path, provider):
    """Three `zmesh relay`s rotating every 2 s (grace 30 s) and a `zmesh client`. The client fetches
    the directory for its first circuit; once every relay has published a new onion key since, a
    second SOCKS credential makes it build a second circuit on the descriptors it still holds (its
    view is refetched only after 30 s or a failure): that build succeeds at once, with no failure
    and no refetch, on retired keys."""
    from zmesh.directory_view import DirectoryView
    from zmesh_relay.socks5 import socks5_connect
    from zmesh_signal.client import SignalClient

    from .test_native_mesh import Process, _http_server

    files, files_port = _http_server()
    processes = [Process("signal", "--listen", "127.0.0.1:0")]
    url = processes[0].address[0]

    async def fetch_through(socks: tuple[str, int], username: str) -> bytes:
        reader, writer = await socks5_connect(*socks, "127.0.0.1", files_port, username=username, password="x")
        writer.write(b"GET /small HTTP/1.0\r\nHost: test\r\n\r\n")
        await writer.drain()
        response = await reader.read()
        writer.close()
        return response

    async def main(socks: tuple[str, int]) -> None:
        signal = SignalClient(url)
        view = DirectoryView(signal.relay_updates, provider, max_age=0)
        latest: dict = {}

        async def poll() -> None:
            while True:
                latest.update({d.peer_id: d.onion_keys for d in await view.refresh()})
                await asyncio.sleep(0.05)

        try:
            assert (await fetch_through(socks, "first")).endswith(b"small page")  # the client's fetch
            taken = {d.peer_id: d.onion_keys for d in await view.refresh()}
            assert len(taken) == 3
            poller = asyncio.get_running_loop().create_task(poll())
            try:
                await wait_until(lambda: all(latest.get(peer, keys) != keys for peer, keys in taken.items()), 20)
            finally:
                poller.cancel()
            assert (await asyncio.wait_for(fetch_through(socks, "second"), 30)).endswith(b"small page")
        finally:
            await signal.close()

    try:
        for n in (1, 2, 3):
            exit_ = ["--exit", "--exit-allow", f"127.0.0.1/32:{files_port}"] if n == 3 else []
            processes.append(Process("relay", "--signal", url, "--listen", f"127.{n}.0.1:0",
                                     "--data-dir", str(tmp_path / f"r{n}"), "--onion-key-lifetime", "2",
                                     "--onion-key-grace", "30", *exit_))
        processes.append(Process("client", "--signal", url, "--socks", "127.0.0.1:0"))
        host, port = processes[-1].address[0].rsplit(":", 1)
        asyncio.run(main((host, int(port))))
        for n in (1, 2, 3):
            assert stat.S_IMODE((tmp_path / f"r{n}" / ONION_FILE).stat().st_mode) == 0o600
    finally:
        for process in reversed(processes):
            process.stop()
        files.shutdown()
    client_log = processes[-1].proc.stderr.read()
    assert "circuit build failed" not in client_log, client_log[-2000:]
    relay_logs = [process.proc.stderr.read() for process in processes[1:4]]
    assert all("rotated the onion keys" in log for log in relay_logs)
