"""Onion descriptors between the tab's WebCrypto provider and the native one, in real Chromium:
a descriptor sealed in the tab (blinded signature, HKDF, AES-GCM, X25519 client entries) opens
natively and one sealed natively opens in the tab, with client authorisation on both."""

import json
import time

from playwright_support import example_page

from tests.fuzz_targets import run_sync
from zmesh.identity import Identity
from zmesh.native.crypto import NativeCryptoProvider
from zmesh.onion.address import encode_address
from zmesh.onion.descriptor import IntroPoint, ServiceDescriptor, check_sealed, open_descriptor, seal_descriptor

IN_TAB = """async (args) => {
    const { bootZmesh } = await import("/boot.mjs");
    const { pyodide } = await bootZmesh();
    pyodide.globals.set("args", JSON.stringify(args));
    return await pyodide.runPythonAsync(`
import json
from zmesh.browser.webcrypto import WebCryptoProvider
from zmesh.onion.descriptor import IntroPoint, ServiceDescriptor, open_descriptor, seal_descriptor
a = json.loads(args)
h = bytes.fromhex
provider = WebCryptoProvider()
content = ServiceDescriptor((IntroPoint(a["relay"], h(a["auth_key"])),), h(a["x25519"]), h(a["mlkem"]))
sealed = await seal_descriptor(provider, h(a["seed"]), content, now=a["now"], revision=7,
                               authorized_clients=[h(a["client_public"])])
opened = await open_descriptor(provider, a["address"], h(a["native_blob"]), now=a["now"],
                               client_secret=h(a["client_secret"]))
json.dumps([sealed.blob.hex(), opened == content])
`);
}"""


def test_descriptors_cross_between_the_tab_and_native_providers(browser, signal_url):
    provider = NativeCryptoProvider()
    seed, public = run_sync(provider.ed25519_generate())
    client_secret, client_public = run_sync(provider.x25519_generate())
    content = ServiceDescriptor((IntroPoint(run_sync(Identity.generate(provider)).peer_id.text, bytes(range(32))),),
                                run_sync(provider.x25519_generate())[1], run_sync(provider.mlkem768_generate())[1])
    now = time.time()
    address = encode_address(public)
    native = run_sync(seal_descriptor(provider, seed, content, now=now, revision=6, authorized_clients=[client_public]))
    page = example_page(browser, signal_url)
    tab_blob, tab_opened = json.loads(page.evaluate(IN_TAB, {
        "seed": seed.hex(), "relay": content.intro_points[0].relay_id, "auth_key": bytes(range(32)).hex(),
        "x25519": content.x25519_public.hex(), "mlkem": content.mlkem768_public.hex(), "now": now,
        "client_public": client_public.hex(), "client_secret": client_secret.hex(), "address": address,
        "native_blob": native.blob.hex()}))
    page.close()
    assert tab_opened
    blob = bytes.fromhex(tab_blob)
    assert run_sync(check_sealed(provider, blob, now=now)).blinded_key == native.blinded_key
    assert run_sync(open_descriptor(provider, address, blob, now=now, client_secret=client_secret)) == content
