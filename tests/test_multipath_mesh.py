"""Multipath streams through an in-memory mesh (protocol tests of zmesh.aio.multipath): two
circuits sharing only the exit carry one stream in order; a leg that dies is survived by
resending its unacknowledged data; hostile legs get their circuits destroyed with the multipath
DESTROY reasons. The real-process test is tests/test_multipath_processes.py."""

import asyncio
import hashlib
import os

import pytest

from zmesh.aio.api import MeshVPN
from zmesh.aio.multipath import MultipathStream
from zmesh.aio.multipath_link import MultipathExit, open_multipath
from zmesh.cells import DestroyReason, EndReason
from zmesh.events import CircuitClosed
from zmesh.multipath.wire import MULTIPATH_PORT, MultipathCommand, encode_link, encode_seq
from zmesh.testing.memnet import MemoryNetwork, echo_service

from .conftest import wait_until


async def _mesh(provider, payload: bytes):
    """A client, four relays and an exit whose multipath service streams ``payload`` (after
    reading a 4-byte request) and keeps each set's stream in ``served``."""
    net = MemoryNetwork(provider)
    served: list[MultipathStream] = []

    async def blob(request):
        stream = await request.accept()
        served.append(stream)
        assert await stream.read() == b"GET!"
        await stream.write(payload)
        await stream.close()

    relays = [await net.add_node() for _ in range(4)]
    exit_driver = await net.add_node(exit=True)
    exit_driver.stream_handler = MultipathExit(exit_driver).wrap(blob)
    client = await net.add_node(accept_circuits=False)
    d = net.descriptors
    ids = [r.node.identity.peer_id for r in relays]
    exit_id = exit_driver.node.identity.peer_id
    legs = [await client.build_circuit([d[ids[0]], d[ids[1]], d[exit_id]]),
            await client.build_circuit([d[ids[2]], d[ids[3]], d[exit_id]])]
    return net, client, legs, served, exit_driver


async def _read_all(stream, pause_after: int | None = None, paused: asyncio.Event | None = None,
                    resume: asyncio.Event | None = None) -> bytes:
    parts, have = [], 0
    while data := await stream.read():
        parts.append(data)
        have += len(data)
        if pause_after is not None and have >= pause_after:
            pause_after = None
            paused.set()
            await resume.wait()  # the reader falls behind: the exit's window fills unacknowledged
    return b"".join(parts)


def test_a_multipath_stream_delivers_in_order_over_both_legs(provider):
    payload = os.urandom(3_000_000)

    async def main():
        net, client, legs, served, exit_driver = await _mesh(provider, payload)
        try:
            stream = await open_multipath(client, legs, "example.org", 80)
            assert isinstance(stream, MultipathStream)
            await wait_until(lambda: len(stream.legs) == 2 and served and len(served[0].legs) == 2)
            await stream.write(b"GET!")
            body = await _read_all(stream)
            assert hashlib.sha256(body).digest() == hashlib.sha256(payload).digest()
            assert served[0].sent_on[0] > 0 and served[0].sent_on[1] > 0  # both legs carried data
            await stream.close()
        finally:
            await net.close()
    asyncio.run(main())


def test_a_dead_leg_is_survived_by_resending_what_it_carried(provider):
    payload = os.urandom(6_000_000)

    async def main():
        net, client, legs, served, exit_driver = await _mesh(provider, payload)
        try:
            stream = await open_multipath(client, legs, "example.org", 80)
            await wait_until(lambda: len(stream.legs) == 2 and served and len(served[0].legs) == 2)
            await stream.write(b"GET!")
            paused, resume = asyncio.Event(), asyncio.Event()
            reading = asyncio.ensure_future(_read_all(stream, 1_000_000, paused, resume))
            await paused.wait()
            await wait_until(lambda: served[0]._send.room() == 0, timeout=30)  # the exit's window is full
            assert served[0]._send.leg_lost(1)  # and leg 1 carries some of it
            await client.destroy_circuit(legs[1])
            resume.set()
            body = await reading
            assert hashlib.sha256(body).digest() == hashlib.sha256(payload).digest()
            assert served[0].resent > 0 and served[0].legs == [served[0].circuit]
            await stream.close()
        finally:
            await net.close()
    asyncio.run(main())


