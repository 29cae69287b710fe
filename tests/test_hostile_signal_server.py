"""A hostile signal server cannot crash relays or clients (issue 19, defect 8).

A real aiohttp server on 127.0.0.1 answers the signaling WebSocket with non-ASCII challenges,
garbage JSON and wrong types. ``SignalClient`` must raise our own errors for each, and a real
``zmesh relay`` / ``zmesh client`` subprocess must keep retrying (with backoff) instead of exiting
with a traceback, as they did when base64 decoding raised ``ValueError``.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import wait_until
from tests.private_network import relay_listen
from tests.test_native_mesh import Process
from zmesh.errors import LinkClosed, ProtocolError, TransportError, ZmeshError
from zmesh.identity import Identity
from zmesh_signal.client import SignalClient, SignalError

NONCE = base64.b64encode(bytes(32)).decode()
GOOD_CHALLENGE = json.dumps({"type": "challenge", "nonce": NONCE})

# What the server sends on each new socket: first messages, then (after the client's auth) replies.
BAD_OPENINGS: list[tuple[str, list[str | bytes]]] = [
    ("non-ASCII nonce", [json.dumps({"type": "challenge", "nonce": "ÿ" * 44}, ensure_ascii=False)]),
    ("garbage JSON", ["{not json"]),
    ("nonce of the wrong type", [json.dumps({"type": "challenge", "nonce": 12345})]),
    ("error of wrong types after auth", [GOOD_CHALLENGE, json.dumps({"type": "error", "error": ["x"],
                                                                     "detail": {"a": 1}, "to": 7})]),
    ("JSON that is not an object", ['[1, 2, 3]']),
    ("a binary frame", [b"\x00\x01"]),
    ("a 33-byte nonce", [json.dumps({"type": "challenge", "nonce": base64.b64encode(bytes(33)).decode()})]),
    ("deeply nested JSON", ["[" * 30_000 + "]" * 30_000]),
    ("no ready after auth", [GOOD_CHALLENGE, json.dumps({"type": "ready!"})]),
    ("a type that is a list", [json.dumps({"type": ["challenge"], "nonce": NONCE})]),
]


class HostileServer:
    """Directory endpoints that accept anything, and a WebSocket that misbehaves in turn."""

    def __init__(self, openings: list[list[str | bytes]]) -> None:
        self.openings = openings
        self.sockets = 0
        self.relay_list: Any = {"relays": []}

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        script = self.openings[self.sockets % len(self.openings)]
        self.sockets += 1
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        for index, message in enumerate(script):
            if index == 1:  # the client's auth comes between the challenge and the answer
                await ws.receive(timeout=5)
            await (ws.send_bytes(message) if isinstance(message, bytes) else ws.send_str(message))
        await ws.receive(timeout=5)  # until the client gives up and closes
        return ws

    async def publish(self, request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"peer_id": "x", "expires": 0}, status=201)

    async def relays(self, request: web.Request) -> web.Response:
        return web.json_response(self.relay_list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/ws", self.ws)
        app.router.add_post("/v1/descriptors", self.publish)
        app.router.add_get("/v1/relays", self.relays)
        return app


@asynccontextmanager
async def hostile(openings: list[list[str | bytes]]) -> AsyncIterator[tuple[HostileServer, str]]:
    server = HostileServer(openings)
    runner = web.AppRunner(server.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield server, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("case", [name for name, _ in BAD_OPENINGS])
def test_the_client_raises_our_errors_for_a_bad_opening(provider, case: str) -> None:
    async def main() -> None:
        script = dict(BAD_OPENINGS)[case]
        identity = await Identity.generate(provider)
        async with hostile([script]) as (_, url), SignalClient(url, timeout=5) as client:
            with pytest.raises(ZmeshError) as raised:
                await client.connect_ws(identity, provider)
        assert isinstance(raised.value, ProtocolError | TransportError), raised.value

    asyncio.run(main())


def test_a_wrongly_typed_error_becomes_a_plain_signal_error(provider) -> None:
    async def main() -> None:
        identity = await Identity.generate(provider)
        async with hostile([dict(BAD_OPENINGS)["error of wrong types after auth"]]) as (_, url), \
                SignalClient(url, timeout=5) as client:
            with pytest.raises(SignalError) as raised:
                await client.connect_ws(identity, provider)
        assert (raised.value.code, raised.value.detail, raised.value.to) == ("error", "", None)

    asyncio.run(main())


def test_bad_relayed_messages_fail_one_receive_and_leave_the_session_usable(provider) -> None:
    async def main() -> None:
        identity = await Identity.generate(provider)
        padded = identity.peer_id.text[:48] + "=" * 8
        script: list[str | bytes] = [GOOD_CHALLENGE, json.dumps({"type": "ready"}),
                                     json.dumps({"type": "message", "from": padded, "payload": "", "signature": ""}),
                                     json.dumps({"type": "message", "from": identity.peer_id.text,
                                                 "payload": "é", "signature": ""}, ensure_ascii=False)]
        async with hostile([script]) as (_, url), SignalClient(url, timeout=5) as client:
            session = await client.connect_ws(identity, provider)
            for _ in range(2):
                with pytest.raises(ProtocolError):
                    await session.receive()
            await session.close()
            with pytest.raises(LinkClosed):
                await session.receive()

    asyncio.run(main())


@pytest.mark.parametrize("listing", [{"relays": ["ÿÿÿÿ"]}, {"relays": [["nested"]]}, {"relays": "x"}])
def test_a_bad_relay_list_is_a_protocol_error(listing: Any) -> None:
    async def main() -> None:
        async with hostile([[GOOD_CHALLENGE]]) as (server, url), SignalClient(url, timeout=5) as client:
            server.relay_list = listing
            with pytest.raises(ProtocolError):
                await client.relays()

    asyncio.run(main())


def _stop(process: Process) -> str:
    """Stop the process; return everything it wrote to stderr."""
    process.stop()
    return process.proc.stderr.read()


@pytest.mark.parametrize("command", ["relay", "client"])
def test_zmesh_keeps_retrying_against_a_hostile_server(tmp_path, command: str) -> None:
    """Before the fix the first opening (a non-ASCII nonce) made both exit with a ValueError traceback."""
    async def main() -> None:
        openings = [script for _, script in BAD_OPENINGS[:4]]
        async with hostile(openings) as (server, url):
            args = (["relay", "--listen", relay_listen(1), "--data-dir", str(tmp_path / "relay")] if command == "relay"
                    else ["client", "--socks", "127.0.0.1:0"])
            # A hostile server never lists the relay: do not make it wait the default 30 s to say ready.
            process = await asyncio.to_thread(Process, *args, "--signal", url, env={"ZMESH_RELAY_LISTING_WAIT": "1"})
            try:
                await wait_until(lambda: server.sockets >= len(openings) + 1 or process.proc.poll() is not None,
                                 timeout=30)
                assert process.proc.poll() is None, "zmesh exited"
            finally:
                stderr = await asyncio.to_thread(_stop, process)
        assert "Traceback" not in stderr, stderr[-3000:]
        assert "signaling reconnect failed" in stderr

    asyncio.run(main())
