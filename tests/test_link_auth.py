"""Authenticated links (docs/protocol.md §3): a node that cannot listen (a browser tab) proves its
PeerId on the relay links it opens, so circuits can be extended to it; clients never reveal theirs,
and a relaying node is a client on the links its own circuits use (roles on separate links)."""

import asyncio
import os
import time
from collections import defaultdict

import pytest

from tests.conftest import wait_until
from zmesh.aio.transport import RTC_ADDRESS, TransportDialer
from zmesh.cells import BODY_SIZE, MAX_CELLS_PER_FRAME, CellCommand, encode_cell, fragments, parse_cell, parse_frame
from zmesh.descriptor import Capabilities, sign_descriptor
from zmesh.errors import InvalidState, LinkClosed, TransportError
from zmesh.events import CircuitBuilt, LinkNeeded
from zmesh.handshake import client_start
from zmesh.identity import Identity, PeerId
from zmesh.link import LinkRole
from zmesh.testing.memlink import memory_link_pair
from zmesh.testing.memnet import MemoryNetwork, echo_service
from zmesh.testing.wire import Wire


def peers(driver) -> set[PeerId]:
    """Who the driver's node knows on its links (peers it dialed, dialers that proved themselves)."""
    return {peer for _, peer in driver.node.link_peers().values() if peer is not None}


def test_an_unreachable_node_relays_over_the_link_it_opened(provider):
    async def main():
        net = MemoryNetwork(provider)
        home = await net.add_node()
        tab = await net.add_node(reachable=False)
        exit_ = await net.add_node(exit=True, stream_handler=echo_service)
        client = await net.add_node(accept_circuits=False)
        tab_id = tab.node.identity.peer_id
        try:
            await tab.connect(home.node.identity.peer_id, authenticated=True)
            assert tab_id in peers(home)
            path = [net.descriptors[d.node.identity.peer_id] for d in (home, tab, exit_)]
            circuit = await client.build_circuit(path)
            stream = await client.open_stream(circuit, "echo.test", 7)
            payload = os.urandom(200_000)
            await stream.write(payload)
            echoed = b""
            while len(echoed) < len(payload):
                echoed += await asyncio.wait_for(stream.read(), 10)
            assert echoed == payload and tab.node.metrics["circuits_relayed"] == 1
            # the client, which does not accept circuits, stayed anonymous to its first hop
            assert client.node.identity.peer_id not in peers(home)
        finally:
            await net.close()

    asyncio.run(main())


def test_a_forged_authentication_closes_the_link(provider):
    async def main():
        net = MemoryNetwork(provider)
        relay = await net.add_node()
        try:
            ours, theirs = memory_link_pair()
            await relay.add_link(theirs, None, initiator=False)
            challenge = parse_cell(await asyncio.wait_for(ours.recv(), 5))
            assert challenge.command == CellCommand.AUTH_CHALLENGE and len(challenge.payload) == 32
            impostor = PeerId(os.urandom(32))
            await ours.send(encode_cell(CellCommand.AUTHENTICATE, 0, impostor.key + os.urandom(64)))
            try:
                while True:
                    await asyncio.wait_for(ours.recv(), 5)
            except LinkClosed:
                pass
            assert relay.node.metrics["link_auth_failures"] == 1
            assert impostor not in peers(relay)
        finally:
            await net.close()

    asyncio.run(main())


def test_a_signature_for_another_listener_is_refused(provider):
    """A relay in the middle cannot pass a challenge through: the proof names the listener."""
    async def main():
        net = MemoryNetwork(provider)
        honest, middleman = await net.add_node(), await net.add_node()
        tab = await net.add_node(reachable=False)
        try:
            ours, theirs = memory_link_pair()
            await honest.add_link(theirs, None, initiator=False)
            challenge = parse_cell(await asyncio.wait_for(ours.recv(), 5)).payload
            # the tab signs the challenge as if the middleman had sent it
            from zmesh.node import LINK_AUTH_DOMAIN

            signature = await provider.ed25519_sign(tab.node.identity.signing_key,
                                                    LINK_AUTH_DOMAIN + challenge + middleman.node.identity.peer_id.key)
            await ours.send(encode_cell(CellCommand.AUTHENTICATE, 0, tab.node.identity.peer_id.key + signature))
            await wait_until(lambda: honest.node.metrics["link_auth_failures"] == 1)
            assert tab.node.identity.peer_id not in peers(honest)
        finally:
            await net.close()

    asyncio.run(main())


# ---------------------------------------------------------------------- roles on separate links (issue 11, defect 1)

def record_frames(node) -> dict[int, list[bytes]]:
    """Every frame ``node`` writes, by link, as the wire takes it."""
    sent: dict[int, list[bytes]] = defaultdict(list)
    take = node.take_frame

    def recording(link_id: int, max_cells: int = MAX_CELLS_PER_FRAME) -> bytes | None:
        frame = take(link_id, max_cells)
        if frame is not None:
            sent[link_id].append(frame)
        return frame

    node.take_frame = recording
    return sent


def commands(frames: list[bytes]) -> set[CellCommand]:
    return {cell.command for frame in frames for cell in parse_frame(frame)}


