"""Onion descriptors between the tab's WebCrypto provider and the native one, in real Chromium,
through the signal server's store: a descriptor sealed in the tab (blinded signature, HKDF,
AES-GCM, X25519 client entries) and PUT by its ``fetch`` (``zmesh.browser.page_http``) opens
natively, and one published natively is fetched and opened in the tab, with client authorisation."""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from playwright_support import example_page

from tests.fuzz_targets import run_sync
from zmesh.identity import Identity
from zmesh.native.crypto import NativeCryptoProvider
from zmesh.onion.address import encode_address
from zmesh.onion.descriptor import IntroPoint, ServiceDescriptor, seal_descriptor
from zmesh.onion.directory import fetch_descriptor, publish_descriptor
from zmesh_signal.client import SignalClient

IN_TAB = """async (args) => {
    const { bootZmesh } = await import("/boot.mjs");
    const { pyodide } = await bootZmesh();
    pyodide.globals.set("args", JSON.stringify(args));
    return await pyodide.runPythonAsync(`
import json
from zmesh.browser.page_http import PageHttp
from zmesh.browser.webcrypto import WebCryptoProvider
from zmesh.onion.descriptor import IntroPoint, ServiceDescriptor, seal_descriptor
from zmesh.onion.directory import fetch_descriptor, publish_descriptor
a = json.loads(args)
h = bytes.fromhex
provider, http = WebCryptoProvider(), PageHttp()
content = ServiceDescriptor((IntroPoint(a["relay"], h(a["auth_key"])),), h(a["x25519"]), h(a["mlkem"]))
sealed = await seal_descriptor(provider, h(a["tab_seed"]), content, now=a["now"], revision=7,
                               authorized_clients=[h(a["client_public"])])
await publish_descriptor(http, "", sealed)  # this page's own origin
opened = await fetch_descriptor(http, "", provider, a["native_address"], now=a["now"],
                                client_secret=h(a["client_secret"]))
opened == content
`);
}"""


def _natively(coroutine_function):
    """Run native async code on a thread of its own: Playwright's sync API holds this one's loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine_function()).result(60)


def test_descriptors_cross_between_the_tab_and_native_providers(browser, signal_url):
    provider = NativeCryptoProvider()
    native_seed, native_public = run_sync(provider.ed25519_generate())
    tab_seed, tab_public = run_sync(provider.ed25519_generate())
    client_secret, client_public = run_sync(provider.x25519_generate())
    content = ServiceDescriptor((IntroPoint(run_sync(Identity.generate(provider)).peer_id.text, bytes(range(32))),),
                                run_sync(provider.x25519_generate())[1], run_sync(provider.mlkem768_generate())[1])
    now = time.time()

    async def publish_native():
        async with SignalClient(signal_url) as client:
            sealed = await seal_descriptor(provider, native_seed, content, now=now, revision=6,
                                           authorized_clients=[client_public])
            await publish_descriptor(client, signal_url, sealed)

    _natively(publish_native)
    page = example_page(browser, signal_url)
    assert page.evaluate(IN_TAB, {
        "tab_seed": tab_seed.hex(), "relay": content.intro_points[0].relay_id, "auth_key": bytes(range(32)).hex(),
        "x25519": content.x25519_public.hex(), "mlkem": content.mlkem768_public.hex(), "now": now,
        "client_public": client_public.hex(), "client_secret": client_secret.hex(),
        "native_address": encode_address(native_public)}) is True
    page.close()

    async def fetch_tab_published():
        async with SignalClient(signal_url) as client:
            return await fetch_descriptor(client, signal_url, provider, encode_address(tab_public), now=now,
                                          client_secret=client_secret)

    assert _natively(fetch_tab_published) == content
