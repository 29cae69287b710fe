"""The tab's MeshVPN lifecycle (issue 17 items 1 and 2) in real Chromium against real relay
processes: one node per instance, disconnect leaves nothing behind, updateConfig applies to the
running node, and a circuit whose middle relay is killed is rebuilt by the tab itself."""

import asyncio
import hashlib
import signal

import pytest
from conftest import WEB, serve_payload
from playwright_support import PAYLOAD, example_page, run_native

from tests.private_network import relay_listen
from tests.test_native_mesh import Process
from zmesh.identity import PeerId
from zmesh_relay import config
from zmesh_relay.client import Client

# Joins with ``options``, recording every event the page hears in window.events.
JOIN = """async (options) => {
    const { MeshVPN } = await import("/meshvpn.js");
    window.events = [];
    const vpn = window.vpn = new MeshVPN(options);
    for (const name of ["connect", "disconnect", "error"])
        vpn.on(name, (value) => window.events.push({ name, value: name === "error"
            ? { name: value.name, type: value.type, code: value.code } : value }));
    await vpn.connect();
    return vpn.peerId;
}"""

FETCH = """async (url) => {
    const { status, body } = await window.vpn.fetch(url);
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", body));
    return { status, sha256: Array.from(digest) };
}"""


@pytest.fixture(scope="module")
def relays(tmp_path_factory):
    """A signal server and six relays (each on its own loopback /16), all exits to the payload
    server: with the middle one killed, enough are left for a 3-hop path around it."""
    files = serve_payload()
    port = files.server_address[1]
    data = tmp_path_factory.mktemp("lifecycle")
    processes = [Process("signal", "--listen", "127.0.0.1:0", "--web-root", str(WEB))]
    try:
        by_peer = {}
        for number in range(1, 7):
            relay = Process("relay", "--signal", processes[0].address[0], "--listen", relay_listen(number),
                            "--data-dir", str(data / f"r{number}"), "--exit", "--exit-allow", f"127.0.0.1/32:{port}")
            processes.append(relay)
            by_peer[relay.address[1]] = relay
        yield processes[0].address[0], f"http://127.0.0.1:{port}/file", by_peer
    finally:
        for process in reversed(processes):
            process.stop()
        files.shutdown()


def _listed(url: str, peer: PeerId) -> bool:
    """Whether the directory still lists ``peer`` after up to 10 s of asking."""
    async def ask() -> bool:
        client = Client({**config.load(env={}), "signaling.url": url, "client.socks": "127.0.0.1:0"})
        try:
            for _ in range(100):
                if peer not in {d.peer_id for d in await client.directory.relays(refresh=True)}:
                    return False
                await asyncio.sleep(0.1)
            return True
        finally:
            await client.signal.close()
    return run_native(ask())


def _is_listed_now(url: str, peer: PeerId) -> bool:
    async def ask() -> bool:
        client = Client({**config.load(env={}), "signaling.url": url, "client.socks": "127.0.0.1:0"})
        try:
            return peer in {d.peer_id for d in await client.directory.relays(refresh=True)}
        finally:
            await client.signal.close()
    return run_native(ask())


def test_connect_twice_is_one_node_and_disconnect_leaves_no_link_nor_listing(browser, relays):
    url, _, _ = relays
    page = example_page(browser, url)
    first = page.evaluate(JOIN, {"hops": 3})
    tab = PeerId.from_text(first)
    before = page.evaluate("window.vpn.getStats()")
    second = page.evaluate("async () => { await window.vpn.connect(); return window.vpn.peerId; }")
    after = page.evaluate("window.vpn.getStats()")
    assert second == first and after["circuit"] == before["circuit"] and after["state"] == "connected"
    assert [e["name"] for e in page.evaluate("window.events")] == ["connect"]  # one circuit, one connect
    assert before["links"] >= 1 and before["relaying"] and _is_listed_now(url, tab)

    closed = page.evaluate("async () => { await window.vpn.disconnect(); return await window.vpn.getStats(); }")
    assert closed["links"] == 0 and closed["state"] == "disconnected" and not closed["relaying"]
    assert not closed["connected"] and not closed["transport"]["signaling"]
    assert [e["name"] for e in page.evaluate("window.events")] == ["connect", "disconnect"]
    assert not _listed(url, tab)
    # connect() again joins again, as the same node (its identity is kept in IndexedDB)
    again = page.evaluate("async () => { await window.vpn.connect(); return [window.vpn.peerId, window.vpn.state]; }")
    assert again == [first, "connected"]
    page.evaluate("window.vpn.disconnect()")
    page.close()


