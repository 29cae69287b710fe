"""The signal server's HTTP contract (docs/signaling.md § HTTP) on a real loopback socket."""

from __future__ import annotations

import asyncio
import base64
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from tests.signal_backends import serving
from zmesh.descriptor import MAX_DESCRIPTOR_SIZE, Capabilities, Descriptor, sign_descriptor
from zmesh.identity import Identity
from zmesh_signal.app import SignalConfig
from zmesh_signal.client import SignalClient

Test = Callable[[aiohttp.ClientSession, str], Awaitable[None]]

pytestmark = pytest.mark.usefixtures("signal_backend")  # memory and Redis: they cannot drift


STORE = SignalConfig(verify_reachability=False)  # these descriptors name no address anyone listens on


def run(test: Test, config: SignalConfig | None = None) -> None:
    """Start a server on 127.0.0.1 (port 0), run ``test`` against it, always stop it. Unless told
    otherwise it lists descriptors without probing them: these tests are about the store."""
    async def main() -> None:
        async with serving(config or STORE, "127.0.0.1", 0) as port, aiohttp.ClientSession() as session:
            await test(session, f"http://127.0.0.1:{port}")

    asyncio.run(main())


async def make_descriptor(provider, identity: Identity | None = None, *, now: float | None = None,
                          lifetime: int = 3 * 3600, **caps) -> Descriptor:
    identity = identity or await Identity.generate(provider)
    return await sign_descriptor(provider, identity, now=int(time.time() if now is None else now),
                                 capabilities=Capabilities(**caps), lifetime=lifetime)


async def post(session: aiohttp.ClientSession, url: str, body: bytes | AsyncIterator[bytes]) -> tuple[int, dict]:
    async with session.post(f"{url}/v1/descriptors", data=body,
                            headers={"Content-Type": "application/octet-stream"}) as response:
        return response.status, await response.json()


async def get(session: aiohttp.ClientSession, url: str, path: str) -> tuple[int, dict]:
    async with session.get(url + path) as response:
        assert response.content_type == "application/json"
        return response.status, await response.json()


async def listed(session: aiohttp.ClientSession, url: str, query: str = "") -> list[bytes]:
    status, body = await get(session, url, "/v1/relays" + query)
    assert status == 200
    return [base64.b64decode(item, validate=True) for item in body["relays"]]


async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """``tests.conftest.wait_until`` for a condition asked over HTTP."""
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def assert_healthy(session: aiohttp.ClientSession, url: str) -> None:
    status, body = await get(session, url, "/healthz")
    assert status == 200 and body["status"] == "ok"


def test_publish_then_list_with_flag_and_country_filters(provider):
    async def test(session, url):
        relay_de = await make_descriptor(provider, country="DE")
        exit_nl = await make_descriptor(provider, exit=True, country="NL")
        exit_only = await make_descriptor(provider, relay=False, exit=True)
        for d in (relay_de, exit_nl, exit_only):
            status, body = await post(session, url, d.raw)
            assert (status, body) == (201, {"peer_id": d.peer_id.text, "expires": d.expires, "status": "listed"})
        assert sorted(await listed(session, url)) == sorted([relay_de.raw, exit_nl.raw, exit_only.raw])
        assert sorted(await listed(session, url, "?flag=exit")) == sorted([exit_nl.raw, exit_only.raw])
        assert sorted(await listed(session, url, "?flag=relay")) == sorted([relay_de.raw, exit_nl.raw])
        assert await listed(session, url, "?country=de") == [relay_de.raw]
        assert await listed(session, url, "?flag=exit&country=NL") == [exit_nl.raw]
        assert await listed(session, url, "?country=FR") == []
        assert await get(session, url, "/healthz") == (200, {"status": "ok", "relays": 3, "pending": 0})

    run(test)


