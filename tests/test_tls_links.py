"""TLS links between native nodes: relays with a self-signed certificate carry circuits because
their descriptors pin the certificate; a certificate that does not match the pin is refused; a
relay on every interface publishes only an address it was told to advertise (docs/protocol.md §3)."""

from __future__ import annotations

import asyncio
import datetime
import os
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from zmesh.descriptor import verify_descriptor
from zmesh.errors import TransportError
from zmesh.native.crypto import NativeCryptoProvider
from zmesh.netaddr import LinkAddress
from zmesh_relay import wslink
from zmesh_relay.socks5 import socks5_connect
from zmesh_signal.client import SignalClient

from .private_network import PRIVATE_NETWORK_ENV, free_port
from .test_native_mesh import ZMESH, Process, _http_server, start_mesh


def _self_signed(folder: Path, name: str = "relay") -> dict[str, str]:
    """A fresh self-signed certificate and key, as the relays' environment."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return {"ZMESH_RELAY_TLS_CERT": str(cert_path), "ZMESH_RELAY_TLS_KEY": str(key_path)}


@pytest.fixture(scope="module")
def tls_mesh(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    files, files_port = _http_server()
    processes, url = start_mesh(folder, files_port, relays=3, exits=1, env=_self_signed(folder))
    try:
        yield {"signal": url, "relays": processes[1:-1], "client": processes[-1], "files_port": files_port}
    finally:
        for process in reversed(processes):
            process.stop()
        files.shutdown()


def test_relays_with_a_self_signed_certificate_publish_pinned_wss_and_carry_circuits(tls_mesh):
    addresses = [LinkAddress.parse(relay.address[0]) for relay in tls_mesh["relays"]]
    assert all(a.scheme == "wss" and a.pin is not None for a in addresses)

    async def fetch() -> bytes:
        host, port = tls_mesh["client"].address[0].rsplit(":", 1)
        reader, writer = await socks5_connect(host, int(port), "127.0.0.1", tls_mesh["files_port"])
        writer.write(b"GET /small HTTP/1.0\r\n\r\n")
        body = await reader.read()
        writer.close()
        return body

    assert asyncio.run(fetch()).endswith(b"small page")

    # the directory listed them: it reached each over TLS, checking the pin
    listed = asyncio.run(_listed(tls_mesh["signal"]))
    for relay, address in zip(tls_mesh["relays"], addresses, strict=True):
        assert listed[relay.address[1]] == {str(address)}


async def _listed(signal_url: str) -> dict[str, set[str]]:
    """PeerId text → the ``ws`` addresses the directory lists for it."""
    async with SignalClient(signal_url) as signal:
        raws = await signal.relays()
    provider = NativeCryptoProvider()
    descriptors = [await verify_descriptor(provider, raw, now=time.time()) for raw in raws]
    return {d.peer_id.text: set(d.addresses.get("ws", ())) for d in descriptors}


def test_a_certificate_that_does_not_match_the_pin_is_refused(tls_mesh):
    address = LinkAddress.parse(tls_mesh["relays"][0].address[0])
    wrong = address.pinned(bytes(32))
    unpinned = LinkAddress(address.scheme, address.host, address.port)

    async def dial(target: LinkAddress) -> None:
        link = await wslink.dial(target, allow_private=True, timeout=10)
        await link.close()

    asyncio.run(dial(address))  # the right pin opens a link
    with pytest.raises(TransportError, match="does not match its descriptor's pin"):
        asyncio.run(dial(wrong))
    with pytest.raises(TransportError, match="certificate"):  # no pin: a self-signed one fails CA checks
        asyncio.run(dial(unpinned))


def test_a_relay_on_every_interface_publishes_only_what_it_advertises(tmp_path, tls_mesh):
    refused = subprocess.run([*ZMESH, "relay", "--signal", tls_mesh["signal"], "--listen", "0.0.0.0:0",
                              "--data-dir", str(tmp_path / "a")], capture_output=True, text=True, timeout=60,
                             env={**os.environ, PRIVATE_NETWORK_ENV: "true"})
    assert refused.returncode != 0 and "relay.advertise" in refused.stderr and "0.0.0.0" in refused.stderr

    port = free_port("0.0.0.0")
    advertised = f"ws://127.9.0.1:{port}/v1/link"
    relay = Process("relay", "--signal", tls_mesh["signal"], "--listen", f"0.0.0.0:{port}",
                    "--advertise", advertised, "--data-dir", str(tmp_path / "b"))
    try:
        assert relay.address[0] == advertised

        assert asyncio.run(_listed(tls_mesh["signal"]))[relay.address[1]] == {advertised}
    finally:
        relay.stop()
