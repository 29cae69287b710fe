"""``SignalClient`` / ``SignalSession`` against a real server: what relays and clients rely on."""

from __future__ import annotations

import asyncio
import base64
import socket
import time
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web

from tests.signal_backends import serving
from zmesh.descriptor import Capabilities, sign_descriptor, verify_descriptor
from zmesh.errors import CryptoError, LinkClosed, TransportError
from zmesh.identity import Identity
from zmesh.signaling import message_transcript
from zmesh_signal.app import SignalConfig, run_server
from zmesh_signal.client import SignalClient, SignalError

pytestmark = pytest.mark.usefixtures("signal_backend")  # memory and Redis: they cannot drift


def run(test: Callable[[SignalClient], Awaitable[None]], config: SignalConfig | None = None) -> None:
    async def main() -> None:
        async with serving(config or SignalConfig(verify_reachability=False), "127.0.0.1", 0) as port, \
                SignalClient(f"http://127.0.0.1:{port}") as client:
            await test(client)

    asyncio.run(main())


def test_publish_and_list_round_trip_with_filters(provider):
    async def test(client):
        now = int(time.time())
        relay = await sign_descriptor(provider, await Identity.generate(provider), now=now,
                                      capabilities=Capabilities(country="DE"))
        exit_ = await sign_descriptor(provider, await Identity.generate(provider), now=now,
                                      capabilities=Capabilities(exit=True, country="SE"))
        assert await client.publish(relay.raw) == {"peer_id": relay.peer_id.text, "expires": relay.expires,
                                                 "status": "listed"}
        await client.publish(exit_.raw)
        assert await client.relays(flag="exit") == [exit_.raw]
        assert await client.relays(country="DE") == [relay.raw]
        listed = [await verify_descriptor(provider, raw, now=time.time()) for raw in await client.relays()]
        assert {d.peer_id for d in listed} == {relay.peer_id, exit_.peer_id}
        with pytest.raises(SignalError) as info:
            await client.publish(relay.raw)
        assert (info.value.code, info.value.status) == ("stale", 409) and "stale" in str(info.value)
        with pytest.raises(SignalError) as info:
            await client.publish(b"garbage")
        assert (info.value.code, info.value.status) == ("malformed", 400)
        with pytest.raises(SignalError, match="bad_query"):
            await client.relays(flag="guard")

    run(test)


def test_unreachable_server_is_a_transport_error(provider):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused

        async def main() -> None:
            async with SignalClient(f"http://127.0.0.1:{port}", timeout=5) as client:
                with pytest.raises(TransportError, match="cannot reach"):
                    await client.relays()
                with pytest.raises(TransportError, match="cannot open"):
                    await client.connect_ws(await Identity.generate(provider), provider)

        asyncio.run(main())


def test_a_server_answering_html_is_a_clear_error():
    async def main() -> None:
        async def bad_gateway(request: web.Request) -> web.Response:
            return web.Response(status=502, text="<h1>Bad gateway</h1>", content_type="text/html")

        app = web.Application()
        app.router.add_get("/v1/relays", bad_gateway)
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            async with SignalClient(f"http://127.0.0.1:{runner.addresses[0][1]}") as client:
                with pytest.raises(SignalError) as info:
                    await client.relays()
                assert (info.value.code, info.value.status) == ("http_502", 502)
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_sockets_send_and_receive_verified_messages(provider):
    async def test(client):
        alice, bob, carol = [await Identity.generate(provider) for _ in range(3)]
        async with await client.connect_ws(alice, provider) as a, await client.connect_ws(bob, provider) as b:
            assert a.peer_id == alice.peer_id
            await a.send(bob.peer_id, b"offer")
            assert await b.receive() == (alice.peer_id, b"offer")
            await b.send(alice.peer_id, b"answer")
            assert await a.receive() == (bob.peer_id, b"answer")
            await a.send(carol.peer_id, b"anyone?")
            with pytest.raises(SignalError) as info:
                await a.receive()
            assert (info.value.code, info.value.to) == ("offline", carol.peer_id.text)
            await a.send(bob.peer_id, b"still up")  # an error does not end the socket
            assert await b.receive() == (alice.peer_id, b"still up")

    run(test)


def test_receive_rejects_a_message_whose_signature_does_not_verify(provider):
    """The server is not trusted: a lying one delivers alice's signature on other bytes."""
    async def main() -> None:
        alice, bob = await Identity.generate(provider), await Identity.generate(provider)
        signature = await provider.ed25519_sign(alice.signing_key,
                                                message_transcript(alice.peer_id, bob.peer_id, b"original"))

        async def lying(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.send_json({"type": "challenge", "nonce": base64.b64encode(bytes(32)).decode()})
            await ws.receive()
            await ws.send_json({"type": "ready", "peer_id": bob.peer_id.text})
            await ws.send_json({"type": "message", "from": alice.peer_id.text,
                                "payload": base64.b64encode(b"tampered").decode(),
                                "signature": base64.b64encode(signature).decode()})
            await ws.receive()
            return ws

        app = web.Application()
        app.router.add_get("/v1/ws", lying)
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            async with SignalClient(f"http://127.0.0.1:{runner.addresses[0][1]}") as client:
                async with await client.connect_ws(bob, provider) as sock:
                    with pytest.raises(CryptoError, match="does not verify"):
                        await sock.receive()
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_failed_authentication_is_a_signal_error(provider):
    async def test(client):
        alice, mallory = await Identity.generate(provider), await Identity.generate(provider)
        impostor = Identity(mallory.signing_key, alice.peer_id, mallory.onion_x25519_private,
                            mallory.onion_keys, mallory.onion_mlkem_seed)
        with pytest.raises(SignalError) as info:
            await client.connect_ws(impostor, provider)
        assert info.value.code == "auth_failed"

    run(test)


def test_replaced_socket_reports_link_closed(provider):
    async def test(client):
        alice = await Identity.generate(provider)
        first = await client.connect_ws(alice, provider)
        second = await client.connect_ws(alice, provider)
        with pytest.raises(LinkClosed, match="4000: replaced by a newer connection"):
            await first.receive()
        await second.close()

    run(test)


def test_run_server_reports_its_port_and_stops_when_cancelled(tmp_path):
    (tmp_path / "index.html").write_text("<h1>zmesh</h1>")

    async def main() -> None:
        bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        server = asyncio.create_task(run_server("127.0.0.1", 0, web_root=tmp_path, ready=bound.set_result))
        port = await bound
        async with SignalClient(f"http://127.0.0.1:{port}") as client:
            assert await client.relays() == []
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # the port is free again

    asyncio.run(main())


def test_listening_on_a_busy_port_is_a_transport_error():
    async def main() -> None:
        async with serving(SignalConfig(), "127.0.0.1", 0) as port:
            with pytest.raises(TransportError, match="cannot listen"):
                async with serving(SignalConfig(), "127.0.0.1", port):
                    pass

    asyncio.run(main())
