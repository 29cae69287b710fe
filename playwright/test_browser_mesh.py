"""Browser tabs in the mesh, with real Chromium and real `zmesh` processes: a tab fetches 5 MiB
through 3 native relays (issue 4 b), a native client routes through a tab (d), tab-to-tab messages (c)."""

import asyncio
import hashlib

from playwright_support import JOIN, PAYLOAD, example_page, fetch_through_tab, run_native

from zmesh.identity import PeerId
from zmesh_relay import config
from zmesh_relay.client import Client


def test_tab_fetches_through_three_relays(browser, mesh):
    url, port = mesh
    page = example_page(browser, url)
    result = page.evaluate("""async (target) => {
        const { MeshVPN } = await import("/meshvpn.js");
        const vpn = window.vpn = new MeshVPN({ hops: 3 });
        await vpn.connect();
        const { status, body } = await vpn.fetch(target);
        const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", body));
        return { status, size: body.length, sha256: Array.from(digest), stats: await vpn.getStats(),
                 peerId: vpn.peerId };
    }""", f"http://127.0.0.1:{port}/file")
    assert result["status"] == 200 and result["size"] == len(PAYLOAD)
    assert bytes(result["sha256"]) == hashlib.sha256(PAYLOAD).digest()
    assert len(result["stats"]["path"]) == 3 and len(result["peerId"]) == 56
    # transport: auto in a tab means DataChannels: to its home relay and to its circuit's first hop
    transport = result["stats"]["transport"]
    assert transport["open_links"].get("webrtc", 0) >= 1 and "websocket" not in transport["open_links"], transport
    assert transport["fallbacks"] == 0
    raw = page.evaluate("""async (port) => {
        const stream = await window.vpn.openStream("127.0.0.1", port);
        await stream.write(new TextEncoder().encode("GET /file HTTP/1.0\\r\\n\\r\\n"));
        let size = 0;
        for (let chunk = await stream.read(); chunk; chunk = await stream.read()) size += chunk.length;
        return size;
    }""", port)
    assert raw > len(PAYLOAD)  # headers and body through openStream
    page.close()


def test_bad_options_reject_with_clear_errors(browser, mesh):
    url, _ = mesh
    page = example_page(browser, url)
    message = page.evaluate("""async () => {
        const { MeshVPN } = await import("/meshvpn.js");
        try { new MeshVPN({ hops: 12 }); return "accepted"; } catch (err) { return err.message; }
    }""")
    assert "hops must be" in message
    message = page.evaluate("""async () => {
        const { MeshVPN } = await import("/meshvpn.js");
        new MeshVPN({ cover: "poisson:20" });  // a valid cover mode is taken
        try { new MeshVPN({ cover: "constant:fast" }); return "accepted"; } catch (err) { return err.message; }
    }""")
    assert "cover must be" in message
    page.close()


def test_native_client_builds_a_circuit_through_a_tab(browser, mesh):
    """Issue 4 (d): the tab offers itself as a relay; a native client routes through it."""
    url, port = mesh
    page = example_page(browser, url)
    tab_id = PeerId.from_text(page.evaluate(JOIN, {"hops": 3}))

    response = run_native(fetch_through_tab(url, port, tab_id))
    assert response.status == 200 and hashlib.sha256(response.body).digest() == hashlib.sha256(PAYLOAD).digest()
    assert page.evaluate("window.vpn.getStats().then((s) => s.metrics.circuits_relayed)") >= 1
    page.close()


def test_tab_to_tab_messages_arrive_in_order(browser, mesh):
    """Issue 4 (c): tab A sends to tab B by PeerId, end to end through an onion circuit."""
    url, _ = mesh
    tab_b = example_page(browser, url)
    b_id = tab_b.evaluate(JOIN, {"hops": 3})
    tab_a = example_page(browser, url)
    tab_a.evaluate(JOIN, {"hops": 3, "destination": b_id, "relay": False})
    messages = [f"message {i} " * (i + 1) for i in range(20)]
    tab_a.evaluate("""async (messages) => {
        for (const m of messages) await window.vpn.send(new TextEncoder().encode(m));
    }""", messages)
    received = tab_b.evaluate("""async (count) => {
        const out = [];
        for (let i = 0; i < count; i++) out.push(new TextDecoder().decode(await window.vpn.receive()));
        return out;
    }""", len(messages))
    assert received == messages
    tab_a.close()
    tab_b.close()


def test_a_closed_tab_node_leaves_no_task_link_or_listing(browser, mesh):
    """Issue 10: ``BrowserNode.close()`` stops the tab's tasks and closes its links and signaling.
    Seen from the tab (no task owned, no link, no signaling session) and from the directory (a tab
    is listed only while signed in, so it drops out)."""
    url, _ = mesh
    page = example_page(browser, url)
    tab_id = PeerId.from_text(page.evaluate(JOIN, {"hops": 3}))
    before, after = page.evaluate("""async () => {
        const vpn = window.vpn._vpn;
        const node = window.vpn._tab.node;  // the BrowserNode behind this MeshVPN
        const seen = async () => ({ stats: await window.vpn.getStats(), tab: node._tasks.__len__(),
                              driver: vpn.driver._tasks.__len__() });
        const before = await seen();
        await node.close();
        return [before, await seen()];
    }""")
    assert before["stats"]["links"] >= 1 and before["stats"]["transport"]["signaling"] and before["tab"] >= 2
    assert after["stats"]["links"] == 0 and not after["stats"]["transport"]["signaling"]
    assert after["tab"] == 0 and after["driver"] == 0

    async def listed() -> bool:
        client = Client({**config.load(env={}), "signaling.url": url, "client.socks": "127.0.0.1:0"})
        try:
            for _ in range(100):
                if tab_id not in {d.peer_id for d in await client.directory.relays(refresh=True)}:
                    return False
                await asyncio.sleep(0.1)
            return True
        finally:
            await client.signal.close()

    assert not run_native(listed())
    page.close()
