"""Issue 20 item 3: the signal server pushes "the listing changed" over the signaling WebSocket to
subscribers, coalesced and bounded, on either backend and across servers sharing one Redis; the
core's session hands the notice to its owner, and a WebRTC-capable relay refetches on it."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import pytest

from tests.signal_backends import flush, serving
from tests.test_signal_http import make_descriptor, post
from tests.test_signal_redis import servers
from tests.test_signal_ws import login, ping_pong
from zmesh.identity import Identity
from zmesh.signaling import DirectoryChanged, parse_server_message
from zmesh_signal.app import SignalConfig
from zmesh_signal.client import SignalClient
from zmesh_signal.ws import WsLimits

# the descriptors name no address anyone listens on, and all come from this one test
UNPROBED = SignalConfig(verify_reachability=False, max_per_source=100)


async def subscribed(session: aiohttp.ClientSession, url: str, provider) -> aiohttp.ClientWebSocketResponse:
    ws = await login(session, url + "/v1/ws", provider, await Identity.generate(provider))
    await ws.send_json({"type": "subscribe", "topic": "directory"})
    assert await ws.receive_json() == {"type": "subscribed", "topic": "directory"}
    return ws


async def notices_within(ws: aiohttp.ClientWebSocketResponse, seconds: float) -> list[float]:
    """When each "directory" notice arrived in the next ``seconds`` (loop time)."""
    loop = asyncio.get_running_loop()
    deadline, arrived = loop.time() + seconds, []
    with contextlib.suppress(TimeoutError):
        while (left := deadline - loop.time()) > 0:
            message = await ws.receive_json(timeout=left)
            assert message == {"type": "directory"}
            arrived.append(loop.time())
    return arrived


@pytest.mark.usefixtures("signal_backend")
def test_a_publication_reaches_subscribers_and_a_burst_is_coalesced(provider):
    async def main() -> None:
        async with serving(UNPROBED, "127.0.0.1", 0) as port, aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}"
            ws = await subscribed(session, url, provider)
            quiet = await login(session, url + "/v1/ws", provider, await Identity.generate(provider))
            assert (await post(session, url, (await make_descriptor(provider, relay=True)).raw))[0] == 201
            assert len(await notices_within(ws, 0.6)) == 1
            descriptors = [await make_descriptor(provider, relay=True) for _ in range(30)]
            for descriptor in descriptors:
                assert (await post(session, url, descriptor.raw))[0] == 201
            window = 2.5
            arrived = await notices_within(ws, window)
            # thirty publications, at most one notice per announce_interval (arrival times are not
            # checked: a loaded machine may deliver two notices close together)
            assert 1 <= len(arrived) <= window / WsLimits().announce_interval + 1, arrived
            await ping_pong(quiet)  # a socket that did not subscribe hears nothing

    asyncio.run(main())


@pytest.mark.usefixtures("signal_backend")
def test_an_unknown_topic_is_a_bad_message_and_nothing_is_subscribed(provider):
    async def main() -> None:
        async with serving(UNPROBED, "127.0.0.1", 0) as port, aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}"
            ws = await login(session, url + "/v1/ws", provider, await Identity.generate(provider))
            for topic in ("relays", None, 7):
                await ws.send_json({"type": "subscribe", "topic": topic})
                answer = await ws.receive_json()
                assert answer["type"] == "error" and answer["error"] == "bad_message"
            assert (await post(session, url, (await make_descriptor(provider, relay=True)).raw))[0] == 201
            await asyncio.sleep(0)
            await ping_pong(ws)
            assert await notices_within(ws, 1.3) == []

    asyncio.run(main())


def test_a_publication_to_one_server_reaches_the_subscribers_of_another(provider, redis_url):
    flush(redis_url)

    async def main() -> None:
        async with servers(redis_url, verify_reachability=False) as (a, b), aiohttp.ClientSession() as session:
            ws = await subscribed(session, b, provider)
            assert (await post(session, a, (await make_descriptor(provider, relay=True)).raw))[0] == 201
            assert len(await notices_within(ws, 1.5)) == 1

    asyncio.run(main())


def test_the_core_session_hands_each_notice_to_its_owner(provider):
    assert isinstance(parse_server_message('{"type": "directory"}'), DirectoryChanged)
    assert parse_server_message('{"type": "subscribed", "topic": "directory"}') is None  # ignored

    async def main() -> None:
        async with serving(UNPROBED, "127.0.0.1", 0) as port, aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}"
            heard = asyncio.Event()
            async with SignalClient(url) as client:
                signal = await client.connect_ws(await Identity.generate(provider), provider, on_directory=heard.set)
                reader = asyncio.create_task(signal.receive())
                for _ in range(10):  # the subscription may still be on its way: publish until it is heard
                    assert (await post(session, url, (await make_descriptor(provider, relay=True)).raw))[0] == 201
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(heard.wait(), 1.5)
                        break
                assert heard.is_set()
                reader.cancel()
                await signal.close()

    asyncio.run(main())


def test_each_subscriber_refetches_after_its_own_random_delay_and_notices_coalesce():
    """Subscribers hear a notice at one moment; each waits a delay drawn from [0, spread] first, so
    their refetches do not arrive as one burst, and notices during the wait or the refetch cost
    one more refetch, not one each."""
    from zmesh.aio.notices import RefetchOnNotice

    async def main() -> None:
        draws, refetched, release = [], asyncio.Event(), asyncio.Event()

        async def refresh() -> None:
            refetched.set()
            await release.wait()

        def draw(low: float, high: float) -> float:
            draws.append((low, high))
            return 0.0

        notices = RefetchOnNotice(refresh, spread=2.0, draw=draw)
        notices()
        await refetched.wait()
        for _ in range(5):  # during the refetch: coalesced into one more
            notices()
        release.set()
        for _ in range(10):
            await asyncio.sleep(0)
        assert notices.refetches == 2 and draws == [(0.0, 2.0)] * 2
        await notices.close()

    asyncio.run(main())


def test_a_webrtc_capable_relay_sees_relays_that_join_after_it_without_polling(tmp_path):
    """Real processes: relay 1 holds a signaling socket (it answers WebRTC offers), so it hears
    each later relay's publication pushed and refetches at once: its network size in /metrics
    follows, long before its directory view's 30 s max age would have refetched."""
    from tests.conftest import wait_until
    from tests.test_native_mesh import Process

    processes = [Process("signal", "--listen", "127.0.0.1:0")]
    url = processes[0].address[0]
    try:
        first = Process("relay", "--signal", url, "--listen", "127.1.0.1:0", "--metrics", "127.0.0.1:0",
                        "--data-dir", str(tmp_path / "r1"))
        processes.append(first)

        def size() -> float:
            return first.scrape()("zmesh_network_size")

        assert size() == 1
        for number in (2, 3, 4):
            processes.append(Process("relay", "--signal", url, "--listen", f"127.{number}.0.1:0",
                                     "--data-dir", str(tmp_path / f"r{number}"),
                                     env={"ZMESH_TRANSPORT_KIND": "websocket"}))
        asyncio.run(wait_until(lambda: size() == 4, timeout=10))
        assert first.scrape()("zmesh_peer_link_limit") == 8
    finally:
        for process in reversed(processes):
            process.stop()
