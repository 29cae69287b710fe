"""A tab with directory authorities, in real Chromium against real `zmesh authority`, relay and
signal processes (docs/directory.md §8): it fetches and verifies the consensus itself (Ed25519 and
ML-DSA-65 in the tab), builds only through consensus relays, starts from its IndexedDB copy after a
reload with every authority unreachable, and refuses a consensus its configured fingerprints did not sign."""

import hashlib
import time

import pytest
from conftest import WEB, serve_payload
from playwright_support import PAYLOAD, STORED, example_page, run_native

from tests.private_network import free_port, relay_listen
from tests.test_authorities import ENV, fingerprint, get, poll
from tests.test_native_mesh import Process
from zmesh.consensus import accept_consensus
from zmesh.hybrid import parse_fingerprint
from zmesh.identity import PeerId
from zmesh.native.crypto import NativeCryptoProvider

# Long enough that the cached consensus (valid for three intervals) outlives a reload of the tab.
INTERVAL = 10

# Several circuits from one tab: every path it builds, and one fetch through the last.
CIRCUITS = """async ([options, target, count]) => {
    const { MeshVPN } = await import("/meshvpn.js");
    const vpn = window.vpn = new MeshVPN(options);
    await vpn.connect();
    const paths = [(await vpn.getStats()).path];
    for (let i = 1; i < count; i++) {
        await vpn._vpn.disconnect();  // the Python MeshVPN only: the node and its consensus stay
        await vpn._vpn.connect();
        paths.push((await vpn.getStats()).path);
    }
    const { status, body } = await vpn.fetch(target);
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", body));
    return { paths, status, size: body.length, sha256: Array.from(digest) };
}"""

REFUSED = """async (options) => {
    const { MeshVPN } = await import("/meshvpn.js");
    const vpn = new MeshVPN(options);
    try { await vpn.connect(); return null; }
    catch (err) { return { name: err.name, code: err.code, message: err.message, state: vpn.state }; }
}"""

# The tab's consensus period start, polled until a later one replaced it (the background refresh).
REFRESHED = """async (timeout) => {
    const first = window.vpn._tab.node.directory.consensus.period.valid_after;
    for (const end = Date.now() + timeout * 1000; Date.now() < end;) {
        const now = window.vpn._tab.node.directory.consensus.period.valid_after;
        if (now > first) return [first, now];
        await new Promise((resolve) => setTimeout(resolve, 200));
    }
    return [first, first];
}"""

@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    """Three authorities; four exit relays publishing to all of them; one publishing to the first
    authority only; one publishing only to the signal server that serves the page."""
    root = tmp_path_factory.mktemp("tab-authorities")
    files = serve_payload()
    files_port = files.server_address[1]
    dirs = [root / f"a{i}" for i in range(3)]
    fps = [fingerprint(d) for d in dirs]
    urls = [f"http://127.0.0.1:{free_port()}" for _ in dirs]
    refs = [f"{u}#{f}" for u, f in zip(urls, fps, strict=True)]
    flags = [a for ref in refs for a in ("--authority", ref)]
    exit_flags = ["--exit", "--exit-allow", f"127.0.0.1/32:{files_port}"]
    processes = [Process("signal", "--listen", "127.0.0.1:0", "--web-root", str(WEB))]
    try:
        signal_url = processes[0].address[0]
        for i, d in enumerate(dirs):
            others = [a for j, ref in enumerate(refs) if j != i for a in ("--authority", ref)]
            processes.append(Process("authority", "--listen", urls[i].removeprefix("http://"), "--data-dir", str(d),
                                     "--vote-interval", str(INTERVAL), *others, env=ENV))
        relays = [Process("relay", "--listen", relay_listen(n + 1), "--data-dir", str(root / f"r{n}"), *flags,
                          *exit_flags, env=ENV) for n in range(4)]
        lone = Process("relay", "--listen", relay_listen(6), "--data-dir", str(root / "lone"), "--authority", refs[0],
                       *exit_flags, env=ENV)
        signal_only = Process("relay", "--signal", signal_url, "--listen", relay_listen(7), "--data-dir",
                              str(root / "signal-only"), *exit_flags, env=ENV)
        processes += [*relays, lone, signal_only]
        ids = {PeerId.from_text(r.address[1]) for r in relays}

        def full():
            raw = get(urls[0] + "/v1/consensus")  # Playwright holds this thread's event loop: verify in another
            consensus = raw and run_native(accept_consensus(NativeCryptoProvider(), raw, now=time.time(),
                                                            authorities=[parse_fingerprint(f) for f in fps]))
            if consensus is None or len(consensus.signatures) < 3 or {e.peer_id for e in consensus.relays} != ids:
                return None
            return consensus if all("Guard" in e.flags for e in consensus.relays) else None

        poll(full, 12 * INTERVAL, "a consensus of the four relays, all Guards, signed by all three authorities")
        yield {"signal": signal_url, "urls": urls, "fps": fps, "refs": refs, "ids": {i.text for i in ids},
               "outsiders": {lone.address[1], signal_only.address[1]}, "target": f"http://127.0.0.1:{files_port}/file",
               "root": root}
    finally:
        for process in reversed(processes):
            process.stop()
        files.shutdown()


