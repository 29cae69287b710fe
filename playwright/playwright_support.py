"""What the browser tests (and benchmarks) share: Chromium's flags, the file they fetch, joining a
tab, running native code beside Playwright."""

import asyncio
import concurrent.futures
import os
from collections.abc import Coroutine
from typing import Any

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