def test_one_relay_by_peer_id_and_unknown_ones(provider):
    async def test(session, url):
        d = await make_descriptor(provider)
        await post(session, url, d.raw)
        status, body = await get(session, url, f"/v1/relays/{d.peer_id.text}")
        assert status == 200 and base64.b64decode(body["descriptor"]) == d.raw
        other = await Identity.generate(provider)
        status, body = await get(session, url, f"/v1/relays/{other.peer_id.text}")
        assert (status, body["error"]) == (404, "not_found")
        status, body = await get(session, url, "/v1/relays/not-a-peer-id")
        assert (status, body["error"]) == (400, "bad_peer_id") and body["detail"]

    run(test)


@pytest.mark.parametrize("query", ["?flag=middle", "?country=Germany", "?country=1"])
def test_bad_list_queries_are_400(provider, query):
    async def test(session, url):
        status, body = await get(session, url, "/v1/relays" + query)
        assert (status, body["error"]) == (400, "bad_query") and body["detail"]

    run(test)


def test_replay_or_older_descriptor_is_stale_409(provider):
    async def test(session, url):
        identity = await Identity.generate(provider)
        current = await make_descriptor(provider, identity)
        assert (await post(session, url, current.raw))[0] == 201
        for old in (current, await make_descriptor(provider, identity, now=time.time() - 100)):
            status, body = await post(session, url, old.raw)
            assert (status, body["error"]) == (409, "stale") and body["detail"]
            await assert_healthy(session, url)
        newer = await make_descriptor(provider, identity, now=time.time() + 100)
        assert (await post(session, url, newer.raw))[0] == 201
        assert await listed(session, url) == [newer.raw]

    run(test)


def test_rejected_submissions_get_json_errors_and_the_server_keeps_serving(provider):
    async def test(session, url):
        good = await make_descriptor(provider)
        forged = bytearray(good.raw)
        forged[-1] ^= 1  # last byte of the signature
        expired = await make_descriptor(provider, now=time.time() - 4 * 3600)
        future = await make_descriptor(provider, now=time.time() + 3600)
        cases = [(bytes(forged), 422, "invalid", "does not verify"),
                 (expired.raw, 422, "invalid", "expired"),
                 (future.raw, 422, "invalid", "future"),
                 (b"\x00garbage", 400, "malformed", "msgpack"),
                 (b"", 400, "malformed", ""),
                 (bytes(MAX_DESCRIPTOR_SIZE + 1), 413, "too_large", str(MAX_DESCRIPTOR_SIZE)),
                 (bytes(256 * 1024), 413, "too_large", str(MAX_DESCRIPTOR_SIZE))]
        for body, status, code, detail in cases:
            got, answer = await post(session, url, body)
            assert (got, answer["error"]) == (status, code) and detail in answer["detail"], code
            await assert_healthy(session, url)
        assert await listed(session, url) == []

    run(test)


def test_oversized_chunked_body_is_413_without_content_length(provider):
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield bytes(1024)

    async def test(session, url):
        status, body = await post(session, url, chunks())
        assert (status, body["error"]) == (413, "too_large")
        await assert_healthy(session, url)

    run(test)


def test_expired_descriptors_disappear_from_every_view(provider):
    clock = [time.time()]

    async def test(session, url):
        d = await make_descriptor(provider, now=clock[0], lifetime=600)
        assert (await post(session, url, d.raw))[0] == 201
        assert await listed(session, url) == [d.raw]
        clock[0] = d.expires  # expiry is exclusive
        assert await listed(session, url) == []
        assert (await get(session, url, f"/v1/relays/{d.peer_id.text}"))[0] == 404
        assert await get(session, url, "/healthz") == (200, {"status": "ok", "relays": 0, "pending": 0})

    run(test, SignalConfig(clock=lambda: clock[0], verify_reachability=False))


def test_a_full_directory_refuses_new_peers_with_503(provider):
    async def test(session, url):
        identity = await Identity.generate(provider)
        assert (await post(session, url, (await make_descriptor(provider, identity)).raw))[0] == 201
        status, body = await post(session, url, (await make_descriptor(provider)).raw)
        assert (status, body["error"]) == (503, "full")
        # the peer already listed may still refresh its entry
        refreshed = await make_descriptor(provider, identity, now=time.time() + 10)
        assert (await post(session, url, refreshed.raw))[0] == 201

    run(test, SignalConfig(max_descriptors=1, verify_reachability=False))


