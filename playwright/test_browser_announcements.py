"""Issue 20 in real Chromium: a tab that stays open keeps its listing and a current directory view
(item 3: pushed directory notices, republishing before the descriptor expires), and a tab sends a
split message to another tab (item 1: ``vpn.sendSplit``)."""

from __future__ import annotations

import hashlib
import time

from playwright_support import JOIN, example_page, run_native

from tests.private_network import relay_listen
from tests.test_native_mesh import Process
from zmesh.descriptor import Descriptor
from zmesh.directory_view import DirectoryView
from zmesh.identity import PeerId
from zmesh.native.crypto import NativeCryptoProvider
from zmesh_signal.client import SignalClient

LIFETIME = 60  # the shortest descriptor lifetime there is (zmesh.descriptor.sign_descriptor)
VIEW = "() => window.vpn._vpn.directory().toJs({ depth: 1 }).map((d) => d.peer_id.text)"
NODE = "window.vpn._vpn.driver.dialer._websocket.__self__"  # the BrowserNode behind the page's MeshVPN


def _listed(url: str, peer: PeerId) -> Descriptor | None:
    async def look() -> Descriptor | None:
        client = SignalClient(url)
        try:
            view = DirectoryView(client.relay_updates, NativeCryptoProvider())
            return next((d for d in await view.refresh() if d.peer_id == peer), None)
        finally:
            await client.close()
    return run_native(look())


def test_a_tab_open_past_its_descriptor_lifetime_stays_listed_and_sees_a_later_relay(browser, mesh, tmp_path):
    url, _ = mesh
    page = example_page(browser, url)
    tab = PeerId.from_text(page.evaluate(JOIN, {"hops": 3, "descriptorLifetime": LIFETIME}))
    first = _listed(url, tab)
    assert first is not None and first.expires - first.published == LIFETIME
    page.wait_for_function(f"() => Date.now() / 1000 > {first.expires + 2}", timeout=(LIFETIME + 30) * 1000)
    now = time.time()
    again = _listed(url, tab)
    assert again is not None and again.published > first.published and again.expires > now  # republished
    before = page.evaluate(f"() => {NODE}.notices.refetches")
    late = Process("relay", "--signal", url, "--listen", relay_listen(9), "--data-dir", str(tmp_path / "late"))
    try:
        late_id = late.address[1]  # the tab builds nothing meanwhile: only a pushed notice refetches its view
        page.wait_for_function(f"() => ({VIEW})().includes({late_id!r})", timeout=20_000)
        assert page.evaluate(f"() => {NODE}.notices.refetches") > before
    finally:
        late.stop()
        page.close()


def test_a_tab_sends_a_split_message_to_another_tab(browser, mesh):
    """Tab B answers WebRTC offers, so it is a destination of its own (no ``via`` relay on every
    path): with hops=3 each path is two relays and B, and the mesh's four relays make two disjoint paths."""
    url, _ = mesh
    tab_b = example_page(browser, url)
    b_id = tab_b.evaluate(JOIN, {"hops": 3})
    tab_a = example_page(browser, url)
    tab_a.evaluate(JOIN, {"hops": 3, "relay": False})
    result = tab_a.evaluate("""async (destination) => {
        const data = new Uint8Array(200 * 1024).map((_, i) => (i * 31) % 251);
        const stored = await window.vpn.sendSplit(destination, data, { k: 2, n: 2 });
        const refusals = [];
        for (const options of [{ k: 4, n: 3 }, { k: 2, n: 3 }]) {
            try {
                await window.vpn.sendSplit(destination, data, options);
            } catch (err) {
                refusals.push([err.type, err.message]);
            }
        }
        const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", data));
        return { stored, refusals, sha256: Array.from(digest) };
    }""", b_id)
    got = tab_b.evaluate("""async () => {
        const message = await window.vpn.receive();
        return Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", message)));
    }""")
    expected = hashlib.sha256(bytes((i * 31) % 251 for i in range(200 * 1024))).digest()
    assert result["stored"] == 2 and bytes(result["sha256"]) == expected == bytes(got)
    # bad parameters, and a third disjoint path the four relays cannot give: 2 stored of 3 is enough
    (bad_type, _), *rest = result["refusals"]
    assert bad_type == "ConfigError" and rest == []
    tab_a.close()
    tab_b.close()
