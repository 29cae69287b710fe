"""Issue 17 item 3 in real Chromium: a tab's ``fetch('https://127.0.0.1:PORT/…')`` runs TLS inside
the tab (tlslite-ng over the mesh stream) and checks the server's chain against the bundled roots
plus ``extraCAs``. Real relay processes; the exit reaches each server through a ``RecordingProxy``
(tests/https_support.py), so the test sees exactly the bytes the exit relay handled."""

from __future__ import annotations

import hashlib

import pytest
from conftest import WEB

from tests.https_support import CA, PAYLOAD, https_mesh, plaintext_seen

FETCH = """async ([ca, urls]) => {
    const { MeshVPN } = await import("/meshvpn.js");
    const vpn = new MeshVPN({ hops: 3, relay: false, identity: "ephemeral", extraCAs: [ca] });
    await vpn.connect();
    const out = {};
    for (const [name, url] of Object.entries(urls)) {
        const t0 = performance.now();
        try {
            const { status, body } = await vpn.fetch(url);
            const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", body));
            out[name] = { status, length: body.length, ms: performance.now() - t0,
                          sha256: Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("") };
        } catch (err) {
            out[name] = { error: err.type || err.name, message: err.message };
        }
    }
    await vpn.disconnect();
    return out;
}"""


@pytest.fixture(scope="module")
def mesh_with_servers(tmp_path_factory):
    with https_mesh(tmp_path_factory.mktemp("relays"), WEB) as (url, proxies):
        yield url, proxies


def test_a_tab_fetches_https_end_to_end_and_refuses_bad_certificates(browser, mesh_with_servers):
    """Exact bytes over https://; the bound: no 64-byte piece of the payload, and not the request,
    in what the exit relay sent or received. The plain http:// fetch is the control: the same
    recorder does see its plaintext, so the check could fail."""
    url, proxies = mesh_with_servers
    page = browser.new_page()
    page.goto(f"{url}/example.html")
    urls = {"good": f"https://127.0.0.1:{proxies['good'].port}/secret-path",
            "plain": f"http://127.0.0.1:{proxies['plain'].port}/open-path",
            "wrong": f"https://127.0.0.1:{proxies['wrong'].port}/",
            "expired": f"https://127.0.0.1:{proxies['expired'].port}/"}
    result = page.evaluate(FETCH, [CA.pem, urls])
    page.close()
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    assert result["good"]["status"] == 200, result["good"]
    assert (result["good"]["length"], result["good"]["sha256"]) == (len(PAYLOAD), digest)
    assert (result["plain"]["length"], result["plain"]["sha256"]) == (len(PAYLOAD), digest)
    good = proxies["good"]
    assert len(good.received) > len(PAYLOAD) and not plaintext_seen(good.received)
    assert b"secret-path" not in good.sent and b"GET" not in good.sent
    assert plaintext_seen(proxies["plain"].received) and b"GET /open-path" in proxies["plain"].sent
    assert result["wrong"]["error"] == "CertificateError" and "(untrusted)" in result["wrong"]["message"]
    assert result["expired"]["error"] == "CertificateError" and "(expired)" in result["expired"]["message"]
    print(f"\ntab https fetch of {len(PAYLOAD)} bytes (handshake included): {result['good']['ms']:.0f} ms, "
          f"http: {result['plain']['ms']:.0f} ms")
