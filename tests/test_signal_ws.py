"""The signaling WebSocket's wire contract (docs/signaling.md § WebSocket), spoken raw over a real
loopback socket so that every field and close code is checked as a browser would see it."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from tests.signal_backends import serving
from zmesh.identity import Identity
from zmesh.signaling import auth_transcript, message_transcript
from zmesh_signal.app import SignalConfig
from zmesh_signal.ws import WsLimits

Test = Callable[[aiohttp.ClientSession, str], Awaitable[None]]
CLOSED = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)

pytestmark = pytest.mark.usefixtures("signal_backend")  # memory and Redis: they cannot drift


def run(test: Test, config: SignalConfig | None = None) -> None:
    """Start a server on 127.0.0.1 (port 0), run ``test`` with its WebSocket URL, always stop it."""
    async def main() -> None:
        async with serving(config or SignalConfig(), "127.0.0.1", 0) as port, aiohttp.ClientSession() as session:
            await test(session, f"http://127.0.0.1:{port}/v1/ws")

    asyncio.run(main())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def login(session: aiohttp.ClientSession, url: str, provider,
                identity: Identity) -> aiohttp.ClientWebSocketResponse:
    ws = await session.ws_connect(url)
    challenge = await ws.receive_json()
    assert challenge["type"] == "challenge" and len(base64.b64decode(challenge["nonce"])) == 32
    signature = await provider.ed25519_sign(identity.signing_key,
                                            auth_transcript(base64.b64decode(challenge["nonce"])))
    await ws.send_json({"type": "auth", "peer_id": identity.peer_id.text, "signature": b64(signature)})
    assert await ws.receive_json() == {"type": "ready", "peer_id": identity.peer_id.text}
    return ws


async def signed_send(provider, sender: Identity, recipient: Identity, payload: bytes,
                      signer: Identity | None = None) -> dict:
    signature = await provider.ed25519_sign((signer or sender).signing_key,
                                            message_transcript(sender.peer_id, recipient.peer_id, payload))
    return {"type": "send", "to": recipient.peer_id.text, "payload": b64(payload), "signature": b64(signature)}


async def closed_with(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    """Read until the server's close arrives; return the code in its close frame."""
    while (msg := await ws.receive()).type not in CLOSED:
        pass
    return msg.data if msg.type is aiohttp.WSMsgType.CLOSE else ws.close_code


async def ping_pong(ws: aiohttp.ClientWebSocketResponse) -> None:
    """A round trip: everything the server sent before it has arrived."""
    await ws.send_json({"type": "ping"})
    assert await ws.receive_json() == {"type": "pong"}


def test_auth_ok_then_ping(provider):
    async def test(session, url):
        ws = await login(session, url, provider, await Identity.generate(provider))
        await ping_pong(ws)
        await ws.close()

    run(test)


@pytest.mark.parametrize("case", ["wrong_key", "zero_signature", "bad_peer_id", "no_signature", "not_base64"])
def test_bad_auth_is_refused_and_closed_1008(provider, case):
    async def test(session, url):
        alice, mallory = await Identity.generate(provider), await Identity.generate(provider)
        ws = await session.ws_connect(url)
        nonce = base64.b64decode((await ws.receive_json())["nonce"])
        signature = b64(await provider.ed25519_sign(mallory.signing_key, auth_transcript(nonce)))
        auth = {"type": "auth", "peer_id": alice.peer_id.text, "signature": signature}
        if case == "zero_signature":
            auth["signature"] = b64(bytes(64))
        elif case == "bad_peer_id":
            auth["peer_id"] = alice.peer_id.text[:-1] + ("a" if alice.peer_id.text[-1] != "a" else "b")
        elif case == "no_signature":
            del auth["signature"]
        elif case == "not_base64":
            auth["signature"] = "%%%"
        await ws.send_json(auth)
        answer = await ws.receive_json()
        assert answer["type"] == "error" and answer["error"] == "auth_failed" and answer["detail"]
        assert await closed_with(ws) == 1008

    run(test)


@pytest.mark.parametrize("first", ['{"type": "send"}', '{"type": "ping"}', "garbage", "[1, 2]", b"\x00binary"])
def test_anything_but_auth_first_closes_1008(provider, first):
    async def test(session, url):
        ws = await session.ws_connect(url)
        await ws.receive_json()
        await (ws.send_bytes(first) if isinstance(first, bytes) else ws.send_str(first))
        assert (await ws.receive_json())["error"] == "auth_failed"
        assert await closed_with(ws) == 1008

    run(test)


