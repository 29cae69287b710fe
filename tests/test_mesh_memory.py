"""End-to-end circuits over in-memory links (docs/protocol.md §6–7): whole transfers, tampering at
any hop, bounded buffering under a stalled reader, DESTROY propagation and hostile peers."""

import asyncio
import hashlib
import os

import pytest

from tests.conftest import wait_until
from zmesh.cells import CELL_SIZE, CellCommand, DestroyReason, EndReason, encode_cell
from zmesh.congestion import VegasFlow
from zmesh.errors import CircuitError, ConfigError, StreamError
from zmesh.events import CircuitClosed
from zmesh.flow import CIRCUIT_WINDOW, STREAM_WINDOW
from zmesh.negotiation import queue_bound
from zmesh.node import Node, NodeLimits
from zmesh.testing.memnet import MemoryNetwork, blob_service, echo_service

MiB = 1024 * 1024


async def make_mesh(provider, relays, handler, **kwargs):
    net = MemoryNetwork(provider, **kwargs)
    client = await net.add_node()
    middle = [await net.add_node() for _ in range(relays - 1)]
    exit_ = await net.add_node(exit=True, stream_handler=handler)
    path = [net.descriptors[d.node.identity.peer_id] for d in middle + [exit_]]
    return net, client, path


async def read_all(stream):
    parts = []
    while part := await stream.read():
        parts.append(part)
    return b"".join(parts)


@pytest.mark.parametrize("hops", [3, 5])
def test_ten_mib_download_is_byte_exact(provider, hops):
    payload = os.urandom(10 * MiB)

    async def main():
        net, client, path = await make_mesh(provider, hops, blob_service(payload))
        try:
            circuit = await client.build_circuit(path)
            stream = await client.open_stream(circuit, "files.test", 80)
            data = await asyncio.wait_for(read_all(stream), 60)
        finally:
            await net.close()
        assert hashlib.sha256(data).digest() == hashlib.sha256(payload).digest()

    asyncio.run(main())


def test_upload_and_many_streams_share_a_circuit(provider):
    async def main():
        net, client, path = await make_mesh(provider, 3, echo_service)
        try:
            circuit = await client.build_circuit(path)
            streams = [await client.open_stream(circuit, "echo.test", 7) for _ in range(4)]
            payloads = [os.urandom(300_000 + i) for i in range(4)]

            async def roundtrip(stream, payload):
                writer = asyncio.create_task(stream.write(payload))
                got = b""
                while len(got) < len(payload):
                    got += await stream.read()
                await writer
                await stream.close()
                return got

            results = await asyncio.wait_for(
                asyncio.gather(*(roundtrip(s, p) for s, p in zip(streams, payloads, strict=True))), 60)
        finally:
            await net.close()
        assert results == payloads

    asyncio.run(main())


def _hop_links(net, client, path):
    """The memory links along the circuit, as (sender-end towards exit, sender-end towards client)."""
    order = [client.node.identity.peer_id] + [d.peer_id for d in path]
    pairs = []
    for a, b in zip(order, order[1:], strict=False):
        for me, them, ours, theirs in net.links:
            if (me, them) == (a, b):
                pairs.append((ours, theirs))
    return pairs


def _tamper_once(link, frame_index, offset):
    original = link.send
    count = {"n": 0}

    async def send(frame):
        if count["n"] == frame_index:
            frame = bytearray(frame)
            frame[offset % len(frame)] ^= 0x10
            frame = bytes(frame)
        count["n"] += 1
        await original(frame)

    link.send = send


@pytest.mark.parametrize("hop", [0, 1, 2])
@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("offset", [2, 5, 9, 20, 30, 600, CELL_SIZE - 1])
def test_one_tampered_byte_at_any_hop_tears_the_circuit_down(provider, hop, direction, offset):
    payload = os.urandom(400_000)

    async def main():
        net, client, path = await make_mesh(provider, 3, echo_service)
        try:
            circuit = await client.build_circuit(path)
            stream = await client.open_stream(circuit, "echo.test", 7)
            towards_exit, towards_client = _hop_links(net, client, path)[hop]
            _tamper_once(towards_exit if direction == "forward" else towards_client, 3, offset)
            received = b""
            with pytest.raises(StreamError):
                writer = asyncio.create_task(stream.write(payload))
                while len(received) < len(payload):
                    part = await asyncio.wait_for(stream.read(), 20)
                    assert part, "stream ended cleanly despite tampering"
                    received += part
            writer.cancel()
            # Nothing corrupted was ever delivered: what arrived is a prefix of what was sent.
            assert payload.startswith(received)
            await wait_until(lambda: not any(d.node.circuits() for d in net.drivers.values()))
        finally:
            await net.close()

    asyncio.run(main())


