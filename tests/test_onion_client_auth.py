"""Client authorisation between real processes (issue 12, "Done when"; docs/onion-services.md,
"Client authorisation"): `zmesh service --authorized-client KEY` publishes a descriptor only the
listed client can open; a `zmesh client --client-auth-key FILE` holding that key fetches through
SOCKS, one with another key (or none) gets SOCKS reply 0xF5 and a log line saying why."""

from __future__ import annotations

import asyncio
import stat
import subprocess

import pytest

from zmesh.errors import ConfigError, TransportError
from zmesh.native.crypto import NativeCryptoProvider
from zmesh_relay import config
from zmesh_relay.keys import load_or_create_client_auth_key
from zmesh_relay.socks5 import socks5_connect

from .fuzz_targets import run_sync
from .private_network import relay_listen
from .test_native_mesh import Process, _http_server

VPORT = 8080


@pytest.fixture(scope="module")
def authorised(tmp_path_factory):
    root = tmp_path_factory.mktemp("onion-auth")
    key_file = root / "alice.key"
    run_sync(load_or_create_client_auth_key(NativeCryptoProvider(), key_file))
    files, files_port = _http_server()
    processes: list[Process] = []
    try:
        processes.append(Process("signal", "--listen", "127.0.0.1:0"))
        url = processes[0].address[0]
        for number in range(1, 7):
            processes.append(Process("relay", "--signal", url, "--listen", relay_listen(number),
                                     "--data-dir", str(root / f"r{number}"), log=root / f"relay{number}.log"))
        service = Process("service", "--signal", url, "--data-dir", str(root / "service"),
                          "--forward", f"{VPORT}=127.0.0.1:{files_port}",
                          "--authorized-client", (root / "alice.key.pub").read_text().strip(),
                          log=root / "service.log")
        processes.append(service)
        alice = Process("client", "--signal", url, "--socks", "127.0.0.1:0", "--client-auth-key", str(key_file),
                        log=root / "alice.log")
        mallory = Process("client", "--signal", url, "--socks", "127.0.0.1:0",
                          "--client-auth-key", str(root / "mallory.key"), log=root / "mallory.log")
        anonymous = Process("client", "--signal", url, "--socks", "127.0.0.1:0", log=root / "anonymous.log")
        processes += [alice, mallory, anonymous]
        yield {"address": service.address[0], "root": root, "alice": alice, "mallory": mallory,
               "anonymous": anonymous}
    finally:
        for process in reversed(processes):
            process.stop()
        files.shutdown()


def test_the_authorised_client_fetches(authorised):
    out = authorised["root"] / "small"
    done = subprocess.run(["curl", "--silent", "--show-error", "--max-time", "120", "--socks5-hostname",
                           authorised["alice"].address[0], "-o", str(out), "-w", "%{http_code}",
                           f"http://{authorised['address']}:{VPORT}/small"], capture_output=True, text=True,
                          timeout=130)
    assert done.returncode == 0 and done.stdout == "200", done.stderr
    assert out.read_bytes() == b"small page"


@pytest.mark.parametrize("who, why", [("mallory", "this client's key is not authorised"),
                                      ("anonymous", "no client key was given")])
def test_an_unauthorised_client_gets_a_clear_error(authorised, who, why):
    host, port = authorised[who].address[0].rsplit(":", 1)

    async def connect():
        _, writer = await socks5_connect(host, int(port), authorised["address"], VPORT)
        writer.close()

    with pytest.raises(TransportError, match="0xf5: the onion service does not authorise this client"):
        asyncio.run(asyncio.wait_for(connect(), 120))
    assert why in (authorised["root"] / f"{who}.log").read_text()


def test_a_client_makes_its_key_file_private_with_the_public_half_beside_it(authorised):
    root = authorised["root"]
    key, public = root / "mallory.key", root / "mallory.key.pub"  # made by the mallory process at start
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_text().strip()) == 64
    secret = bytes.fromhex(key.read_text())
    assert bytes.fromhex(public.read_text()) == run_sync(NativeCryptoProvider().x25519_public(secret))
    key.chmod(0o644)
    try:
        with pytest.raises(ConfigError, match="readable by others"):
            run_sync(load_or_create_client_auth_key(NativeCryptoProvider(), key))
    finally:
        key.chmod(0o600)


def test_authorized_clients_must_be_hex_keys():
    good = "ab" * 32
    assert config.load(env={}, flags={"service.authorized_clients": [good.upper()]})[
        "service.authorized_clients"] == [good]
    for bad in (["ab" * 31], ["zz" * 32], [good, good]):
        with pytest.raises(ConfigError, match="service.authorized_clients"):
            config.load(env={}, flags={"service.authorized_clients": bad})
