"""Onion-service circuits with congestion control on (docs/onion-services.md, "Flow control end to
end"; docs/protocol.md §10): each circuit is handed to its onion role the moment it is built, so its
last hop's CC_ACCEPT arrives after ESTABLISH_INTRO / ESTABLISH_RENDEZVOUS / INTRODUCE1 / RENDEZVOUS1
left (at the service's joined circuit: from a hop that is no longer the last), and the joined
end-to-end hop runs fixed windows at both ends whatever the relays granted."""

from __future__ import annotations

import asyncio

from zmesh.cells import RELAY_DATA_SIZE, DestroyReason, RelayCommand, encode_relay_body
from zmesh.circuit import BuildState
from zmesh.events import CircuitClosed, IntroduceReceived, RendezvousJoined, StreamData, StreamRequested
from zmesh.flow import CIRCUIT_INCREMENT, CircuitWindow
from zmesh.identity import Identity
from zmesh.onion.introduce import RendezvousPoint, answer_introduction, open_introduction, seal_introduction
from zmesh.onionkeys import OnionKeySet

from .test_rendezvous import Mesh


async def hand_over_at_once(mesh: Mesh, node, hops: tuple[int, ...], operation) -> int:
    """Build a circuit and give it to ``operation`` as soon as it is open, while the last hop's
    answer to the congestion-control offer is still to come."""
    circuit = await node.build_circuit([mesh.relays[i].identity for i in hops])
    while node._circuits[circuit].state is not BuildState.OPEN:
        assert await mesh.wire.step(), "the circuit did not build"
    assert node._cc_paths[circuit].pending == len(hops) - 1  # its CC_ACCEPT is not here yet
    await operation(circuit)
    await mesh.wire.pump()
    assert circuit in node._circuits and circuit not in node._cc_paths  # the late answer was taken
    return circuit


async def _move(mesh: Mesh, sender, send_circuit: int, send_stream: int,
                receiver, recv_circuit: int, recv_stream: int, data: bytes) -> bytes:
    """Send ``data`` as the windows allow, the receiver consuming all it gets; return what arrived."""
    offset, consumed = 0, 0
    before = len(mesh.of(receiver, StreamData))
    while True:
        offset += await sender.send(send_circuit, send_stream, data[offset:])
        await mesh.wire.pump()
        got = mesh.of(receiver, StreamData)[before:]
        if len(got) > consumed:
            await receiver.consume(recv_circuit, recv_stream, len(got) - consumed)
            consumed = len(got)
            await mesh.wire.pump()
        elif offset == len(data):
            return b"".join(e.data for e in got)
        else:
            assert mesh.of(sender, CircuitClosed) == [], "the circuit closed mid-transfer"


async def joined_at_once(mesh: Mesh) -> tuple[int, int]:
    """Intro, rendezvous, introduction and join, each circuit handed over at once: (client's, service's)."""
    provider = mesh.client.provider
    identity = await Identity.generate(provider)
    keyset = OnionKeySet.of(identity)
    auth_private, auth_key = await provider.ed25519_generate()
    intro = await hand_over_at_once(mesh, mesh.service, (0, 1),
                                    lambda c: mesh.service.establish_intro(c, auth_private, auth_key))
    cookie = provider.random_bytes(20)
    rend = await hand_over_at_once(mesh, mesh.client, (2, 3), lambda c: mesh.client.establish_rendezvous(c, cookie))
    point = RendezvousPoint(mesh.relays[3].identity.peer_id, mesh.relays[3].identity.onion_keys.x25519, cookie)
    encrypted, handshake = await seal_introduction(provider, identity.peer_id.key, keyset.public, auth_key, point)
    await mesh.client.await_rendezvous(rend, handshake)
    await hand_over_at_once(mesh, mesh.client, (0, 1), lambda c: mesh.client.introduce(c, auth_key, encrypted))
    (received,) = mesh.of(mesh.service, IntroduceReceived)
    assert received.circuit == intro
    _, create = await open_introduction(provider, identity.peer_id.key, keyset, auth_key, received.encrypted)
    reply, keys = await answer_introduction(provider, identity.peer_id.key, keyset, create)
    side = await hand_over_at_once(mesh, mesh.service, (0, 3),
                                   lambda c: mesh.service.join_rendezvous(c, cookie, reply, keys))
    assert RendezvousJoined(rend) in mesh.of(mesh.client, RendezvousJoined)
    assert not mesh.of(mesh.client, CircuitClosed) and not mesh.of(mesh.service, CircuitClosed)
    return rend, side


def test_a_late_cc_accept_after_every_hand_over_is_taken_and_the_joined_hop_runs_fixed_windows(provider):
    async def main():
        mesh = await Mesh.make(provider)
        rend, side = await joined_at_once(mesh)
        assert all(r._cc_windows for r in mesh.relays)  # every hop did grant a window
        stream = await mesh.client.open_stream(rend, "", 80)
        await mesh.wire.pump()
        (request,) = mesh.of(mesh.service, StreamRequested)
        await mesh.service.accept_stream(side, request.stream_id)
        await mesh.wire.pump()
        ends = (mesh.client._circuits[rend].edge, mesh.service._circuits[side].edge)
        assert all(isinstance(edge.flow, CircuitWindow) for edge in ends)
        # several circuit SENDMEs each way: a flow-control mismatch between the ends destroys the circuit
        data = bytes(range(256)) * (3 * CIRCUIT_INCREMENT * RELAY_DATA_SIZE // 256)
        assert await _move(mesh, mesh.client, rend, stream, mesh.service, side, request.stream_id, data) == data
        assert await _move(mesh, mesh.service, side, request.stream_id, mesh.client, rend, stream, data) == data
        assert not mesh.of(mesh.client, CircuitClosed) and not mesh.of(mesh.service, CircuitClosed)

    asyncio.run(main())


def test_a_second_cc_accept_from_the_rendezvous_point_after_the_join_destroys_the_circuit(provider):
    """Taking a late answer is not taking any: an inner hop's CC_ACCEPT must answer the offer still
    pending at exactly that hop."""
    async def main():
        mesh = await Mesh.make(provider)
        rend, side = await joined_at_once(mesh)
        point = mesh.relays[3]
        # the service's circuit reached the point after the client's: the later of the joined pair
        service_side = max((c for c in point._circuits.values() if getattr(c, "joined", 0)), key=lambda c: c.handle)
        await point._send_edge(service_side, [encode_relay_body(RelayCommand.CC_ACCEPT, 0, bytes(5))])
        await mesh.wire.pump()
        assert mesh.closed(mesh.service, side) is DestroyReason.PROTOCOL

    asyncio.run(main())
