"""Hard path diversity against real processes (issue 11, defect 5): relays on 127.5.0.1 and 127.5.0.2
share a /16, and circuits a real `zmesh client` builds through SOCKS never hold both. What the relays
dial is read from the kernel's socket table (each relay's own TCP connections), so the check needs
nothing from the relays' HTTP endpoints."""

from __future__ import annotations

import asyncio
import ipaddress
import os
from pathlib import Path

import pytest

from zmesh.native.crypto import NativeCryptoProvider
from zmesh.netaddr import LinkAddress
from zmesh_relay.keys import load_or_create_identity
from zmesh_relay.socks5 import socks5_connect

from .test_native_mesh import Process, _http_server

Endpoint = tuple[ipaddress.IPv4Address, int]


def _established() -> dict[int, Endpoint]:
    """Socket inode → remote endpoint of every ESTABLISHED IPv4 TCP connection in this namespace."""
    out = {}
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[3] != "01":  # TCP_ESTABLISHED
                continue
            host, port = fields[2].split(":")
            address = ipaddress.IPv4Address(int.from_bytes(bytes.fromhex(host), "little"))
            out[int(fields[9])] = (address, int(port, 16))
    return out


def _dialed(pid: int) -> set[Endpoint]:
    """The remote endpoints process ``pid`` holds connections to."""
    established = _established()
    remote = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inode = int(target[8:-1])
            if inode in established:
                remote.add(established[inode])
    return remote


def _listening(relay: Process) -> Endpoint:
    link = LinkAddress.parse(relay.address[0])
    return ipaddress.IPv4Address(link.host), link.port


def _start(tmp_path: Path, hosts: list[str], files_port: int, *, family: tuple[int, ...] = ()) -> list[Process]:
    """Signal server, one relay per host (the last an exit to ``files_port``; the relays numbered in
    ``family`` declare each other with ``--family``), then the client."""
    identities = [asyncio.run(load_or_create_identity(NativeCryptoProvider(), tmp_path / f"r{index}"))
                  for index in range(len(hosts))]
    processes = [Process("signal", "--listen", "127.0.0.1:0")]
    url = processes[0].address[0]
    try:
        for index, host in enumerate(hosts):
            extra = ["--exit", "--exit-allow", f"127.0.0.1/32:{files_port}"] if index == len(hosts) - 1 else []
            if index in family:
                extra += [arg for other in family if other != index
                          for arg in ("--family", identities[other].peer_id.text)]
            processes.append(Process("relay", "--signal", url, "--listen", f"{host}:0",
                                     "--data-dir", str(tmp_path / f"r{index}"), *extra))
        processes.append(Process("client", "--signal", url, "--socks", "127.0.0.1:0"))
    except BaseException:
        for process in reversed(processes):
            process.stop()
        raise
    return processes


async def _get(socks: str, port: int, isolation: str) -> bytes:
    """One request through SOCKS; each ``isolation`` credential gets a circuit of its own."""
    host, socks_port = socks.rsplit(":", 1)
    reader, writer = await socks5_connect(host, int(socks_port), "127.0.0.1", port, username=isolation, password="x")
    try:
        writer.write(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        return await reader.read()
    finally:
        writer.close()


@pytest.mark.parametrize("kept_apart_by", ["one /16", "a mutual --family"])
def test_circuits_built_through_socks_never_hold_two_relays_of_one_network_or_family(tmp_path, kept_apart_by):
    """Four relays, A and B in 127.5/16 (or in /16s of their own but one declared family): of the
    six orders of two middles before the exit, two pair A with B, so 12 circuits drawn without the
    rule would pair them with probability 99 %."""
    files, files_port = _http_server()
    if kept_apart_by == "one /16":
        processes = _start(tmp_path, ["127.5.0.1", "127.5.0.2", "127.6.0.1", "127.7.0.1"], files_port)
    else:
        processes = _start(tmp_path, ["127.5.0.1", "127.8.0.1", "127.6.0.1", "127.7.0.1"], files_port, family=(0, 1))
    relays, client = processes[1:-1], processes[-1]
    try:
        async def twelve_circuits() -> list[bytes]:
            return [await asyncio.wait_for(_get(client.address[0], files_port, f"user{n}"), 60) for n in range(12)]

        assert all(body.startswith(b"HTTP/1.0 200") for body in asyncio.run(twelve_circuits()))
        a, b, c, exit_ = relays
        dialed = {relay.proc.pid: _dialed(relay.proc.pid) for relay in relays}
        assert _listening(b) not in dialed[a.proc.pid] and _listening(a) not in dialed[b.proc.pid], \
            f"a circuit ran through both relays of {kept_apart_by}"
        # the measurement sees relay-to-relay links: every circuit's middle dialed the exit, and C
        # (in every path, as the only middle that may join A or B) is linked to A or B
        assert any(_listening(exit_) in dialed[relay.proc.pid] for relay in (a, b, c))
        assert ({_listening(a), _listening(b)} & dialed[c.proc.pid]
                or _listening(c) in dialed[a.proc.pid] | dialed[b.proc.pid])
    finally:
        for process in reversed(processes):
            process.stop()
        files.shutdown()


def test_three_relays_two_in_one_slash16_give_a_clear_error(tmp_path):
    files, files_port = _http_server()
    processes = _start(tmp_path, ["127.5.0.1", "127.5.0.2", "127.6.0.1"], files_port)
    client = processes[-1]
    try:
        async def attempts() -> list[BaseException | bytes]:
            return await asyncio.gather(*(asyncio.wait_for(_get(client.address[0], files_port, f"user{n}"), 60)
                                          for n in range(5)), return_exceptions=True)

        outcomes = asyncio.run(attempts())
        assert all(isinstance(outcome, Exception) and "SOCKS5 reply" in str(outcome) for outcome in outcomes), outcomes
    finally:
        for process in reversed(processes):
            process.stop()
        files.shutdown()
    stderr = client.proc.stderr.read()
    assert stderr.count("no relay left: 1 relays excluded, 1 by same IPv4 /16 or IPv6 /32 as another hop") == 5, \
        stderr[-3000:]