@pytest.mark.parametrize("mode", ["congestion-control", "fixed-windows"])
@pytest.mark.parametrize("stall", ["application", "client-link"])
def test_stalled_reader_keeps_every_relay_under_the_bound(provider, stall, mode):
    """An application that stops reading (or a client whose link stops draining) must stop the
    exit: with fixed windows after one window, so no relay buffers more than (CIRCUIT_WINDOW + 64)
    cells per circuit; with congestion control by XOFF or the congestion window, so no relay buffers
    more than the negotiated window's queue bound (docs/protocol.md §7, §10)."""
    payload = os.urandom(8 * MiB)
    cc = mode == "congestion-control"
    limits = NodeLimits() if cc else NodeLimits(cc_max_window=0)

    async def main():
        net, client, path = await make_mesh(provider, 3, blob_service(payload), link_capacity=64 * 1024,
                                            limits=limits)
        try:
            circuit = await client.build_circuit(path)
            streams = [await client.open_stream(circuit, "files.test", 80) for _ in range(3)]
            gate = asyncio.Event()
            if stall == "client-link":
                client_end = _hop_links(net, client, path)[0][0]
                original_recv = client_end.recv

                async def stalled_recv():
                    await gate.wait()
                    return await original_recv()

                client_end.recv = stalled_recv
            exit_node = net.drivers[path[-1].peer_id].node
            circ = next(iter(exit_node._circuits.values()))
            assert isinstance(circ.edge.flow, VegasFlow) == cc

            def settled():
                """The exit has used up its windows and its cells have moved as far as they can."""
                blocked = circ.edge.flow.room() == 0 or all(s.flow.room() == 0 for s in circ.edge.streams.values())
                return blocked and net.queued_bytes(path[-1].peer_id) == 0 and net.queued_bytes(path[1].peer_id) == 0

            await wait_until(settled)
            window = circ.edge.flow.cap if cc else CIRCUIT_WINDOW
            bound = (queue_bound(window) if cc else CIRCUIT_WINDOW + 64) * CELL_SIZE
            buffered = [net.queued_bytes(relay.peer_id) for relay in path[:-1]]
            assert all(b <= bound for b in buffered), buffered
            if stall == "client-link":  # the relay next to the client really holds the backlog (with cc,
                assert buffered[0] > (1 if cc else 3) * 64 * 1024  # no SENDME came back: the window stayed small)
            client_buffered = sum(len(b"".join(s._chunks)) for s in streams)
            per_stream = limits.xoff_cells + window if cc else STREAM_WINDOW
            assert client_buffered <= len(streams) * per_stream * CELL_SIZE
            gate.set()
            data = await asyncio.wait_for(asyncio.gather(*(read_all(s) for s in streams)), 60)
        finally:
            await net.close()
        assert all(hashlib.sha256(d).digest() == hashlib.sha256(payload).digest() for d in data)

    asyncio.run(main())


@pytest.mark.parametrize("who", ["client", "exit", "middle-link"])
def test_destroy_propagates_both_ways(provider, who):
    async def main():
        net, client, path = await make_mesh(provider, 3, echo_service)
        closed = []
        client.on_event = lambda e: closed.append(e) if isinstance(e, CircuitClosed) else None
        try:
            circuit = await client.build_circuit(path)
            stream = await client.open_stream(circuit, "echo.test", 7)
            if who == "client":
                await client.destroy_circuit(circuit)
            elif who == "exit":
                exit_driver = net.drivers[path[-1].peer_id]
                await exit_driver.destroy_circuit(exit_driver.node.circuits()[0])
            else:
                _, towards_client = _hop_links(net, client, path)[1]
                await towards_client.close()
            await wait_until(lambda: not any(d.node.circuits() for d in net.drivers.values()))
            if who != "client":
                assert closed and closed[0].circuit == circuit
                with pytest.raises(StreamError):
                    await stream.read()
        finally:
            await net.close()

    asyncio.run(main())


