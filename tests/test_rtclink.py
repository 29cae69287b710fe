"""Native WebRTC links (aiortc) set up through the signal server's signed messages; a circuit runs
over one. ICE uses loopback only: aioice leaves 127.0.0.1 out of its host candidates, so the tests
hand it exactly that address (and never the machine's real interfaces)."""

import asyncio
import contextlib
import hashlib
import os
import time
from functools import partial

import aioice.ice
import pytest
from aiohttp import web

from zmesh.aio.rtc import ChannelOptions, RtcConnector, RtcOptions
from zmesh.aio.transport import RTC_ADDRESS, TransportDialer
from zmesh.descriptor import Capabilities, sign_descriptor
from zmesh.directory_view import DirectoryView
from zmesh.errors import TransportError
from zmesh.identity import Identity, PeerId
from zmesh.native.crypto import NativeCryptoProvider
from zmesh.testing.memnet import MemoryNetwork, echo_service
from zmesh_relay import wslink
from zmesh_relay.config import load
from zmesh_relay.rtclink import AiortcBackend
from zmesh_relay.transports import NativeTransports
from zmesh_signal.app import SignalConfig, serving
from zmesh_signal.client import SignalClient

from .conftest import wait_until


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


@contextlib.asynccontextmanager
async def connectors(provider, count=2, options=None, accept=True, url=None):
    """``count`` identities, each with a signaling socket and a connector collecting its links, on
    the signal server at ``url`` or on one of their own; all closed on exit."""
    if url is None:
        async with serving(SignalConfig(), "127.0.0.1", 0) as port:
            async with connectors(provider, count, options, accept, f"http://127.0.0.1:{port}") as out:
                yield out
        return
    out = []
    try:
        for _ in range(count):
            identity = await Identity.generate(provider)
            client = SignalClient(url)
            out.append((identity, client, None, None))
            socket = await client.connect_ws(identity, provider)
            inbound: asyncio.Queue = asyncio.Queue()

            async def collect(link, peer, inbound=inbound):
                await inbound.put((link, peer))

            connector = RtcConnector(socket, AiortcBackend(), collect, options or RtcOptions(timeout=10.0),
                                     accept=accept)
            out[-1] = (identity, client, connector, inbound)
        yield out
    finally:
        for _, client, connector, _ in out:
            if connector is not None:
                await connector.close()
            await client.close()


def test_frames_cross_a_webrtc_link_intact():
    provider = NativeCryptoProvider()

    async def main():
        async with connectors(provider) as ((alice, _, a, _), (bob, _, b, inbound)):
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


@pytest.mark.parametrize("channels", [
    (ChannelOptions(),),
    (ChannelOptions(), ChannelOptions("fec", ordered=False, max_retransmits=0)),  # RELAY cells under FEC
])
def test_a_circuit_runs_over_a_webrtc_link(channels):
    provider = NativeCryptoProvider()

    async def main():
        net = MemoryNetwork(provider)
        client = await net.add_node(accept_circuits=False)
        relay = await net.add_node()
        exit_ = await net.add_node(exit=True, stream_handler=echo_service)
        try:
            options = RtcOptions(timeout=10.0, channels=channels)
            async with connectors(provider, options=options) as ((_, _, a, _), (_, _, b, inbound)):
                # the client reaches its first relay over WebRTC; the relay reaches the exit as usual
                b_peer = b.signal.peer_id
                ours = await a.dial(b_peer)
                theirs, _ = await asyncio.wait_for(inbound.get(), 10)
                await client.add_link(ours, relay.node.identity.peer_id, initiator=True)
                await relay.add_link(theirs, None, initiator=False)
                path = [net.descriptors[d.node.identity.peer_id] for d in (relay, exit_)]
                circuit = await client.build_circuit(path)
                stream = await client.open_stream(circuit, "echo.test", 7)
                # 256 KiB: under CPU starvation the lossy channel can lose more than FEC repairs, which
                # by design ends the circuit (docs/fec.md); a longer transfer only makes that likelier
                payload = os.urandom(1 << 18)
                writer = asyncio.create_task(stream.write(payload))
                echoed = b""
                while len(echoed) < len(payload):
                    echoed += await asyncio.wait_for(stream.read(), 20)
                await writer
                assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
                assert type(ours).__name__ == ("FecChannelsLink" if len(channels) == 2 else "RtcLink")
        finally:
            await net.close()

    asyncio.run(main())


