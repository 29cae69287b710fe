"""A tab's entry guards in real Chromium, against real relays: every circuit enters at the first
guard, the sample is kept in IndexedDB with the identity so a reload keeps it, and a dead guard
hands over to the sample's next entry (issue 11, entry guards)."""

import signal

import pytest
from conftest import WEB
from playwright_support import STORED, example_page

from tests.test_native_mesh import Process
from zmesh.guards import decode_guards

CIRCUITS = """async (count) => {
    const { MeshVPN } = await import("/meshvpn.js");
    window.vpn = new MeshVPN({ hops: 3, relay: false, transport: "websocket" });
    await window.vpn.connect();
    const entries = [(await window.vpn.getStats()).path[0]];
    for (let i = 1; i < count; i++) {  // more circuits from the same node (and the same guards)
        await window.vpn._vpn.disconnect();  // the Python MeshVPN only: the node and its guards stay
        await window.vpn._vpn.connect();
        entries.push((await window.vpn.getStats()).path[0]);
    }
    return { entries, guards: (await window.vpn.getStats()).guards };
}"""

@pytest.fixture
def relays(tmp_path):
    """A signal server serving the page and four relays, each on its own loopback /16. All are exits:
    with fewer, the sample's second guard could be the only exit left once the first dies (and
    would rightly be passed over)."""
    processes = [Process("signal", "--listen", "127.0.0.1:0", "--web-root", str(WEB))]
    try:
        by_peer = {}
        for number in range(1, 5):
            relay = Process("relay", "--signal", processes[0].address[0], "--listen", f"127.{number}.0.1:0",
                            "--data-dir", str(tmp_path / f"r{number}"), "--exit")
            processes.append(relay)
            by_peer[relay.address[1]] = relay
        yield processes[0].address[0], by_peer
    finally:
        for process in reversed(processes):
            process.stop()


def test_a_tab_enters_at_its_saved_guards_across_reloads_and_fails_over_along_the_sample(browser, relays):
    url, by_peer = relays
    page = example_page(browser, url)
    first = page.evaluate(CIRCUITS, 6)
    sample = [g.peer_id.text for g in decode_guards(bytes(page.evaluate(STORED, "guards")), "the tab's guards")]
    assert sorted(sample) == sorted(by_peer) and first["guards"] == sample[:2]
    assert set(first["entries"]) == {sample[0]}

    page.reload()  # the same origin storage: the same identity, the same guards
    again = page.evaluate(CIRCUITS, 3)
    assert again["guards"] == first["guards"] and set(again["entries"]) == {sample[0]}

    by_peer[sample[0]].proc.send_signal(signal.SIGKILL)
    by_peer[sample[0]].proc.wait()
    entry = page.evaluate("async () => { await window.vpn._vpn.connect(); "
                          "return (await window.vpn.getStats()).path[0]; }")
    assert entry == sample[1], "the next guard of the sample, not a fresh draw"
    page.close()
