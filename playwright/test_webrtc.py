"""WebRTC with real Chromium and real aiortc relays, inside the test run's private namespace: a
circuit browser → browser → native relay → exit over DataChannels, the fallback to WebSocket when
ICE fails, hostile signaling sent to a tab, and a tab that loses its home relay."""

import asyncio
import hashlib
import time

from conftest import WEB
from playwright_support import JOIN, PAYLOAD, example_page, run_native

from tests.private_network import relay_listen
from tests.test_native_mesh import Process
from zmesh.aio.rtc import RtcConnector, RtcOptions
from zmesh.descriptor import verify_descriptor
from zmesh.errors import LinkClosed
from zmesh.identity import Identity, PeerId
from zmesh.native.crypto import NativeCryptoProvider
from zmesh_relay.rtclink import AiortcBackend
from zmesh_signal.client import SignalClient

FETCH = """async ([options, target]) => {
    const { MeshVPN } = await import("/meshvpn.js");
    const vpn = window.vpn = new MeshVPN(options);
    await vpn.connect();
    const { status, body } = await vpn.fetch(target);
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", body));
    return { status, sha256: Array.from(digest), stats: await vpn.getStats() };
}"""


def test_browser_to_browser_to_native_relay_to_exit(browser, mesh):
    url, port = mesh
    tab_b = example_page(browser, url)
    b_id = tab_b.evaluate(JOIN, {"hops": 3})  # relays for others and answers WebRTC offers
    tab_a = example_page(browser, url)
    options = {"hops": 3, "entry": b_id, "relay": False, "identity": "ephemeral"}
    result = tab_a.evaluate(FETCH, [options, f"http://127.0.0.1:{port}/file"])
    assert result["status"] == 200 and bytes(result["sha256"]) == hashlib.sha256(PAYLOAD).digest()
    stats = result["stats"]
    assert stats["path"][0] == b_id and b_id not in stats["path"][1:]
    assert stats["transport"]["open_links"] == {"webrtc": 1}  # tab A's only link: to tab B
    b_stats = tab_b.evaluate("window.vpn.getStats()")
    assert b_stats["metrics"]["circuits_relayed"] >= 1
    # tab B: its home relay, tab A's inbound DataChannel and the onward link, none of them WebSocket
    assert b_stats["transport"]["open_links"].get("webrtc", 0) >= 2, b_stats["transport"]
    assert "websocket" not in b_stats["transport"]["open_links"]
    tab_a.close()
    tab_b.close()


def test_enable_fec_carries_circuits_over_a_lossy_datachannel(browser, mesh):
    """enableFEC: the tab's links get a second, unordered DataChannel without retransmissions, and
    the circuits' RELAY cells cross it under Tetrys FEC (to aiortc relays here)."""
    url, port = mesh
    page = example_page(browser, url)
    options = {"hops": 3, "relay": False, "identity": "ephemeral", "enableFEC": True}
    result = page.evaluate(FETCH, [options, f"http://127.0.0.1:{port}/file"])
    assert result["status"] == 200 and bytes(result["sha256"]) == hashlib.sha256(PAYLOAD).digest()
    assert result["stats"]["transport"]["open_links"] == {"webrtc+fec": 1}, result["stats"]["transport"]
    page.close()


def test_failed_ice_falls_back_to_websocket_within_the_deadline(browser, mesh):
    """icePolicy 'relay' with no TURN server leaves ICE without a single candidate: a real failure."""
    url, port = mesh
    page = example_page(browser, url)
    options = {"hops": 3, "relay": False, "identity": "ephemeral", "icePolicy": "relay", "webrtcTimeout": 3}
    result = page.evaluate(FETCH, [options, f"http://127.0.0.1:{port}/file"])
    assert result["status"] == 200 and bytes(result["sha256"]) == hashlib.sha256(PAYLOAD).digest()
    transport = result["stats"]["transport"]
    # every link fell back (a first circuit may fail further on, e.g. at a closed tab, and be rebuilt)
    assert set(transport["open_links"]) == {"websocket"} and transport["fallbacks"] == transport["websocket"] >= 1, \
        transport
    assert transport["last_fallback"].startswith("webrtc:") and transport["last_fallback_after"] <= 3 + 1
    page.close()


