"""Authenticated links (docs/protocol.md §3): a node that cannot listen (a browser tab) proves its
PeerId on the links it opens, so circuits can be extended to it; clients never reveal theirs."""

import asyncio
import os

from tests.conftest import wait_until
from zmesh.cells import CellCommand, encode_cell, parse_cell
from zmesh.errors import LinkClosed
from zmesh.identity import PeerId
from zmesh.testing.memlink import memory_link_pair
from zmesh.testing.memnet import MemoryNetwork, echo_service


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
