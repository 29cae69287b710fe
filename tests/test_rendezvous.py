"""Introduction and rendezvous at the node level (docs/onion-services.md, "Introduction and rendezvous"),
on the in-memory wire with a fake clock: the intro and rendezvous points' maps and bounds, replayed
and unknown cookies, the per-intro-point rate limit, malformed cells, and a joined circuit that
carries a stream end to end."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

import pytest

from zmesh.aio.api import MeshVPN
from zmesh.aio.onion import OnionClient, OnionLimits, OnionService
from zmesh.aio.onion.common import Paths
from zmesh.cells import DestroyReason, EndReason, RelayCommand, encode_relay_body
from zmesh.circuit import BuildState, Purpose
from zmesh.errors import CircuitError, CryptoError, InvalidState, OnionAddressError, ProtocolError, StreamError
from zmesh.events import (
    CircuitBuilt,
    CircuitClosed,
    IntroduceAcked,
    IntroduceReceived,
    IntroEstablished,
    RendezvousEstablished,
    RendezvousJoined,
    StreamConnected,
    StreamData,
    StreamRequested,
)
from zmesh.guards import GuardManager
from zmesh.identity import Identity
from zmesh.node import NodeLimits
from zmesh.onion.address import encode_address
from zmesh.onion.descriptor import ServiceDescriptor
from zmesh.onion.introduce import (
    RendezvousPoint,
    ServiceKeys,
    answer_introduction,
    open_introduction,
    seal_introduction,
)
from zmesh.onion.wire import IntroduceStatus, establish_intro_message
from zmesh.onionkeys import OnionKeySet
from zmesh.testing.memnet import MemoryNetwork, echo_service
from zmesh.testing.wire import FakeClock, Wire

from .conftest import wait_until


class Mesh:
    """Four relays, a service and a client on one wire. Circuits are two hops (the minimum)."""

    def __init__(self, wire: Wire, relays: list, service, client) -> None:
        self.wire, self.relays, self.service, self.client = wire, relays, service, client

    @classmethod
    async def make(cls, provider, limits: NodeLimits | None = None) -> Mesh:
        wire = Wire()
        relays = [await wire.add(provider, limits=limits or NodeLimits()) for _ in range(4)]
        service = await wire.add(provider, accept_circuits=False)
        client = await wire.add(provider, accept_circuits=False)
        return cls(wire, relays, service, client)

    def of(self, node, kind):
        return [e for e in self.wire.events[node] if isinstance(e, kind)]

    async def build(self, node, *hops) -> int:
        circuit = await node.build_circuit([self.relays[i].identity for i in hops])
        await self.wire.pump()
        assert any(e.circuit == circuit for e in self.of(node, CircuitBuilt)), "circuit did not build"
        return circuit

    def closed(self, node, circuit) -> DestroyReason | None:
        return next((e.reason for e in self.of(node, CircuitClosed) if e.circuit == circuit), None)

    async def intro(self, via: int, at: int) -> tuple[int, bytes, bytes]:
        circuit = await self.build(self.service, via, at)
        private, public = await self.service.provider.ed25519_generate()
        await self.service.establish_intro(circuit, private, public)
        await self.wire.pump()
        assert IntroEstablished(circuit) in self.of(self.service, IntroEstablished)
        return circuit, private, public

    async def rendezvous(self, via: int, at: int, cookie: bytes) -> int:
        circuit = await self.build(self.client, via, at)
        await self.client.establish_rendezvous(circuit, cookie)
        await self.wire.pump()
        return circuit

    async def introduce(self, via: int, at: int, auth_key: bytes, encrypted: bytes) -> tuple[int, int]:
        circuit = await self.build(self.client, via, at)
        await self.client.introduce(circuit, auth_key, encrypted)
        await self.wire.pump()
        acks = [e.status for e in self.of(self.client, IntroduceAcked) if e.circuit == circuit]
        return circuit, acks[0] if acks else -1


async def raw(node, circuit: int, command: RelayCommand, data: bytes) -> None:
    """Send any relay message to a circuit's last hop, as a hostile client or service would."""
    await node._send_edge(node._circuits[circuit], [encode_relay_body(command, 0, data)])


def run(coro):
    return asyncio.run(coro)


