"""Roles on separate links, in real Chromium against real relay processes (issue 11, defect 1;
docs/protocol.md §3): a relaying tab proves its PeerId on its link to its home relay, yet its own
circuit through that very relay arrives over a link on which it proved nothing; a circuit extended
to the tab still works over the authenticated link.

What the relay saw is read from outside the page, in the relay's own debug log (stderr to a file):
``link N: its dialer proved it is <PeerId>`` when a dialer authenticates, and ``relaying a circuit
from link N (peer <PeerId> | its dialer proved nothing)`` for every CREATE it accepts.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from conftest import WEB, serve_payload
from playwright_support import PAYLOAD, example_page, fetch_through_tab, run_native

from tests.conftest import wait_until
from tests.test_native_mesh import Process
from zmesh.identity import PeerId
from zmesh_relay import config
from zmesh_relay.client import Client

PROVED = re.compile(r"link (\d+): its dialer proved it is (\w+)")
RELAYING = re.compile(r"relaying a circuit from link (\d+) \((?:peer (\w+)|its dialer proved nothing)\)")


@pytest.fixture(scope="module")
def logged_mesh(tmp_path_factory):
    """A signal server and three relays (the last two exits), each relay on a loopback /16 of its own
    and logging at debug level to a file: (signal url, file port, {relay PeerId: its log file})."""
    files = serve_payload()
    port = files.server_address[1]
    data = tmp_path_factory.mktemp("logged-relays")
    processes = [Process("signal", "--listen", "127.0.0.1:0", "--web-root", str(WEB))]
    url = processes[0].address[0]
    logs: dict[PeerId, Path] = {}
    try:
        for number in (1, 2, 3):
            extra = ["--exit", "--exit-allow", f"127.0.0.1/32:{port}"] if number >= 2 else []
            log = data / f"r{number}.log"
            relay = Process("--log-level", "debug", "relay", "--signal", url, "--listen", f"127.{number}.0.1:0",
                            "--data-dir", str(data / f"r{number}"), *extra, log=log)
            processes.append(relay)
            logs[PeerId.from_text(relay.address[1])] = log
        yield url, port, logs
    finally:
        for process in reversed(processes):
            process.stop()
        files.shutdown()


def seen_by(log: Path) -> tuple[dict[str, set[str]], list[tuple[str, str | None]]]:
    """From a relay's log: the PeerIds proved on each link, and each accepted CREATE's (link, peer)."""
    text = log.read_text()
    proved: dict[str, set[str]] = {}
    for link, peer in PROVED.findall(text):
        proved.setdefault(link, set()).add(peer)
    return proved, [(link, peer or None) for link, peer in RELAYING.findall(text)]


def directory_entry(url: str, tab: PeerId):
    async def find():
        client = Client({**config.load(env={}), "signaling.url": url, "client.socks": "127.0.0.1:0"})
        try:
            return next(d for d in await client.directory.relays(refresh=True) if d.peer_id == tab)
        finally:
            await client.signal.close()

    return run_native(find())


@pytest.mark.parametrize("transport", ["webrtc", "websocket"])
def test_a_relaying_tabs_own_circuit_reaches_its_home_relay_over_an_unauthenticated_link(
        browser, logged_mesh, transport):
    url, port, logs = logged_mesh
    page = example_page(browser, url)
    tab = PeerId.from_text(page.evaluate("""async (transport) => {
        const { MeshVPN } = await import("/meshvpn.js");
        window.vpn = new MeshVPN({ hops: 3, relay: true, identity: "ephemeral", transport });
        await window.vpn.connect();
        return window.vpn.peerId;
    }""", transport))
    (home_text,) = directory_entry(url, tab).addresses["via"]
    home = PeerId.from_text(home_text)
    home_log = logs[home]
    before = len(seen_by(home_log)[1])
    # the tab's next circuit starts at its home relay, the one peer that knows its PeerId
    result = page.evaluate("""async ([home, target]) => {
        await window.vpn.updateConfig({ entry: home });  // applied at once: the circuit is rebuilt
        const { status, body } = await window.vpn.fetch(target);
        return { status, size: body.length, stats: await window.vpn.getStats() };
    }""", [home.text, f"http://127.0.0.1:{port}/file"])
    assert result["status"] == 200 and result["size"] == len(PAYLOAD)
    assert result["stats"]["path"][0] == home.text
    assert result["stats"]["transport"]["open_links"].get(transport, 0) >= 2  # the home link and the circuit's

    run_native(wait_until(lambda: len(seen_by(home_log)[1]) > before))
    proved, created = seen_by(home_log)
    tab_links = {link for link, peers in proved.items() if tab.text in peers}
    assert len(tab_links) == 1  # the tab proved itself on its home link, and on no other
    since = created[before:]  # the tab's circuit, and whatever else reached this relay meanwhile
    assert (None in {peer for _, peer in since}) and not tab_links & {link for link, _ in since}, since
    for log in logs.values():  # no relay took a circuit from a link the tab authenticated
        assert tab.text not in {peer for _, peer in seen_by(log)[1]}

    response = run_native(fetch_through_tab(url, port, tab))  # extended to the tab over its home link
    assert response.status == 200 and hashlib.sha256(response.body).digest() == hashlib.sha256(PAYLOAD).digest()
    assert page.evaluate("window.vpn.getStats().then((s) => s.metrics.circuits_relayed)") >= 1
    page.close()


def test_a_tab_that_does_not_relay_proves_its_peer_id_to_no_relay(browser, logged_mesh):
    url, port, logs = logged_mesh
    page = example_page(browser, url)
    result = page.evaluate("""async (target) => {
        const { MeshVPN } = await import("/meshvpn.js");
        window.vpn = new MeshVPN({ hops: 3, relay: false, identity: "ephemeral" });
        await window.vpn.connect();
        const { status } = await window.vpn.fetch(target);
        return { status, peerId: window.vpn.peerId, path: (await window.vpn.getStats()).path };
    }""", f"http://127.0.0.1:{port}/file")
    assert result["status"] == 200
    first_hop = logs[PeerId.from_text(result["path"][0])]
    run_native(wait_until(lambda: None in {peer for _, peer in seen_by(first_hop)[1]}))
    for log in logs.values():
        proved, created = seen_by(log)
        assert result["peerId"] not in set().union(*proved.values(), {peer for _, peer in created})
    page.close()