def test_posts_are_rate_limited_per_client_with_retry_after(provider):
    async def test(session, url):
        for _ in range(2):
            assert (await post(session, url, b"x"))[0] == 400
        async with session.post(f"{url}/v1/descriptors", data=b"x") as response:
            assert response.status == 429
            assert int(response.headers["Retry-After"]) >= 1
            assert (await response.json())["error"] == "rate_limited"
        await assert_healthy(session, url)  # reads have their own, generous budget

    run(test, SignalConfig(post_rate=0.01, post_burst=2, verify_reachability=False))


def test_gets_are_rate_limited_too(provider):
    async def test(session, url):
        assert (await get(session, url, "/healthz"))[0] == 200
        status, body = await get(session, url, "/healthz")
        assert (status, body["error"]) == (429, "rate_limited")

    run(test, SignalConfig(get_rate=0.01, get_burst=1, verify_reachability=False))


def test_unknown_paths_and_methods_are_json(provider):
    async def test(session, url):
        status, body = await get(session, url, "/nowhere")
        assert (status, body["error"]) == (404, "not_found")
        async with session.delete(f"{url}/v1/descriptors") as response:
            assert response.status == 405 and (await response.json())["error"] == "method_not_allowed"
        status, body = await get(session, url, "/")
        assert (status, body["error"]) == (404, "not_found")  # no web root configured

    run(test)


def test_metrics_count_requests_descriptors_and_live_relays(provider):
    async def test(session, url):
        d = await make_descriptor(provider)
        await post(session, url, d.raw)
        await post(session, url, d.raw)
        await post(session, url, b"junk")
        await get(session, url, "/nowhere")
        async with session.get(f"{url}/metrics") as response:
            assert response.status == 200 and response.content_type == "text/plain"
            text = await response.text()
        for line in ('zmesh_signal_descriptors_total{result="accepted"} 1.0',
                     'zmesh_signal_descriptors_total{result="stale"} 1.0',
                     'zmesh_signal_descriptors_total{result="malformed"} 1.0',
                     'zmesh_signal_descriptors_total{result="invalid"} 0.0',
                     'zmesh_signal_requests_total{route="/v1/descriptors",status="201"} 1.0',
                     'zmesh_signal_requests_total{route="/v1/descriptors",status="409"} 1.0',
                     'zmesh_signal_requests_total{route="unmatched",status="404"} 1.0',
                     'zmesh_signal_ws_connections 0.0',
                     'zmesh_signal_ws_messages_total{result="relayed"} 0.0',
                     'zmesh_signal_live_relays 1.0'):
            assert line in text.splitlines(), line

    run(test)


def test_each_server_has_its_own_metrics(provider):
    async def test(session, url):
        async with serving(SignalConfig(), "127.0.0.1", 0) as other:
            await post(session, url, b"junk")
            async with session.get(f"http://127.0.0.1:{other}/metrics") as response:
                assert 'zmesh_signal_descriptors_total{result="malformed"} 0.0' in await response.text()

    run(test)


def test_static_files_index_and_subfolders(provider, tmp_path: Path):
    (tmp_path / "index.html").write_text("<h1>zmesh</h1>")
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "pyodide.asm.wasm").write_bytes(b"\x00asm")
    (tmp_path / "boot.mjs").write_text("export {};")
    (tmp_path.parent / "secret.txt").write_text("outside the web root")
    (tmp_path / "link.txt").symlink_to(tmp_path.parent / "secret.txt")

    async def test(session, url):
        async with session.get(f"{url}/") as response:
            assert response.status == 200 and "zmesh" in await response.text()
        # browsers compile WebAssembly while streaming and load ES modules only with these types
        async with session.get(f"{url}/build/pyodide.asm.wasm") as response:
            assert response.status == 200 and response.content_type == "application/wasm"
            assert await response.read() == b"\x00asm"
        async with session.get(f"{url}/boot.mjs") as response:
            assert response.content_type in ("text/javascript", "application/javascript")
        for path in ("/missing.js", "/build", "/build/", "/%2e%2e/secret.txt", "/build/%2e%2e/%2e%2e/secret.txt",
                     "/link.txt", "/%00"):
            async with session.get(URL(url + path, encoded=True)) as response:
                assert response.status == 404 and (await response.json())["error"] == "not_found", path
        await assert_healthy(session, url)  # API routes win over the static root

    run(test, SignalConfig(web_root=tmp_path, verify_reachability=False))


