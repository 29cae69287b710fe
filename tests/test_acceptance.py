"""What each circuit role accepts (zmesh.acceptance), tried on real nodes over the sans-IO wire:
an unknown relay command is counted and dropped (forward compatible), a known command in a state
that forbids it or a malformed body destroys the circuit, and our own encoder bugs surface as
``InvalidState`` instead of passing for the peer's protocol failure (issue 10, items 2 and 7)."""

import asyncio

import pytest

from zmesh import origin
from zmesh.cells import (
    RELAY_DATA_SIZE,
    DestroyReason,
    RelayCommand,
    encode_relay_body,
    fragments,
    relay_cells,
    split_bodies,
)
from zmesh.circuit import RelayState
from zmesh.errors import InvalidState
from zmesh.events import CircuitBuilt, CircuitClosed, StreamConnected, StreamData, StreamRequested
from zmesh.relaycrypto import onion_encrypt
from zmesh.testing.wire import Wire

UNKNOWN = 0x7E  # a relay command byte no RelayCommand has (a newer peer's)


async def open_stream(provider, client_limits=None, middle_limits=None, exit_limits=None):
    """A client with an open stream over a middle and an exit: (wire, client, exit, circuit, stream,
    the exit's circuit handle). ``*_limits``: each node's ``NodeLimits``."""
    wire = Wire()
    client = await wire.add(provider, accept_circuits=False, limits=client_limits)
    middle, exit_ = await wire.add(provider, limits=middle_limits), await wire.add(provider, limits=exit_limits)
    circuit = await client.build_circuit([middle.identity, exit_.identity])
    await wire.pump()
    assert any(isinstance(e, CircuitBuilt) for e in wire.events[client])
    stream = await client.open_stream(circuit, "example.org", 443)
    await wire.pump()
    (request,) = [e for e in wire.events[exit_] if isinstance(e, StreamRequested)]
    await exit_.accept_stream(request.circuit, stream)
    await wire.pump()
    assert any(isinstance(e, StreamConnected) for e in wire.events[client])
    return wire, client, exit_, circuit, stream, request.circuit


def closed(wire, node):
    return [(e.reason, e.origin) for e in wire.events[node] if isinstance(e, CircuitClosed)]


def test_an_exit_drops_an_unknown_relay_command_and_keeps_the_circuit_and_its_stream(provider):
    async def main():
        wire, client, exit_, circuit, stream, exit_circuit = await open_stream(provider)
        # the client's real send path: sealed for the exit, onion-encrypted, relayed by the middle
        await client._send_edge(client._circuits[circuit], [encode_relay_body(UNKNOWN, stream, b"new")])
        await wire.pump()
        assert exit_.metrics["relay_unknown_commands"] == 1
        assert exit_.circuits() == [exit_circuit] and closed(wire, exit_) == [] and closed(wire, client) == []
        assert exit_._circuits[exit_circuit].state == RelayState.EDGE
        await client.send(circuit, stream, b"still here")
        await wire.pump()
        assert [e.data for e in wire.events[exit_] if isinstance(e, StreamData)] == [b"still here"]

    asyncio.run(main())


def test_a_middle_relay_drops_an_unknown_relay_command_meant_for_it(provider):
    async def main():
        wire, client, exit_, circuit, stream, exit_circuit = await open_stream(provider)
        middle = next(n for n in wire.nodes.values() if n not in (client, exit_))
        circ = client._circuits[circuit]
        data = await onion_encrypt(circ.hops, 0, [encode_relay_body(UNKNOWN, 0, b"")])  # for hop 0
        client._enqueue(circ.link, circ.handle, relay_cells(circ.circ_id, split_bodies(data)))
        await wire.pump()
        assert middle.metrics["relay_unknown_commands"] == 1
        assert middle._circuits[next(iter(middle._circuits))].state == RelayState.FORWARDING
        await client.send(circuit, stream, b"through")
        await wire.pump()
        assert [e.data for e in wire.events[exit_] if isinstance(e, StreamData)] == [b"through"]

    asyncio.run(main())