def test_malformed_forged_and_unanswered_offers_fail_cleanly():
    provider = NativeCryptoProvider()

    async def main():
        options = RtcOptions(timeout=2.0)
        async with connectors(provider, options=options) as ((_, _, a, _), (bob, _, b, inbound)):
            await a.signal.send(bob.peer_id, b"not json")
            await a.signal.send(bob.peer_id, b'{"kind": "offer", "id": "x", "sdp": "junk", "channels": []}')
            await a.signal.send(bob.peer_id, b'{"kind": "answer", "id": "nobody-asked", "sdp": "v=0"}')
            stranger = PeerId(os.urandom(32))  # offline: the server bounces the offer
            with pytest.raises(TransportError, match="offline"):
                await a.dial(stranger)
            # bob reads in order, so once he has answered this dial he has judged the three above
            await a.dial(bob.peer_id)
            await asyncio.wait_for(inbound.get(), 10)
            assert b.rejected == 3

    asyncio.run(main())


def test_a_peer_that_does_not_accept_refuses_at_once():
    provider = NativeCryptoProvider()

    async def main():
        options = RtcOptions(timeout=60.0)
        async with connectors(provider, options=options, accept=False) as ((_, _, a, _), (bob, _, _, _)):
            started = asyncio.get_running_loop().time()
            with pytest.raises(TransportError, match="refused"):
                await a.dial(bob.peer_id)
            assert asyncio.get_running_loop().time() - started < 30  # a refusal, not the deadline

    asyncio.run(main())


def test_negotiated_and_unordered_channels_open_as_configured():
    provider = NativeCryptoProvider()
    options = RtcOptions(timeout=10.0, channels=(ChannelOptions("ctl", negotiated_id=3),
                                                 ChannelOptions("lossy", ordered=False, max_retransmits=0)))

    async def main():
        async with connectors(provider, options=options) as ((_, _, a, _), (bob, _, _, inbound)):
            link = await a.dial(bob.peer_id)
            theirs, _ = await asyncio.wait_for(inbound.get(), 10)
            assert link.transport == theirs.transport == "webrtc+fec"  # the second channel carries FEC
            assert (link.control.ordered, link.control.reliable, link.fec.inner.reliable) == (True, True, False)
            await link.send(b"over the negotiated channel")
            assert await asyncio.wait_for(theirs.recv(), 10) == b"over the negotiated channel"
            await link.close()

    asyncio.run(main())


