"""The native mesh end to end: real `zmesh` subprocesses on loopback, a real SOCKS5 client, a real
HTTP server. 10 MiB through 3 hops, a killed relay, exit policy after DNS, hostile input."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import http.server
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from zmesh.errors import TransportError
from zmesh.netaddr import LinkAddress
from zmesh_relay.socks5 import socks5_connect

from .private_network import PRIVATE_NETWORK_ENV, relay_listen

MiB = 1024 * 1024
PAYLOAD = os.urandom(10 * MiB)
ZMESH = [sys.executable, "-m", "zmesh_relay.cli"]


class _Files(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = PAYLOAD if self.path == "/big" else b"small page"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _http_server() -> tuple[http.server.ThreadingHTTPServer, int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


class Scrape:
    """A Prometheus text exposition, parsed with prometheus-client's own parser."""

    def __init__(self, text: str) -> None:
        self.samples = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                        for family in text_string_to_metric_families(text) for sample in family.samples}

    def __call__(self, name: str, **labels: str) -> float:
        """The value of one sample (KeyError if the exporter does not have it)."""
        return self.samples[(name, tuple(sorted(labels.items())))]

    def total(self, name: str) -> float:
        """The sum of a metric over all its label values."""
        return sum(value for (sample, _), value in self.samples.items() if sample == name)