def test_incremental_and_compressed_relay_lists(provider):
    async def test(session, url):
        first = await make_descriptor(provider)
        await post(session, url, first.raw)
        async with session.get(f"{url}/v1/relays", headers={"Accept-Encoding": "gzip"}) as response:
            assert response.headers["Content-Encoding"] == "gzip"
            whole = await response.json()
        assert whole["full"] is True and len(whole["relays"]) == 1 and whole["removed"] == []
        status, nothing_new = await get(session, url, f"/v1/relays?since={whole['cursor']}")
        assert (status, nothing_new["relays"], nothing_new["full"]) == (200, [], False)
        second = await make_descriptor(provider)
        await post(session, url, second.raw)
        _, step = await get(session, url, f"/v1/relays?since={whole['cursor']}")
        assert [base64.b64decode(item) for item in step["relays"]] == [second.raw] and step["full"] is False
        for bad in ("", "x", "0123456789abcdef:", "0123456789abcdef:1%0A", "%FF", "a" * 300):
            status, body = await get(session, url, f"/v1/relays?since={bad}")
            assert (status, body["error"]) == (400, "bad_query")
        await assert_healthy(session, url)

    run(test)


def test_lifetimes_over_the_cap_and_sources_over_their_limit_are_refused(provider):
    async def test(session, url):
        status, body = await post(session, url, (await make_descriptor(provider, lifetime=3 * 3600 + 1)).raw)
        assert (status, body["error"]) == (422, "invalid") and "lifetime" in body["detail"]
        assert (await post(session, url, (await make_descriptor(provider)).raw))[0] == 201
        status, body = await post(session, url, (await make_descriptor(provider)).raw)
        assert (status, body["error"]) == (429, "source_limit")
        assert len(await listed(session, url)) == 1

    run(test, SignalConfig(max_per_source=1, verify_reachability=False))


def test_a_relay_nobody_answers_for_is_never_listed(provider):
    async def test(session, url):
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            address = f"ws://127.0.0.1:{closed.getsockname()[1]}/v1/link"
        descriptor = await sign_descriptor(provider, await Identity.generate(provider), now=int(time.time()),
                                           addresses={"ws": (address,)})
        status, body = await post(session, url, descriptor.raw)
        assert (status, body["status"]) == (202, "pending")

        async def probed() -> bool:
            async with session.get(f"{url}/metrics") as response:
                return 'zmesh_signal_probes_total{result="unreachable"} 1.0' in await response.text()

        await until(probed)
        assert await listed(session, url) == []
        assert await get(session, url, "/healthz") == (200, {"status": "ok", "relays": 0, "pending": 0})

    run(test, SignalConfig(allow_private_addresses=True))


def test_a_tab_is_listed_only_while_it_is_signed_in(provider):
    async def test(session, url):
        identity = await Identity.generate(provider)
        tab = await sign_descriptor(provider, identity, now=int(time.time()), addresses={"rtc": ("signal",)})
        status, body = await post(session, url, tab.raw)
        assert (status, body["status"]) == (202, "waiting") and await listed(session, url) == []
        async with SignalClient(url) as client, await client.connect_ws(identity, provider):
            assert await listed(session, url) == [tab.raw]

        async def gone() -> bool:
            return await listed(session, url) == []

        await until(gone)

    run(test, SignalConfig())