@contextlib.asynccontextmanager
async def websocket_listener(on_link):
    """A real WebSocket link listener on loopback (what ``zmesh relay`` serves at /v1/link);
    ``on_link(link, headers)`` gets each accepted link and the headers its dialer sent."""
    async def accept(request):
        ws, link = await wslink.accept(request)
        await on_link(link, request.headers)
        await link.wait_closed()
        return ws

    app = web.Application()
    app.router.add_get(wslink.LINK_PATH, accept)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"ws://127.0.0.1:{runner.addresses[0][1]}{wslink.LINK_PATH}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("mode, policy, websocket_first, expected", [
    ("auto", "all", False, "webrtc"), ("auto", "relay", False, "websocket"), ("websocket", "all", False, "websocket"),
    ("webrtc", "relay", False, None), ("auto", "all", True, "websocket"), ("webrtc", "all", True, "webrtc"),
])
def test_auto_prefers_webrtc_and_falls_back_to_websocket_when_ice_fails(mode, policy, websocket_first, expected):
    """``ice_policy=relay`` with no TURN server is a real ICE failure: no candidate at all. aiortc
    does not report that as failed, so the fallback comes at the deadline (the bound we promise)."""
    provider = NativeCryptoProvider()
    deadline = 4.0

    async def main():
        async with connectors(provider, options=RtcOptions(timeout=deadline, ice_policy=policy)) as (
                (_, _, alice, _), (bob, _, _, inbound)):
            async with websocket_listener(lambda link, _headers: inbound.put((link, None))) as ws_url:
                descriptor = await sign_descriptor(provider, bob, now=int(time.time()),
                                                   addresses={"ws": (ws_url,), **RTC_ADDRESS},
                                                   capabilities=Capabilities(relay=True))

                async def lookup(peer):
                    return descriptor if peer == bob.peer_id else None

                dialer = TransportDialer(lookup, websocket=partial(wslink.dial, allow_private=True), rtc=alice,
                                         mode=lambda: mode, websocket_first=websocket_first)
                started = asyncio.get_running_loop().time()
                if expected is None:
                    with pytest.raises(TransportError, match="WebRTC"):
                        await dialer(bob.peer_id)
                    return
                link = await dialer(bob.peer_id)
                assert asyncio.get_running_loop().time() - started < deadline + 2
                theirs, _ = await asyncio.wait_for(inbound.get(), 10)
                assert (link.transport, theirs.transport) == (expected, expected)
                await link.send(b"hello")
                assert await asyncio.wait_for(theirs.recv(), 10) == b"hello"
                assert dialer.stats[expected] == 1
                assert dialer.stats["fallbacks"] == (1 if policy == "relay" else 0)
                await asyncio.gather(theirs.close(), link.close())

    asyncio.run(main())


def test_a_relay_reopens_its_signaling_session_when_the_server_comes_back(provider):
    """keep_signaling: the session drops with the server; with jittered backoff the node signs in
    again once the server is back, and is reachable over WebRTC again."""
    async def main():
        identity = await Identity.generate(provider)
        inbound: asyncio.Queue = asyncio.Queue()

        async def collect(link, peer):
            await inbound.put(link)

        async with serving(SignalConfig(), "127.0.0.1", 0) as port:
            url = f"http://127.0.0.1:{port}"
            cfg = load(env={}, flags={"signaling.url": url})
            signal = SignalClient(url)
            transports = NativeTransports(cfg, signal, DirectoryView(signal.relay_updates, provider), identity,
                                          provider, on_inbound=collect)
            await transports.start()
            assert transports.dialer.stats["signaling"]
        try:
            await wait_until(lambda: not transports.dialer.stats["signaling"])
            async with serving(SignalConfig(), "127.0.0.1", port):
                await wait_until(lambda: transports.dialer.stats["signaling"], timeout=30)
                async with connectors(provider, count=1, url=url) as ((_, _, caller, _),):
                    link = await caller.dial(identity.peer_id)
                    theirs = await asyncio.wait_for(inbound.get(), 10)
                    await link.send(b"back again")
                    assert await asyncio.wait_for(theirs.recv(), 10) == b"back again"
                    await link.close()
        finally:
            await transports.close()
            await signal.close()

    asyncio.run(main())


def test_a_cancelled_dial_closes_its_peer_connection(provider):
    """A dial cancelled while it waits for an answer (its caller gave up) must not leave its
    peer connection behind."""

    class Recording(AiortcBackend):
        def __init__(self) -> None:
            self.closed: list[bool] = []

        def new_peer(self, options, on_candidate):
            peer, closed = super().new_peer(options, on_candidate), self.closed
            index = len(closed)
            closed.append(False)
            close = peer.close

            async def recorded_close() -> None:
                closed[index] = True
                await close()

            peer.close = recorded_close
            return peer

    async def main():
        async with connectors(provider, count=1) as ((_, client, dialer, _),):
            silent = await Identity.generate(provider)  # signed in, but never answers an offer
            async with await client.connect_ws(silent, provider):
                dialer.backend = backend = Recording()
                dial = asyncio.create_task(dialer.dial(silent.peer_id))
                await wait_until(lambda: bool(dialer._attempts))
                dial.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await dial
                assert backend.closed == [True]

    asyncio.run(main())