def test_joined_circuit_carries_a_stream_end_to_end_and_the_rendezvous_point_sees_only_ciphertext(provider):
    async def main():
        mesh = await Mesh.make(provider)
        identity = await Identity.generate(provider)  # the service's keys, apart from its node identity
        keyset = OnionKeySet.of(identity)
        intro, _, auth_key = await mesh.intro(0, 1)
        cookie = provider.random_bytes(20)
        rend = await mesh.rendezvous(2, 3, cookie)
        assert RendezvousEstablished(rend) in mesh.of(mesh.client, RendezvousEstablished)
        point = RendezvousPoint(mesh.relays[3].identity.peer_id, mesh.relays[3].identity.onion_keys.x25519, cookie)
        encrypted, handshake = await seal_introduction(provider, identity.peer_id.key, keyset.public, auth_key, point)
        await mesh.client.await_rendezvous(rend, handshake)
        _, status = await mesh.introduce(0, 1, auth_key, encrypted)
        assert status == IntroduceStatus.SUCCESS
        (received,) = mesh.of(mesh.service, IntroduceReceived)
        assert received.circuit == intro and received.auth_key == auth_key
        opened, create = await open_introduction(provider, identity.peer_id.key, keyset, auth_key, received.encrypted)
        assert opened == point
        reply, keys = await answer_introduction(provider, identity.peer_id.key, keyset, create)
        side = await mesh.build(mesh.service, 0, 3)
        await mesh.service.join_rendezvous(side, cookie, reply, keys)
        await mesh.wire.pump()
        assert RendezvousJoined(rend) in mesh.of(mesh.client, RendezvousJoined)
        assert mesh.client.circuit_purpose(rend) is Purpose.RENDEZVOUS
        assert mesh.service.circuit_purpose(side) is Purpose.SERVICE_RENDEZVOUS
        assert mesh.relays[3].point_counts() == {"intro": 0, "rendezvous": 0}

        stream = await mesh.client.open_stream(rend, "", 80)
        await mesh.wire.pump()
        (request,) = mesh.of(mesh.service, StreamRequested)
        assert (request.circuit, request.host, request.port) == (side, "", 80)
        await mesh.service.accept_stream(side, request.stream_id)
        await mesh.wire.pump()
        assert StreamConnected(rend, stream) in mesh.of(mesh.client, StreamConnected)
        secret = b"only the two ends can read this " * 40
        await mesh.client.send(rend, stream, secret)
        await mesh.service.send(side, request.stream_id, secret[::-1])
        await mesh.wire.pump()
        got = b"".join(e.data for e in mesh.of(mesh.service, StreamData))
        back = b"".join(e.data for e in mesh.of(mesh.client, StreamData))
        assert got == secret and back == secret[::-1]
        assert mesh.relays[3].metrics["cells_rendezvous"] >= 4  # BEGIN, CONNECTED and the data went through

        await mesh.client.destroy_circuit(rend)  # one side closes: the rendezvous point closes the other
        await mesh.wire.pump()
        assert mesh.closed(mesh.service, side) is DestroyReason.REND_CLOSED

    run(main())


def test_establish_intro_signed_for_another_circuit_is_refused_and_registers_nothing(provider):
    async def main():
        mesh = await Mesh.make(provider)
        first = await mesh.build(mesh.service, 0, 1)
        second = await mesh.build(mesh.service, 2, 1)
        private, public = await provider.ed25519_generate()
        other_binding = mesh.service._circuits[first].hops[-1].binding
        signature = await provider.ed25519_sign(private, establish_intro_message(public, other_binding))
        await raw(mesh.service, second, RelayCommand.ESTABLISH_INTRO, public + signature)
        await mesh.wire.pump()
        assert mesh.closed(mesh.service, second) is DestroyReason.INTRO_BAD_AUTH
        assert mesh.relays[1].point_counts()["intro"] == 0
        assert mesh.relays[1].metrics["intro_refused_auth"] == 1

    run(main())


def test_a_newer_intro_circuit_with_the_same_auth_key_replaces_the_older(provider):
    async def main():
        mesh = await Mesh.make(provider)
        old, private, public = await mesh.intro(0, 1)
        new = await mesh.build(mesh.service, 2, 1)
        await mesh.service.establish_intro(new, private, public)
        await mesh.wire.pump()
        assert mesh.closed(mesh.service, old) is DestroyReason.INTRO_REPLACED
        assert mesh.closed(mesh.service, new) is None
        assert mesh.relays[1].point_counts()["intro"] == 1

    run(main())


