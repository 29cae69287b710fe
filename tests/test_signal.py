"""The signal server on a real loopback socket: directory, limits, WebSocket signaling."""

import asyncio
import base64
import time

import aiohttp
import pytest
from aiohttp import web

from zmesh.descriptor import Capabilities, sign_descriptor
from zmesh.identity import Identity
from zmesh_signal.app import AUTH_DOMAIN, MESSAGE_DOMAIN, SignalServer


async def started(server: SignalServer):
    runner = web.AppRunner(server.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"


def run_with_server(test, **options):
    async def main():
        runner, url = await started(SignalServer(**options))
        try:
            async with aiohttp.ClientSession() as session:
                await test(session, url)
        finally:
            await runner.cleanup()
    asyncio.run(main())


async def descriptor(provider, identity=None, now=None, **caps):
    identity = identity or await Identity.generate(provider)
    return identity, await sign_descriptor(provider, identity, now=int(now or time.time()),
                                           capabilities=Capabilities(**caps))


async def post(session, url, body):
    async with session.post(f"{url}/v1/descriptors", data=body) as response:
        return response.status, await response.json()


def test_directory_publish_list_filter_and_rejections(provider):
    async def test(session, url):
        identity, relay = await descriptor(provider, country="DE")
        _, exit_ = await descriptor(provider, exit=True, country="NL")
        assert (await post(session, url, relay.raw))[0] == 201
        assert (await post(session, url, exit_.raw))[0] == 201
        async with session.get(f"{url}/v1/relays?flag=exit") as response:
            listed = [base64.b64decode(r) for r in (await response.json())["relays"]]
        assert listed == [exit_.raw]
        async with session.get(f"{url}/v1/relays?country=de") as response:
            assert [base64.b64decode(r) for r in (await response.json())["relays"]] == [relay.raw]
        async with session.get(f"{url}/v1/relays/{identity.peer_id.text}") as response:
            assert response.status == 200
        # a replay of the same (or an older) descriptor loses
        status, body = await post(session, url, relay.raw)
        assert (status, body["error"]) == (409, "stale")
        _, older = await descriptor(provider, identity, now=time.time() - 100)
        assert (await post(session, url, older.raw))[0] == 409
        forged = bytearray(relay.raw)
        forged[-1] ^= 1
        for body, code, error in ((bytes(forged), 422, "invalid"), (b"\x00garbage", 400, "malformed"),
                                  (bytes(9000), 413, "too_large")):
            status, answer = await post(session, url, body)
            assert (status, answer["error"]) == (code, error) and answer["detail"]
        _, expired = await descriptor(provider, now=time.time() - 4 * 3600)
        assert (await post(session, url, expired.raw))[0] == 422
        async with session.get(f"{url}/nowhere") as response:
            assert response.status == 404 and (await response.json())["error"] == "not_found"
        async with session.get(f"{url}/healthz") as response:
            assert (await response.json()) == {"status": "ok", "relays": 2}
        async with session.get(f"{url}/metrics") as response:
            text = await response.text()
        assert 'zmesh_signal_descriptors_total{result="accepted"} 2.0' in text
        assert 'zmesh_signal_descriptors_total{result="malformed"} 1.0' in text

    run_with_server(test)


def test_rate_limit_answers_429(provider):
    async def test(session, url):
        statuses = [(await post(session, url, b"x"))[0] for _ in range(5)]
        assert statuses[:2] == [400, 400] and 429 in statuses

    run_with_server(test, post_rate=0.1, post_burst=2)


def test_static_files_are_served(provider, tmp_path):
    (tmp_path / "index.html").write_text("<h1>zmesh</h1>")

    async def test(session, url):
        async with session.get(f"{url}/") as response:
            assert "zmesh" in await response.text()

    run_with_server(test, web_root=tmp_path)


async def authed(session, url, provider, identity):
    ws = await session.ws_connect(f"{url}/v1/ws")
    challenge = await ws.receive_json()
    signature = await provider.ed25519_sign(identity.signing_key, AUTH_DOMAIN + base64.b64decode(challenge["nonce"]))
    await ws.send_json({"type": "auth", "peer_id": identity.peer_id.text,
                        "signature": base64.b64encode(signature).decode()})
    assert (await ws.receive_json())["type"] == "ready"
    return ws


async def signed_send(provider, sender, recipient, payload):
    signature = await provider.ed25519_sign(sender.signing_key,
                                            MESSAGE_DOMAIN + sender.peer_id.key + recipient.peer_id.key + payload)
    return {"type": "send", "to": recipient.peer_id.text, "payload": base64.b64encode(payload).decode(),
            "signature": base64.b64encode(signature).decode()}


def test_websocket_auth_relay_and_rejections(provider):
    async def test(session, url):
        alice, bob, carol = [await Identity.generate(provider) for _ in range(3)]
        # a wrong signature is refused and the socket closed
        ws = await session.ws_connect(f"{url}/v1/ws")
        await ws.receive_json()
        await ws.send_json({"type": "auth", "peer_id": alice.peer_id.text,
                            "signature": base64.b64encode(bytes(64)).decode()})
        assert (await ws.receive_json())["error"] == "auth_failed"
        assert (await ws.receive()).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        a, b = await authed(session, url, provider, alice), await authed(session, url, provider, bob)
        await a.send_json(await signed_send(provider, alice, bob, b"sdp offer"))
        message = await b.receive_json()
        assert message["from"] == alice.peer_id.text and base64.b64decode(message["payload"]) == b"sdp offer"
        forged = await signed_send(provider, carol, bob, b"forged")
        await a.send_json(forged)
        assert (await a.receive_json())["error"] == "bad_signature"
        await a.send_str("not json")
        assert (await a.receive_json())["error"] == "bad_message"
        await a.send_json(await signed_send(provider, alice, carol, b"hello?"))
        assert (await a.receive_json())["error"] == "offline"
        await a.send_json({"type": "ping"})
        assert (await a.receive_json())["type"] == "pong"
        # a second connection for the same PeerId replaces the first
        again = await authed(session, url, provider, bob)
        closed = await b.receive()
        assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED) and b.close_code == 4000
        await a.send_json(await signed_send(provider, alice, bob, b"to the new socket"))
        assert base64.b64decode((await again.receive_json())["payload"]) == b"to the new socket"
        # an oversized frame closes with 1009
        await a.send_str("x" * (100 * 1024))
        await a.receive()
        assert a.close_code == 1009
        for sock in (again,):
            await sock.close()

    run_with_server(test)


@pytest.mark.parametrize("first", [{"type": "send"}, "garbage"])
def test_anything_before_auth_closes(provider, first):
    async def test(session, url):
        ws = await session.ws_connect(f"{url}/v1/ws")
        await ws.receive_json()
        await (ws.send_json(first) if isinstance(first, dict) else ws.send_str(first))
        assert (await ws.receive_json())["error"] == "auth_failed"
        await ws.receive()
        assert ws.close_code == 1008

    run_with_server(test)
