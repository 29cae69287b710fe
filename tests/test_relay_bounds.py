"""A real `zmesh relay` under hostile peers (issue 19, defects 3 and 6): a PING flood that never
reads, per-address and global link caps at the listener, and a CREATE flood against a 3-relay mesh
while another client fetches through fresh circuits."""

from __future__ import annotations

import asyncio
import base64
import os
import statistics
import time
import urllib.parse

import aiohttp
import pytest

from zmesh.cells import BODY_SIZE, MAX_CELLS_PER_FRAME, CellCommand, encode_cell, fragments, parse_frame
from zmesh.handshake import CREATE_SIZE
from zmesh.identity import Identity
from zmesh.native.crypto import NativeCryptoProvider
from zmesh.node import NodeLimits
from zmesh.onionkeys import DEFAULT_ONION_KEY_GRACE, DEFAULT_ONION_KEY_LIFETIME, OnionKeyRing
from zmesh_relay.keys import load_or_create_identity, load_or_create_onion_ring
from zmesh_relay.socks5 import socks5_connect

from .conftest import wait_until
from .private_network import relay_listen
from .test_native_mesh import Process, _http_server, start_mesh

MiB = 1024 * 1024


def _vm_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1])


async def _raw_link(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket upgrade by hand, so that after it nothing is read: asyncio stops reading the
    socket once its small buffer is full, and the kernel's receive buffer is kept small too."""
    parts = urllib.parse.urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port, limit=4096)
    writer.get_extra_info("socket").setsockopt(__import__("socket").SOL_SOCKET,
                                               __import__("socket").SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    await writer.drain()
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    return reader, writer


def _client_frame(payload: bytes) -> bytes:
    """One masked binary WebSocket message (mask key zero: XOR is the identity)."""
    return b"\x82\xff" + len(payload).to_bytes(8, "big") + bytes(4) + payload


def test_unread_pings_leave_the_relay_bounded_and_cost_the_flooder_its_link(tmp_path):
    signal = Process("signal", "--listen", "127.0.0.1:0")
    relay = Process("relay", "--signal", signal.address[0], "--listen", relay_listen(1), "--data-dir", str(tmp_path),
                    "--metrics", "127.0.0.1:0")
    try:
        pid, url = relay.proc.pid, relay.address[0]
        before = _vm_kib(pid, "VmHWM")  # the peak so far: what the flood adds is measured against it

        async def flood() -> tuple[int, bool]:
            _, writer = await _raw_link(url)
            frame = _client_frame(encode_cell(CellCommand.PING, 0, b"12345678") * MAX_CELLS_PER_FRAME)
            sent, deadline = 0, time.monotonic() + 60
            try:
                while sent < 400 * MiB and time.monotonic() < deadline:
                    writer.write(frame)
                    await asyncio.wait_for(writer.drain(), 20)
                    sent += len(frame)
            except (ConnectionError, OSError):
                return sent, True
            except TimeoutError:  # the relay stopped reading: also a closed link, if it says so below
                return sent, False
            finally:
                writer.transport.abort()
            return sent, False

        sent, reset = asyncio.run(flood())
        grown = (_vm_kib(pid, "VmHWM") - before) / 1024
        shed = relay.scrape()("zmesh_links_dropped_total", reason="queue_bound")
        print(f"\nPING flood: {sent / MiB:.0f} MiB sent, link reset: {reset}, relay peak RSS +{grown:.1f} MB")
        assert shed == 1
        assert reset and sent < 400 * MiB  # the relay closed the link before the flood was through
        assert grown < 50, f"relay peak RSS grew {grown:.1f} MB"
    finally:
        relay.stop()
        signal.stop()


def test_the_listener_caps_links_per_source_address_and_in_all(tmp_path):
    signal = Process("signal", "--listen", "127.0.0.1:0")
    relay = Process("relay", "--signal", signal.address[0], "--listen", relay_listen(1), "--data-dir", str(tmp_path),
                    "--max-links", "3", "--max-links-per-address", "2", "--metrics", "127.0.0.1:0")
    url = relay.address[0]

    async def main() -> None:
        sessions = {source: aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(source, 0)))
                    for source in ("127.0.0.1", "127.0.0.2")}
        try:
            first = [await sessions["127.0.0.1"].ws_connect(url) for _ in range(2)]
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await sessions["127.0.0.1"].ws_connect(url)  # a third from the same address: refused
            assert info.value.status == 503
            third = await sessions["127.0.0.2"].ws_connect(url)  # another address: the third link
            fourth = await sessions["127.0.0.2"].ws_connect(url)  # within its address's cap, over the total
            msg = await fourth.receive(timeout=10)
            while msg.type == aiohttp.WSMsgType.BINARY:
                msg = await fourth.receive(timeout=10)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
            await first[0].close()  # its slot comes back
            await wait_until(lambda: relay.scrape().total("zmesh_links") == 2)
            again = await sessions["127.0.0.1"].ws_connect(url)
            for ws in (first[1], third, again):
                assert not ws.closed
                await ws.close()
        finally:
            for session in sessions.values():
                await session.close()

    try:
        asyncio.run(asyncio.wait_for(main(), 60))
        scrape = relay.scrape()
        assert scrape("zmesh_links_refused_total", reason="per_address") == 1
        assert scrape("zmesh_links_refused_total", reason="max_links") == 1
    finally:
        relay.stop()
        signal.stop()


_QUICK_CLOSE = aiohttp.ClientWSTimeout(ws_close=0.5)  # the relay reads its backlog of CREATEs first


