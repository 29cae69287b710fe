"""Reasons stay enums from the node up (issue 10, item 5): a DESTROY or END reason reaches the SOCKS
reply code, the exit's END and the errors as the enum itself, and the driver's timer runs on the
node's injected clock."""

import asyncio

import pytest

from tests.conftest import wait_until
from zmesh.cells import DestroyReason, EndReason
from zmesh.errors import CircuitError, StreamError, TransportError
from zmesh.identity import PeerId
from zmesh.testing.memnet import MemoryNetwork, echo_service
from zmesh.testing.wire import FakeClock
from zmesh_relay.exit_policy import end_reason_for
from zmesh_relay.socks5 import (
    CONNECTION_REFUSED,
    GENERAL_FAILURE,
    HOST_UNREACHABLE,
    NETWORK_UNREACHABLE,
    NOT_ALLOWED,
    TTL_EXPIRED,
    Socks5Server,
    reply_for,
    socks5_connect,
)

SOCKS_REPLY = {EndReason.EXIT_POLICY: NOT_ALLOWED, EndReason.RESOLVE_FAILED: HOST_UNREACHABLE,
               EndReason.CONNECT_REFUSED: CONNECTION_REFUSED, EndReason.TIMEOUT: TTL_EXPIRED,
               EndReason.UPSTREAM_FAILED: NETWORK_UNREACHABLE, EndReason.SERVICE_PORT: NOT_ALLOWED}
# the reasons an exit passes on about its target (SERVICE_PORT is an onion service's, never an exit's)
TARGET_REASONS = set(SOCKS_REPLY) - {EndReason.SERVICE_PORT}


async def mesh(provider, handler, **kwargs):
    net = MemoryNetwork(provider, **kwargs)
    client = await net.add_node()
    relays = [await net.add_node(), await net.add_node(exit=True, stream_handler=handler)]
    return net, client, [net.descriptors[r.node.identity.peer_id] for r in relays]


@pytest.mark.parametrize("reason", list(EndReason))
def test_every_end_reason_has_its_socks_reply_and_exit_reason(reason):
    exc = StreamError("x", reason)
    assert reply_for(exc) == SOCKS_REPLY.get(reason, GENERAL_FAILURE)
    assert end_reason_for(exc) is (reason if reason in TARGET_REASONS else EndReason.MISC)


async def socks_over(client, circuit, opened=None):
    """A real SOCKS front whose CONNECTs open streams on ``circuit`` of a memory-network client
    (appended to ``opened``)."""
    async def open_stream(host, port, isolation):
        stream = await client.open_stream(circuit, host, port)
        if opened is not None:
            opened.append(stream)
        return stream

    server = Socks5Server(open_stream)
    return server, await server.start("127.0.0.1", 0)


def test_a_refused_stream_reaches_the_socks_application_as_its_reply_code(provider):
    async def refuse(request):
        await request.reject(EndReason.CONNECT_REFUSED)

    async def main():
        net, client, path = await mesh(provider, refuse)
        circuit = await client.build_circuit(path)
        with pytest.raises(StreamError) as info:
            await client.open_stream(circuit, "refusing.test", 80)
        server, port = await socks_over(client, circuit)
        try:
            with pytest.raises(TransportError, match="0x05"):  # connection refused
                await socks5_connect("127.0.0.1", port, "refusing.test", 80)
        finally:
            await server.close()
            await net.close()
        assert info.value.reason is EndReason.CONNECT_REFUSED and "connect refused" in str(info.value)

    asyncio.run(main())


def test_a_destroyed_circuit_resets_the_socks_application(provider):
    async def main():
        net, client, path = await mesh(provider, echo_service)
        circuit = await client.build_circuit(path)
        opened = []
        server, port = await socks_over(client, circuit, opened)
        try:
            reader, writer = await socks5_connect("127.0.0.1", port, "echo.test", 7)
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
            (stream,) = opened
            entry = net.drivers[path[0].peer_id]
            await entry.destroy_circuit(next(iter(entry.node.circuits())))
            with pytest.raises(ConnectionResetError):  # a reset, never a FIN that looks like a whole answer
                await asyncio.wait_for(reader.read(), 10)
            writer.close()
        finally:
            await server.close()
            await net.close()
        assert stream.ended is EndReason.DESTROYED
        with pytest.raises(StreamError) as info:
            await stream.read()
        assert info.value.reason is EndReason.DESTROYED and reply_for(info.value) == GENERAL_FAILURE
        assert end_reason_for(info.value) is EndReason.MISC  # an exit never echoes DESTROYED

    asyncio.run(main())


def test_a_failed_build_names_the_failed_peer_as_a_peer_id(provider):
    async def main():
        net, client, path = await mesh(provider, echo_service)
        gone = net.drivers.pop(path[1].peer_id)
        try:
            with pytest.raises(CircuitError) as info:
                await asyncio.wait_for(client.build_circuit(path), 10)
        finally:
            await net.close()
            await gone.close()
        assert info.value.reason is DestroyReason.CONNECT_FAILED and "connect failed" in str(info.value)
        assert isinstance(info.value.failed_peer, PeerId) and info.value.failed_peer == path[1].peer_id

    asyncio.run(main())


def test_the_drivers_timer_runs_on_the_nodes_clock(provider):
    """With a fake clock that stands still, nothing times out however long the loop runs (on the
    loop's clock the build deadline would be long past and the build would fail with TIMEOUT); once
    the fake clock passes the keepalive interval the driver PINGs, and the round trip it measures
    is on the fake clock too."""
    clock = FakeClock()

    async def main():
        net, client, path = await mesh(provider, echo_service, clock=clock)
        try:
            circuit = await client.build_circuit(path)
            entry_link = next(iter(client.links()))
            assert client.node.link_rtt(entry_link) is None  # no PING yet: the fake clock stands still
            clock.now += client.node.limits.keepalive_interval
            for driver in net.drivers.values():
                driver.clock_moved()
            await wait_until(lambda: client.node.link_rtt(entry_link) is not None)
            assert client.node.link_rtt(entry_link) == 0.0 and circuit in client.node.circuits()
        finally:
            await net.close()

    asyncio.run(main())
