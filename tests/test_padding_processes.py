"""Padding between real processes (docs/anonymity.md, docs/protocol.md "Padding negotiation"): a
signal server, two relays (the second an exit) in loopback /16s of their own, and SOCKS clients
over 2-hop circuits. Keep-alive PADDING flows on links that carry nothing else and shows in the
private /metrics; a cover rate within the relays' limit is negotiated, one above it is refused with
the PADDING_LIMIT reason."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request

import pytest

from tests.test_rtclink import websocket_listener
from zmesh_relay import wslink

from .test_native_mesh import Process, _http_server, fetch


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    data = tmp_path_factory.mktemp("padding")
    files, files_port = _http_server()
    processes = [Process("signal", "--listen", "127.0.0.1:0")]
    url = processes[0].address[0]
    try:
        for number in (1, 2):
            exit_ = ["--exit", "--exit-allow", f"127.0.0.1/32:{files_port}"] if number == 2 else []
            processes.append(Process("relay", "--signal", url, "--listen", f"127.{number}.0.1:0",
                                     "--metrics", "127.0.0.1:0", "--data-dir", str(data / f"r{number}"),
                                     "--padding-keepalive", "0.6", "--padding-max-rate", "60", *exit_))
        yield {"signal": url, "relays": processes[1:3], "files_port": files_port, "processes": processes}
    finally:
        for process in reversed(processes):
            process.stop()
        files.shutdown()


def _client(mesh, *args: str) -> tuple[Process, tuple[str, int]]:
    client = Process("client", "--signal", mesh["signal"], "--socks", "127.0.0.1:0", "--metrics", "127.0.0.1:0",
                     "--hops", "2", *args)
    mesh["processes"].append(client)
    host, port = client.address[0].rsplit(":", 1)
    return client, (host, int(port))


def _padding(process: Process) -> tuple[float, float]:
    scrape = process.scrape()
    return (scrape("zmesh_padding_cells_total", direction="in"), scrape("zmesh_padding_cells_total", direction="out"))


def _event(process: Process, name: str) -> float:
    return process.scrape().samples.get(("zmesh_node_events_total", (("event", name),)), 0.0)


def test_keepalive_padding_flows_on_idle_links_and_is_counted_in_metrics(mesh):
    client, socks = _client(mesh, "--padding-keepalive", "0.6", "--setup-padding", "0")  # keep-alive alone
    body = asyncio.run(asyncio.wait_for(fetch(socks, "127.0.0.1", mesh["files_port"], "/small"), 60))
    assert body
    before = _padding(client)
    time.sleep(3.0)  # nothing is sent: only keep-alive padding, every 0.1–0.6 s on each link
    after = _padding(client)
    assert after[1] - before[1] >= 3 and after[0] - before[0] >= 3  # the client pads, and its guard does
    for relay in mesh["relays"]:
        received, sent = _padding(relay)
        assert received >= 3 and sent >= 3  # every link of the mesh is padded both ways


def test_cover_within_the_limit_is_negotiated_and_over_it_refused_with_padding_limit(mesh):
    negotiated = sum(_event(relay, "padding_negotiated") for relay in mesh["relays"])
    client, socks = _client(mesh, "--cover", "constant:50")
    body = asyncio.run(asyncio.wait_for(fetch(socks, "127.0.0.1", mesh["files_port"], "/small"), 60))
    assert body
    assert sum(_event(relay, "padding_negotiated") for relay in mesh["relays"]) > negotiated
    assert _event(client, "padding_negotiated") >= 1

    greedy, _ = _client(mesh, "--cover", "constant:100")  # the relays allow 60 cells/s
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        failures = greedy.scrape()("zmesh_circuit_build_failures_total", reason="padding_limit")
        if failures >= 1:
            break
        time.sleep(0.2)
    assert failures >= 1
    assert sum(_event(relay, "padding_refused") for relay in mesh["relays"]) >= 1


def test_a_relay_names_no_server_software_in_its_answers(mesh):
    """docs/anonymity.md: a prober that reaches a relay's port does not read "aiohttp" in its headers."""
    for relay in mesh["relays"]:
        base = relay.address[0].replace("ws://", "http://").replace("/v1/link", "")
        with urllib.request.urlopen(base + "/healthz", timeout=5) as response:
            assert response.headers.get("Server") is None
        with pytest.raises(urllib.error.HTTPError) as refused:  # a plain GET on the link path: no upgrade
            urllib.request.urlopen(base + "/v1/link", timeout=5)
        assert refused.value.headers.get("Server") is None


def test_a_dial_sends_a_browsers_user_agent_not_aiohttps():
    async def main():
        seen = []

        async def on_link(link, headers):
            seen.append(headers.get("User-Agent", ""))
            await link.close()

        async with websocket_listener(on_link) as url:
            for headers in (None, {"User-Agent": "curl/8.5.0"}):
                link = await wslink.open_link(url, headers=headers)
                await link.close()
        assert seen == [wslink.DIAL_HEADERS["User-Agent"], "curl/8.5.0"]
        assert "aiohttp" not in seen[0] and "Python" not in seen[0]

    asyncio.run(main())


def test_a_default_client_pads_each_circuits_setup_with_its_first_hop(mesh):
    """zmesh.setuppad: on by default (anonymity.setup_padding = 24); the first hop says yes and both
    send DROP cells until each direction of the setup carried 24 cells."""
    negotiated = sum(_event(relay, "padding_setup_negotiated") for relay in mesh["relays"])
    client, socks = _client(mesh)
    assert asyncio.run(asyncio.wait_for(fetch(socks, "127.0.0.1", mesh["files_port"], "/small"), 60))
    assert sum(_event(relay, "padding_setup_negotiated") for relay in mesh["relays"]) > negotiated
    assert _event(client, "padding_setup_negotiated") >= 1
    time.sleep(2.5)  # the setup window is over
    assert _event(client, "padding_setup_cells_out") >= 1
    off, socks = _client(mesh, "--setup-padding", "0")
    assert asyncio.run(asyncio.wait_for(fetch(socks, "127.0.0.1", mesh["files_port"], "/small"), 60))
    assert _event(off, "padding_setup_negotiated") == 0 and _event(off, "padding_setup_cells_out") == 0
