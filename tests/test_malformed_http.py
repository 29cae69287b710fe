"""Malformed HTTP input gets a 4xx, never a 500 (issue 19, defect 9), on real servers.

Both the signal server and a relay's HTTP side (``/healthz`` and the link upgrade) answer in the
JSON error shape. aiohttp itself answers a request it cannot parse (before any handler) with a
plain-text 400. Before the fix, a descriptor with mixed str/bytes map
keys and a PeerId with base32 padding made the signal server answer 500.
"""

from __future__ import annotations

import asyncio
import random

import aiohttp
import msgpack
import pytest

from tests.fuzz_targets import mutate, world
from tests.private_network import relay_listen
from tests.test_native_mesh import Process
from zmesh.encoding import pack_canonical
from zmesh_signal.app import SignalConfig, serving

PADDED_ID = "a" * 48 + "=" * 8
# aiohttp raises ValueError (a 500) for a non-ASCII WebSocket key; every other bad key is its 400
BAD_UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": "ÿ", "Sec-WebSocket-Version": "13"}


async def _raw(port: int, request: bytes, host: str = "127.0.0.1") -> bytes:
    """Send bytes that no HTTP client library would; return the status line."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        return await reader.readline()
    finally:
        writer.close()


def _descriptor_posts() -> list[bytes]:
    mixed = msgpack.packb({"v": 1, b"id": b""}, use_bin_type=True)
    rng = random.Random(3)
    raw = world().descriptor.raw
    return [mixed, pack_canonical([mixed, bytes(64)]), b"\x91" * 900 + b"\xc0", b"",
            *(mutate(raw, rng) for _ in range(150))]


GETS = [f"/v1/relays/{PADDED_ID}", "/v1/relays/%C3%9F" + "a" * 55, "/v1/relays/" + "a" * 56 + "%0A",
        "/v1/relays?country=DE%0A", "/v1/relays?country=%C3%9F", "/v1/relays?flag=%00", "/v1/relays/x",
        "/nope", "/v1/ws"]


def test_the_signal_server_answers_malformed_requests_with_json_4xx() -> None:
    config = SignalConfig(post_rate=1e6, post_burst=1e6, get_rate=1e6, get_burst=1e6)

    async def main() -> None:
        async with serving(config, "127.0.0.1", 0) as port, aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}"
            answers = []
            for body in _descriptor_posts():
                async with session.post(f"{url}/v1/descriptors", data=body) as response:
                    answers.append((response.status, await response.json(), "POST"))
            for path in GETS:
                async with session.get(url + path) as response:
                    answers.append((response.status, await response.json(), path))
            async with session.get(f"{url}/v1/ws", headers=BAD_UPGRADE) as response:
                answers.append((response.status, await response.json(), "bad upgrade"))
            async with session.delete(f"{url}/v1/relays") as response:
                answers.append((response.status, await response.json(), "DELETE"))
            bad = [(status, path) for status, body, path in answers
                   if not 400 <= status < 500 or set(body) != {"error", "detail"}]
            assert bad == []
            assert (await _raw(port, b"GET /\x00 HTTP/1.1\r\n\r\n")).split()[1] == b"400"

    asyncio.run(main())


@pytest.fixture(scope="module")
def relay(tmp_path_factory):
    signal = Process("signal", "--listen", "127.0.0.1:0")
    try:
        node = Process("relay", "--signal", signal.address[0], "--listen", relay_listen(1),
                       "--data-dir", str(tmp_path_factory.mktemp("relay")))
        try:
            yield node.address[0].removesuffix("/v1/link").removeprefix("ws://")
        finally:
            node.stop()
    finally:
        signal.stop()


def test_a_relay_answers_malformed_requests_with_json_4xx(relay: str) -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            statuses = []
            for method, path, headers in [
                    ("GET", "/v1/link", {}), ("POST", "/healthz", {}), ("GET", "/nope", {}),
                    ("GET", "/v1/link", BAD_UPGRADE)]:
                async with session.request(method, f"http://{relay}{path}", headers=headers) as response:
                    statuses.append((response.status, set(await response.json())))
            async with session.get(f"http://{relay}/healthz?x=%FF") as response:
                assert response.status == 200 and (await response.json())["status"] == "ok"
        assert all(400 <= status < 500 and keys == {"error", "detail"} for status, keys in statuses), statuses
        host, port = relay.rsplit(":", 1)
        assert (await _raw(int(port), b"GET /\x00 HTTP/1.1\r\n\r\n", host)).split()[1] == b"400"

    asyncio.run(main())
