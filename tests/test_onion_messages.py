"""Messages to an onion service (issue 12 item 6; docs/onion-services.md, "Messages"): two nodes
each host a service and exchange messages both ways by ``.mesh`` address over rendezvous circuits,
on memory links. Neither node is a relay and neither learns the other's PeerId."""

from __future__ import annotations

import asyncio

import pytest

from zmesh.aio.api import MeshVPN
from zmesh.cells import EndReason
from zmesh.circuit import Purpose
from zmesh.errors import ConfigError, InvalidState, StreamError
from zmesh.onion.introduce import ServiceKeys
from zmesh.testing.memnet import MemoryNetwork

from .test_rendezvous import MemoryDescriptors


async def _pair(provider, net: MemoryNetwork, store: MemoryDescriptors) -> tuple[MeshVPN, MeshVPN]:
    for _ in range(6):
        await net.add_node()
    relays = list(net.descriptors.values())  # only the relays: the two ends publish no descriptor
    return tuple([MeshVPN(await net.add_node(accept_circuits=False), lambda: relays, descriptors=store)
                  for _ in range(2)])


def test_two_nodes_exchange_messages_both_ways_by_mesh_address(provider):
    async def main():
        net, store = MemoryNetwork(provider), MemoryDescriptors()
        alice, bob = await _pair(provider, net, store)
        try:
            heard = []
            bob.on("message", heard.append)
            alice_address = await alice.host(await ServiceKeys.from_seed(provider, provider.random_bytes(32)))
            bob_address = await bob.host(await ServiceKeys.from_seed(provider, provider.random_bytes(32)))

            await alice.connect(destination=bob_address)
            await alice.send(b"hello bob, reply to " + alice_address.encode())
            got = await asyncio.wait_for(bob.receive(), 30)
            assert got == b"hello bob, reply to " + alice_address.encode() and heard == [got]
            await bob.connect(destination=got.rsplit(b" ", 1)[1].decode())  # the reply, by address
            await bob.send(b"hello alice")
            assert await asyncio.wait_for(alice.receive(), 30) == b"hello alice"
            await alice.send(b"and again")  # the same joined circuit keeps carrying messages
            assert await asyncio.wait_for(bob.receive(), 30) == b"and again"

            for vpn, other in ((alice, bob), (bob, alice)):
                node = vpn.driver.node
                assert node.circuit_purpose(vpn._circuit) is Purpose.RENDEZVOUS
                seen = {p for c in node.onion_circuits() for p in c["path"]}
                assert other.peer_id.text not in seen  # the path names relays only
                assert vpn.connected
        finally:
            await alice.close()
            await bob.close()
            await net.close()

    asyncio.run(main())


def test_hosting_needs_a_directory_once_and_other_ports_are_refused(provider):
    async def main():
        net, store = MemoryNetwork(provider), MemoryDescriptors()
        alice, bob = await _pair(provider, net, store)
        lone = MeshVPN(await net.add_node(accept_circuits=False), lambda: list(net.descriptors.values()))
        keys = await ServiceKeys.from_seed(provider, provider.random_bytes(32))
        try:
            with pytest.raises(ConfigError):
                await lone.host(keys)
            with pytest.raises(ConfigError):
                await lone.connect(destination=await bob.host(keys))
            with pytest.raises(InvalidState):
                await bob.host(keys)
            with pytest.raises(StreamError) as refused:  # no on_stream: a port other than messages is refused
                await alice.open_stream(bob._service.address, 80)
            assert refused.value.reason is EndReason.SERVICE_PORT
        finally:
            for vpn in (alice, bob, lone):
                await vpn.close()
            await net.close()

    asyncio.run(main())