def test_rendezvous_cookies_unknown_replayed_and_expired_are_refused_with_typed_reasons(provider):
    async def main():
        mesh = await Mesh.make(provider, NodeLimits(rendezvous_lifetime=30.0))
        cookie = bytes(range(20))
        waiting = await mesh.rendezvous(0, 3, cookie)
        twin = await mesh.rendezvous(1, 3, cookie)  # a second circuit claims the same cookie
        assert mesh.closed(mesh.client, twin) is DestroyReason.REND_COOKIE_IN_USE
        assert mesh.closed(mesh.client, waiting) is None
        stranger = await mesh.build(mesh.service, 0, 3)
        await raw(mesh.service, stranger, RelayCommand.RENDEZVOUS1, bytes(20) + bytes(64))
        await mesh.wire.pump()
        assert mesh.closed(mesh.service, stranger) is DestroyReason.REND_UNKNOWN_COOKIE
        assert mesh.relays[3].point_counts()["rendezvous"] == 1
        await mesh.wire.advance(mesh.wire.clock.now + 31)
        assert mesh.closed(mesh.client, waiting) is DestroyReason.TIMEOUT
        assert mesh.relays[3].point_counts()["rendezvous"] == 0
        late = await mesh.build(mesh.service, 1, 3)  # the expired cookie is unknown now
        await raw(mesh.service, late, RelayCommand.RENDEZVOUS1, cookie + bytes(64))
        await mesh.wire.pump()
        assert mesh.closed(mesh.service, late) is DestroyReason.REND_UNKNOWN_COOKIE

    run(main())


def test_intro_and_rendezvous_maps_are_bounded(provider):
    async def main():
        mesh = await Mesh.make(provider, NodeLimits(max_intro_points=2, max_rendezvous_points=2))
        for via in (0, 2):
            await mesh.intro(via, 1)
        third = await mesh.build(mesh.service, 3, 1)
        private, public = await provider.ed25519_generate()
        await mesh.service.establish_intro(third, private, public)
        await mesh.wire.pump()
        assert mesh.closed(mesh.service, third) is DestroyReason.RESOURCE_LIMIT
        cookies = [bytes([n]) * 20 for n in range(3)]
        circuits = [await mesh.rendezvous(n, 3, cookie) for n, cookie in enumerate(cookies)]
        assert [mesh.closed(mesh.client, c) for c in circuits] == [None, None, DestroyReason.RESOURCE_LIMIT]
        assert mesh.relays[1].point_counts()["intro"] == 2 and mesh.relays[3].point_counts()["rendezvous"] == 2

    run(main())


def test_introduce_flood_at_one_intro_point_is_rate_limited_without_touching_another(provider):
    async def main():
        mesh = await Mesh.make(provider, NodeLimits(introduce_rate=1.0, introduce_burst=3))
        flooded, _, flooded_key = await mesh.intro(0, 1)
        spared, _, spared_key = await mesh.intro(2, 1)  # another intro point on the same relay
        filler = bytes(1285)
        statuses = [(await mesh.introduce(3, 1, flooded_key, filler))[1] for _ in range(8)]
        assert statuses == [IntroduceStatus.SUCCESS] * 3 + [IntroduceStatus.RATE_LIMITED] * 5
        assert (await mesh.introduce(3, 1, spared_key, filler))[1] == IntroduceStatus.SUCCESS
        forwarded = [e.circuit for e in mesh.of(mesh.service, IntroduceReceived)]
        assert forwarded.count(flooded) == 3 and forwarded.count(spared) == 1
        await mesh.wire.advance(mesh.wire.clock.now + 2.0)  # the bucket refills at its rate
        assert [(await mesh.introduce(3, 1, flooded_key, filler))[1] for _ in range(3)] == \
            [IntroduceStatus.SUCCESS] * 2 + [IntroduceStatus.RATE_LIMITED]
        assert mesh.relays[1].metrics["introduce_rate_limited"] == 6

    run(main())


