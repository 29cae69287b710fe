"""An onion service between real processes (issue 12, "Done when"): a signal server, six relays on
127.N.0.1 (one an exit, for ``zmesh.connect``), `zmesh service` forwarding to a local HTTP server, a
`zmesh client`, and curl with
``--socks5-hostname`` fetching 10 MiB from ``http://<addr>.mesh:VPORT/`` byte-exact. Afterwards no
relay's log (at debug level) or /metrics names the service's or the client's PeerId, nor the
address."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest

import zmesh
from zmesh.identity import PeerId
from zmesh.onion.address import decode_address

from .private_network import relay_listen
from .test_native_mesh import PAYLOAD, Process, _http_server

VPORT = 8080
_IDENTITY = re.compile(r"this run's node identity: (\S+)")


def _identity(log: Path) -> str:
    found = _IDENTITY.search(log.read_text())
    assert found, f"{log.name} does not say its node identity"
    return found.group(1)


@pytest.fixture(scope="module")
def onion(tmp_path_factory):
    root = tmp_path_factory.mktemp("onion")
    files, files_port = _http_server()
    processes: list[Process] = []
    try:
        processes.append(Process("signal", "--listen", "127.0.0.1:0"))
        url = processes[0].address[0]
        relays = []
        for number in range(1, 7):
            exit_flags = ["--exit", "--exit-allow", f"127.0.0.1/32:{files_port}"] if number == 6 else []
            relay = Process("--log-level", "debug", "relay", "--signal", url, "--listen", relay_listen(number),
                            "--metrics", "127.0.0.1:0", "--data-dir", str(root / f"r{number}"), *exit_flags,
                            log=root / f"relay{number}.log")
            relays.append(relay)
            processes.append(relay)
        service = Process("service", "--signal", url, "--data-dir", str(root / "service"),
                          "--forward", f"{VPORT}=127.0.0.1:{files_port}", log=root / "service.log")
        processes.append(service)
        client = Process("client", "--signal", url, "--socks", "127.0.0.1:0", "--control", "127.0.0.1:0",
                         log=root / "client.log")
        processes.append(client)
        yield {"signal": url, "relays": relays, "service": service, "client": client, "address": service.address[0],
               "socks": client.address[0], "control": client.next_ready("control")[0], "root": root,
               "files_port": files_port}
    finally:
        for process in reversed(processes):
            process.stop()
        files.shutdown()


def _curl(socks: str, url: str, out: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "--silent", "--show-error", "--max-time", str(timeout), "--socks5-hostname",
                           socks, "-o", str(out), "-w", "%{http_code}", url],
                          capture_output=True, text=True, timeout=timeout + 10)


def test_curl_fetches_ten_mib_from_a_mesh_address_and_no_relay_learns_either_end(onion):
    address = onion["address"]
    assert address.endswith(".mesh")
    out = onion["root"] / "big"
    done = _curl(onion["socks"], f"http://{address}:{VPORT}/big", out)
    assert done.returncode == 0 and done.stdout == "200", done.stderr
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(PAYLOAD).digest()
    small = _curl(onion["socks"], f"http://{address}:{VPORT}/small", onion["root"] / "small")
    assert small.stdout == "200" and (onion["root"] / "small").read_bytes() == b"small page"

    secrets = {"service node": _identity(onion["service"].log), "client node": _identity(onion["client"].log),
               "service key": PeerId(decode_address(address)).text, "address": address.removesuffix(".mesh")}
    for relay in onion["relays"]:
        log = relay.log.read_text()
        metrics = str(relay.scrape().samples)
        for what, text in secrets.items():
            assert text not in log, f"{relay.log.name} names the {what}"
            assert text not in metrics, f"a relay's /metrics names the {what}"
    intro_points = sum(relay.scrape()("zmesh_onion_points", kind="intro") for relay in onion["relays"])
    assert intro_points == 3


def _circuit_ids(control: str) -> set[str]:
    with urllib.request.urlopen(f"http://{control}/v1/circuits", timeout=5) as response:
        return {c["id"] for c in json.load(response)["circuits"]}


def test_a_typo_in_the_address_gets_a_socks_error_and_builds_nothing(onion):
    address = onion["address"]
    typo = ("b" if address[0] != "b" else "c") + address[1:]
    before = _circuit_ids(onion["control"])
    done = _curl(onion["socks"], f"http://{typo}:{VPORT}/small", onion["root"] / "typo", timeout=20)
    assert done.returncode == 97 and "(246)" in done.stderr, done.stderr  # Tor's 0xF6: invalid onion address
    assert _circuit_ids(onion["control"]) <= before


def test_a_port_the_service_does_not_forward_is_refused_and_the_listing_shows_onion_purposes(onion):
    done = _curl(onion["socks"], f"http://{onion['address']}:22/", onion["root"] / "refused", timeout=60)
    assert done.returncode == 97 and "(2)" in done.stderr, done.stderr  # SOCKS "not allowed": END SERVICE_PORT
    with urllib.request.urlopen(f"http://{onion['control']}/v1/circuits", timeout=5) as response:
        purposes = [c["purpose"] for c in json.load(response)["circuits"]]
    assert "rendezvous" in purposes


def test_python_connect_fetches_and_streams_to_a_mesh_address(onion):
    address = onion["address"]

    async def main() -> tuple[int, bytes, bytes]:
        async with zmesh.connect(onion["signal"]) as vpn:
            response = await vpn.fetch(f"http://{address}:{VPORT}/small")
            stream = await vpn.open_stream(address, VPORT)
            await stream.write(f"GET /small HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
            answer = b""
            while chunk := await stream.read():
                answer += chunk
            return response.status, response.body, answer

    status, body, answer = asyncio.run(asyncio.wait_for(main(), 120))
    assert status == 200 and body == b"small page" and answer.endswith(b"\r\n\r\nsmall page")