def test_an_origin_drops_an_unknown_relay_command_from_its_exit(provider):
    async def main():
        wire, client, exit_, circuit, stream, exit_circuit = await open_stream(provider)
        await exit_._send_edge(exit_._circuits[exit_circuit], [encode_relay_body(UNKNOWN, stream, b"")])
        await wire.pump()
        assert client.metrics["relay_unknown_commands"] == 1 and client.circuits() == [circuit]
        await exit_.send(exit_circuit, stream, b"reply")
        await wire.pump()
        assert [e.data for e in wire.events[client] if isinstance(e, StreamData)] == [b"reply"]

    asyncio.run(main())


@pytest.mark.parametrize("sender, command", [
    ("exit", RelayCommand.CONNECTED),  # CONNECTED for a stream that is already open
    # a circuit SENDME for cells never sent: tests/test_congestion.py (BAD_SENDME, or PROTOCOL on fixed windows)
    ("exit", RelayCommand.BEGIN),  # a command only a relay accepts
    ("client", RelayCommand.EXTENDED),  # a command only an origin accepts
    ("client", RelayCommand.CONNECTED),
])
def test_a_known_command_the_receiver_may_not_get_destroys_the_circuit(provider, sender, command):
    async def main():
        wire, client, exit_, circuit, stream, exit_circuit = await open_stream(provider)
        node, handle = (exit_, exit_circuit) if sender == "exit" else (client, circuit)
        stream_id = 0 if command == RelayCommand.SENDME else stream
        await node._send_edge(node._circuits[handle], [encode_relay_body(command, stream_id, b"")])
        await wire.pump()
        receiver = client if sender == "exit" else exit_
        assert receiver.metrics["circuit_failures_protocol"] == 1 and receiver.metrics["relay_unknown_commands"] == 0
        assert client.circuits() == [] and exit_.circuits() == []  # DESTROY went both ways
        assert closed(wire, client) == [(DestroyReason.PROTOCOL, True)]

    asyncio.run(main())


def test_a_malformed_body_with_an_unknown_command_is_still_fatal(provider):
    async def main():
        wire, client, exit_, circuit, stream, exit_circuit = await open_stream(provider)
        body = encode_relay_body(UNKNOWN, stream, b"")
        body[6:8] = (RELAY_DATA_SIZE + 1).to_bytes(2, "big")  # a length past the body
        await client._send_edge(client._circuits[circuit], [body])
        await wire.pump()
        assert exit_.metrics["circuit_failures_protocol"] == 1 and exit_.metrics["relay_unknown_commands"] == 0
        assert exit_.circuits() == [] and client.circuits() == []

    asyncio.run(main())


def test_our_own_encoder_bug_raises_invalid_state_and_is_not_blamed_on_the_peer(provider, monkeypatch):
    """An off-by-one in how the client fragments its EXTEND (pieces one byte too long for a relay
    cell): the encoder says InvalidState, which leaves the node instead of becoming a DESTROY
    counted as the first hop's protocol failure (before: ValueError, caught as the peer's fault)."""
    monkeypatch.setattr(origin, "fragments", lambda payload, chunk: fragments(
        payload, chunk + 1 if chunk == RELAY_DATA_SIZE else chunk))

    async def main():
        wire = Wire()
        client = await wire.add(provider, accept_circuits=False)
        middle, exit_ = await wire.add(provider), await wire.add(provider)
        await client.build_circuit([middle.identity, exit_.identity])
        with pytest.raises(InvalidState, match="relay data is limited"):
            await wire.pump()  # the first hop's CREATED makes the client send EXTEND
        assert client.metrics["circuit_failures_protocol"] == 0 and client.metrics["circuits_destroyed"] == 0
        assert closed(wire, client) == [] and middle.metrics["circuits_destroyed"] == 0

    asyncio.run(main())