async def _closed_reason(client, circuit) -> DestroyReason:
    reasons: dict[int, DestroyReason] = {}
    previous = client.on_event

    def on_event(event):
        if previous is not None:
            previous(event)
        if isinstance(event, CircuitClosed):
            reasons[event.circuit] = event.reason
    client.on_event = on_event
    await wait_until(lambda: circuit in reasons)
    return reasons[circuit]


@pytest.mark.parametrize("attack, reason", [
    ("unknown-set", DestroyReason.MP_UNKNOWN_SET),
    ("out-of-window", DestroyReason.MP_OUT_OF_WINDOW),
    ("duplicate-leg", DestroyReason.MP_DUPLICATE_LEG),
    ("not-a-link", DestroyReason.MP_PROTOCOL),
])
def test_hostile_legs_get_their_circuit_destroyed_with_the_multipath_reason(provider, attack, reason):
    async def main():
        net, client, legs, served, exit_driver = await _mesh(provider, b"secret")
        try:
            nonce = os.urandom(32)
            leg = await client.open_stream(legs[0], "", MULTIPATH_PORT)
            watching = asyncio.ensure_future(_closed_reason(client, legs[1] if attack == "duplicate-leg" else legs[0]))
            if attack == "unknown-set":
                await leg.write(encode_link(nonce, 1))
            elif attack == "not-a-link":
                await leg.write(encode_seq(MultipathCommand.DATA, 0, b"x"))
            else:
                await leg.write(encode_link(nonce, 0, "example.org", 80))
                await wait_until(lambda: served)
                if attack == "out-of-window":
                    await leg.write(encode_seq(MultipathCommand.DATA, 10_000, b"x"))
                else:  # leg 0 again, on another circuit
                    other = await client.open_stream(legs[1], "", MULTIPATH_PORT)
                    await other.write(encode_link(nonce, 0, "example.org", 80))
            assert await watching == reason
            assert exit_driver.node.metrics[f"multipath_refused_{reason.name.lower()}"] == 1
        finally:
            await net.close()
    asyncio.run(main())


async def _vpn_mesh(provider, exit_handler):
    net = MemoryNetwork(provider)
    for _ in range(4):
        await net.add_node()
    exit_driver = await net.add_node(exit=True)
    exit_driver.stream_handler = exit_handler(exit_driver)
    directory = lambda: list(net.descriptors.values())  # noqa: E731
    return net, MeshVPN(await net.add_node(accept_circuits=False), directory, multipath=True)


def test_meshvpn_multipath_option_splits_a_stream_over_two_circuits(provider):
    payload = os.urandom(400_000)

    async def main():
        net, vpn = await _vpn_mesh(provider, lambda driver: MultipathExit(driver).wrap(echo_service))
        try:
            await vpn.connect(hops=3)
            stream = await vpn.open_stream("echo.test", 7)
            assert isinstance(stream, MultipathStream)
            await wait_until(lambda: len(stream.legs) == 2)
            first, second = (vpn.driver.node.circuit_path(c) for c in stream.legs)
            assert first[-1] == second[-1] and not set(first[:-1]) & set(second)  # only the exit shared
            await stream.write(payload)
            echoed = b""
            while len(echoed) < len(payload):
                echoed += await asyncio.wait_for(stream.read(), 10)
            assert echoed == payload
            plain = await vpn.open_stream("echo.test", 7, multipath=False)
            assert not isinstance(plain, MultipathStream)
            await stream.close()
        finally:
            await vpn.close()
            await net.close()
    asyncio.run(main())


def test_an_exit_without_the_multipath_service_gets_a_plain_stream(provider):
    async def old_exit(request):
        if request.host == "":
            await request.reject(EndReason.EXIT_POLICY)
        else:
            await echo_service(request)

    async def main():
        net, vpn = await _vpn_mesh(provider, lambda driver: old_exit)
        try:
            await vpn.connect(hops=3)
            stream = await vpn.open_stream("echo.test", 7)
            assert not isinstance(stream, MultipathStream)
            await stream.write(b"ping")
            assert await asyncio.wait_for(stream.read(), 10) == b"ping"
        finally:
            await vpn.close()
            await net.close()
    asyncio.run(main())