@pytest.mark.parametrize("command, data, reason", [
    (RelayCommand.ESTABLISH_INTRO, bytes(95), DestroyReason.PROTOCOL),
    (RelayCommand.ESTABLISH_RENDEZVOUS, bytes(19), DestroyReason.PROTOCOL),
    (RelayCommand.RENDEZVOUS1, bytes(83), DestroyReason.PROTOCOL),
    (RelayCommand.INTRODUCE2, bytes(64), DestroyReason.PROTOCOL),  # only an intro point sends that
    (RelayCommand.RENDEZVOUS2, bytes(64), DestroyReason.PROTOCOL),
])
def test_malformed_or_misdirected_onion_cells_destroy_only_their_circuit(provider, command, data, reason):
    async def main():
        mesh = await Mesh.make(provider)
        intro, _, _ = await mesh.intro(0, 1)
        victim = await mesh.build(mesh.client, 2, 1)
        await raw(mesh.client, victim, command, data)
        await mesh.wire.pump()
        assert mesh.closed(mesh.client, victim) is reason
        assert mesh.closed(mesh.service, intro) is None and mesh.relays[1].point_counts()["intro"] == 1

    run(main())


def test_introduce1_malformed_unknown_or_repeated_gets_its_status_and_forwards_nothing(provider):
    async def main():
        mesh = await Mesh.make(provider)
        _, _, auth_key = await mesh.intro(0, 1)
        assert (await mesh.introduce(2, 1, bytes(32), bytes(100)))[1] == IntroduceStatus.UNKNOWN_SERVICE
        circuit = await mesh.build(mesh.client, 2, 1)
        mesh.client._circuits[circuit].state = BuildState.INTRODUCING  # what introduce() would have done
        await raw(mesh.client, circuit, RelayCommand.INTRODUCE1, auth_key)  # no encrypted part at all
        await mesh.wire.pump()
        assert IntroduceAcked(circuit, IntroduceStatus.BAD_FORMAT) in mesh.of(mesh.client, IntroduceAcked)
        await raw(mesh.client, circuit, RelayCommand.INTRODUCE1, auth_key + bytes(100))  # one per circuit
        await mesh.wire.pump()
        assert mesh.closed(mesh.client, circuit) is DestroyReason.PROTOCOL
        assert mesh.of(mesh.service, IntroduceReceived) == []

    run(main())


def test_introduction_sealed_to_other_keys_or_tampered_is_a_crypto_error(provider):
    async def main():
        identity, other = await Identity.generate(provider), await Identity.generate(provider)
        keyset = OnionKeySet.of(identity)
        point = RendezvousPoint(other.peer_id, other.onion_keys.x25519, bytes(20))
        encrypted, _ = await seal_introduction(provider, identity.peer_id.key, keyset.public, bytes(32), point)
        with pytest.raises(CryptoError):
            await open_introduction(provider, identity.peer_id.key, OnionKeySet.of(other), bytes(32), encrypted)
        with pytest.raises(CryptoError):  # the auth key is bound in: another intro point's key fails
            await open_introduction(provider, identity.peer_id.key, keyset, bytes([1]) * 32, encrypted)
        tampered = encrypted[:-1] + bytes([encrypted[-1] ^ 1])
        with pytest.raises(CryptoError):
            await open_introduction(provider, identity.peer_id.key, keyset, bytes(32), tampered)
        with pytest.raises(ProtocolError):
            await open_introduction(provider, identity.peer_id.key, keyset, bytes(32), encrypted[:-1])

    run(main())


def test_onion_operations_need_an_unused_general_circuit(provider):
    async def main():
        mesh = await Mesh.make(provider)
        intro, private, public = await mesh.intro(0, 1)
        with pytest.raises(InvalidState):
            await mesh.service.establish_intro(intro, private, public)
        assert mesh.service._circuits[intro].state is BuildState.INTRO

    run(main())


# ---------------------------------------------------------------------- the asyncio ends (zmesh.aio.onion)


class MemoryDescriptors:
    """The descriptor store, in memory: a stand-in for the signal server's ``/v1/onion/`` store."""

    def __init__(self) -> None:
        self.published: dict[str, ServiceDescriptor] = {}
        self.lookups = 0

    async def publish(self, keys, descriptor: ServiceDescriptor) -> None:
        self.published[encode_address(keys.public)] = descriptor

    async def lookup(self, address: str) -> ServiceDescriptor:
        self.lookups += 1
        if address not in self.published:
            raise CircuitError(f"no descriptor for {address}")
        return self.published[address]