def test_disconnect_keep_relaying_keeps_the_tab_listed(browser, relays):
    url, target, _ = relays
    page = example_page(browser, url)
    tab = PeerId.from_text(page.evaluate(JOIN, {"hops": 3}))
    stats = page.evaluate("""async () => {
        await window.vpn.disconnect({ keepRelaying: true });
        return await window.vpn.getStats(); }""")
    assert stats["state"] == "relaying" and stats["relaying"] and not stats["connected"] and stats["links"] >= 1
    assert _is_listed_now(url, tab)
    rebuilt = page.evaluate("async () => { await window.vpn.connect(); return await window.vpn.getStats(); }")
    assert rebuilt["state"] == "connected" and rebuilt["peer_id"] == tab.text and len(rebuilt["path"]) == 3
    page.evaluate("window.vpn.disconnect()")
    page.close()


def test_update_config_applies_hops_and_transport_to_the_running_tab(browser, relays):
    url, target, _ = relays
    page = example_page(browser, url)
    page.evaluate(JOIN, {"hops": 3, "relay": False})  # no home link: every link is the circuit's
    start = page.evaluate("window.vpn.getStats()")
    assert len(start["path"]) == 3 and set(start["transport"]["open_links"]) == {"webrtc"}, start["transport"]

    two = page.evaluate("async () => { await window.vpn.updateConfig({ hops: 2 }); "
                        "return await window.vpn.getStats(); }")
    assert len(two["path"]) == 2 and two["circuit"] != start["circuit"] and two["options"]["hops"] == 2

    ws = page.evaluate("""async () => { await window.vpn.updateConfig({ transport: "websocket" });
                                        return await window.vpn.getStats(); }""")
    assert ws["transport"]["open_links"] == {"websocket": ws["links"]} and ws["links"] >= 1, ws["transport"]
    assert ws["transport"]["websocket"] > two["transport"]["websocket"]  # dialed anew, over WebSocket
    assert len(ws["path"]) == 2 and ws["circuit"] != two["circuit"]
    result = page.evaluate(FETCH, target)
    assert result["status"] == 200 and bytes(result["sha256"]) == hashlib.sha256(PAYLOAD).digest()

    refused = page.evaluate("""async () => {
        try { await window.vpn.updateConfig({ hops: 12 }); return "applied"; }
        catch (err) { return err.name + ": " + err.message; } }""")
    assert refused.startswith("TypeError: hops must be")
    fixed = page.evaluate("""async () => {
        try { await window.vpn.updateConfig({ relay: true }); return "applied"; }
        catch (err) { return [err.name, err.code]; } }""")
    assert fixed == ["MeshError", "CONFIG_ERROR"]
    assert (page.evaluate("window.vpn.getStats()"))["options"]["hops"] == 2
    page.evaluate("window.vpn.disconnect()")
    page.close()


def test_killing_the_middle_relay_is_healed_without_calling_connect(browser, relays):
    url, target, by_peer = relays
    page = example_page(browser, url)
    page.evaluate(JOIN, {"hops": 3, "relay": False, "transport": "websocket"})
    path = page.evaluate("window.vpn.getStats()")["path"]
    port = int(target.split(":")[2].split("/")[0])
    page.evaluate("""async (port) => {  // a stream in flight when the circuit dies
        window.inflight = await window.vpn.openStream("127.0.0.1", port);
        window.inflightOutcome = window.inflight.read().then(() => "read").catch(
            (err) => ({ name: err.name, code: err.code }));
    }""", port)
    middle = by_peer.pop(path[1])
    middle.proc.send_signal(signal.SIGKILL)
    middle.proc.wait()

    page.wait_for_function("window.events.filter((e) => e.name === 'connect').length >= 2", timeout=60_000)
    events = page.evaluate("window.events")
    names = [e["name"] for e in events if e["name"] != "error"]
    assert names[:3] == ["connect", "disconnect", "connect"], events
    lost = next(e["value"] for e in events if e["name"] == "disconnect")
    assert lost["reason"] == "LINK_CLOSED" and lost["failed_hop"] == path[1] and lost["rebuilding"], lost
    assert page.evaluate("window.inflightOutcome") == {"name": "MeshError", "code": "DESTROYED"}
    result = page.evaluate(FETCH, target)
    assert result["status"] == 200 and bytes(result["sha256"]) == hashlib.sha256(PAYLOAD).digest()
    healed = page.evaluate("window.vpn.getStats()")
    assert healed["state"] == "connected" and path[1] not in healed["path"] and len(healed["path"]) == 3
    page.evaluate("window.vpn.disconnect()")
    page.close()
