"""Browser benchmark: how fast a tab joins the mesh, and its circuit throughput with its links over
WebRTC and over WebSocket, beside a native client in the same run. Real Chromium, real `zmesh`
processes; run it inside the private namespace (`tests/netns-run`, as `make bench` does).

Run: ``python bench/browser.py [--hops N] [--fec] [--json]`` (about a minute). ``--hops`` and
``--fec`` (FEC on the WebRTC tab's links) are the MeshOptions defaults docs/browser.md weighs;
docs/browser.md ("Performance") has the profile of where a tab's time goes and how it was taken.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "playwright"))

from playwright.sync_api import sync_playwright  # noqa: E402
from playwright_support import CHROMIUM_ARGS  # noqa: E402

from bench.figures import add_json_flag, print_json  # noqa: E402
from bench.native import local_mesh, measure, via_mesh  # noqa: E402
from tests.test_native_mesh import PAYLOAD  # noqa: E402

JOIN = """async ([target, small, transport, hops, fec]) => {
    const t0 = performance.now();
    const { MeshVPN } = await import("/meshvpn.js");
    const vpn = new MeshVPN({ hops, transport, identity: "ephemeral", enableFEC: fec });
    await vpn.connect();
    const joined = performance.now() - t0;
    const small_ms = [];  // a small GET on the built circuit: what one more hop costs a page's requests
    for (let i = 0; i < 2 * RUNS; i++) {
        const start = performance.now();
        await vpn.fetch(small);
        small_ms.push(performance.now() - start);
    }
    const samples = [];
    const longTasks = [];  // main-thread tasks over 50 ms while data flows: what the UI would feel
    new PerformanceObserver((list) => longTasks.push(...list.getEntries().map((e) => e.duration)))
        .observe({ type: "longtask" });
    for (let i = 0; i < RUNS; i++) {
        const start = performance.now();
        const { body } = await vpn.fetch(target);
        samples.push(body.length / ((performance.now() - start) / 1000) / 1e6);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));  // let the observer deliver
    const worst = longTasks.length ? Math.max(...longTasks) : 0;
    return { joined, samples, small_ms, worst, blocked: longTasks.reduce((a, b) => a + b, 0),
             navigation: performance.timing.loadEventEnd - performance.timing.navigationStart };
}"""


RAW = """async ([url, size, runs]) => {
    const samples = [];
    for (let i = 0; i < runs; i++) {
        const start = performance.now();
        await new Promise((resolve, reject) => {
            const socket = new WebSocket(url);
            socket.binaryType = "arraybuffer";
            let received = 0;
            socket.onmessage = (event) => {
                received += event.data.byteLength;
                if (received >= size) { socket.close(); resolve(); }
            };
            socket.onerror = () => reject(new Error("raw WebSocket failed"));
        });
        samples.push(size / ((performance.now() - start) / 1000) / 1e6);
    }
    return samples;
}"""


@contextlib.contextmanager
def raw_websocket_sender() -> Iterator[str]:
    """A plain aiohttp WebSocket server that sends the benchmark's payload in 64 KiB binary frames
    to whoever connects: the page receiving it measures what this browser's WebSocket path alone
    carries on this machine, the ceiling for any tab over WebSocket links."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    address: list[str] = []

    async def send(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0, compress=False)  # as relay links (zmesh_relay.wslink)
        await ws.prepare(request)
        for offset in range(0, len(PAYLOAD), 65536):
            await ws.send_bytes(PAYLOAD[offset:offset + 65536])
        await ws.receive()  # the page closes once it has everything
        return ws

    async def serve() -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/raw", send)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        address.append(f"ws://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/raw")
        return runner

    def run() -> None:
        asyncio.set_event_loop(loop)
        runner = loop.run_until_complete(serve())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield address[0]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hops", type=int, default=3, help="hops of the tab's circuit")
    parser.add_argument("--fec", action="store_true", help="enableFEC on the WebRTC tab")
    add_json_flag(parser)
    args = parser.parse_args()
    # `zmesh signal` serves the repository's web/ by default: the page and the directory share an origin.
    with local_mesh() as (url, socks, port):
        native = asyncio.run(_native_rates(socks, port, args.runs))
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            warm = browser.new_page()  # one boot first, so both tabs below load from a warm HTTP cache
            warm.goto(f"{url}/")
            warm.evaluate("async () => { const { bootZmesh } = await import('/boot.mjs'); await bootZmesh(); }")
            warm.close()
            results = {}
            with raw_websocket_sender() as raw_url:
                page = browser.new_page()
                page.goto(f"{url}/")
                raw = page.evaluate(RAW, [raw_url, len(PAYLOAD), args.runs])
                page.close()
            for transport in ("webrtc", "websocket"):  # the tab's links; the relays' own are WebSocket
                page = browser.new_page()
                page.goto(f"{url}/")
                results[transport] = page.evaluate(JOIN.replace("RUNS", str(args.runs)),
                                                   [f"http://127.0.0.1:{port}/big", f"http://127.0.0.1:{port}/small",
                                                    transport, args.hops, args.fec and transport == "webrtc"])
                page.close()
            browser.close()
    med = statistics.median
    print(f"zmesh browser benchmark — {os.cpu_count()} CPUs, Chromium headless, {len(PAYLOAD) >> 20} MiB file, "
          f"{args.hops} hops{', FEC on WebRTC' if args.fec else ''}; the tab's links over WebRTC or WebSocket")
    print("| measurement                                   | tab, WebRTC | tab, WebSocket | native client | ratio* |")
    print("|-----------------------------------------------|-------------|----------------|---------------|--------|")
    rtc, ws = results["webrtc"], results["websocket"]
    for label, key in (("page loaded (ms)", "navigation"), ("import → Python ready → joined (warm cache)", "joined"),
                       ("longest main-thread task while fetching (ms)", "worst"),
                       ("main thread blocked by long tasks (ms total)", "blocked")):
        print(f"| {label:45} | {rtc[key]:11.0f} | {ws[key]:14.0f} |             — |      — |")
    print(f"| {'small GET on the circuit (ms, median)':45} | {med(rtc['small_ms']):11.1f} "
          f"| {med(ws['small_ms']):14.1f} |             — |      — |")
    print(f"| {'download throughput (MB/s, median)':45} | {med(rtc['samples']):11.1f} "
          f"| {med(ws['samples']):14.1f} | {med(native):13.1f} | {med(rtc['samples']) / med(native):6.2f} |")
    print(f"| {'raw WebSocket into the page, no zmesh (MB/s)':45} |           — | {med(raw):14.1f} "
          "|             — |      — |")
    print("* tab over WebRTC / native client, same run. The raw row is one aiohttp sender straight into a")
    print("  page's WebSocket (JS only): what this browser's socket path carries here, the tab's ceiling")
    print_json(args, {"hops": args.hops, "fec": args.fec,
                      "small_get_ms_webrtc": round(med(rtc["small_ms"]), 1),
                      "small_get_ms_websocket": round(med(ws["small_ms"]), 1),
                      "tab_webrtc_MBps": round(med(rtc["samples"]), 2),
                      "tab_websocket_MBps": round(med(ws["samples"]), 2),
                      "native_MBps": round(med(native), 2), "join_ms": round(max(rtc["joined"], ws["joined"])),
                      "join_ms_webrtc": round(rtc["joined"]), "join_ms_websocket": round(ws["joined"]),
                      "longest_task_ms": max(rtc["worst"], ws["worst"]),
                      "tab_websocket_over_native": round(med(ws["samples"]) / med(native), 3),
                      "raw_websocket_MBps": round(med(raw), 2),
                      "tab_websocket_over_raw": round(med(ws["samples"]) / med(raw), 3)})


async def _native_rates(socks: tuple[str, int], port: int, runs: int) -> list[float]:
    await via_mesh(socks, port, "/small")  # build the circuit first, as the tab's figure excludes it
    rates, _ = await measure(lambda path: via_mesh(socks, port, path), runs, "/small")
    return rates


if __name__ == "__main__":
    main()