@contextlib.asynccontextmanager
async def onion_mesh(provider, relays: int = 6, limits: OnionLimits | None = None, clock=time.monotonic,
                     guards: GuardManager | None = None):
    """Relays, a service echoing on port 80 and a client, all on memory links; closed at the end."""
    net = MemoryNetwork(provider)
    peers = [(await net.add_node()).node.identity.peer_id for _ in range(relays)]

    async def listing(_refresh: bool) -> list:
        return [net.descriptors[p] for p in peers]

    store = MemoryDescriptors()
    keys = await ServiceKeys.from_seed(provider, provider.random_bytes(32))

    async def echo_on_80(request):
        if request.port != 80:
            await request.reject(EndReason.SERVICE_PORT)
            return
        await echo_service(request)

    service = OnionService(await net.add_node(accept_circuits=False), keys, listing, store, echo_on_80,
                           limits=limits, clock=clock, guards=guards)
    client = OnionClient(await net.add_node(accept_circuits=False), listing, store, limits=limits)
    try:
        yield net, service, client, store
    finally:
        await service.close()
        await net.close()


def test_service_and_client_join_reuse_the_circuit_and_refuse_other_ports(provider):
    async def main():
        async with onion_mesh(provider) as (net, service, client, store):
            address = await service.start()
            descriptor = store.published[address]
            assert len({p.relay_id for p in descriptor.intro_points}) == 3  # distinct relays
            stream = await client.open_stream(address, 80)
            await stream.write(b"ping over six hops")
            assert await stream.read_exactly(18) == b"ping over six hops"
            again = await client.open_stream(address, 80)
            assert again.circuit == stream.circuit and store.lookups == 1  # reused, no second lookup
            with pytest.raises(StreamError) as refused:
                await client.open_stream(address, 22)
            assert refused.value.reason is EndReason.SERVICE_PORT
            assert client.driver.node.circuit_purpose(stream.circuit) is Purpose.RENDEZVOUS
            with pytest.raises(OnionAddressError):  # a typo: the checksum catches it, nothing is built
                await client.open_stream(address.replace(address[3], "a" if address[3] != "a" else "b"), 80)
            await stream.close()
            await again.close()

    run(main())


def test_a_closed_intro_circuit_is_rebuilt_and_the_descriptor_republished(provider):
    async def main():
        async with onion_mesh(provider) as (net, service, client, store):
            address = await service.start()
            first = store.published[address]
            victim = next(iter(service._intros))
            await service.driver.destroy_circuit(victim)
            await wait_until(lambda: store.published[address] != first and len(service._intros) == 3)
            assert victim not in service._intros
            stream = await client.open_stream(address, 80)
            await stream.close()

    run(main())


def test_introduce_flood_through_one_intro_point_does_not_starve_another(provider):
    """Every intro circuit has its own bounded queue, served round-robin: an honest introduction
    through intro point B waits behind at most one flooded introduction per turn, not the whole
    flood through A, and A's queue never holds more than ``max_pending_per_intro``."""
    limits = OnionLimits(intro_points=2, max_pending_per_intro=8, max_rendezvous_builds=1)

    async def main():
        async with onion_mesh(provider, limits=limits) as (net, service, client, store):
            address = await service.start()
            (a, b) = service._intros.values()
            taken: list[bytes] = []
            rendezvous = service._rendezvous

            async def recording(auth_key, encrypted):
                taken.append(auth_key)
                await rendezvous(auth_key, encrypted)

            service._rendezvous = recording
            await service._builds.acquire()  # hold the service's one build slot while the flood arrives
            flooder = await net.add_node(accept_circuits=False)
            relays = await service.relays(False)
            a_relay = net.descriptors[a.relay]
            rp = next(r for r in relays if r.peer_id not in (a.relay, b.relay))
            floods = 24
            for n in range(floods):
                point = RendezvousPoint(rp.peer_id, rp.onion_keys.x25519, bytes([n]) * 20)
                encrypted, _ = await seal_introduction(provider, service.keys.public, service.keys.onion.public,
                                                       a.auth_key, point)
                via = next(r for r in relays if r.peer_id not in (a.relay, rp.peer_id))
                circuit = await flooder.build_circuit([via, a_relay])  # a circuit per INTRODUCE1, as Tor needs
                await flooder.call(flooder.node.introduce, circuit, a.auth_key, encrypted)
            await wait_until(lambda: len(a.pending) == limits.max_pending_per_intro
                             and service.metrics["introduce_dropped_queue_full"] >= floods - 9)
            store.published[address] = _only(store.published[address], b.auth_key)  # the client must use B
            honest = asyncio.ensure_future(client.open_stream(address, 80))
            await wait_until(lambda: b.pending)
            assert len(a.pending) <= limits.max_pending_per_intro
            service._builds.release()
            stream = await asyncio.wait_for(honest, 60)
            await stream.close()
            position = taken.index(b.auth_key)
            assert position <= 2, f"the honest introduction waited behind {position} flooded ones"
            assert service.metrics["introduce_dropped_queue_full"] >= floods - limits.max_pending_per_intro - 1

    run(main())


