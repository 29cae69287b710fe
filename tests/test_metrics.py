"""No oracles on the public port; the private ``/metrics`` of relays and clients (docs/metrics.md).

Real processes: a signal server, three relays each in a loopback /16 of its own (the last an exit),
a SOCKS client; a download through the 3-hop circuit; then what a stranger sees on a relay's link
port, and what the operator sees on its loopback metrics listener.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from zmesh.cells import RELAY_DATA_SIZE
from zmesh.errors import ConfigError
from zmesh_relay import config as settings

from .test_native_mesh import Process, _http_server, fetch

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "zmesh.json"
BIG = 10 * 1024 * 1024  # test_native_mesh's /big


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    data = tmp_path_factory.mktemp("metrics")
    files, files_port = _http_server()
    processes = [Process("signal", "--listen", "127.0.0.1:0")]
    url = processes[0].address[0]
    try:
        for number in (1, 2, 3):
            exit_ = ["--exit", "--exit-allow", f"127.0.0.1/32:{files_port}"] if number == 3 else []
            processes.append(Process("relay", "--signal", url, "--listen", f"127.{number}.0.1:0",
                                     "--metrics", "127.0.0.1:0", "--data-dir", str(data / f"r{number}"), *exit_))
        processes.append(Process("client", "--signal", url, "--socks", "127.0.0.1:0", "--metrics", "127.0.0.1:0"))
        host, port = processes[-1].address[0].rsplit(":", 1)
        body = asyncio.run(asyncio.wait_for(fetch((host, int(port)), "127.0.0.1", files_port, "/big"), 120))
        assert len(body) == BIG
        yield {"signal": url, "relays": processes[1:4], "client": processes[-1]}
    finally:
        for process in reversed(processes):
            process.stop()
        files.shutdown()


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _http(link_url: str, path: str) -> str:
    return link_url.replace("ws://", "http://").replace("/v1/link", path)


def test_the_public_healthz_says_ok_and_nothing_that_moves_with_traffic(mesh):
    for relay in mesh["relays"]:
        status, body = _get(_http(relay.address[0], "/healthz"))
        assert (status, json.loads(body)) == (200, {"status": "ok"})
        status, _ = _get(_http(relay.address[0], "/metrics"))
        assert status == 404  # the counters are not on the link port under another name either


def test_the_private_metrics_count_the_download_at_every_hop(mesh):
    for number, relay in enumerate(mesh["relays"], 1):
        scrape = relay.scrape()
        assert relay.metrics.startswith("127.0.0.1:")
        assert scrape("zmesh_circuits_created_total", role="relay") >= 1
        assert scrape("zmesh_circuits_active", role="relay") >= 1
        # every hop sent the 10 MiB on towards the client; the hops before the exit got it over a link
        assert scrape("zmesh_link_bytes_total", direction="out") >= BIG
        assert scrape("zmesh_cells_total", direction="out") >= BIG // RELAY_DATA_SIZE
        if number < 3:
            assert scrape("zmesh_link_bytes_total", direction="in") >= BIG
        assert scrape("zmesh_links", transport="websocket") >= 1
        assert scrape("process_resident_memory_bytes") > 0
    middle, exit_ = mesh["relays"][1].scrape(), mesh["relays"][2].scrape()
    assert middle("zmesh_cells_relayed_total") >= BIG // 1024
    assert exit_("zmesh_exit_connections_total", result="connected") >= 1
    assert exit_("zmesh_data_cells_sent_total") >= BIG // RELAY_DATA_SIZE
    client = mesh["client"].scrape()
    assert client("zmesh_circuits_created_total", role="origin") >= 1
    assert client("zmesh_circuit_build_duration_seconds_count") >= 1
    assert 0 < client("zmesh_circuit_build_duration_seconds_sum") < 30
    assert client("zmesh_circuit_build_duration_seconds_bucket", le="+Inf") \
        == client("zmesh_circuit_build_duration_seconds_count")
    assert client("zmesh_link_bytes_total", direction="in") >= BIG


def test_metrics_on_a_non_loopback_address_are_refused_without_the_allow_flag(tmp_path):
    run = subprocess.run([sys.executable, "-m", "zmesh_relay.cli", "relay", "--metrics", "0.0.0.0:0",
                          "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert run.returncode == 1
    assert "metrics.listen" in run.stderr and "not a loopback address" in run.stderr
    assert "--metrics-allow-remote" in run.stderr
    assert not (tmp_path / "identity.key").exists()  # refused before anything started


def test_the_metrics_address_is_loopback_unless_allowed():
    assert settings.metrics_address(settings.load(env={})) is None  # off by default
    for listen, host in (("127.0.0.1:9100", "127.0.0.1"), ("[::1]:9100", "::1"), ("localhost:0", "localhost")):
        assert settings.metrics_address(settings.load(env={}, flags={"metrics.listen": listen}))[0] == host
    for listen in ("0.0.0.0:9100", "10.99.0.1:9100", "[::]:9100", "metrics.example:9100"):
        with pytest.raises(ConfigError, match="not a loopback address.*--metrics-allow-remote"):
            settings.metrics_address(settings.load(env={}, flags={"metrics.listen": listen}))
    allowed = settings.load(env={"ZMESH_METRICS_ALLOW_REMOTE": "true"}, flags={"metrics.listen": "0.0.0.0:9100"})
    assert settings.metrics_address(allowed) == ("0.0.0.0", 9100)
    with pytest.raises(ConfigError, match="metrics.listen"):
        settings.load(env={}, flags={"metrics.listen": "9100"})


def test_a_metrics_port_in_use_is_a_clear_error(mesh):
    taken = mesh["client"].metrics
    run = subprocess.run([sys.executable, "-m", "zmesh_relay.cli", "client", "--signal", mesh["signal"],
                          "--socks", "127.0.0.1:0", "--metrics", taken], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert f"metrics.listen: cannot listen on {taken}" in run.stderr and "Traceback" not in run.stderr


def test_an_ipv6_loopback_listener_is_announced_in_brackets(mesh):
    client = Process("client", "--signal", mesh["signal"], "--socks", "127.0.0.1:0", "--metrics", "[::1]:0")
    try:
        assert client.metrics.startswith("[::1]:")
        assert client.scrape()("zmesh_circuit_builds_started_total") >= 0
    finally:
        client.stop()


def test_an_allowed_remote_listener_serves_and_warns(mesh):
    """On the namespace's own veth address, with the flag: it serves, and its log says why it should not."""
    client = Process("client", "--signal", mesh["signal"], "--socks", "127.0.0.1:0",
                     "--metrics", "10.99.0.1:0", "--metrics-allow-remote")
    try:
        assert client.metrics.startswith("10.99.0.1:")
        assert client.scrape()("zmesh_circuit_builds_started_total") >= 0
    finally:
        client.stop()
    assert "/metrics listens on a non-loopback address" in client.proc.stderr.read()


def _dashboard_metrics(dashboard: dict) -> set[str]:
    """Every metric name in the dashboard's queries: its panels' and its variables'."""
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    queries += [json.dumps(variable.get("query", "")) for variable in dashboard["templating"]["list"]]
    return {name for query in queries for name in re.findall(r"\b(?:zmesh|process)_[a-z0-9_]+", query)}


def test_the_grafana_dashboard_loads_and_names_only_metrics_that_exist(mesh):
    dashboard = json.loads(DASHBOARD.read_text())
    assert isinstance(dashboard["title"], str) and isinstance(dashboard["schemaVersion"], int)
    assert dashboard["panels"] and all({"id", "type", "title", "gridPos", "targets"} <= set(panel)
                                       for panel in dashboard["panels"])
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["type"] == "prometheus"
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        assert all(target["expr"] and target["refId"] for target in panel["targets"])
    exported = set()
    for process in (*mesh["relays"], mesh["client"]):
        exported.update(name for name, _ in process.scrape().samples)
    used = _dashboard_metrics(dashboard)
    assert used, "the dashboard queries nothing"
    assert used <= exported, f"the dashboard names metrics no relay or client exports: {sorted(used - exported)}"
