"""Entry guards in the real native client: `zmesh client --data-dir` subprocesses, real relays on
loopback, real SOCKS connections. Which relay each circuit enters at is read from the kernel's
socket table: the client's only TCP links to relays are its first hops' (it relays nothing and
dials no one else), so the relays whose listening address the client process is connected to are
exactly the relays that accepted the client's links and carry its circuits' first hops."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from zmesh.errors import ConfigError
from zmesh.guards import decode_guards
from zmesh_relay.guard_file import GUARD_FILE, open_guards
from zmesh_relay.trust_file import TRUST_FILE

from .test_native_mesh import ZMESH, Process, _http_server, fetch

WEBSOCKET_ONLY = {"ZMESH_TRANSPORT_KIND": "websocket"}  # links are TCP, so the socket table shows them


def _tcp_table() -> dict[int, tuple[tuple[str, int], tuple[str, int]]]:
    """Socket inode -> (local, remote) for established IPv4 TCP connections in this namespace."""
    table = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] != "01":  # ESTABLISHED
            continue
        ends = []
        for end in fields[1:3]:
            address, port = end.split(":")
            ends.append((socket.inet_ntoa(bytes.fromhex(address)[::-1]), int(port, 16)))
        table[int(fields[9])] = (ends[0], ends[1])
    return table


def connected_to(pid: int) -> set[tuple[str, int]]:
    """The remote ends of the established TCP connections process ``pid`` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    table = _tcp_table()
    return {table[inode][1] for inode in inodes if inode in table}


def _listen_address(link_url: str) -> tuple[str, int]:
    host, port = link_url.removeprefix("ws://").split("/")[0].rsplit(":", 1)
    return host, int(port)


def entered_at(client: Process, relays: dict[str, Process]) -> set[str]:
    """PeerId texts of the relays the client holds links to."""
    by_address = {_listen_address(r.address[0]): peer for peer, r in relays.items() if r.proc.poll() is None}
    return {by_address[a] for a in connected_to(client.proc.pid) if a in by_address}


def sample_in(data_dir: Path) -> list[str]:
    return [g.peer_id.text for g in decode_guards((data_dir / GUARD_FILE).read_bytes(), "state")]


def start_client(url: str, data_dir: Path) -> Process:
    return Process("client", "--signal", url, "--socks", "127.0.0.1:0", "--data-dir", str(data_dir),
                   env=WEBSOCKET_ONLY)


def fetch_as(client: Process, user: str, port: int) -> bytes:
    host, socks_port = client.address[0].rsplit(":", 1)
    return asyncio.run(asyncio.wait_for(fetch((host, int(socks_port)), "127.0.0.1", port, "/", username=user), 60))


def test_circuits_enter_at_persisted_guards_across_restarts_and_fail_over_along_the_sample(tmp_path):
    files, files_port = _http_server()
    processes = [Process("signal", "--listen", "127.0.0.1:0")]
    url = processes[0].address[0]
    data_dir = tmp_path / "client"
    try:
        relays: dict[str, Process] = {}
        # Relay N on its own loopback /16. All are exits: with few exits the sample's second guard
        # could be the only exit left once the first dies, and would rightly be passed over.
        for number in range(1, 6):
            relay = Process("relay", "--signal", url, "--listen", f"127.{number}.0.1:0",
                            "--data-dir", str(tmp_path / f"r{number}"), "--exit",
                            "--exit-allow", f"127.0.0.1/32:{files_port}", env=WEBSOCKET_ONLY)
            processes.append(relay)
            relays[relay.address[1]] = relay

        client = start_client(url, data_dir)
        processes.append(client)
        entries: set[str] = set()
        for index in range(20):  # a credential each: 20 circuits (one credential keeps one circuit)
            assert fetch_as(client, f"user{index}", files_port) == b"small page"
            entries |= entered_at(client, relays)
        sample = sample_in(data_dir)
        assert sorted(sample) == sorted(relays)  # five relays: all sampled, in a random order
        assert entries == {sample[0]}, "every circuit enters at the first guard"
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE((data_dir / GUARD_FILE).stat().st_mode) == 0o600

        assert client.stop() == 0
        # Issue 20: the client measured every relay it used and kept the scores (0600) across the stop.
        trust = json.loads((data_dir / TRUST_FILE).read_text())["relays"]
        assert stat.S_IMODE((data_dir / TRUST_FILE).stat().st_mode) == 0o600
        assert sum(entry["streams"][0] for entry in trust.values()) > 19.9  # 20 streams opened at exits
        assert trust[sample[0]]["builds"][0] > 19.9 and trust[sample[0]]["rtt_ms"] is not None
        client = start_client(url, data_dir)
        processes.append(client)
        for index in range(5):
            assert fetch_as(client, f"again{index}", files_port) == b"small page"
        assert sample_in(data_dir) == sample and entered_at(client, relays) == {sample[0]}

        relays[sample[0]].proc.send_signal(signal.SIGKILL)
        relays[sample[0]].proc.wait()
        for index in range(5):
            assert fetch_as(client, f"after{index}", files_port) == b"small page"
        assert entered_at(client, relays) == {sample[1]}, "the next guard of the sample, not a fresh draw"
        assert sample_in(data_dir) == sample  # the dead guard stays in the sample, waiting out its retry
    finally:
        for process in reversed(processes):
            process.stop()
        files.shutdown()


def test_a_corrupt_guard_file_stops_the_client_with_an_error_naming_it(tmp_path):
    (tmp_path / GUARD_FILE).write_bytes(b"\x81\xa1v\x02 not a guard state")
    result = subprocess.run([*ZMESH, "client", "--signal", "http://127.0.0.1:9", "--socks", "127.0.0.1:0",
                             "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "zmesh-ready" not in result.stdout
    assert f"guard state file {tmp_path / GUARD_FILE} is corrupt" in result.stderr
    assert "move it away to start with a fresh guard sample" in result.stderr


def test_without_a_data_dir_guards_live_in_memory_and_say_so_once(caplog):
    with caplog.at_level(logging.WARNING, logger="zmesh_relay.guard_file"):
        guards = open_guards("")
    assert [r.getMessage() for r in caplog.records] == [
        "client.data_dir is not set: entry guards are kept in memory and a restart draws new ones"]
    assert guards.on_change is None


def test_a_data_dir_that_cannot_be_used_is_a_config_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ConfigError, match="cannot use data dir"):
        open_guards(str(tmp_path / "file" / "sub"))