def _only(descriptor: ServiceDescriptor, auth_key: bytes) -> ServiceDescriptor:
    return ServiceDescriptor(tuple(p for p in descriptor.intro_points if p.auth_key == auth_key),
                             descriptor.x25519_public, descriptor.mlkem768_public)


def test_meshvpn_open_stream_and_fetch_reach_a_mesh_name_without_connect(provider):
    async def main():
        async with onion_mesh(provider) as (net, service, client, store):
            page = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello from an onion service"

            async def answer(request):
                stream = await request.accept()
                while b"\r\n\r\n" not in (request_bytes := await stream.read()):
                    assert request_bytes
                await stream.write(page)
                await stream.close()

            service._handler = answer
            vpn = MeshVPN(await net.add_node(accept_circuits=False), lambda: list(net.descriptors.values()),
                          descriptors=store)
            try:
                address = await service.start()
                response = await vpn.fetch(f"http://{address}/")
                assert response.status == 200 and response.body == b"hello from an onion service"
                assert not vpn.connected  # no exit circuit was built for it
                with pytest.raises(OnionAddressError):
                    await vpn.open_stream("nonsense.mesh", 80)
            finally:
                await vpn.close()

    run(main())


def test_a_replayed_introduction_is_dropped_by_the_service_before_any_crypto(provider):
    async def main():
        async with onion_mesh(provider) as (net, service, client, store):
            seen: list[IntroduceReceived] = []
            previous = service.driver.on_event

            def spy(event):
                previous(event)
                if isinstance(event, IntroduceReceived):
                    seen.append(event)

            service.driver.on_event = spy
            address = await service.start()
            stream = await client.open_stream(address, 80)
            await stream.close()
            (original,) = seen
            intro = service._intros[original.circuit]
            replayer = await net.add_node(accept_circuits=False)
            relays = await service.relays(False)
            via = next(r for r in relays if r.peer_id != intro.relay)
            circuit = await replayer.build_circuit([via, net.descriptors[intro.relay]])
            await replayer.call(replayer.node.introduce, circuit, original.auth_key, original.encrypted)
            await wait_until(lambda: service.metrics["introduce_replayed"] == 1)
            assert service.metrics["rendezvous_joined"] == 1 and service.metrics["rendezvous_failed"] == 0
            assert len(seen) == 2  # it did reach the service, which refused it

    run(main())


def test_a_service_that_joins_before_the_intro_ack_is_handled_is_not_missed(provider):
    """RENDEZVOUS2 may overtake the client's handling of INTRODUCE_ACK: the client listens for it
    before it introduces itself."""
    async def main():
        async with onion_mesh(provider, limits=OnionLimits(step_timeout=5.0)) as (net, service, client, store):
            introduce = client._introduce

            async def slow_ack(*args, **kwargs):
                acked = await introduce(*args, **kwargs)
                node = client.driver.node  # returns only once RENDEZVOUS2 has given the client its fourth hop
                await wait_until(lambda: node.metrics["rendezvous_joined"] == 1)
                return acked

            client._introduce = slow_ack
            stream = await client.open_stream(await service.start(), 80)
            await stream.close()
            assert service.metrics["rendezvous_joined"] == 1 and store.lookups == 1  # the first one took

    run(main())


