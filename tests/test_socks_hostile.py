"""The SOCKS client against hostile and faulty conditions, with real `zmesh` processes on loopback:
applications that close while targets stay silent, listed relays nobody can reach, and a target
or a circuit that dies mid-download."""

from __future__ import annotations

import asyncio
import socket
import socketserver
import struct
import threading
import time

import pytest

from tests.conftest import wait_until
from tests.test_building import DeadFirst
from tests.test_native_mesh import start_mesh
from zmesh.descriptor import Capabilities, sign_descriptor
from zmesh.identity import Identity
from zmesh_relay import config as settings
from zmesh_relay.client import Client
from zmesh_relay.socks5 import socks5_connect

MiB = 1024 * 1024
BIG = 10 * MiB


class _Target(socketserver.BaseRequestHandler):
    """``GET /big``: 10 MiB close-delimited (HTTP/1.0, no Content-Length), the rest after ``gate``
    once 2 MiB are out; ``GET /reset``: 2 MiB, then a reset; ``GET /`` a small page; a connection
    that sends nothing gets nothing."""

    def handle(self) -> None:
        server: TargetServer = self.server  # type: ignore[assignment]
        with server.lock:
            server.open += 1
            server.peak = max(server.peak, server.open)
        try:
            request = self.request.recv(4096)
            if not request:
                return
            self.request.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
            chunk = b"z" * MiB
            if request.startswith(b"GET /reset "):  # 2 MiB, then the target crashes: a TCP reset
                self.request.sendall(chunk * 2)
                self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            if not request.startswith(b"GET /big "):
                self.request.sendall(b"small page")
                return
            for sent in range(BIG // MiB):
                if sent == 2:
                    server.paused.set()
                    server.gate.wait(60)
                self.request.sendall(chunk)
        except OSError:
            pass  # the exit reset us: the stream died
        finally:
            with server.lock:
                server.open -= 1


class TargetServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Target)
        self.lock = threading.Lock()
        self.open = self.peak = 0  # connections held now, and at most
        self.gate = threading.Event()  # set: send the rest of /big
        self.paused = threading.Event()  # set by a /big download waiting at the gate


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    target = TargetServer()
    threading.Thread(target=target.serve_forever, daemon=True).start()
    processes, url = start_mesh(tmp_path_factory.mktemp("relays"), target.server_address[1], relays=3, exits=1)
    try:
        host, port = processes[-1].address[0].rsplit(":", 1)
        yield {"target": target, "signal": url, "relays": processes[1:-1], "socks": (host, int(port))}
    finally:
        for process in reversed(processes):
            process.stop()
        target.shutdown()
        target.server_close()


async def _get(socks: tuple[str, int], target_port: int) -> bytes:
    reader, writer = await socks5_connect(*socks, "127.0.0.1", target_port)
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    response = await reader.read()
    writer.close()
    return response


def test_300_closed_connections_to_a_silent_target_leave_the_port_usable(mesh):
    """Issue 19 defect 5: each application connects, gets CONNECT succeeded, and closes; the target
    never answers. Every one is served (none reset), the target holds about the slot table (256)
    of them, not all 300, and a fetch works afterwards."""
    target, port = mesh["target"], mesh["target"].server_address[1]

    async def main() -> None:
        for _ in range(300):
            _, writer = await socks5_connect(*mesh["socks"], "127.0.0.1", port)  # raises on a reset
            writer.close()
        # The targets did hold them, and eviction ended the oldest: never all 300. An evicted slot's
        # END still has to cross the circuit before the exit closes its target connection, so on a
        # loaded machine a few new ones reach the target first (peaks of 259 and 261 were seen).
        assert 200 <= target.peak <= 256 + 24
        assert (await asyncio.wait_for(_get(mesh["socks"], port), 60)).endswith(b"small page")

    asyncio.run(asyncio.wait_for(main(), 240))


