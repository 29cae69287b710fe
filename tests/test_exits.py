"""Exits for real (issue 18, items 1-3): `zmesh` relay and client processes on loopback, each relay in
its own 127.N/16, a real HTTP CONNECT proxy (Debian's tinyproxy) in front of an upstream-proxy exit.

- the default policy refuses port 25 at the exit; an exit with `--exit-policy 'accept *:25'` carries it;
- a port no exit's summary admits is refused by the client at once (SOCKS 0x02), no circuit built;
- through the proxy exit a fetch succeeds and the proxy logs the CONNECT to the checked address; a
  target the exit's policy refuses never reaches the proxy; a dead proxy is SOCKS 0x03;
- `client.exit_country` draws only exits declaring that country; an absent country is a clear error.
"""

from __future__ import annotations

import asyncio
import http.server
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.private_network import free_port
from tests.test_native_mesh import ZMESH, Process, _Files, _http_server, fetch
from zmesh.cells import EndReason
from zmesh.errors import CircuitError, StreamError, TransportError
from zmesh.identity import PeerId
from zmesh_relay import config as settings
from zmesh_relay.client import Client
from zmesh_relay.socks5 import NETWORK_UNREACHABLE, NOT_ALLOWED, Socks5Server, reply_for, socks5_connect

BUILD_TIMEOUT = 30.0  # core.build_timeout's default: a refusal "at once" is a small fraction of it