async def relaying_node_with_own_circuit(provider):
    """A relaying node with an authenticated link to ``home`` that then builds its own circuit
    through ``home``: (wire, node, home, last, frames the node sent, its relay link, its client link)."""
    wire = Wire()
    node = await wire.add(provider)
    home, middle, last = await wire.add(provider), await wire.add(provider), await wire.add(provider)
    sent = record_frames(node)
    await wire.connect(node, home, LinkRole.RELAY)
    await wire.pump()
    (relay_link,) = node.link_peers()
    assert home.metrics["links_authenticated"] == 1
    circuit = await node.build_circuit([home.identity, middle.identity, last.identity])
    await wire.pump()
    assert any(isinstance(e, CircuitBuilt) and e.circuit == circuit for e in wire.events[node])
    (client_link,) = [link for link, (role, peer) in node.link_peers().items()
                      if role is LinkRole.CLIENT and peer == home.identity.peer_id]
    return wire, node, home, last, sent, relay_link, client_link


def test_a_relaying_nodes_own_circuit_reaches_its_first_hop_over_a_link_on_which_it_proved_nothing(provider):
    """docs/protocol.md §3: the node's first hop is its home, to which it holds an authenticated
    link; its own circuit still goes over a second link, and nothing on that link names it."""
    async def main():
        wire, node, home, _, sent, relay_link, client_link = await relaying_node_with_own_circuit(provider)
        me = node.identity.peer_id
        assert client_link != relay_link
        assert CellCommand.CREATE in commands(sent[client_link])
        assert CellCommand.AUTHENTICATE not in commands(sent[client_link])
        assert me.key not in b"".join(sent[client_link])  # in no cell at all, AUTHENTICATE or other
        assert CellCommand.AUTHENTICATE in commands(sent[relay_link])
        assert CellCommand.CREATE not in commands(sent[relay_link])
        # at the first hop: the circuit's link has no peer, the relay link is the node's
        home_links = home.link_peers()
        assert home_links[wire.ends[(node, client_link)][1]] == (LinkRole.RELAY, None)
        assert home_links[wire.ends[(node, relay_link)][1]] == (LinkRole.RELAY, me)
        assert home.metrics["links_authenticated"] == 1 and home.metrics["circuits_relayed"] == 1

    asyncio.run(main())


def test_circuits_extended_to_a_relaying_node_still_use_its_authenticated_link(provider):
    async def main():
        wire, node, home, last, _, _, _ = await relaying_node_with_own_circuit(provider)
        client = await wire.add(provider, accept_circuits=False)
        circuit = await client.build_circuit([home.identity, node.identity, last.identity])
        await wire.pump()
        assert any(isinstance(e, CircuitBuilt) and e.circuit == circuit for e in wire.events[client])
        assert node.metrics["circuits_relayed"] == 1
        # home extended over the link the node authenticated, not a new one (and never its client link)
        assert not [e for e in wire.events[home] if isinstance(e, LinkNeeded) and e.peer == node.identity.peer_id]

    asyncio.run(main())


def test_a_create_on_a_client_link_gets_no_answer_that_names_the_node(provider):
    """A first hop that guesses who is behind a client link and sends it a CREATE for that node's
    onion keys is refused like by any client; the same CREATE on a relay link is answered."""
    async def main():
        _, node, _, _, sent, relay_link, client_link = await relaying_node_with_own_circuit(provider)
        handshake = await client_start(provider, node.identity.peer_id, node.identity.onion_keys)
        create = b"".join(encode_cell(CellCommand.CREATE, 7, piece, flags)
                          for piece, flags in fragments(handshake.create_payload(), BODY_SIZE))
        relayed = node.metrics["circuits_relayed"]
        for link in (client_link, relay_link):
            sent[link].clear()
            await node.receive_frame(link, create)
            while node.take_frame(link) is not None:
                pass
        assert commands(sent[client_link]) == {CellCommand.DESTROY}
        assert node.metrics["create_refused"] == 1
        assert CellCommand.CREATED in commands(sent[relay_link])  # the probe works where it may
        assert node.metrics["circuits_relayed"] == relayed + 1

    asyncio.run(main())


def test_link_roles_that_would_break_the_separation_are_refused(provider):
    async def main():
        wire = Wire()
        relay, client = await wire.add(provider), await wire.add(provider, accept_circuits=False)
        with pytest.raises(InvalidState, match="inbound"):
            await relay.link_opened(None, initiator=False, role=LinkRole.CLIENT)
        with pytest.raises(InvalidState, match="no relay links"):
            await client.link_opened(relay.identity.peer_id, initiator=True, role=LinkRole.RELAY)
        assert relay.link_peers() == {} and client.link_peers() == {}

    asyncio.run(main())


class _Connector:
    """A stand-in WebRTC connector: says which session a dial went through."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def dial(self, peer: PeerId) -> str:
        return self.name


def test_a_client_link_is_never_signalled_under_the_nodes_own_identity(provider):
    """A WebRTC offer names its signaling session: when that session is the node's own (it answers
    offers as itself), client links go through the throwaway one or not over WebRTC at all."""
    async def main():
        peer = await Identity.generate(provider)
        descriptor = await sign_descriptor(provider, peer, now=int(time.time()), addresses=dict(RTC_ADDRESS),
                                           capabilities=Capabilities(relay=True))

        async def lookup(_peer):
            return descriptor

        async def no_websocket(_address):
            raise AssertionError("no WebSocket address was published")

        dialer = TransportDialer(lookup, websocket=no_websocket, rtc=_Connector("as this node"),
                                 mode=lambda: "auto", rtc_names_node=True, redial_after=0)
        assert await dialer(peer.peer_id, LinkRole.RELAY) == "as this node"
        with pytest.raises(TransportError, match="cannot be reached over WebRTC"):
            await dialer(peer.peer_id, LinkRole.CLIENT)
        dialer.client_rtc = _Connector("throwaway")
        assert await dialer(peer.peer_id, LinkRole.CLIENT) == "throwaway"
        assert await dialer(peer.peer_id) == "throwaway"  # a client link by default

    asyncio.run(main())
