"""Several signal servers on one Redis behave as one (issue 14; docs/signaling.md § Several
servers): in-process servers on a real ``redis-server``, spoken to over real loopback sockets."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import time
import urllib.request
from collections.abc import AsyncIterator

import aiohttp
import pytest
import redis

from tests.conftest import wait_until
from tests.private_network import relay_listen
from tests.signal_backends import flush, redis_server
from tests.test_native_mesh import Process, _http_server, fetch
from tests.test_signal_http import get, listed, make_descriptor, post
from tests.test_signal_ws import closed_with, login, ping_pong, signed_send
from zmesh.descriptor import Capabilities, sign_descriptor
from zmesh.errors import TransportError
from zmesh.identity import Identity
from zmesh_signal.app import SignalConfig, serving
from zmesh_signal.client import SignalClient

STORE = {"verify_reachability": False}  # the descriptors name no address anyone listens on


@contextlib.asynccontextmanager
async def servers(url: str, count: int = 2, **settings) -> AsyncIterator[list[str]]:
    """``count`` servers on the Redis at ``url``; yields their base URLs."""
    async with contextlib.AsyncExitStack() as stack:
        ports = [await stack.enter_async_context(serving(SignalConfig(redis=url, **settings), "127.0.0.1", 0))
                 for _ in range(count)]
        yield [f"http://127.0.0.1:{port}" for port in ports]


@pytest.fixture
def shared(redis_url: str) -> str:
    flush(redis_url)
    return redis_url


def test_a_descriptor_posted_to_one_server_is_listed_by_the_other_and_cursors_carry_over(provider, shared):
    async def main() -> None:
        async with servers(shared, **STORE) as (a, b), aiohttp.ClientSession() as session:
            first = await make_descriptor(provider, relay=True)
            assert (await post(session, a, first.raw))[0] == 201
            assert await listed(session, b) == [first.raw]
            _, answer = await get(session, b, "/v1/relays")
            second = await make_descriptor(provider, relay=True, exit=True)
            assert (await post(session, b, second.raw))[0] == 201
            # B's cursor means the same on A: only the change since, not the whole listing again
            _, delta = await get(session, a, f"/v1/relays?since={answer['cursor']}")
            assert delta["full"] is False and delta["removed"] == []
            assert [base64.b64decode(item) for item in delta["relays"]] == [second.raw]
            assert (await get(session, a, f"/v1/relays/{second.peer_id.text}"))[0] == 200
            assert (await post(session, b, first.raw))[0] == 409  # a replay loses on every server

    asyncio.run(main())


def test_a_restarted_server_serves_the_directory_at_once(provider, shared):
    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            descriptor = await make_descriptor(provider, relay=True)
            async with servers(shared, 1, **STORE) as (a,):
                assert (await post(session, a, descriptor.raw))[0] == 201
            async with servers(shared, 1, **STORE) as (again,):
                assert await listed(session, again) == [descriptor.raw]
                assert (await get(session, again, "/healthz"))[1]["relays"] == 1

    asyncio.run(main())


def test_rate_limits_count_across_servers(provider, shared):
    async def main() -> None:
        async with servers(shared, post_rate=0.01, post_burst=2, **STORE) as (a, b), \
                aiohttp.ClientSession() as session:
            assert (await post(session, a, (await make_descriptor(provider)).raw))[0] == 201
            assert (await post(session, b, (await make_descriptor(provider)).raw))[0] == 201
            status, body = await post(session, a, (await make_descriptor(provider)).raw)
            assert (status, body["error"]) == (429, "rate_limited")

    asyncio.run(main())


def test_signed_messages_cross_servers_and_offline_is_the_same_error_everywhere(provider, shared):
    async def main() -> None:
        async with servers(shared) as (a, b), aiohttp.ClientSession() as session:
            alice, bob, nobody = [await Identity.generate(provider) for _ in range(3)]
            ws_alice = await login(session, f"{a}/v1/ws", provider, alice)
            ws_bob = await login(session, f"{b}/v1/ws", provider, bob)
            await ws_alice.send_json(await signed_send(provider, alice, bob, b"offer"))
            message = await ws_bob.receive_json()
            assert message["type"] == "message" and message["from"] == alice.peer_id.text
            await ws_bob.send_json(await signed_send(provider, bob, alice, b"answer"))
            assert (await ws_alice.receive_json())["from"] == bob.peer_id.text
            # offline: never connected, or left another server: one error, word for word
            await ws_alice.send_json(await signed_send(provider, alice, nobody, b"x"))
            never = await ws_alice.receive_json()
            await ws_bob.close()
            await ping_pong(ws_alice)
            await ws_alice.send_json(await signed_send(provider, alice, bob, b"x"))
            left = await ws_alice.receive_json()
            assert never == {**left, "to": nobody.peer_id.text}
            assert left == {"type": "error", "error": "offline", "detail": "the recipient is not connected",
                            "to": bob.peer_id.text}
            await ws_alice.close()

    asyncio.run(main())


def test_signing_in_on_another_server_replaces_the_older_socket(provider, shared):
    async def main() -> None:
        async with servers(shared) as (a, b), aiohttp.ClientSession() as session:
            alice, bob = await Identity.generate(provider), await Identity.generate(provider)
            old = await login(session, f"{a}/v1/ws", provider, alice)
            new = await login(session, f"{b}/v1/ws", provider, alice)
            assert await closed_with(old) == 4000
            ws_bob = await login(session, f"{a}/v1/ws", provider, bob)
            await ws_bob.send_json(await signed_send(provider, bob, alice, b"still here"))
            assert (await new.receive_json())["from"] == bob.peer_id.text
            await new.close()
            await ws_bob.close()

    asyncio.run(main())


def test_a_tab_signed_in_on_one_server_is_listed_by_every_server(provider, shared):
    async def main() -> None:
        async with servers(shared) as (a, b), aiohttp.ClientSession() as session:
            tab = await Identity.generate(provider)
            descriptor = await make_descriptor(provider, tab, relay=False)
            ws = await login(session, f"{b}/v1/ws", provider, tab)
            assert (await post(session, a, descriptor.raw))[0] == 201  # signed in on B, posted to A
            assert await listed(session, b) == [descriptor.raw]
            await ws.close()
            await _until_listing(session, a, [])

    asyncio.run(main())


def test_a_tab_whose_via_relay_another_server_listed_is_listed_on_every_server(provider, shared):
    """The tab's home relay is listed through A (A lists without probing here); the tab is signed
    in on B and posts to B, then to a server C started later: each lists the tab while the relay
    is listed anywhere, and drops it when A unlists the relay."""
    now = int(time.time())

    async def signed(identity: Identity, published: int, addresses: dict) -> bytes:
        return (await sign_descriptor(provider, identity, now=published, addresses=addresses,
                                      capabilities=Capabilities(relay=True), lifetime=3600)).raw

    async def main() -> None:
        async with servers(shared, 1, **STORE) as (a,), servers(shared, 1) as (b,), \
                aiohttp.ClientSession() as session:
            home, tab = await Identity.generate(provider), await Identity.generate(provider)
            relay = {"ws": ("ws://relay.example:1/v1/link",)}
            via = {"via": (home.peer_id.text,)}
            ws = await login(session, f"{b}/v1/ws", provider, tab)
            first_tab = await signed(tab, now, via)
            assert (await post(session, b, first_tab))[1]["status"] == "waiting"
            listed_home = await signed(home, now, relay)
            assert (await post(session, a, listed_home))[0] == 201
            await _until_listing(session, b, [listed_home, first_tab], ordered=False)
            no_relay = await signed(home, now + 1, {})  # A lists it, but as a relay no more
            assert (await post(session, a, no_relay))[0] == 201
            await _until_listing(session, b, [no_relay])
            relisted = await signed(home, now + 2, relay)
            assert (await post(session, a, relisted))[0] == 201
            async with servers(shared, 1) as (c,):
                newer_tab = await signed(tab, now + 1, via)
                assert (await post(session, c, newer_tab))[1]["status"] == "listed"
                await _until_listing(session, a, [relisted, newer_tab], ordered=False)
            await ws.close()

    asyncio.run(main())


async def _until_listing(session: aiohttp.ClientSession, url: str, expected: list[bytes], *,
                         ordered: bool = True) -> None:
    shape = list if ordered else set
    async with asyncio.timeout(10):
        while shape(await listed(session, url)) != shape(expected):
            await asyncio.sleep(0.01)


def test_an_unreachable_redis_is_a_clear_503_and_degraded_health_until_it_is_back(provider):
    async def main() -> None:
        with redis_server() as url:
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            async with servers(url, **STORE) as (a, b), aiohttp.ClientSession() as session:
                alice, bob = await Identity.generate(provider), await Identity.generate(provider)
                ws_alice = await login(session, f"{a}/v1/ws", provider, alice)
                await login(session, f"{b}/v1/ws", provider, bob)
                descriptor = await make_descriptor(provider, relay=True)
                with redis.Redis(port=port) as control:
                    control.shutdown(nosave=True)
                status, body = await post(session, a, descriptor.raw)
                assert (status, body["error"]) == (503, "unavailable")
                assert (await get(session, b, "/v1/relays"))[0] == 503
                status, health = await get(session, a, "/healthz")
                assert (status, health["status"]) == (503, "degraded")
                await ws_alice.send_json(await signed_send(provider, alice, bob, b"lost?"))
                error = await ws_alice.receive_json()
                assert (error["error"], error["to"]) == ("unavailable", bob.peer_id.text)  # said, not dropped
                with redis_server(port):
                    async with SignalClient(f"{a},{b}") as client:
                        await _until_ok(session, a)
                        assert (await client.publish(descriptor.raw))["status"] == "listed"
                        assert await listed(session, b) == [descriptor.raw]

    asyncio.run(main())


async def _until_ok(session: aiohttp.ClientSession, url: str) -> None:
    async with asyncio.timeout(15):
        while (await get(session, url, "/healthz"))[0] != 200:
            await asyncio.sleep(0.05)


def test_the_client_hands_over_to_the_next_server_when_one_is_gone(provider, shared):
    async def main() -> None:
        async with servers(shared, 1, **STORE) as (b,):
            async with servers(shared, 1, **STORE) as (a,):
                pass  # A is gone: its port answers nothing
            descriptor = await make_descriptor(provider, relay=True)
            async with SignalClient(f"{a},{b}") as client:
                with pytest.raises(TransportError, match="cannot reach"):
                    await client.publish(descriptor.raw)
                assert client.base_url == b
                assert (await client.publish(descriptor.raw))["status"] == "listed"
                identity = await Identity.generate(provider)
                async with await client.connect_ws(identity, provider):
                    pass

    asyncio.run(main())


def test_two_zmesh_signal_processes_carry_a_webrtc_mesh_and_survive_losing_one(tmp_path, redis_url):
    """Real processes: relays registered through A are listed by B; with every link WebRTC, a
    client on B builds a circuit through relays on A and B (so signaling crosses the servers);
    after A is killed its relays sign in on B and a new client builds circuits again."""
    flush(redis_url)
    files, files_port = _http_server()
    env = {"ZMESH_TRANSPORT_KIND": "webrtc"}
    started: list[Process] = []

    def start(*args: str, **kwargs) -> Process:
        started.append(Process(*args, **kwargs))
        return started[-1]

    try:
        a, b = (start("signal", "--listen", "127.0.0.1:0", "--redis", redis_url).address[0] for _ in range(2))
        homes = [f"{a},{b}", f"{b},{a}", f"{a},{b}"]  # r0 and r2 on A, r1 on B; each knows the other server
        relays = [start("relay", "--signal", home, "--listen", relay_listen(i + 1), "--metrics", "127.0.0.1:0",
                        "--data-dir", str(tmp_path / f"r{i}"),
                        *(["--exit", "--exit-allow", f"127.0.0.1/32:{files_port}"] if i == 2 else []), env=env)
                  for i, home in enumerate(homes)]
        assert len(_listed(b)) == 3 and _listed(a) == _listed(b)
        client = start("client", "--signal", b, "--socks", "127.0.0.1:0", env=env)
        assert _fetch_small(client, files_port) == b"small page"
        scrapes = [relay.scrape() for relay in relays]
        assert sum(scrape("zmesh_links", transport="webrtc") for scrape in scrapes) >= 3
        assert sum(scrape("zmesh_links", transport="websocket") for scrape in scrapes) == 0

        os.kill(started[0].proc.pid, signal.SIGKILL)  # server A dies without a word
        started[0].proc.wait()
        asyncio.run(wait_until(lambda: _all_routed_like(redis_url, relays, relays[1]), timeout=60))
        fresh = start("client", "--signal", b, "--socks", "127.0.0.1:0", env=env)
        assert _fetch_small(fresh, files_port) == b"small page"
    finally:
        for process in reversed(started):
            process.stop()
        files.shutdown()


def _listed(signal_url: str) -> set[str]:
    with urllib.request.urlopen(f"{signal_url}/v1/relays", timeout=10) as response:
        return set(json.load(response)["relays"])


def _fetch_small(client: Process, files_port: int) -> bytes:
    host, port = client.address[0].rsplit(":", 1)
    return asyncio.run(asyncio.wait_for(fetch((host, int(port)), "127.0.0.1", files_port, "/"), 90))


def _all_routed_like(redis_url: str, relays: list[Process], model: Process) -> bool:
    """Every relay's signaling socket is on the server ``model``'s is on (its route in Redis)."""
    with redis.Redis.from_url(redis_url) as control:
        routes = [control.get(f"zmesh:signal:peer:{relay.address[1]}") for relay in relays]
    return routes[0] is not None and len(set(routes)) == 1 and all(
        relay.scrape()("zmesh_webrtc_signaling_up") == 1 for relay in relays)


def test_every_key_in_redis_has_a_ttl_or_a_cap(provider, shared):
    """Listings come and go (expiry moves a fake clock), peers sign in, clients are rate limited:
    afterwards each key expires by itself or is an index bounded by ``max_descriptors``."""
    cap, clock = 3, [time.time()]

    async def main() -> None:
        async with servers(shared, max_descriptors=cap, clock=lambda: clock[0], **STORE) as (a, b), \
                aiohttp.ClientSession() as session:
            ws = await login(session, f"{b}/v1/ws", provider, await Identity.generate(provider))
            for _ in range(4):
                for _ in range(cap):
                    descriptor = await make_descriptor(provider, now=clock[0], lifetime=600)
                    assert (await post(session, a, descriptor.raw))[0] == 201
                clock[0] += 601  # all of them expire: the next read prunes them into tombstones
                assert await listed(session, b) == []
            await ws.close()

    asyncio.run(main())
    with redis.Redis.from_url(shared) as control:
        keys = {key.decode(): control.ttl(key) for key in control.scan_iter("zmesh:signal:*")}
        capped = {f"zmesh:signal:{name}" for name in ("expires", "published", "changed", "removed")}
        single = {f"zmesh:signal:{name}" for name in ("seq", "horizon", "epoch")}
        for key, ttl in keys.items():
            assert ttl > 0 or key in capped | single, key
        assert all(control.zcard(key) <= cap for key in capped)
        assert control.zcard("zmesh:signal:removed") == cap  # 12 unlisted, the oldest 9 forgotten