def test_silent_client_is_closed_after_the_auth_timeout(provider):
    async def test(session, url):
        ws = await session.ws_connect(url)
        await ws.receive_json()
        assert (await ws.receive_json())["error"] == "auth_failed"
        assert await closed_with(ws) == 1008

    run(test, SignalConfig(ws=WsLimits(auth_timeout=0.05)))


def test_message_relayed_a_to_b_verifies_end_to_end(provider):
    async def test(session, url):
        alice, bob = await Identity.generate(provider), await Identity.generate(provider)
        a, b = await login(session, url, provider, alice), await login(session, url, provider, bob)
        payload = b"v=0 sdp offer" * 10
        await a.send_json(await signed_send(provider, alice, bob, payload))
        message = await b.receive_json()
        assert message["type"] == "message" and message["from"] == alice.peer_id.text
        assert base64.b64decode(message["payload"]) == payload
        assert await provider.ed25519_verify(alice.peer_id.key, base64.b64decode(message["signature"]),
                                             message_transcript(alice.peer_id, bob.peer_id, payload))
        # the largest payload fits one frame both ways
        biggest = bytes(WsLimits().max_payload)
        await a.send_json(await signed_send(provider, alice, bob, biggest))
        assert base64.b64decode((await b.receive_json())["payload"]) == biggest
        await a.close()
        await b.close()

    run(test)


def test_forged_or_redirected_messages_are_rejected(provider):
    async def test(session, url):
        alice, bob, carol = [await Identity.generate(provider) for _ in range(3)]
        a, b = await login(session, url, provider, alice), await login(session, url, provider, bob)
        # signed by someone else, claiming alice
        await a.send_json(await signed_send(provider, alice, bob, b"forged", signer=carol))
        assert (await a.receive_json())["error"] == "bad_signature"
        # alice's genuine signature for carol, redirected to bob
        redirected = await signed_send(provider, alice, carol, b"for carol")
        redirected["to"] = bob.peer_id.text
        await a.send_json(redirected)
        assert (await a.receive_json())["error"] == "bad_signature"
        # bob received nothing: his next message is his own pong
        await ping_pong(b)
        await a.close()
        await b.close()

    run(test)


@pytest.mark.parametrize("message", [
    "not json", "[]", '{"no": "type"}', '{"type": 7}', '{"type": "dance"}', '{"type": "auth"}',
    '{"type": "send"}', '{"type": "send", "to": "x", "payload": "", "signature": ""}',
    "[" * 40_000 + "]" * 40_000,
])
def test_malformed_messages_get_bad_message_and_the_socket_stays_up(provider, message):
    async def test(session, url):
        alice = await Identity.generate(provider)
        a = await login(session, url, provider, alice)
        await a.send_str(message[:60_000])
        answer = await a.receive_json()
        assert answer["type"] == "error" and answer["error"] == "bad_message" and answer["detail"]
        await ping_pong(a)
        await a.close()

    run(test)


def test_unsigned_and_oversized_payloads_are_rejected(provider):
    async def test(session, url):
        alice, bob = await Identity.generate(provider), await Identity.generate(provider)
        a = await login(session, url, provider, alice)
        b = await login(session, url, provider, bob)
        unsigned = await signed_send(provider, alice, bob, b"hi")
        unsigned["signature"] = ""
        await a.send_json(unsigned)
        assert (await a.receive_json())["error"] in ("bad_signature", "bad_message")
        await a.send_json(await signed_send(provider, alice, bob, bytes(WsLimits().max_payload + 1)))
        assert (await a.receive_json())["error"] == "too_large"
        await ping_pong(b)
        await a.close()
        await b.close()

    run(test)


def test_offline_recipient(provider):
    async def test(session, url):
        alice, carol = await Identity.generate(provider), await Identity.generate(provider)
        a = await login(session, url, provider, alice)
        await a.send_json(await signed_send(provider, alice, carol, b"hello?"))
        answer = await a.receive_json()
        assert (answer["error"], answer["to"]) == ("offline", carol.peer_id.text)
        await a.close()

    run(test)


