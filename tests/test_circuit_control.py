"""Circuit isolation, rotation and the pool, seen through the client's control port (real processes).

A signal server, six relays (two exits) each on a loopback /16 of its own, and per test a
`zmesh client` with the flags under test. Streams go to a TCP echo server the exits may reach;
what the client did is read from `GET /v1/circuits` (docs/control.md), as an operator would."""

from __future__ import annotations

import asyncio
import json
import socketserver
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest

from zmesh_relay.socks5 import socks5_connect
from zmesh_relay.splice import reset

from .conftest import wait_until
from .test_native_mesh import ZMESH, Process

RELAYS, EXITS = 6, 2


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except ConnectionError:
            pass  # the exit reset the connection: the stream was closed abnormally on purpose


class ClientProcess(Process):
    """A `zmesh client` with a control port: ``socks`` and ``control`` from its two ready lines."""

    def __init__(self, signal: str, *flags: str) -> None:
        super().__init__("client", "--signal", signal, "--socks", "127.0.0.1:0", "--control", "127.0.0.1:0", *flags)
        host, port = self.address[0].rsplit(":", 1)
        self.socks = (host, int(port))
        self.control = self.next_ready("control")[0]

    def circuits(self) -> dict:
        with urllib.request.urlopen(f"http://{self.control}/v1/circuits", timeout=5) as response:
            return json.load(response)

    async def wait_for(self, condition: Callable[[dict], bool], timeout: float = 30.0) -> dict:
        """Poll the control port until ``condition`` holds for its document; return that document."""
        seen: dict = {}

        def check() -> bool:
            seen["document"] = self.circuits()
            return condition(seen["document"])
        try:
            await wait_until(check, timeout)
        except AssertionError:
            raise AssertionError(f"the control port never showed that; last: {seen.get('document')}") from None
        return seen["document"]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    echo = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    echo.daemon_threads = True
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    echo_port = echo.server_address[1]
    data = tmp_path_factory.mktemp("relays")
    processes = [Process("signal", "--listen", "127.0.0.1:0")]
    signal = processes[0].address[0]
    try:
        for n in range(1, RELAYS + 1):
            exit_flags = ["--exit", "--exit-allow", f"127.0.0.1/32:{echo_port}"] if n > RELAYS - EXITS else []
            processes.append(Process("relay", "--signal", signal, "--listen", f"127.{n}.0.1:0",
                                     "--data-dir", str(data / f"r{n}"), *exit_flags))
        yield {"signal": signal, "echo_port": echo_port}
    finally:
        for process in reversed(processes):
            process.stop()
        echo.shutdown()


@pytest.fixture
def client_factory(mesh):
    clients: list[ClientProcess] = []

    def start(*flags: str) -> ClientProcess:
        clients.append(ClientProcess(mesh["signal"], *flags))
        return clients[-1]
    yield start
    for client in clients:
        client.stop()


async def _open(client: ClientProcess, port: int, credentials: tuple[str, str] | None = None):
    user, password = credentials or (None, None)
    reader, writer = await socks5_connect(*client.socks, "127.0.0.1", port, username=user, password=password)
    await _echo(reader, writer, b"hello")
    return reader, writer


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(len(data)), 30) == data


def _drop(writer: asyncio.StreamWriter) -> None:
    """Close a SOCKS connection at once (a reset): a clean close would leave its stream waiting up to
    the half-close timeout for the rest of the answer, since zmesh streams have no half-close."""
    reset(writer)


def _general(document: dict) -> list[dict]:
    return [c for c in document["circuits"] if c["purpose"] == "general"]


def test_two_socks_credentials_get_two_circuits_with_different_exits(mesh, client_factory):
    client = client_factory("--circuit-pool", "0")

    async def scenario() -> dict:
        alice = await _open(client, mesh["echo_port"], ("alice", "secret-one"))
        bob = await _open(client, mesh["echo_port"], ("bob", "secret-two"))
        document = await client.wait_for(lambda d: len(_general(d)) == 2)
        for _, writer in (alice, bob):
            _drop(writer)
        return document

    document = asyncio.run(scenario())
    first, second = _general(document)
    assert first["id"] != second["id"] and first["streams"] == second["streams"] == 1
    assert first["isolation"] != second["isolation"]
    assert first["path"][-1] != second["path"][-1], "two exits are listed: each credential gets its own"
    assert all(len(c["path"]) == 3 for c in (first, second))
    text = json.dumps(document)
    assert "secret" not in text and "alice" not in text and "bob" not in text  # no credential is shown
    # both enter at a primary guard (the second when the first is the only exit left for bob's
    # circuit, whose exit must differ from alice's), listed by the control port
    assert {first["path"][0], second["path"][0]} <= set(document["guards"])