@pytest.fixture(scope="module")
def tinyproxy(tmp_path_factory):
    """Debian's tinyproxy on a loopback port with a temporary config and log (`make setup` installs it)."""
    binary = shutil.which("tinyproxy")
    assert binary, "tinyproxy is missing: run `make setup` (or apt-get install tinyproxy)"
    folder = tmp_path_factory.mktemp("tinyproxy")
    port, log = free_port(), folder / "tinyproxy.log"
    conf = folder / "tinyproxy.conf"
    # No ConnectPort line: CONNECT to any port (the exit's policy is what decides, not the proxy).
    conf.write_text(f'Port {port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 50\nLogFile "{log}"\nLogLevel Info\n')
    proc = subprocess.Popen([binary, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    def settled() -> bool:
        return proc.poll() is not None or "Accepting connections" in (log.read_text() if log.exists() else "")

    asyncio.run(wait_until(settled, 10))
    assert proc.poll() is None, f"tinyproxy did not start: {proc.stderr.read()}"
    yield {"port": port, "log": log}
    if proc.poll() is None:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def exits(tmp_path_factory, tinyproxy):
    """Two relays, four exits (DE default policy; SE accepting 25; SE through tinyproxy; NO through a
    proxy that is not there), a client and a `--exit-kind proxy --exit-country SE` client. Exits may
    reach 127.0.0.1 on any port: the port policy decides."""
    data = tmp_path_factory.mktemp("exits")
    files, files_port = _http_server()
    smtp = http.server.ThreadingHTTPServer(("127.0.0.1", 25), _Files)  # an HTTP page on port 25 will do
    threading.Thread(target=smtp.serve_forever, daemon=True).start()
    processes = [Process("signal", "--listen", "127.0.0.1:0")]
    url = processes[0].address[0]
    reach = ["--exit", "--exit-allow", "127.0.0.1/32:*"]
    roles = {"relay1": ["--country", "DE"], "relay2": ["--country", "DE"],
             "direct_de": [*reach, "--country", "DE"],
             "smtp_se": [*reach, "--country", "SE", "--exit-policy", "accept *:25"],
             "proxy_se": [*reach, "--country", "SE", "--exit-upstream", f"http://127.0.0.1:{tinyproxy['port']}"],
             "dead_proxy_no": [*reach, "--country", "NO", "--exit-upstream", f"http://127.0.0.1:{free_port()}"]}
    try:
        for number, (name, args) in enumerate(roles.items(), start=1):
            processes.append(Process("relay", "--signal", url, "--listen", f"127.{number}.0.1:0",
                                     "--metrics", "127.0.0.1:0", "--data-dir", str(data / name), *args))
        processes.append(Process("client", "--signal", url, "--socks", "127.0.0.1:0"))
        processes.append(Process("client", "--signal", url, "--socks", "127.0.0.1:0", "--exit-kind", "proxy",
                                 "--exit-country", "SE"))
        socks = [(host, int(port)) for host, port in (p.address[0].rsplit(":", 1) for p in processes[-2:])]
        yield {"signal": url, "relays": dict(zip(roles, processes[1:-2], strict=True)), "socks": socks[0],
               "proxy_socks": socks[1], "files_port": files_port}
    finally:
        for process in reversed(processes):
            process.stop()
        files.shutdown()
        smtp.shutdown()


def _peer(process: Process) -> PeerId:
    return PeerId.from_text(process.address[1])


async def _in_process_client(signal_url: str, **flags: str):
    """The real `zmesh client` code in this process, so a test can choose its path and read its choices."""
    cfg = settings.load(env={"ZMESH_NETWORK_ALLOW_PRIVATE_ADDRESSES": "true"},
                        flags={"signaling.url": signal_url, "client.socks": "127.0.0.1:0", **flags})
    client = Client(cfg)
    await client.start()
    return client


def test_the_default_policy_refuses_port_25_at_the_exit(exits):
    """Forced through the default-policy exit (the path chosen by hand), port 25 ends EXIT_POLICY,
    which the SOCKS front answers 0x02; the same exit carries other ports."""
    relays = exits["relays"]

    async def main():
        client = await _in_process_client(exits["signal"])
        try:
            listed = {r.peer_id: r for r in await client.directory.relays(refresh=True)}
            path = [listed[_peer(relays[name])] for name in ("relay1", "relay2", "direct_de")]
            assert not path[-1].allows_port(25) and path[-1].allows_port(80)  # its summary says so too
            circuit = (await client.driver.build(path)).circuit
            with pytest.raises(StreamError, match="exit policy") as refused:
                await client.driver.open_stream(circuit, "127.0.0.1", 25)
            stream = await client.driver.open_stream(circuit, "127.0.0.1", exits["files_port"])
            await stream.close(EndReason.DONE)
            # and on the SOCKS wire, a front whose every CONNECT goes down that circuit
            front = Socks5Server(lambda host, port, _isolation: client.driver.open_stream(circuit, host, port))
            try:
                with pytest.raises(TransportError, match="0x02: not allowed by ruleset"):
                    await socks5_connect("127.0.0.1", await front.start("127.0.0.1", 0), "127.0.0.1", 25)
            finally:
                await front.close()
            return refused.value
        finally:
            await client.stop()

    refused = asyncio.run(asyncio.wait_for(main(), 60))
    assert refused.reason is EndReason.EXIT_POLICY and reply_for(refused) == NOT_ALLOWED


def test_an_explicit_accept_rule_carries_port_25(exits):
    """Only the exit with `accept *:25` publishes 25, so the client picks it, and the page arrives."""
    for user in ("a", "b", "c"):  # fresh isolations: each draws its own path
        async def one(user=user):
            reader, writer = await socks5_connect(*exits["socks"], "127.0.0.1", 25, username=user, password="x")
            writer.write(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            await writer.drain()
            response = await reader.read()
            writer.close()
            return response

        response = asyncio.run(asyncio.wait_for(one(), 60))
        assert response.startswith(b"HTTP/1.0 200") and response.endswith(b"small page")


def test_a_port_no_exit_accepts_is_refused_at_once_without_a_circuit(exits):
    relays = exits["relays"].values()
    # a fetch on port 25 (only the SE exit with `accept *:25` takes it; never the dead proxy's exit)
    assert asyncio.run(asyncio.wait_for(fetch(exits["socks"], "127.0.0.1", 25, "/"), 60)) == b"small page"
    handshakes = sum(r.scrape()("zmesh_handshakes_total", result="answered") for r in relays)
    assert handshakes >= 3  # the counter counts: that fetch's circuit took one per hop
    started = time.monotonic()
    for port in (587, 445, 6881):
        with pytest.raises(TransportError, match="0x02: not allowed by ruleset"):
            asyncio.run(asyncio.wait_for(socks5_connect(*exits["socks"], "127.0.0.1", port,
                                                        username=f"new{port}", password="x"), 30))
    elapsed = time.monotonic() - started
    assert elapsed < BUILD_TIMEOUT / 10, f"{elapsed:.1f} s for three refusals"
    assert sum(r.scrape()("zmesh_handshakes_total", result="answered") for r in relays) == handshakes


def test_through_the_upstream_proxy_exit_the_fetch_succeeds_and_the_proxy_saw_the_connect(exits, tinyproxy):
    files_port, log = exits["files_port"], tinyproxy["log"]
    body = asyncio.run(asyncio.wait_for(fetch(exits["proxy_socks"], "localhost", files_port, "/"), 60))
    assert body == b"small page"
    # the exit resolved "localhost" and checked it; the proxy was asked for the checked address
    assert f"CONNECT 127.0.0.1:{files_port} HTTP/1.1" in log.read_text()
    # the exit's policy still applies to the target: port 25 is refused before the proxy hears of it
    with pytest.raises(TransportError, match="0x02"):
        asyncio.run(asyncio.wait_for(socks5_connect(*exits["proxy_socks"], "127.0.0.1", 25), 60))
    assert ":25 HTTP" not in log.read_text()


def test_a_dead_upstream_proxy_is_a_clear_socks_error(exits):
    """The NO exit's proxy does not listen: its END is UPSTREAM_FAILED, SOCKS 0x03, at once."""
    async def main():
        client = await _in_process_client(exits["signal"], **{"client.exit_kind": "proxy",
                                                              "client.exit_country": "NO"})
        try:
            with pytest.raises(StreamError, match="upstream failed") as failed:
                await client.open_stream("127.0.0.1", exits["files_port"], (b"first", b"x"))
            started = time.monotonic()
            with pytest.raises(TransportError, match="0x03: network unreachable"):
                await socks5_connect("127.0.0.1", client.socks_port, "127.0.0.1", exits["files_port"])
            return failed.value, time.monotonic() - started
        finally:
            await client.stop()

    failed, elapsed = asyncio.run(asyncio.wait_for(main(), 60))
    assert failed.reason is EndReason.UPSTREAM_FAILED and reply_for(failed) == NETWORK_UNREACHABLE
    assert elapsed < BUILD_TIMEOUT / 2


def _exits_used(client: Client) -> set[PeerId]:
    """The exits of every circuit the client holds (its control-port view: pool circuits too)."""
    return {PeerId.from_text(circuit["path"][-1]) for circuit in client.status()["circuits"]}


def test_exit_country_draws_only_exits_declaring_it(exits):
    relays = exits["relays"]

    async def main():
        se, de, nowhere = [await _in_process_client(exits["signal"], **{"client.exit_country": country})
                           for country in ("se", "DE", "FR")]
        try:
            for isolation in range(6):
                for client in (se, de):
                    stream = await client.open_stream("127.0.0.1", exits["files_port"], (str(isolation).encode(), b"x"))
                    await stream.close(EndReason.DONE)
            with pytest.raises(CircuitError, match="no exit in country FR is in the directory") as absent:
                await nowhere.open_stream("127.0.0.1", exits["files_port"], None)
            return (_exits_used(se), _exits_used(de), absent.value)
        finally:
            for client in (se, de, nowhere):
                await client.stop()

    se_exits, de_exits, absent = asyncio.run(asyncio.wait_for(main(), 120))
    assert se_exits <= {_peer(relays["smtp_se"]), _peer(relays["proxy_se"])} and se_exits
    assert de_exits == {_peer(relays["direct_de"])}  # the NO and SE exits never, nor relay1/2 (no exits)
    assert "declare" in str(absent)


@pytest.mark.parametrize("args, named", [
    (["client", "--exit-country", "D1"], "client.exit_country"),
    (["client", "--exit-country", "DEU"], "client.exit_country"),
    (["relay", "--exit", "--exit-policy", "accept *:99999"], "exit.policy"),
    (["relay", "--exit", "--exit-policy", "permit *:25"], "exit.policy"),
    (["relay", "--exit", "--exit-upstream", "socks5://127.0.0.1:1080"], "exit.upstream"),
    (["relay", "--exit", "--exit-upstream", "http://user:secret@127.0.0.1:3128"], "exit.upstream"),
])
def test_bad_exit_settings_stop_the_command_naming_the_key(args, named):
    result = subprocess.run([*ZMESH, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and named in result.stderr, result.stderr


def test_an_upstream_on_a_relay_that_is_no_exit_is_refused(tmp_path):
    relay = subprocess.run([*ZMESH, "relay", "--signal", "http://127.0.0.1:9", "--listen", "127.9.0.1:0",
                            "--data-dir", str(Path(tmp_path) / "r"), "--exit-upstream", "http://127.0.0.1:3128"],
                           capture_output=True, text=True, timeout=60)
    assert relay.returncode == 1 and "add --exit" in relay.stderr, relay.stderr