def test_hop_counts_outside_2_to_8_are_config_errors(provider):
    async def main():
        net, client, path = await make_mesh(provider, 3, echo_service)
        try:
            with pytest.raises(ConfigError):
                await client.build_circuit(path[:1])
            with pytest.raises(ConfigError):
                await client.build_circuit(path * 3)
            with pytest.raises(ConfigError):
                await client.build_circuit([path[0], path[0]])
        finally:
            await net.close()

    asyncio.run(main())


def test_unreachable_relay_fails_the_build_with_a_reason(provider):
    async def main():
        net, client, path = await make_mesh(provider, 3, echo_service)
        try:
            gone = net.drivers.pop(path[1].peer_id)  # the middle relay vanished from the network
            with pytest.raises(CircuitError) as info:
                await asyncio.wait_for(client.build_circuit(path), 10)
            assert info.value.reason is DestroyReason.CONNECT_FAILED and info.value.failed_peer == path[1].peer_id
        finally:
            await net.close()
            await gone.close()

    asyncio.run(main())


def test_build_timeout_uses_the_node_clock(provider):
    """Sans-IO: a silent first hop times the build out at the deadline, with no real waiting."""
    async def main():
        net = MemoryNetwork(provider)
        await net.add_node()
        relays = [await net.add_node() for _ in range(2)]
        now = [100.0]
        node = Node(next(iter(net.drivers.values())).node.identity, provider, lambda: now[0])
        handle = await node.build_circuit([net.descriptors[r.node.identity.peer_id] for r in relays])
        assert node.next_deadline() == 130.0
        await node.handle_timer(129.0)
        assert handle in node.circuits()
        now[0] = 130.0
        await node.handle_timer(130.0)
        closed = [e for e in node.events() if isinstance(e, CircuitClosed)]
        assert closed[0].reason == DestroyReason.TIMEOUT and handle not in node.circuits()
        await net.close()

    asyncio.run(main())


@pytest.mark.parametrize("garbage", [
    b"\x00" * 10,
    os.urandom(CELL_SIZE),
    encode_cell(CellCommand.RELAY, 77, bytes(CELL_SIZE - 16)),
    encode_cell(CellCommand.CREATED, 5, b"x" * 64),
    encode_cell(CellCommand.CREATE, 0x8000_0001, os.urandom(900)),
    bytes(CELL_SIZE * 65),
])
def test_hostile_peer_does_not_break_a_relay(provider, garbage):
    async def main():
        net, client, path = await make_mesh(provider, 3, echo_service)
        try:
            relay = net.drivers[path[0].peer_id]
            from zmesh.testing.memlink import memory_link_pair

            hostile, theirs = memory_link_pair()
            await relay.add_link(theirs, None, initiator=False)
            await hostile.send(garbage)
            await hostile.send(garbage)
            # The relay still builds circuits and carries data for honest clients.
            circuit = await client.build_circuit(path)
            stream = await client.open_stream(circuit, "echo.test", 7)
            await stream.write(b"still alive")
            assert await asyncio.wait_for(stream.read(), 10) == b"still alive"
            metrics = relay.node.metrics
            assert (metrics["malformed_frames"] + metrics["cells_unknown_circuit"]
                    + metrics["circuit_failures_protocol"] + metrics["create_refused"]) >= 1
        finally:
            await net.close()

    asyncio.run(main())


def test_exit_without_handler_refuses_streams(provider):
    async def main():
        net, client, path = await make_mesh(provider, 3, None)
        try:
            circuit = await client.build_circuit(path)
            with pytest.raises(StreamError) as info:
                await client.open_stream(circuit, "example.org", 80)
            assert info.value.reason is EndReason.EXIT_POLICY
        finally:
            await net.close()

    asyncio.run(main())