def test_forced_webrtc_with_failing_ice_is_a_clear_error(browser, mesh):
    url, _ = mesh
    page = example_page(browser, url)
    message = page.evaluate("""async () => {
        const { MeshVPN } = await import("/meshvpn.js");
        const vpn = new MeshVPN({ transport: "webrtc", icePolicy: "relay", webrtcTimeout: 2, relay: false,
                                  identity: "ephemeral" });
        try { await vpn.connect(); return "connected"; } catch (err) { return err.message; }
    }""")
    assert message.startswith("could not join the mesh") and "WebRTC" in message, message
    page.close()


def test_hostile_signaling_is_rejected_by_a_tab_that_keeps_working(browser, mesh):
    """Junk, a malformed offer and an answer to nothing, signed by a real peer: the tab counts and
    drops each. An aiortc node's offer right after opens a DataChannel (native ↔ browser), and the
    tab closes it on the first frame that is not a cell."""
    url, port = mesh
    page = example_page(browser, url)
    tab_id = PeerId.from_text(page.evaluate(JOIN, {"hops": 3}))

    async def hostile_then_honest() -> int:
        provider = NativeCryptoProvider()
        async with SignalClient(url) as client:
            session = await client.connect_ws(await Identity.generate(provider), provider)
            for junk in (b"\x00not json", b'{"kind": "offer", "id": "x", "sdp": "v=0 junk", "channels": [{}]}',
                         b'{"kind": "answer", "id": "never-offered", "sdp": "v=0"}'):
                await session.send(tab_id, junk)

            async def refuse(link, peer):
                raise AssertionError("nobody offered to this node")
            connector = RtcConnector(session, AiortcBackend(), refuse, RtcOptions(timeout=15), accept=False)
            try:
                link = await connector.dial(tab_id)  # the tab reads in order: the junk came first
                await link.send(b"\x00" * 16)  # not a cell frame: the tab must drop this link
                frames = 0
                try:
                    while True:
                        await link.recv()
                        frames += 1
                except LinkClosed:
                    return frames
                finally:
                    await link.close()
            finally:
                await connector.close()
                await session.close()

    started = time.monotonic()
    frames_before_close = run_native(hostile_then_honest())  # returns once the tab closed the link
    assert time.monotonic() - started < 15 and frames_before_close <= 1  # at most its AUTH_CHALLENGE
    stats = page.evaluate("window.vpn.getStats()")
    assert stats["transport"]["rejected_signals"] == 3
    status = page.evaluate("async (target) => (await window.vpn.fetch(target)).status",
                           f"http://127.0.0.1:{port}/file")
    assert status == 200
    page.close()


def test_a_tab_offers_itself_again_when_its_home_relay_goes_away(browser, tmp_path):
    signal = Process("signal", "--listen", "127.0.0.1:0", "--web-root", str(WEB))
    url = signal.address[0]
    relays = [Process("relay", "--signal", url, "--listen", relay_listen(i + 1), "--data-dir", str(tmp_path / f"r{i}"),
                      *(["--exit"] if i else [])) for i in range(2)]
    try:
        page = example_page(browser, url)
        tab_id = PeerId.from_text(page.evaluate(JOIN, {"hops": 2}))

        async def home_of_tab() -> str:
            async with SignalClient(url) as client:
                for raw in await client.relays():
                    descriptor = await verify_descriptor(NativeCryptoProvider(), raw, now=time.time())
                    if descriptor.peer_id == tab_id:
                        return descriptor.addresses["via"][0]
            raise AssertionError("the tab is not in the directory")

        first_home = run_native(home_of_tab())
        stopped = next(r for r in relays if r.address[1] == first_home)  # its ready line names its PeerId
        assert stopped.stop() == 0  # a clean stop closes its links, so the tab sees its home go

        async def new_home() -> str:  # the tab re-offers after a jittered backoff of under a second
            while (home := await home_of_tab()) == first_home:
                await asyncio.sleep(0.1)
            return home

        assert run_native(new_home(), timeout=20) != first_home
        page.close()
    finally:
        for process in [*relays, signal]:
            process.stop()