def test_same_credential_after_dirtiness_limit_gets_a_new_circuit_and_open_stream_survives(mesh, client_factory):
    client = client_factory("--circuit-pool", "0", "--max-circuit-dirtiness", "2")
    carol = ("carol", "pw")

    async def scenario() -> None:
        reader, writer = await _open(client, mesh["echo_port"], carol)
        (old,) = _general(client.circuits())
        # Before the limit, the same credential shares the circuit.
        second = await _open(client, mesh["echo_port"], carol)
        assert [c["id"] for c in _general(client.circuits())] == [old["id"]]
        _drop(second[1])
        await client.wait_for(lambda d: [(c["streams"], c["age_s"] >= 2.5) for c in _general(d)] == [(1, True)])
        third = await _open(client, mesh["echo_port"], carol)
        document = client.circuits()
        ids = {c["id"]: c for c in _general(document)}
        assert len(ids) == 2 and old["id"] in ids, document
        new = next(c for c in ids.values() if c["id"] != old["id"])
        assert new["isolation"] == old["isolation"] and new["streams"] == 1
        assert ids[old["id"]]["streams"] == 1  # the first stream is still on the old circuit...
        await _echo(reader, writer, b"still here" * 100)  # ...and still carries data
        _drop(writer)
        # Its last stream gone, the dirty circuit is closed; the new one stays.
        final = await client.wait_for(lambda d: old["id"] not in {c["id"] for c in d["circuits"]})
        assert [c["id"] for c in _general(final)] == [new["id"]]
        _drop(third[1])

    asyncio.run(scenario())


def test_pool_circuits_are_built_before_the_first_connection_and_used_by_it(mesh, client_factory):
    client = client_factory("--circuit-pool", "2")

    async def scenario() -> None:
        before = await client.wait_for(lambda d: len(d["circuits"]) == 2)
        assert all(c["purpose"] == "pool" and c["streams"] == 0 and c["isolation"] is None
                   for c in before["circuits"])
        pool_ids = {c["id"] for c in before["circuits"]}
        reader, writer = await _open(client, mesh["echo_port"])
        (used,) = _general(client.circuits())
        assert used["id"] in pool_ids and used["streams"] == 1 and used["isolation"] == "socks-noauth"
        # The pool refills behind the claimed circuit.
        after = await client.wait_for(lambda d: sum(c["purpose"] == "pool" for c in d["circuits"]) == 2)
        assert len(after["circuits"]) == 3
        _drop(writer)

    asyncio.run(scenario())


def test_status_prints_the_control_port_as_a_table_and_unknown_paths_are_json_404(mesh, client_factory):
    client = client_factory("--circuit-pool", "1")
    (pool,) = asyncio.run(client.wait_for(lambda d: len(d["circuits"]) == 1))["circuits"]
    shown = subprocess.run([*ZMESH, "status", "--control", client.control], capture_output=True, text=True,
                           timeout=30, check=True).stdout
    lines = shown.splitlines()
    assert lines[0].startswith("guards: ") and pool["path"][0][:10] in lines[0]
    assert lines[2].split() == ["ID", "PURPOSE", "AGE", "STREAMS", "ISOLATION", "PATH"]
    row = lines[3].split()
    assert row[0] == pool["id"] and row[1] == "pool" and row[3] == "0" and row[4] == "-"
    assert " > ".join(peer[:10] for peer in pool["path"]) in lines[3]
    for url, method, status in ((f"http://{client.control}/v1/nothing", "GET", 404),
                                (f"http://{client.control}/v1/circuits", "POST", 405)):
        with pytest.raises(urllib.error.HTTPError) as failure:
            urllib.request.urlopen(urllib.request.Request(url, method=method, data=b"" if method == "POST" else None),
                                   timeout=5)
        assert failure.value.code == status and "error" in json.load(failure.value)


def test_control_port_refuses_a_non_loopback_address_unless_allowed(mesh):
    refused = subprocess.run([*ZMESH, "client", "--signal", mesh["signal"], "--socks", "127.0.0.1:0",
                              "--control", "0.0.0.0:0"], capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0
    assert "not a loopback address" in refused.stderr and "--control-allow-remote" in refused.stderr
    remote = ClientProcess(mesh["signal"], "--control", "0.0.0.0:0", "--control-allow-remote")
    try:
        assert remote.control.startswith("0.0.0.0:") and set(remote.circuits()) == {"guards", "circuits"}
    finally:
        remote.stop()
    assert "non-loopback" in remote.proc.stderr.read()
