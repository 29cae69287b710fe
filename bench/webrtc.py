"""Link benchmark: WebRTC DataChannels against WebSocket, one link at a time, for native ↔ native
(aiortc ↔ aiortc), browser ↔ native (a Chromium tab ↔ aiortc) and browser ↔ browser (two tabs of one
Chromium), with the WebSocket baseline of each pairing measured in the same run.

Both ends speak through the project's own links (``zmesh.aio.rtc.RtcConnector`` with the aiortc or the
page's backend, ``zmesh_relay.wslink`` and the page's ``BrowserChannelLink``), and run the same
Python (``respond`` and ``drive`` below, natively and in Pyodide). The driving end asks the far end
for a burst of frames of random bytes (encrypted cells are incompressible) and measures bytes
delivered / time at its own end, from the first frame to the end marker; the far end keeps the link
busy, with the links' own backpressure. RTT is a one-cell (1 KiB) ping-pong. Tabs have no direct
WebSocket to one another, so their baseline goes through a native aiohttp forwarder (two hops).

Run it inside the private namespace (WebRTC must not see the machine's interfaces):
``tests/netns-run .venv/bin/python bench/webrtc.py`` (about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import re
import statistics
import struct
import sys
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "playwright"))

import aiortc  # noqa: E402
from aiohttp import web  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402
from playwright_support import CHROMIUM_ARGS  # noqa: E402

from bench.figures import add_json_flag, print_json  # noqa: E402
from tests.test_native_mesh import Process  # noqa: E402
from zmesh.aio.rtc import RtcConnector, RtcOptions  # noqa: E402
from zmesh.cells import CELL_SIZE  # noqa: E402
from zmesh.errors import LinkClosed  # noqa: E402
from zmesh.identity import Identity, PeerId  # noqa: E402
from zmesh.link import Link  # noqa: E402
from zmesh.native.crypto import NativeCryptoProvider  # noqa: E402
from zmesh_relay import wslink  # noqa: E402
from zmesh_relay.rtclink import AiortcBackend  # noqa: E402
from zmesh_signal.client import SignalClient  # noqa: E402

WEB = Path(__file__).resolve().parent.parent / "web"
SIZES = (16 * CELL_SIZE, CELL_SIZE)  # a 16-cell frame and a one-cell frame (frames carry up to 64 cells)
PINGS = 50


# --- the measurement itself: the same code natively and in the page (shipped there as source) ---

async def respond(link: Link) -> None:
    """The far end: echo pings ("P…"); on "S" + (size, ms) send frames of ``size`` random bytes for
    that long, as fast as the link takes them, then the end marker "E"."""
    try:
        while True:
            frame = await link.recv()
            if frame[:1] == b"P":
                await link.send(frame)
            elif frame[:1] == b"S":
                size, millis = struct.unpack("!II", frame[1:9])
                # 64 different frames in turn: were any WebSocket compression on, it would find no
                # repeat within its 32 KiB window, as with real, encrypted cells
                frames = [b"D" + os.urandom(size - 1) for _ in range(64)]
                deadline, sent = time.monotonic() + millis / 1000, 0
                while time.monotonic() < deadline:
                    await link.send(frames[sent % 64])
                    sent += 1
                await link.send(b"E")
    except LinkClosed:
        pass


async def drive(link: Link, sizes: list[int], runs: int, millis: int, pings: int) -> dict[str, Any]:
    """The measuring end: ``pings`` RTT samples (ms), then ``runs`` bursts per size, each giving
    MB/s received (bytes after the first frame / time from the first frame to the end marker)."""
    rtts = []
    for _ in range(pings):
        ping = b"P" + os.urandom(1023)
        start = time.perf_counter()
        await link.send(ping)
        if await link.recv() != ping:
            raise RuntimeError("the ping came back changed")
        rtts.append((time.perf_counter() - start) * 1000)
    rates: dict[str, list[float]] = {}
    for size in sizes:
        rates[str(size)] = []
        for _ in range(runs):
            await link.send(b"S" + struct.pack("!II", size, millis))
            await link.recv()  # the clock starts at the first frame
            start, total = time.perf_counter(), 0
            while (frame := await link.recv()) != b"E":
                if len(frame) != size:
                    raise RuntimeError(f"a {size}-byte frame arrived as {len(frame)} bytes")
                total += len(frame)
            rates[str(size)].append(total / (time.perf_counter() - start) / 1e6)
    return {"rtt": rtts, "rates": rates}


PAGE_SETUP = """
import asyncio, json, os, struct, time
import js
from zmesh.browser.links import BrowserChannelLink, BrowserTextSocket
from zmesh.browser.rtc import BrowserRtcBackend
from zmesh.browser.webcrypto import WebCryptoProvider
from zmesh.errors import LinkClosed
from zmesh.identity import Identity, PeerId
from zmesh.link import Link
from zmesh.aio.rtc import RtcConnector, RtcOptions
from zmesh.signaling import SignalSession
from typing import Any
""" + inspect.getsource(respond) + inspect.getsource(drive) + """
provider = WebCryptoProvider()
identity = await Identity.generate(provider)
channel = await BrowserTextSocket.open(f"ws://{js.location.host}/v1/ws")
session = await SignalSession.open(channel, identity, provider, timeout=10.0)
responders = set()