class Process:
    """A `zmesh` subprocess; ``address`` is what its first ready line announced, ``metrics`` the
    HOST:PORT of its private /metrics when started with ``--metrics``. Its mesh is on loopback, so it
    runs on a declared private network unless ``env`` says otherwise (benchmarks use it too).
    ``log`` takes its stderr (a file, so a chatty ``--log-level debug`` never fills a pipe)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, log: Path | None = None) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", PRIVATE_NETWORK_ENV: "true", **(env or {})}
        self.log = log
        with open(log, "w") if log else contextlib.nullcontext(subprocess.PIPE) as stderr:
            self.proc = subprocess.Popen([*ZMESH, *args], stdout=subprocess.PIPE, stderr=stderr,
                                         text=True, env=env)
        # Lines read by a thread: a select() on the pipe misses a second line already in Python's buffer.
        self._lines: queue.Queue[str] = queue.Queue()
        self._early: list[tuple[str, list[str]]] = []  # ready lines read while waiting for another kind
        threading.Thread(target=self._read_lines, daemon=True).start()
        self.address = self.next_ready()
        self.metrics = self.next_ready("metrics")[0] if "--metrics" in args else None

    def scrape(self) -> Scrape:
        """Its /metrics, parsed."""
        assert self.metrics is not None, "started without --metrics"
        with urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=5) as response:
            return Scrape(response.read().decode())

    def _read_lines(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put("")  # end of output: the process exited

    def next_ready(self, what: str | None = None, timeout: float = 30.0) -> list[str]:
        """The fields of the next ``zmesh-ready`` line (of kind ``what`` when given: lines of other
        kinds are kept for later calls)."""
        for index, (kind, fields) in enumerate(self._early):
            if what in (None, kind):
                del self._early[index]
                return fields
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if not line:
                break
            if line.startswith("zmesh-ready "):
                _, kind, *fields = line.split()
                if what in (None, kind):
                    return fields
                self._early.append((kind, fields))
        self.proc.kill()
        self.proc.wait()
        stderr = self.log.read_text() if self.log else self.proc.stderr.read()
        raise AssertionError(f"zmesh {self.proc.args[3:]} did not start: {stderr[-2000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_mesh(data_dir: Path, allowed_port: int, *, relays: int, exits: int,
               env: dict[str, str] | None = None) -> tuple[list[Process], str]:
    """Signal server, ``relays`` relays (relay N on 127.N.0.1, the last ``exits`` of them exits
    allowed to reach 127.0.0.1:``allowed_port``) and a SOCKS client; the client is the last process. ``env``
    configures the relays and the client (``ZMESH_*``)."""
    processes = [Process("signal", "--listen", "127.0.0.1:0")]
    url = processes[0].address[0]
    try:
        for index in range(relays):
            extra = ["--exit", "--exit-allow", f"127.0.0.1/32:{allowed_port}"] if index >= relays - exits else []
            processes.append(Process("relay", "--signal", url, "--listen", relay_listen(index + 1),
                                     "--metrics", "127.0.0.1:0",
                                     "--data-dir", str(data_dir / f"r{index}"), *extra, env=env))
        processes.append(Process("client", "--signal", url, "--socks", "127.0.0.1:0", env=env))
    except BaseException:
        for process in reversed(processes):
            process.stop()
        raise
    return processes, url


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    files, files_port = _http_server()
    refused, refused_port = _http_server()
    processes, url = start_mesh(tmp_path_factory.mktemp("relays"), files_port, relays=5, exits=2)
    try:
        host, port = processes[-1].address[0].rsplit(":", 1)
        yield {"signal": url, "relays": processes[1:-1], "socks": (host, int(port)), "files_port": files_port,
               "refused_port": refused_port}
    finally:
        for process in reversed(processes):
            process.stop()
        files.shutdown()
        refused.shutdown()


async def fetch(socks: tuple[str, int], host: str, port: int, path: str, *, username: str | None = None) -> bytes:
    """GET ``path`` through the SOCKS proxy; a ``username`` (password "x") picks the circuit."""
    reader, writer = await socks5_connect(socks[0], socks[1], host, port, username=username,
                                          password=None if username is None else "x")
    writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200"), head[:100]
    return body


def test_ten_mib_through_three_relays_is_byte_exact(mesh):
    body = asyncio.run(asyncio.wait_for(fetch(mesh["socks"], "127.0.0.1", mesh["files_port"], "/big"), 120))
    assert hashlib.sha256(body).digest() == hashlib.sha256(PAYLOAD).digest()
    # transport: auto (the default) between native nodes is WebSocket first (measured faster than
    # aiortc), with WebRTC ready as the fallback: every relay holds its signaling socket
    scrapes = [relay.scrape() for relay in mesh["relays"]]
    assert all(scrape("zmesh_webrtc_signaling_up") == 1 for scrape in scrapes)
    assert sum(scrape("zmesh_links", transport="websocket") for scrape in scrapes) >= 5
    assert sum(scrape("zmesh_links", transport="webrtc") for scrape in scrapes) == 0


def test_forced_webrtc_mesh_carries_circuits_over_datachannels(tmp_path):
    """transport.kind = webrtc: every link, client to exit, is an aiortc DataChannel."""
    files, files_port = _http_server()
    # No pool: the link count below is that of the one circuit the fetch uses.
    processes, _ = start_mesh(tmp_path, files_port, relays=3, exits=1,
                              env={"ZMESH_TRANSPORT_KIND": "webrtc", "ZMESH_CLIENT_CIRCUIT_POOL": "0"})
    try:
        host, port = processes[-1].address[0].rsplit(":", 1)
        body = asyncio.run(asyncio.wait_for(fetch((host, int(port)), "127.0.0.1", files_port, "/big"), 120))
        assert hashlib.sha256(body).digest() == hashlib.sha256(PAYLOAD).digest()
        scrapes = [relay.scrape() for relay in processes[1:-1]]  # 3 links, 2 ends each, 1 at the client:
        assert sum(scrape("zmesh_links", transport="webrtc") for scrape in scrapes) == 5
        assert sum(scrape("zmesh_links", transport="websocket") for scrape in scrapes) == 0
    finally:
        for process in reversed(processes):
            process.stop()
        files.shutdown()


def test_exit_refuses_loopback_unless_allowed_even_by_name(mesh):
    for host in ("127.0.0.1", "localhost"):
        with pytest.raises(TransportError, match="not allowed|0x02|ruleset"):
            asyncio.run(asyncio.wait_for(fetch(mesh["socks"], host, mesh["refused_port"], "/"), 60))
    # the allowed port by name still works: the rule is about the resolved address
    assert asyncio.run(asyncio.wait_for(fetch(mesh["socks"], "localhost", mesh["files_port"], "/"), 60)) \
        == b"small page"


def _health(link_url: str) -> dict:
    http_url = link_url.replace("ws://", "http://").replace("/v1/link", "/healthz")
    with urllib.request.urlopen(http_url, timeout=5) as response:
        return json.load(response)


async def _cut_off(session: aiohttp.ClientSession, url: str, payload: bytes | str, greeting: bool = False) -> None:
    """Send ``payload`` and expect the server to end the connection."""
    try:
        async with session.ws_connect(url, max_msg_size=0) as ws:
            if greeting:
                await ws.receive_json(timeout=10)
            await (ws.send_bytes(payload) if isinstance(payload, bytes) else ws.send_str(payload))
            msg = await ws.receive(timeout=10)
            while msg.type == aiohttp.WSMsgType.BINARY:  # e.g. the relay's AUTH_CHALLENGE greeting
                msg = await ws.receive(timeout=10)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING,
                                aiohttp.WSMsgType.ERROR)
    except (aiohttp.ClientError, ConnectionError):
        pass  # reset while we were still sending: also cut off


def test_hostile_input_gets_clean_errors_and_servers_keep_serving(mesh):
    signal_url = mesh["signal"]
    for body, code in ((b"\xff\x00garbage", 400), (os.urandom(20_000), 413)):
        request = urllib.request.Request(f"{signal_url}/v1/descriptors", data=body, method="POST",
                                         headers={"Content-Type": "application/octet-stream"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=5)
        assert info.value.code == code and "error" in json.loads(info.value.read())
    # a relay's real descriptor with one signature byte flipped is refused as invalid
    with urllib.request.urlopen(f"{signal_url}/v1/relays", timeout=5) as response:
        raw = bytearray(base64.b64decode(json.load(response)["relays"][0]))
    raw[-1] ^= 1
    request = urllib.request.Request(f"{signal_url}/v1/descriptors", data=bytes(raw), method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=5)
    assert info.value.code == 422

    relay_url = mesh["relays"][0].address[0]
    host, port = LinkAddress.parse(relay_url).host, LinkAddress.parse(relay_url).port

    async def attack() -> None:
        # raw garbage on the link port
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(os.urandom(4096))
        async with aiohttp.ClientSession() as session:
            # a WebSocket that sends malformed cells; one that sends an oversized frame; an
            # oversized signaling message: each is cut off (a close or a reset), nothing else
            await _cut_off(session, relay_url, os.urandom(1024 * 3))
            await _cut_off(session, relay_url, bytes(2 * MiB))
            await _cut_off(session, signal_url + "/v1/ws", "x" * (200 * 1024), greeting=True)

    asyncio.run(attack())
    assert _health(relay_url)["status"] == "ok"
    with urllib.request.urlopen(f"{signal_url}/healthz", timeout=5) as response:
        assert json.load(response)["status"] == "ok"
    assert asyncio.run(asyncio.wait_for(fetch(mesh["socks"], "127.0.0.1", mesh["files_port"], "/"), 60)) \
        == b"small page"


def test_killed_middle_relay_next_fetch_succeeds(mesh):
    assert asyncio.run(asyncio.wait_for(fetch(mesh["socks"], "127.0.0.1", mesh["files_port"], "/"), 60)) \
        == b"small page"
    carrying = [r for r in mesh["relays"][:3] if r.scrape()("zmesh_circuits_active", role="relay") > 0]
    assert carrying, "no non-exit relay carries the client's circuit"
    victim = carrying[0]
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()
    body = asyncio.run(asyncio.wait_for(fetch(mesh["socks"], "127.0.0.1", mesh["files_port"], "/"), 60))
    assert body == b"small page"


def test_processes_stop_cleanly_on_sigterm(mesh, tmp_path):
    relay = Process("relay", "--signal", mesh["signal"], "--listen", relay_listen(len(mesh["relays"]) + 1),
                    "--data-dir", str(tmp_path / "relay"))
    assert relay.stop() == 0
    key = Path(tmp_path / "relay" / "identity.key")
    assert key.exists() and (key.stat().st_mode & 0o777) == 0o600