def test_ten_bad_messages_close_1008_but_offline_ones_do_not_count(provider):
    async def test(session, url):
        alice, carol = await Identity.generate(provider), await Identity.generate(provider)
        a = await login(session, url, provider, alice)
        for _ in range(12):
            await a.send_json(await signed_send(provider, alice, carol, b"anyone?"))
            assert (await a.receive_json())["error"] == "offline"
        for _ in range(9):
            await a.send_str("junk")
            assert (await a.receive_json())["error"] == "bad_message"
        await a.send_str("junk")
        assert await closed_with(a) == 1008

    run(test)


def test_oversized_frame_closes_1009(provider):
    async def test(session, url):
        alice = await Identity.generate(provider)
        a = await login(session, url, provider, alice)
        await a.send_str("x" * (WsLimits().max_message + 1))
        assert await closed_with(a) == 1009
        # and before authentication too
        ws = await session.ws_connect(url)
        await ws.receive_json()
        await ws.send_str("x" * (100 * 1024))
        assert await closed_with(ws) == 1009

    run(test)


def test_per_connection_rate_limit(provider):
    async def test(session, url):
        a = await login(session, url, provider, await Identity.generate(provider))
        await ping_pong(a)
        await ping_pong(a)
        await a.send_json({"type": "ping"})
        assert (await a.receive_json())["error"] == "rate_limited"
        await a.close()

    run(test, SignalConfig(ws=WsLimits(rate=0.01, burst=2)))


def test_second_connection_replaces_the_first_with_4000(provider):
    async def test(session, url):
        alice, bob = await Identity.generate(provider), await Identity.generate(provider)
        a = await login(session, url, provider, alice)
        old = await login(session, url, provider, bob)
        new = await login(session, url, provider, bob)
        assert await closed_with(old) == 4000
        await a.send_json(await signed_send(provider, alice, bob, b"to the new socket"))
        assert base64.b64decode((await new.receive_json())["payload"]) == b"to the new socket"
        await a.close()
        await new.close()

    run(test)


def test_a_recipient_that_does_not_read_makes_senders_busy(provider):
    async def test(session, url):
        alice, bob = await Identity.generate(provider), await Identity.generate(provider)
        a = await login(session, url, provider, alice)
        b = await login(session, url, provider, bob)  # bob never reads again
        payload = bytes(WsLimits().max_payload)
        message = json.dumps(await signed_send(provider, alice, bob, payload))
        errors: list[str] = []
        for _ in range(2000):  # far more than fits in bob's outbox and the socket buffers
            await a.send_str(message)
            await ping_pong_or_error(a, errors)
            if "busy" in errors:
                break
        assert "busy" in errors and "offline" not in errors
        await a.close()
        await b.close()

    run(test, SignalConfig(ws=WsLimits(rate=1e6, burst=1e6, outbox=4)))


async def ping_pong_or_error(ws: aiohttp.ClientWebSocketResponse, errors: list[str]) -> None:
    """A round trip that also collects the errors the server sent before the pong."""
    await ws.send_json({"type": "ping"})
    while (answer := await ws.receive_json())["type"] != "pong":
        errors.append(answer["error"])


def test_metrics_count_websocket_traffic(provider):
    async def test(session, url):
        alice, bob = await Identity.generate(provider), await Identity.generate(provider)
        a, b = await login(session, url, provider, alice), await login(session, url, provider, bob)
        await a.send_json(await signed_send(provider, alice, bob, b"x"))
        await b.receive_json()
        await a.send_str("junk")
        await a.receive_json()
        async with session.get(url.replace("/v1/ws", "/metrics")) as response:
            text = (await response.text()).splitlines()
        for line in ('zmesh_signal_ws_connections 2.0', 'zmesh_signal_ws_messages_total{result="relayed"} 1.0',
                     'zmesh_signal_ws_messages_total{result="bad_message"} 1.0'):
            assert line in text, line
        await a.close()
        await b.close()

    run(test)


def test_stopping_the_server_closes_open_sockets_1001(provider):
    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            async with serving(SignalConfig(), "127.0.0.1", 0) as port:
                ws = await login(session, f"http://127.0.0.1:{port}/v1/ws", provider,
                                 await Identity.generate(provider))
                pending = await session.ws_connect(f"http://127.0.0.1:{port}/v1/ws")
            assert await closed_with(ws) == 1001
            assert await closed_with(pending) == 1001

    asyncio.run(asyncio.wait_for(main(), 10))
