"""Issue 17 item 3: ``fetch('https://…')`` runs TLS end to end over the mesh stream, so the exit
relays only ciphertext. Three real relay processes; the exit reaches each server through a
``RecordingProxy``, which keeps every byte the exit relay sent and received. The same test runs
the native stack (stdlib ``ssl``) and the tab's (tlslite-ng + ``zmesh.browser.x509``), natively;
``playwright/test_browser_https.py`` runs the tab's in Chromium."""

from __future__ import annotations

import asyncio

import pytest

import zmesh
from zmesh.browser.tls import TlsliteConnector
from zmesh.browser.x509 import verify_chain
from zmesh.errors import CertificateError, ConfigError
from zmesh.native.tls import stdlib_connector

from .https_support import CA, NOW, PAYLOAD, https_mesh, issue, plaintext_seen
from .private_network import PRIVATE_NETWORK_ENV


@pytest.fixture(scope="module")
def mesh_with_servers(tmp_path_factory):
    with https_mesh(tmp_path_factory.mktemp("relays")) as (url, proxies):
        yield url, proxies


CONNECTORS = {"stdlib ssl": stdlib_connector, "tlslite (the tab's)": TlsliteConnector}


@pytest.mark.parametrize("stack", sorted(CONNECTORS))
def test_https_through_three_relays_is_byte_exact_and_the_exit_sees_only_ciphertext(mesh_with_servers, monkeypatch,
                                                                                     stack):
    """The bound: no 64-byte piece of the payload, and not the request line, in the exit's bytes.
    The control (plain http:// through the same kind of proxy) shows the recorder does see
    plaintext when there is some, so the check could fail."""
    monkeypatch.setenv(PRIVATE_NETWORK_ENV, "true")
    url, proxies = mesh_with_servers

    async def run() -> tuple[bytes, bytes, dict[str, str]]:
        async with zmesh.connect(url, hops=3, tls=CONNECTORS[stack]([CA.pem])) as vpn:
            secure = await vpn.fetch(f"https://127.0.0.1:{proxies['good'].port}/secret-path")
            plain = await vpn.fetch(f"http://127.0.0.1:{proxies['plain'].port}/open-path")
            refused = {}
            for name in ("wrong", "expired"):
                with pytest.raises(CertificateError) as caught:
                    await vpn.fetch(f"https://127.0.0.1:{proxies[name].port}/")
                refused[name] = caught.value.reason
            return secure.body, plain.body, refused

    secure, plain, refused = asyncio.run(run())
    assert secure == PAYLOAD and plain == PAYLOAD
    good = proxies["good"]
    assert len(good.received) > len(PAYLOAD) and not plaintext_seen(good.received)
    assert b"secret-path" not in good.sent and b"GET" not in good.sent
    assert plaintext_seen(proxies["plain"].received) and b"GET /open-path" in proxies["plain"].sent
    assert refused == {"wrong": "untrusted", "expired": "expired"}
    for proxy in proxies.values():
        proxy.sent.clear()
        proxy.received.clear()


def test_the_bundled_roots_alone_do_not_trust_a_test_ca():
    """certifi's roots are loaded (so a real site's chain could be checked) and the test CA is not among them."""
    store = TlsliteConnector().store
    assert len(store) > 100
    with pytest.raises(CertificateError, match="untrusted"):
        verify_chain([issue("leaf", CA, ips=("127.0.0.1",)).der], "127.0.0.1", store, NOW.timestamp())


def test_extra_cas_must_be_pem_certificates():
    for bad in (["not a certificate"], [b"bytes"], ["-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----"]):
        with pytest.raises((ConfigError, CertificateError)):
            TlsliteConnector(bad)
    with pytest.raises(ConfigError):
        stdlib_connector(["-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"])