def test_256_greeting_less_connections_do_not_lock_the_port(mesh):
    """Issue 19 defect 10: a full table of connections that never send a greeting gives way to a
    real request (the oldest idle one is evicted) instead of refusing everyone until they time out."""
    async def main() -> None:
        idle = [await asyncio.open_connection(*mesh["socks"]) for _ in range(256)]
        try:
            assert (await asyncio.wait_for(_get(mesh["socks"], mesh["target"].server_address[1]), 60)) \
                .endswith(b"small page")
            assert await asyncio.wait_for(idle[0][0].read(), 30) == b""  # the oldest was let go
        finally:
            for _, writer in idle:
                writer.close()

    asyncio.run(main())


def test_the_client_builds_around_listed_relays_that_cannot_be_reached(mesh, provider):
    """Issue 19 defect 2 (client half): eight listed relays that nobody can reach, put first in
    every path until each has failed once (the old client gave up after 4 builds). The real
    ``zmesh client`` code builds a circuit anyway and the connection is served."""
    async def main() -> None:
        fakes = [await sign_descriptor(provider, await Identity.generate(provider), now=int(time.time()),
                                       addresses={"ws": ("ws://127.0.0.1:9",)}, capabilities=Capabilities(relay=True))
                 for _ in range(8)]
        # No pool: its background builds would meet the dead relays too; this counts one build's failures.
        client = Client(settings.load(flags={"signaling.url": mesh["signal"], "client.socks": "127.0.0.1:0",
                                             "client.circuit_pool": 0}))
        listed = client.directory.relays

        async def poisoned(*, refresh: bool = False) -> list:
            return fakes + await listed(refresh=refresh)

        client.directory.relays = poisoned
        real = await listed()
        client.selector = DeadFirst({f.peer_id for f in fakes}, [r for r in real if not r.capabilities.exit],
                                    next(r for r in real if r.capabilities.exit))
        await client.start()
        try:
            target_port = mesh["target"].server_address[1]
            response = await asyncio.wait_for(_get(("127.0.0.1", client.socks_port), target_port), 120)
            assert response.endswith(b"small page")
            assert {p: r.builds_failed for p, r in client.selector.trust.records.items() if r.builds_failed} \
                == dict.fromkeys((f.peer_id for f in fakes), 1)
        finally:
            await client.stop()

    asyncio.run(main())


def test_a_circuit_that_dies_mid_download_makes_curl_fail(mesh, tmp_path):
    """Issue 19 defect 7: a close-delimited 10 MiB answer; a relay of the circuit is killed after
    2 MiB. curl must fail (the SOCKS client resets the connection), not report a short file as
    complete; so must a download whose target resets (the exit's END says so). The same download
    without faults succeeds byte-complete, so the test can tell."""
    target, port = mesh["target"], mesh["target"].server_address[1]
    out = tmp_path / "big"

    async def curl(path: str = "/big") -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            "/usr/bin/curl", "-sS", "--max-time", "60", "--socks5-hostname", "{}:{}".format(*mesh["socks"]),
            "-o", str(out), f"http://127.0.0.1:{port}{path}", stderr=asyncio.subprocess.PIPE)

    async def main() -> None:
        # The target resets after 2 MiB: the exit ends the stream with an error, curl sees a reset.
        crashed = await curl("/reset")
        assert await asyncio.wait_for(crashed.wait(), 90) != 0, f"curl took {out.stat().st_size} bytes as complete"
        assert "reset" in (await crashed.stderr.read()).decode().lower()
        target.gate.set()
        whole = await curl()
        assert await asyncio.wait_for(whole.wait(), 90) == 0
        assert out.stat().st_size == BIG
        target.gate.clear()
        out.unlink()
        cut = await curl()
        await wait_until(lambda: out.exists() and out.stat().st_size >= MiB, 60)
        victim = mesh["relays"][0]  # 3 relays, 3 hops: every relay carries the circuit
        victim.proc.kill()
        victim.proc.wait()
        code = await asyncio.wait_for(cut.wait(), 60)
        target.gate.set()
        stderr = (await cut.stderr.read()).decode()
        assert code != 0, f"curl reported success on {out.stat().st_size} of {BIG} bytes"
        assert out.stat().st_size < BIG
        assert "reset" in stderr.lower() or "recv failure" in stderr.lower(), stderr

    asyncio.run(main())