class _CreateFlood:
    """CREATEs frame after frame, as fast as the relay takes them, each addressed to the relay and its
    onion key (both public) with random key shares: free to make, a full hybrid handshake to answer.
    Its answers are read (so the flood is not cut short by the link queue bound) and the CREATEDs
    counted: each is a handshake the relay did for the flood."""

    def __init__(self, relay: Identity, onion: OnionKeyRing) -> None:
        self.prefix = relay.peer_id.key + onion.current.key_id
        self.sent = self.handshakes = 0

    async def run(self, url: str, stop: asyncio.Event) -> None:
        pieces = len(fragments(bytes(CREATE_SIZE), BODY_SIZE))
        per_frame, circ_id = MAX_CELLS_PER_FRAME // pieces, 0
        async with aiohttp.ClientSession() as session, session.ws_connect(url, timeout=_QUICK_CLOSE) as ws:
            reader = asyncio.get_running_loop().create_task(self._count(ws))
            try:
                while not stop.is_set():
                    cells = []
                    for _ in range(per_frame):
                        circ_id += 1
                        payload = self.prefix + os.urandom(CREATE_SIZE - len(self.prefix))
                        cells += [encode_cell(CellCommand.CREATE, 0x8000_0000 | circ_id, piece, flags)
                                  for piece, flags in fragments(payload, BODY_SIZE)]
                    await ws.send_bytes(b"".join(cells))
                    self.sent += per_frame
            finally:
                reader.cancel()

    async def _count(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            self.handshakes += sum(cell.command == CellCommand.CREATED for cell in parse_frame(msg.data))



async def _fetch_seconds(socks: tuple[str, int], port: int, isolation: str) -> float:
    """One HTTP fetch over a fresh circuit (a new SOCKS username is a new circuit)."""
    started = time.perf_counter()
    reader, writer = await socks5_connect(*socks, "127.0.0.1", port, username=isolation, password="x")
    writer.write(b"GET / HTTP/1.0\r\nHost: files\r\n\r\n")
    await writer.drain()
    assert (await reader.read()).endswith(b"small page")
    writer.close()
    return time.perf_counter() - started


def test_a_create_flood_on_every_relay_keeps_fresh_circuit_fetches_within_3x_of_idle(tmp_path, env=None):
    files, files_port = _http_server()
    # No circuit pool: every fetch below must build its own circuit, idle and flooded alike.
    processes, _ = start_mesh(tmp_path, files_port, relays=3, exits=1,
                              env={**(env or {}), "ZMESH_CLIENT_CIRCUIT_POOL": "0"})
    relays, (host, port) = processes[1:-1], processes[-1].address[0].rsplit(":", 1)
    socks = (host, int(port))

    burst, rate = NodeLimits().handshake_burst, NodeLimits().handshake_rate

    async def main() -> tuple[list[float], list[float], list[_CreateFlood], float, list[int]]:
        await _fetch_seconds(socks, files_port, "warm-up")  # the client's directory and first links
        idle = [await _fetch_seconds(socks, files_port, f"idle{i}") for i in range(7)]
        provider, dirs = NativeCryptoProvider(), [tmp_path / f"r{index}" for index in range(len(relays))]
        keys = [(await load_or_create_identity(provider, folder),  # start_mesh's data dirs
                 await load_or_create_onion_ring(provider, folder, time.time, lifetime=DEFAULT_ONION_KEY_LIFETIME,
                                                 grace=DEFAULT_ONION_KEY_GRACE)) for folder in dirs]
        stop, started, floods = asyncio.Event(), time.monotonic(), [_CreateFlood(*pair) for pair in keys]
        tasks = [asyncio.get_running_loop().create_task(flood.run(relay.address[0], stop))
                 for flood, relay in zip(floods, relays, strict=True)]
        try:  # each relay has spent its flooder's burst and works at the flooder's rate
            await wait_until(lambda: all(flood.handshakes > 2 * burst for flood in floods), timeout=20)
            flooded, until = [], time.monotonic() + 3  # a flood of a few seconds, fetches all through it
            while len(flooded) < 7 or time.monotonic() < until:
                flooded.append(await _fetch_seconds(socks, files_port, f"flood{len(flooded)}"))
        finally:
            stop.set()
        seconds, handshakes = time.monotonic() - started, [flood.handshakes for flood in floods]
        await asyncio.gather(*tasks)
        return idle, flooded, floods, seconds, handshakes

    try:
        idle, flooded, floods, seconds, handshakes = asyncio.run(asyncio.wait_for(main(), 120))
        scrapes = [relay.scrape() for relay in relays]
    finally:
        for process in reversed(processes):
            process.stop()
        files.shutdown()
    ratio = statistics.median(flooded) / statistics.median(idle)
    done = [scrape("zmesh_handshakes_total", result="answered") for scrape in scrapes]
    refused = [scrape("zmesh_handshakes_total", result="queue_full") for scrape in scrapes]
    print(f"\nfresh-circuit fetch: idle median {statistics.median(idle) * 1e3:.1f} ms, under {seconds:.1f} s of "
          f"CREATE flood {statistics.median(flooded) * 1e3:.1f} ms (×{ratio:.2f}); CREATEs sent per relay "
          f"{[flood.sent for flood in floods]}, answered with a handshake {handshakes}; "
          f"relays' handshakes {done}, refused {refused}")
    assert ratio <= 3, f"idle {idle}, flooded {flooded}"
    # each flooder got its link's rate and no more (the token bucket's exact bound, 5 % spared for clocks)
    assert all(count <= burst + rate * seconds * 1.05 for count in handshakes), handshakes
