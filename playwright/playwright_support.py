"""What the browser tests (and benchmarks) share: Chromium's flags, the file they fetch, joining a
tab, running native code beside Playwright, a native client's circuit through a tab, one script
evaluated in a fresh tab (for benchmarks timing the tab's own code)."""

import asyncio
import concurrent.futures
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

from tests.test_native_mesh import Process

WEB = Path(__file__).resolve().parent.parent / "web"

PAYLOAD = os.urandom(5 * 1024 * 1024)

# mDNS hostnames hide a tab's addresses from web peers; nothing in the test namespace resolves them.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-features=WebRtcHideLocalIpsWithMdns",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

JOIN = """async (options) => {
    const { MeshVPN } = await import("/meshvpn.js");
    window.vpn = new MeshVPN(options);
    await window.vpn.connect();
    return window.vpn.peerId;
}"""

# What meshvpn.js saved in IndexedDB under `key` (as an array of bytes), or null: its writes are
# asynchronous, so wait until one landed.
STORED = """async (key) => {
    for (let tries = 0; tries < 200; tries++) {
        const stored = await new Promise((resolve, reject) => {
            const open = indexedDB.open("zmesh", 1);
            open.onerror = () => reject(open.error);
            open.onsuccess = () => {
                const request = open.result.transaction("keys", "readonly").objectStore("keys").get(key);
                request.onsuccess = () => resolve(request.result);
            };
        });
        if (stored) return Array.from(stored);
        await new Promise((resolve) => setTimeout(resolve, 50));
    }
    return null;
}"""


def run_native(coroutine: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
    """Run native asyncio code to completion: Playwright's sync API owns this thread's event loop,
    so it gets a thread of its own."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, asyncio.wait_for(coroutine, timeout)).result()


def example_page(browser: Any, url: str) -> Any:
    """A fresh tab on the signal server's example page (any page of the origin can import MeshVPN)."""
    page = browser.new_page()
    page.goto(f"{url}/example.html")
    return page


def evaluate_in_tab(script: str, arg: Any) -> Any:
    """``script`` (a JS function) evaluated with ``arg`` in a tab of a `zmesh signal` serving this
    checkout's ``web/``; browser and server are closed after."""
    server = Process("signal", "--listen", "127.0.0.1:0", "--web-root", str(WEB))
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            try:
                return example_page(browser, server.address[0]).evaluate(script, arg)
            finally:
                browser.close()
    finally:
        server.stop()


async def fetch_through_tab(signal_url: str, port: int, tab: Any) -> Any:
    """A native client builds home relay → ``tab`` (a PeerId) → an exit and GETs
    ``http://127.0.0.1:port/file`` through it (the ``HttpResponse``): the home relay extends over the
    tab's own link."""
    from zmesh.aio.http import http_get
    from zmesh_relay import config
    from zmesh_relay.client import Client

    client = Client({**config.load(env={}), "signaling.url": signal_url, "client.socks": "127.0.0.1:0"})
    await client.start()
    try:
        relays = {d.peer_id: d for d in await client.directory.relays(refresh=True)}
        descriptor = relays[tab]
        home = next(d for d in relays.values() if d.peer_id.text in descriptor.addresses["via"])
        exit_ = next(d for d in relays.values() if d.capabilities.exit and d.peer_id != home.peer_id)
        circuit = await client.driver.build_circuit([home, descriptor, exit_])
        stream = await client.driver.open_stream(circuit, "127.0.0.1", port)
        return await http_get(stream, "127.0.0.1", "/file")
    finally:
        await client.stop()