def options(refs):
    return {"hops": 3, "relay": False, "transport": "websocket", "authorities": refs}


def check_fetch(result, directory):
    assert result["status"] == 200 and result["size"] == len(PAYLOAD)
    assert bytes(result["sha256"]) == hashlib.sha256(PAYLOAD).digest()
    used = {hop for path in result["paths"] for hop in path}
    assert all(len(path) == 3 for path in result["paths"])
    assert used <= directory["ids"], "only consensus relays"
    assert not used & directory["outsiders"]


def test_a_tab_verifies_the_consensus_builds_through_it_and_starts_from_its_cache(browser, directory):
    page = example_page(browser, directory["signal"])
    result = page.evaluate(CIRCUITS, [options(directory["refs"]), directory["target"], 4])
    check_fetch(result, directory)
    assert page.evaluate(STORED, "consensus")  # meshvpn.js stored it in IndexedDB
    first, later = page.evaluate(REFRESHED, 4 * INTERVAL)  # refreshed past fresh_until, before valid_until
    assert later > first, "the tab fetched and accepted the next consensus in the background"
    page.evaluate("async () => { await window.vpn.disconnect(); }")

    page.reload()  # every authority unreachable now: the tab joins from its verified IndexedDB copy
    for url in directory["urls"]:
        page.route(f"{url}/**", lambda route: route.abort())
    assert page.evaluate("async (u) => { try { await fetch(u); return 'reached'; } catch (e) { return 'blocked'; } }",
                         directory["urls"][0] + "/v1/consensus") == "blocked"
    again = page.evaluate(CIRCUITS, [options(directory["refs"]), directory["target"], 2])
    check_fetch(again, directory)
    page.close()


def test_a_tab_refuses_a_consensus_its_configured_authorities_did_not_sign(browser, directory):
    wrong = [fingerprint(directory["root"] / f"wrong{i}") for i in range(2)]
    refs = [directory["refs"][0], f"{directory['urls'][1]}#{wrong[0]}", f"{directory['urls'][2]}#{wrong[1]}"]
    page = example_page(browser, directory["signal"])
    error = page.evaluate(REFUSED, options(refs))
    assert error is not None and error["name"] == "MeshError" and error["code"] == "CONSENSUS_REFUSED", error
    assert wrong[0] in error["message"] and wrong[1] in error["message"], error
    assert directory["fps"][0] not in error["message"].split("missing:")[-1]
    assert error["state"] == "disconnected"
    message = page.evaluate("""async () => {
        const { MeshVPN } = await import("/meshvpn.js");
        try { new MeshVPN({ authorities: ["ftp://a#b"] }); return "accepted"; } catch (err) { return err.message; }
    }""")
    assert "authorities must be" in message
    page.close()
