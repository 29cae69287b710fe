"""Issue 4 (e): a hostile peer sending malformed cells to a tab does not break it — the tab closes
that link, counts it, and keeps fetching through its circuit."""

import asyncio
import os
import threading
import time
import urllib.request

import pytest
from aiohttp import WSMsgType, web
from playwright_support import example_page

from tests.conftest import wait_until
from tests.probed import answer_create, every, is_listed
from zmesh.descriptor import sign_descriptor
from zmesh.identity import Identity
from zmesh.native.crypto import NativeCryptoProvider

JOIN = """async () => {
    const { MeshVPN } = await import("/meshvpn.js");
    window.vpn = new MeshVPN({ hops: 3, relay: false });
    await window.vpn.connect();
}"""


@pytest.fixture(scope="module")
def hostile(mesh):
    """A WebSocket 'relay' that answers anyone with garbage, published in the directory."""
    url, _ = mesh
    loop = asyncio.new_event_loop()

    async def garbage(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        try:  # the signal server's reachability probe speaks first: pass it, or it is never listed
            probe = await ws.receive(timeout=1.0)
        except TimeoutError:
            probe = None
        if probe is not None and probe.type == WSMsgType.BINARY:
            await ws.send_bytes(await answer_create(provider, {identity.peer_id: identity}, probe.data))
            await ws.receive()
            return ws
        await ws.send_bytes(os.urandom(3000))  # not whole cells
        await ws.send_bytes(bytes([1, 3]) + os.urandom(1022))  # a RELAY cell with a random header
        await ws.send_str("not binary")
        await ws.receive()
        return ws

    async def start() -> tuple[web.AppRunner, int]:
        app = web.Application()
        app.router.add_get("/v1/link", garbage)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, site._server.sockets[0].getsockname()[1]

    # Everything async runs on the server's own thread: Playwright's sync API holds this thread's loop.
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner, port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    provider = NativeCryptoProvider()
    identity = asyncio.run_coroutine_threadsafe(Identity.generate(provider), loop).result(10)

    async def describe():
        return await sign_descriptor(provider, identity, now=int(time.time()),
                                     addresses={"ws": (f"ws://127.0.0.1:{port}/v1/link",)})

    def publish() -> str:
        """List the hostile relay (once its probe has passed); returns its PeerId text."""
        descriptor = asyncio.run_coroutine_threadsafe(describe(), loop).result(10)
        request = urllib.request.Request(f"{url}/v1/descriptors", data=descriptor.raw, method="POST")
        urllib.request.urlopen(request, timeout=5)
        asyncio.run_coroutine_threadsafe(wait_until(every(0.05, lambda: is_listed(url, identity.peer_id))),
                                         loop).result(15)
        return identity.peer_id.text

    yield publish
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_malformed_cells_from_a_hostile_peer_do_not_break_the_tab(browser, mesh, hostile):
    url, port = mesh
    page = example_page(browser, url)
    # The tab joins first: with the hostile relay already listed it may sample it as an entry guard,
    # and a join whose guards keep failing is a separate, known problem (see the stop's note).
    page.evaluate(JOIN)
    hostile = hostile()
    page.evaluate("""async (hostile) => {
        const vpn = window.vpn._vpn;
        try { await vpn.driver.connect(vpn.peer_id.from_text(hostile)); } catch (err) {}
    }""", hostile)
    page.wait_for_function("window.vpn.getStats().then((s) => (s.metrics.malformed_frames || 0) >= 1)", timeout=20_000)
    result = page.evaluate("""async (target) => {
        const { status, body } = await window.vpn.fetch(target);
        return { status, size: body.length };
    }""", f"http://127.0.0.1:{port}/file")
    assert result == {"status": 200, "size": 5 * 1024 * 1024}
    page.close()


FLOOD = """async ([url, limit]) => {
    const { bootZmesh } = await import("/boot.mjs");
    const { pyodide } = await bootZmesh();
    pyodide.globals.set("URL", url);
    pyodide.globals.set("LIMIT", limit);
    return await pyodide.runPythonAsync(`
import asyncio
from zmesh.browser.links import BrowserChannelLink
from zmesh.errors import LinkClosed
link = await BrowserChannelLink.dial(URL, max_queued=LIMIT)
await asyncio.wait_for(link.wait_closed(), 20)  # never read: the flood fills the queue
held = 0
try:
    while True:
        held += len(await link.recv())
except LinkClosed:
    pass
[held, link._queued]
`).then((r) => r.toJs());
}"""


def test_a_peer_flooding_a_tab_link_that_is_not_read_gets_it_closed(browser, signal_url):
    """A page cannot pause a socket, so the frames a link holds for the node are bounded: a peer
    sending past ``max_queued`` (here 1 MiB; it sends up to 16 MiB of 64 KiB frames, never read)
    gets the link closed by the tab, which holds no more than the bound for the node to drain."""
    loop = asyncio.new_event_loop()
    codes: list[int | None] = []

    async def flood(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        frame = bytes(64 * 1024)
        for _ in range(256):  # 16 MiB at most
            if ws.closed:
                break
            await ws.send_bytes(frame)
        await ws.receive()
        codes.append(ws.close_code)
        return ws

    async def start() -> tuple[web.AppRunner, int]:
        app = web.Application()
        app.router.add_get("/flood", flood)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, site._server.sockets[0].getsockname()[1]

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner, port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        page = browser.new_page()
        page.goto(f"{signal_url}/")
        held, queued = page.evaluate(FLOOD, [f"ws://127.0.0.1:{port}/flood", 1 << 20])
        page.close()
        assert 0 < held <= 1 << 20 and queued == 0
        asyncio.run_coroutine_threadsafe(wait_until(lambda: bool(codes)), loop).result(10)
        assert len(codes) == 1  # the server's receive() returned: the tab closed the socket
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
