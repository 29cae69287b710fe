"""Native WebRTC links (aiortc) set up through the signal server's signed messages; a circuit runs
over one. ICE uses loopback only: aioice leaves 127.0.0.1 out of its host candidates, so the tests
hand it exactly that address (and never the machine's real interfaces)."""

import asyncio
import contextlib
import hashlib
import os

import aioice.ice
import pytest

from zmesh.crypto.native import NativeCryptoProvider
from zmesh.errors import TransportError
from zmesh.identity import Identity, PeerId
from zmesh.memnet import MemoryNetwork, echo_service
from zmesh_relay.rtclink import RtcConnector
from zmesh_signal.app import SignalConfig, serving
from zmesh_signal.client import SignalClient


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


@contextlib.asynccontextmanager
async def connectors(url, provider, count=2):
    """``count`` identities, each with a signaling socket and a connector collecting its links;
    all closed on exit."""
    out = []
    try:
        for _ in range(count):
            identity = await Identity.generate(provider)
            client = SignalClient(url)
            out.append((identity, client, None, None))
            socket = await client.connect_ws(identity, provider)
            inbound: asyncio.Queue = asyncio.Queue()

            async def accept(link, peer, inbound=inbound):
                await inbound.put((link, peer))

            out[-1] = (identity, client, RtcConnector(socket, accept, timeout=10.0), inbound)
        yield out
    finally:
        for _, client, connector, _ in out:
            if connector is not None:
                await connector.close()
            await client.close()


def test_frames_cross_a_webrtc_link_intact():
    provider = NativeCryptoProvider()

    async def main():
        async with serving(SignalConfig(), "127.0.0.1", 0) as port:
            async with connectors(f"http://127.0.0.1:{port}", provider) as ((alice, _, a, _), (bob, _, b, inbound)):
                link = await a.dial(bob.peer_id)
                theirs, peer = await asyncio.wait_for(inbound.get(), 10)
                assert peer == alice.peer_id
                frames = [os.urandom(64 * 1024) for _ in range(32)]
                async def send_all():
                    for frame in frames:
                        await link.send(frame)

                sender = asyncio.create_task(send_all())
                got = [await asyncio.wait_for(theirs.recv(), 10) for _ in frames]
                await sender
                assert hashlib.sha256(b"".join(got)).digest() == hashlib.sha256(b"".join(frames)).digest()
                await link.close()
                await theirs.close()

    asyncio.run(main())


def test_a_circuit_runs_over_a_webrtc_link():
    provider = NativeCryptoProvider()

    async def main():
        async with serving(SignalConfig(), "127.0.0.1", 0) as port:
            net = MemoryNetwork(provider)
            client = await net.add_node(accept_circuits=False)
            relay = await net.add_node()
            exit_ = await net.add_node(exit=True, stream_handler=echo_service)
            try:
                async with connectors(f"http://127.0.0.1:{port}", provider) as ((_, _, a, _), (_, _, b, inbound)):
                    # the client reaches its first relay over WebRTC; the relay reaches the exit as usual
                    b_peer = b.socket.peer_id
                    ours = await a.dial(b_peer)
                    theirs, _ = await asyncio.wait_for(inbound.get(), 10)
                    await client.add_link(ours, relay.node.identity.peer_id, initiator=True)
                    await relay.add_link(theirs, None, initiator=False)
                    path = [net.descriptors[d.node.identity.peer_id] for d in (relay, exit_)]
                    circuit = await client.build_circuit(path)
                    stream = await client.open_stream(circuit, "echo.test", 7)
                    payload = os.urandom(1 << 20)
                    writer = asyncio.create_task(stream.write(payload))
                    echoed = b""
                    while len(echoed) < len(payload):
                        echoed += await asyncio.wait_for(stream.read(), 20)
                    await writer
                    assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
            finally:
                await net.close()

    asyncio.run(main())


def test_malformed_and_unanswered_offers_fail_cleanly():
    provider = NativeCryptoProvider()

    async def main():
        async with serving(SignalConfig(), "127.0.0.1", 0) as port:
            async with connectors(f"http://127.0.0.1:{port}", provider) as ((_, _, a, _), (bob, _, b, _)):
                await a.socket.send(bob.peer_id, b"not json")
                await a.socket.send(bob.peer_id, b'{"kind": "offer", "id": "x", "type": "offer", "sdp": "junk"}')
                a.timeout = 2.0
                stranger = PeerId(os.urandom(32))  # offline: the server bounces the offer
                with pytest.raises(TransportError):
                    await a.dial(stranger)
                for _ in range(200):
                    if b.rejected >= 2:
                        break
                    await asyncio.sleep(0.01)
                assert b.rejected >= 2

    asyncio.run(main())
