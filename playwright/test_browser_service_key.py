"""A tab's onion-service key in real Chromium (docs/onion-services.md, "Service keys on disk"):
kept in IndexedDB across reloads, exported and imported as the same 32-byte seed a native
service.key holds, and never silently replaced."""

from playwright_support import example_page

from tests.fuzz_targets import run_sync
from zmesh.native.crypto import NativeCryptoProvider
from zmesh.onion.address import encode_address
from zmesh_relay.keys import load_or_create_service_key

EXPORT = """async () => {
    const { MeshVPN } = await import("/meshvpn.js");
    return Array.from(await new MeshVPN().exportServiceKey());
}"""

IMPORT = """async ([seed, replace]) => {
    const { MeshVPN } = await import("/meshvpn.js");
    try {
        await new MeshVPN().importServiceKey(seed === null ? "nope" : new Uint8Array(seed), { replace });
        return "ok";
    } catch (err) {
        return `${err.name}: ${err.message}`;
    }
}"""


def test_a_tab_keeps_exports_and_imports_its_service_key(browser, signal_url, tmp_path):
    page = example_page(browser, signal_url)
    first = page.evaluate(EXPORT)
    assert len(first) == 32 and page.evaluate(EXPORT) == first
    page.reload()
    assert page.evaluate(EXPORT) == first  # the same address after a reload

    provider = NativeCryptoProvider()  # run_sync, not asyncio.run: Playwright holds this thread's loop
    native = run_sync(load_or_create_service_key(provider, tmp_path))  # a native service's key
    assert page.evaluate(IMPORT, [list(native), False]).startswith("Error: importServiceKey: this origin already")
    assert page.evaluate(EXPORT) == first  # refused without replace: unchanged
    assert page.evaluate(IMPORT, [list(first), False]) == "ok"  # the same key again is fine
    assert page.evaluate(IMPORT, [list(native), True]) == "ok"
    assert bytes(page.evaluate(EXPORT)) == native
    assert encode_address(run_sync(provider.ed25519_public(native))).endswith(".mesh")
    assert page.evaluate(IMPORT, [list(native[:31]), True]).startswith("TypeError")
    assert page.evaluate(IMPORT, [None, True]).startswith("TypeError")
    assert bytes(page.evaluate(EXPORT)) == native
    page.close()