def serve(link):
    task = asyncio.ensure_future(respond(link))
    responders.add(task)
    task.add_done_callback(responders.discard)

async def on_link(link, peer):
    serve(link)

connector = RtcConnector(session, BrowserRtcBackend(), on_link, RtcOptions(timeout=15.0))
identity.peer_id.text
"""

PAGE_DRIVE = """
async def _measure():
    link = await (BrowserChannelLink.dial(TARGET) if "://" in TARGET else connector.dial(PeerId.from_text(TARGET)))
    try:
        return json.dumps(await drive(link, SIZES, RUNS, MILLIS, PINGS))
    finally:
        await link.close()
await _measure()
"""

PAGE_SERVE_WS = """
serve(await BrowserChannelLink.dial(TARGET))
"""

BOOT = """() => {
    window.zmeshBoot = import("/boot.mjs").then((m) => m.bootZmesh()).then((r) => {
        window.pyodide = r.pyodide;
        return r.bootMs;
    });
}"""
RUN_PYTHON = "async (code) => await window.pyodide.runPythonAsync(code)"


class NativeSide:
    """The native end, on an event loop of its own thread (Playwright's sync API owns the main
    thread's): two aiortc nodes signed in to the signal server, the second answering links with
    ``respond``; an aiohttp WebSocket link server (``respond`` on /v1/link) and a forwarder
    pairing two WebSockets by room (/fwd/{room}) for the tabs' baseline."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._tasks: set[asyncio.Task] = set()
        self._rooms: dict[str, tuple[wslink.WebSocketLink, asyncio.Future]] = {}

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def start(self, url: str) -> None:
        provider = NativeCryptoProvider()
        self.clients, self.connectors = [], []
        for _ in range(2):
            identity = await Identity.generate(provider)
            client = SignalClient(url)
            self.clients.append(client)
            session = await client.connect_ws(identity, provider)
            self.connectors.append(RtcConnector(session, AiortcBackend(), self._on_link, RtcOptions(timeout=15.0)))
        self.peer_id = self.connectors[1].signal.peer_id
        app = web.Application()
        app.router.add_get(wslink.LINK_PATH, self._serve_link)
        app.router.add_get("/fwd/{room}", self._forward)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.ws_base = f"ws://127.0.0.1:{self.runner.addresses[0][1]}"

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for connector in self.connectors:
            await connector.close()
        for client in self.clients:
            await client.close()
        await self.runner.cleanup()

    async def _on_link(self, link: Link, _peer: PeerId) -> None:
        task = asyncio.get_running_loop().create_task(respond(link))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_link(self, request: web.Request) -> web.WebSocketResponse:
        ws, link = await wslink.accept(request)
        await respond(link)
        await link.close()
        return ws

    async def _forward(self, request: web.Request) -> web.WebSocketResponse:
        """Pass frames between the two links of a room, each way, as a relay would."""
        ws, link = await wslink.accept(request)
        room = request.match_info["room"]
        if room in self._rooms:
            other, paired = self._rooms.pop(room)
            paired.set_result(link)
        else:
            paired = asyncio.get_running_loop().create_future()
            self._rooms[room] = (link, paired)
            other = await paired
        try:
            while True:
                await other.send(await link.recv())
        except LinkClosed:
            await other.close()
        return ws

    async def measure(self, target: str, sizes: list[int], runs: int, millis: int) -> dict[str, Any]:
        """Dial ``target`` (the answering aiortc node, or a WebSocket URL) and drive the link."""
        link = await (wslink.open_link(target) if "://" in target else self.connectors[0].dial(self.peer_id))
        try:
            return await drive(link, sizes, runs, millis, PINGS)
        finally:
            await link.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _page_code(template: str, **values: Any) -> str:
    return "".join(f"{name} = {value!r}\n" for name, value in values.items()) + template


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--burst", type=float, default=0.4, help="seconds of each throughput burst")
    add_json_flag(parser)
    args = parser.parse_args()
    if not os.environ.get("ZMESH_NETNS"):
        raise SystemExit("run this inside the private namespace: tests/netns-run .venv/bin/python bench/webrtc.py")
    sizes, millis = list(SIZES), int(args.burst * 1000)
    results: dict[str, dict[str, Any]] = {}
    failures: dict[str, str] = {}

    def attempt(key: str, measure: Any) -> None:
        try:
            results[key] = measure()
        except Exception as exc:  # noqa: BLE001 - a pairing that fails is reported, not faked
            failures[key] = _why(exc)

    signal = Process("signal", "--listen", "127.0.0.1:0", "--web-root", str(WEB))
    url = signal.address[0]
    native = NativeSide()
    try:
        native.run(native.start(url))
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            tabs = [browser.new_page(), browser.new_page()]
            for tab in tabs:
                tab.goto(f"{url}/")
                tab.evaluate(BOOT)  # both tabs boot Pyodide at once
            tab_ids = []
            for tab in tabs:
                tab.evaluate("async () => await window.zmeshBoot")
                tab_ids.append(tab.evaluate(RUN_PYTHON, PAGE_SETUP))
            a, b = tabs
            common = {"SIZES": sizes, "RUNS": args.runs, "MILLIS": millis, "PINGS": PINGS}

            def in_tab(tab: Any, target: str) -> dict[str, Any]:
                return json.loads(tab.evaluate(RUN_PYTHON, _page_code(PAGE_DRIVE, TARGET=target, **common)))

            def tabs_over_websocket() -> dict[str, Any]:
                room = f"{native.ws_base}/fwd/bench"
                b.evaluate(RUN_PYTHON, _page_code(PAGE_SERVE_WS, TARGET=room))
                return in_tab(a, room)

            attempt("native/webrtc", lambda: native.run(native.measure(native.peer_id.text, sizes, args.runs, millis)))
            attempt("native/websocket", lambda: native.run(
                native.measure(native.ws_base + wslink.LINK_PATH, sizes, args.runs, millis)))
            attempt("browser-native/webrtc", lambda: in_tab(a, native.peer_id.text))
            attempt("browser-native/websocket", lambda: in_tab(a, native.ws_base + wslink.LINK_PATH))
            attempt("browser-browser/webrtc", lambda: in_tab(a, tab_ids[1]))
            attempt("browser-browser/websocket", tabs_over_websocket)
            version = browser.version
            browser.close()
        native.run(native.stop())
    finally:
        native.close()
        signal.stop()
    _print(results, failures, args, version)


def _why(exc: Exception) -> str:
    """One line for a failure; for a tab's, the Python exception inside Playwright's message."""
    lines = str(exc).splitlines()
    python = [line for line in lines if re.match(r"[\w.]+(Error|Exception|Closed): ", line)]
    return python[-1] if python else f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _print(results: dict[str, dict[str, Any]], failures: dict[str, str], args: argparse.Namespace,
           version: str) -> None:
    med = statistics.median

    def cell(key: str, size: int | None) -> float | None:
        if key not in results:
            return None
        return med(results[key]["rtt"]) if size is None else med(results[key]["rates"][str(size)])

    def fmt(value: float | None, digits: int) -> str:
        return "failed" if value is None else f"{value:.{digits}f}"

    print(f"zmesh WebRTC link benchmark — {os.cpu_count()} CPUs, aiortc {aiortc.__version__}, Chromium {version} "
          f"headless, one link per row, medians of {args.runs} bursts of {args.burst:g} s and of {PINGS} pings; "
          "frames of random bytes, received by the measuring end")
    print("| pairing             | measurement                      | DataChannel |  WebSocket | DC / WS |")
    print("|---------------------|----------------------------------|-------------|------------|---------|")
    pairings = (("native ↔ native", "native"), ("browser ↔ native", "browser-native"),
                ("browser ↔ browser", "browser-browser"))
    for label, key in pairings:
        rows = [(f"{size // 1024} KiB frames, throughput (MB/s)", size, 1) for size in SIZES]
        rows.append((f"RTT, {CELL_SIZE // 1024} KiB ping-pong (ms)", None, 2))
        for measurement, size, digits in rows:
            rtc, ws = cell(f"{key}/webrtc", size), cell(f"{key}/websocket", size)
            ratio = "—" if rtc is None or ws is None else f"{rtc / ws:.2f}"
            ws_text = fmt(ws, digits) + ("†" if key == "browser-browser" and ws is not None else "")
            print(f"| {label:19} | {measurement:32} | {fmt(rtc, digits):>11} | {ws_text:>10} | {ratio:>7} |")
    print("Throughput flows from the answering end to the dialling end (native → tab, tab B → tab A). "
          "† tab → native aiohttp forwarder → tab: two WebSocket hops, tabs have no direct WebSocket.")
    print("Both native ends share one Python process and event loop. A tab's clock ticks in 0.1 ms steps. "
          "Tab figures vary about ±2× between runs on this 2-CPU machine.")
    for key, why in failures.items():
        print(f"FAILED {key}: {why}")
    figures: dict[str, Any] = {"failed": sorted(failures)}
    for key in results:
        figures[f"{key}/rtt_ms"] = cell(key, None)
        figures |= {f"{key}/MBps_{size // 1024}KiB": cell(key, size) for size in SIZES}
    print_json(args, figures)


if __name__ == "__main__":
    main()
