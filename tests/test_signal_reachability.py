"""Issue 19, defect 2: directory poisoning and exhaustion, against real processes.

A real ``zmesh signal`` lists a relay only after it has completed a circuit handshake with the
relay's published onion keys at its published address. Fake descriptors — properly signed with
fresh identities — that point at closed ports, at a tarpit that accepts TCP and never answers the
WebSocket upgrade, or at a real relay that does not hold their keys, are never listed, and a
client still fetches through the real relays; a flood of fakes from many source addresses cannot
keep a reachable relay from being listed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
import urllib.request
from pathlib import Path

import aiohttp

from tests.conftest import wait_until
from tests.private_network import relay_listen
from tests.probed import every, is_listed, nothing_pending
from tests.test_native_mesh import Process, _http_server, fetch, start_mesh
from zmesh.descriptor import Capabilities, sign_descriptor, verify_descriptor
from zmesh.identity import Identity, PeerId
from zmesh.native.crypto import NativeCryptoProvider
from zmesh_relay.socks5 import socks5_connect

PROVIDER = NativeCryptoProvider()


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _listed(signal: str) -> set[PeerId]:
    raws = [base64.b64decode(item) for item in _get(f"{signal}/v1/relays")["relays"]]
    return {asyncio.run(verify_descriptor(PROVIDER, raw, now=time.time())).peer_id for raw in raws}


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Tarpit:
    """Accepts TCP connections and never says a word (nor closes them)."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.held: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> int:
        async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.held.append(writer)

        self.server = await asyncio.start_server(hold, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        for writer in self.held:
            writer.close()
        self.server.close()


async def fake_descriptor(url: str) -> bytes:
    """A well-signed descriptor of a fresh identity claiming to be a relay at ``url``."""
    identity = await Identity.generate(PROVIDER)
    descriptor = await sign_descriptor(PROVIDER, identity, now=int(time.time()), addresses={"ws": (url,)},
                                       capabilities=Capabilities(relay=True, exit=True))
    return descriptor.raw


async def publish_from(signal: str, source: str, raws: list[bytes]) -> list[str]:
    """POST each descriptor from the local address ``source`` (127.x.y.z: its own rate and
    per-source limits); what became of each: ``pending``, ``listed``, ``waiting`` or the error."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        outcomes = []
        for raw in raws:
            async with session.post(f"{signal}/v1/descriptors", data=raw,
                                    headers={"Content-Type": "application/octet-stream"}) as response:
                body = await response.json()
                outcomes.append(body.get("status") or body["error"])
        return outcomes


def test_sixty_unreachable_fakes_are_never_listed_and_clients_fetch_ten_of_ten(tmp_path: Path):
    files, files_port = _http_server()
    processes, signal = start_mesh(tmp_path, files_port, relays=4, exits=2)
    try:
        real = _listed(signal)
        assert len(real) == 4  # every relay was probed and listed before it reported ready
        relay_url = processes[1].address[0]
        pid = processes[0].proc.pid
        fds_before = _fd_count(pid)

        async def poison() -> None:
            tarpit = Tarpit()
            async with tarpit as tarpit_port:
                urls = ([f"ws://127.0.0.1:{_closed_port()}/v1/link" for _ in range(36)]
                        + [f"ws://127.0.0.1:{tarpit_port}/v1/link" for _ in range(16)]
                        + [relay_url] * 8)  # a real relay, but not holding these descriptors' keys
                raws = [await fake_descriptor(url) for url in urls]
                # 60 peers from 8 addresses: within the default limit of 8 per source
                batches = [raws[i::8] for i in range(8)]
                outcomes = await asyncio.gather(*(publish_from(signal, f"127.0.0.{2 + i}", batch)
                                                  for i, batch in enumerate(batches)))
                assert {s for batch in outcomes for s in batch} == {"pending"}  # stored, not listed
                await wait_until(every(0.1, lambda: nothing_pending(signal)), timeout=40)
                assert len(tarpit.held) == 16  # the tarpit was really dialed, and held every probe

        asyncio.run(poison())
        assert _listed(signal) == real
        assert _get(f"{signal}/healthz") == {"status": "ok", "relays": 4, "pending": 0}
        metrics = urllib.request.urlopen(f"{signal}/metrics", timeout=10).read().decode()
        assert 'zmesh_signal_probes_total{result="unreachable"} 60.0' in metrics
        # probes that timed out on the tarpit left no socket behind
        assert _fd_count(pid) <= fds_before + 2

        socks_host, socks_port = processes[-1].address[0].rsplit(":", 1)

        async def ten_fresh_circuits() -> int:
            ok = 0
            for index in range(10):  # a new SOCKS username: a new circuit each time
                reader, writer = await socks5_connect(socks_host, int(socks_port), "127.0.0.1", files_port,
                                                      username=f"u{index}", password="p")
                writer.write(f"GET /small HTTP/1.0\r\nHost: 127.0.0.1:{files_port}\r\n\r\n".encode())
                await writer.drain()
                ok += (await reader.read()).startswith(b"HTTP/1.0 200")
                writer.close()
            return ok

        assert asyncio.run(ten_fresh_circuits()) == 10
        assert asyncio.run(fetch((socks_host, int(socks_port)), "127.0.0.1", files_port, "/small")) == b"small page"
    finally:
        for process in reversed(processes):
            process.stop()
        files.shutdown()


def test_a_flood_of_fakes_cannot_keep_a_reachable_relay_out(tmp_path: Path):
    sources, per_source = 40, 50
    signal_process = Process("signal", "--listen", "127.0.0.1:0")
    signal = signal_process.address[0]
    relays: list[Process] = []
    try:
        async def flood() -> tuple[list[str], float, float]:
            async with Tarpit() as tarpit:
                url = f"ws://127.0.0.1:{tarpit}/v1/link"
                batches = [[await fake_descriptor(url) for _ in range(per_source)] for _ in range(sources)]
                started = time.monotonic()
                outcomes = await asyncio.gather(*(publish_from(signal, f"127.0.1.{1 + i}", batch)
                                                  for i, batch in enumerate(batches)))
                flooded = time.monotonic() - started
                # the flood is in: every prober is held by the tarpit and the pending set is full
                health = _get(f"{signal}/healthz")
                assert health["relays"] == 0 and 0 < health["pending"] <= 256
                begin = time.monotonic()
                relays.append(await asyncio.to_thread(Process, "relay", "--signal", signal, "--listen",
                                                      relay_listen(1), "--data-dir", str(tmp_path / "r")))
                relay_id = PeerId.from_text(relays[0].address[1])
                await wait_until(every(0.05, lambda: is_listed(signal, relay_id)), timeout=30)
                return [s for batch in outcomes for s in batch], time.monotonic() - begin, flooded

        outcomes, latency, flooded = asyncio.run(flood())
        assert len(outcomes) == sources * per_source
        # more than the pending set holds: each new one pushed out the oldest of the heaviest source
        assert set(outcomes) <= {"pending", "source_limit", "rate_limited"}
        # one probe deadline (10 s) for a prober to come free, plus the relay's own start
        assert latency < 20.0, f"a reachable relay took {latency:.1f} s to be listed under the flood"
        print(f"\n{len(outcomes)} fakes posted in {flooded:.1f} s ({outcomes.count('pending')} pending); "
              f"a real relay was listed {latency:.2f} s after it started")
        assert _get(f"{signal}/healthz")["relays"] == 1
    finally:
        for relay in relays:
            relay.stop()
        signal_process.stop()