def test_service_keys_come_from_the_seed_alone(provider):
    async def main():
        seed = provider.random_bytes(32)
        one, two = await ServiceKeys.from_seed(provider, seed), await ServiceKeys.from_seed(provider, seed)
        other = await ServiceKeys.from_seed(provider, provider.random_bytes(32))
        assert one.public == await provider.ed25519_public(seed)
        assert one.onion.public == two.onion.public != other.onion.public  # the key file moves the service

    run(main())


def test_intro_points_are_rotated_after_their_lifetime_and_the_old_circuits_closed(provider):
    async def main():
        clock = FakeClock()
        limits = OnionLimits(intro_lifetime=600.0)
        async with onion_mesh(provider, limits=limits, clock=clock) as (_net, service, _client, store):
            published_when_closed: list[set[bytes]] = []
            old: set[int] = set()
            previous = service.driver.on_event

            def spy(event):
                previous(event)
                if isinstance(event, CircuitClosed) and event.circuit in old:
                    published_when_closed.append({p.auth_key for p in store.published[address].intro_points})

            service.driver.on_event = spy
            address = await service.start()
            old |= set(service._intros)
            old_keys = {p.auth_key for p in store.published[address].intro_points}
            clock.now += 601
            service._changed.set()  # what the service's own wake-up would do after 600 s
            await wait_until(lambda: len(service._intros) == 3 and not old & set(service._intros)
                             and not old_keys & {p.auth_key for p in store.published[address].intro_points})
            await wait_until(lambda: not old & set(service.driver.node.circuits()))
            assert len(published_when_closed) == 3 and not any(old_keys & keys for keys in published_when_closed)

    run(main())


def test_an_intro_circuit_over_its_queue_bound_is_the_one_destroyed_not_the_introducing_client(provider):
    async def main():
        mesh = await Mesh.make(provider)
        intro, _, auth_key = await mesh.intro(0, 1)
        ip = mesh.relays[1]
        service_side = ip._circuits[ip._intro_points[auth_key].circuit]
        # the service's link does not read: its circuit's queue at the intro point is at the bound
        ip._queued[(service_side.handle, service_side.prev_link)] = ip._circuit_queue_bound(service_side.handle)
        client_circuit, status = await mesh.introduce(2, 1, auth_key, bytes(1285))
        assert status == IntroduceStatus.UNKNOWN_SERVICE
        assert mesh.closed(mesh.service, intro) is DestroyReason.RESOURCE_LIMIT
        assert mesh.closed(mesh.client, client_circuit) is None
        assert ip.point_counts()["intro"] == 0

    run(main())


def test_with_entry_guards_every_service_circuit_enters_at_a_primary_guard(provider):
    async def main():
        guards = GuardManager(clock=time.time, rng=random.Random(7))
        limits = OnionLimits(step_timeout=5.0)
        async with onion_mesh(provider, relays=8, guards=guards, limits=limits) as (_net, service, client, _store):
            firsts = []
            previous = service.driver.on_event

            def spy(event):
                previous(event)
                if isinstance(event, CircuitBuilt):
                    firsts.append(event.path[0])

            service.driver.on_event = spy
            address = await service.start()
            for _ in range(5):
                stream = await client.open_stream(address, 80)
                await stream.close()
                await client.forget(address)  # a new rendezvous, so a new service circuit, each time
            # a rendezvous point that is one of the service's guards too is reached through another guard
            assert service.metrics["rendezvous_joined"] == 5 and service.metrics["rendezvous_failed"] == 0
            assert len(firsts) == 8 and set(firsts) <= set(guards.primary())  # 3 intro + 5 rendezvous circuits

    run(main())


def test_a_fixed_last_hop_that_is_the_first_guard_is_reached_through_another_guard(provider):
    async def main():
        net = MemoryNetwork(provider)
        try:
            for _ in range(6):
                await net.add_node()
            driver = await net.add_node(accept_circuits=False)
            relays = [d for p, d in net.descriptors.items() if p != driver.node.identity.peer_id]
            guards = GuardManager(clock=time.time, rng=random.Random(3))
            guards.update(relays)
            first = guards.primary()[0]
            destination = next(r for r in relays if r.peer_id == first)  # e.g. a client's rendezvous point
            _, path = await Paths(driver, None, guards).build(relays, destination=destination, pinned={first})
            assert path[-1].peer_id == first and path[0].peer_id in guards.primary()[1:]
        finally:
            await net.close()

    run(main())
