"""Onion services and tabs in real Chromium, with real `zmesh` processes (issue 12, "Done when"): a
tab hosts a service that curl fetches from through a native SOCKS client; a tab fetches from a
native `zmesh service`; two tabs exchange messages both ways by `.mesh` address. The tabs do not
relay, so every hop of every circuit is a native relay."""

import base64
import hashlib
import os
import subprocess

import pytest
from conftest import WEB, serve_payload
from playwright_support import PAYLOAD, example_page

from tests.fuzz_targets import run_sync
from tests.private_network import relay_listen
from tests.test_native_mesh import Process
from zmesh.native.crypto import NativeCryptoProvider
from zmesh.onion.address import encode_address
from zmesh.onion.introduce import ServiceKeys

VPORT = 8080
TAB_BODY = os.urandom(512 * 1024)

JOIN_AND_HOST = """async ({ body, port }) => {
    const { MeshVPN } = await import("/meshvpn.js");
    const vpn = window.vpn = new MeshVPN({ relay: false });
    await vpn.connect();
    const page = Uint8Array.from(atob(body), (c) => c.charCodeAt(0));
    window.served = 0;
    // An HTTP/1.0 server over the tab's service streams: read the request head, answer, close.
    const onStream = async (stream) => {
        let head = "";
        while (!head.includes("\\r\\n\\r\\n")) {
            const chunk = await stream.read();
            if (chunk === null) return;
            head += new TextDecoder().decode(chunk);
        }
        const top = `HTTP/1.0 200 OK\\r\\nContent-Length: ${page.length}\\r\\n\\r\\n`;
        await stream.write(new TextEncoder().encode(top));
        for (let at = 0; at < page.length; at += 65536) await stream.write(page.subarray(at, at + 65536));
        await stream.close();
        window.served += 1;
    };
    const address = await vpn.host({ onStream, port });
    return { address, same: vpn.address === address,
             key: Array.from(await vpn.exportServiceKey()) };
}"""


@pytest.fixture(scope="module")
def onion_mesh(tmp_path_factory):
    files = serve_payload()
    files_port = files.server_address[1]
    root = tmp_path_factory.mktemp("onion-tabs")
    processes = [Process("signal", "--listen", "127.0.0.1:0", "--web-root", str(WEB))]
    url = processes[0].address[0]
    try:
        for number in range(1, 7):  # the last is an exit: a tab's connect() builds an exit circuit
            extra = ["--exit", "--exit-allow", f"127.0.0.1/32:{files_port}"] if number == 6 else []
            processes.append(Process("relay", "--signal", url, "--listen", relay_listen(number),
                                     "--data-dir", str(root / f"r{number}"), *extra, log=root / f"relay{number}.log"))
        yield {"url": url, "root": root, "files_port": files_port, "processes": processes}
    finally:
        for process in reversed(processes):
            process.stop()
        files.shutdown()


def test_a_native_client_fetches_from_a_service_a_tab_hosts(browser, onion_mesh):
    page = example_page(browser, onion_mesh["url"])
    hosted = page.evaluate(JOIN_AND_HOST, {"body": base64.b64encode(TAB_BODY).decode(), "port": VPORT})
    address = hosted["address"]
    assert address.endswith(".mesh") and hosted["same"]
    keys = run_sync(ServiceKeys.from_seed(NativeCryptoProvider(), bytes(hosted["key"])))
    assert encode_address(keys.public) == address  # the address is the tab's saved service key

    root = onion_mesh["root"]
    client = Process("client", "--signal", onion_mesh["url"], "--socks", "127.0.0.1:0", log=root / "client.log")
    try:
        out = root / "from-tab"
        for _ in range(2):  # a second fetch reuses the joined circuit
            done = subprocess.run(["curl", "--silent", "--show-error", "--max-time", "120", "--socks5-hostname",
                                   client.address[0], "-o", str(out), "-w", "%{http_code}",
                                   f"http://{address}:{VPORT}/"], capture_output=True, text=True, timeout=130)
            assert done.returncode == 0 and done.stdout == "200", done.stderr
            assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(TAB_BODY).digest()
        assert page.evaluate("window.served") == 2
        wrong = subprocess.run(["curl", "--silent", "--max-time", "60", "--socks5-hostname", client.address[0],
                                f"http://{address}:{VPORT + 1}/"], capture_output=True, text=True, timeout=70)
        assert wrong.returncode != 0  # a port the tab does not serve is refused
    finally:
        client.stop()
    page.close()


def test_a_tab_fetches_from_a_native_service(browser, onion_mesh):
    root = onion_mesh["root"]
    service = Process("service", "--signal", onion_mesh["url"], "--data-dir", str(root / "service"),
                      "--forward", f"{VPORT}=127.0.0.1:{onion_mesh['files_port']}", log=root / "service.log")
    address = service.address[0]
    page = example_page(browser, onion_mesh["url"])
    try:
        result = page.evaluate("""async ({ address, port }) => {
            const { MeshVPN } = await import("/meshvpn.js");
            const vpn = new MeshVPN({ relay: false });
            await vpn.connect();
            const { status, body } = await vpn.fetch(`http://${address}:${port}/file`);
            const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", body));
            const stream = await vpn.openStream(address, port);
            await stream.write(new TextEncoder().encode("GET /file HTTP/1.0\\r\\n\\r\\n"));
            let raw = 0;
            for (let chunk = await stream.read(); chunk; chunk = await stream.read()) raw += chunk.length;
            let refused = null;
            try { await vpn.openStream(address, port + 1); } catch (err) { refused = err.code; }
            return { status, size: body.length, sha256: Array.from(digest), raw, refused };
        }""", {"address": address, "port": VPORT})
    finally:
        page.close()
        service.stop()
    assert result["status"] == 200 and result["size"] == len(PAYLOAD)
    assert bytes(result["sha256"]) == hashlib.sha256(PAYLOAD).digest()
    assert result["raw"] > len(PAYLOAD)  # headers and body through openStream to the .mesh address
    assert result["refused"] == "SERVICE_PORT"


def test_two_tabs_exchange_messages_both_ways_by_mesh_address(browser, onion_mesh):
    alice, bob = example_page(browser, onion_mesh["url"]), example_page(browser, onion_mesh["url"])  # two contexts
    try:
        alice_address = alice.evaluate("""async () => {
            const { MeshVPN } = await import("/meshvpn.js");
            const vpn = window.vpn = new MeshVPN({ relay: false });
            window.heard = [];
            vpn.on("message", (data) => window.heard.push(new TextDecoder().decode(data)));
            const errors = [];
            try { await vpn.host({ onStream: () => {}, port: 0 }); } catch (err) { errors.push(err.name); }
            try { await vpn.host(); } catch (err) { errors.push(err.message); }  // before connect()
            await vpn.connect();
            const address = await vpn.host();
            try { await vpn.host(); } catch (err) { errors.push(err.type); }  // one service per tab
            return { address, errors };
        }""")
        assert alice_address["errors"] == ["TypeError", "not connected: call connect() first", "InvalidState"]
        alice_address = alice_address["address"]
        bob_address = bob.evaluate("""async (alice) => {
            const { MeshVPN } = await import("/meshvpn.js");
            const vpn = window.vpn = new MeshVPN({ relay: false, destination: alice });
            await vpn.connect();  // straight to alice's service: a rendezvous circuit
            const address = await vpn.host();
            await vpn.send(new TextEncoder().encode(`hello alice, reply to ${address}`));
            return address;
        }""", alice_address)
        assert bob_address != alice_address
        got = alice.evaluate("""async () => {
            const message = new TextDecoder().decode(await window.vpn.receive());
            const reply = message.split(" ").pop();
            await window.vpn.connect({ destination: reply });  // the same node: its service stays up
            await window.vpn.send(new TextEncoder().encode("hello bob"));
            return { message, heard: window.heard, address: window.vpn.address };
        }""")
        assert got["message"] == f"hello alice, reply to {bob_address}" and got["heard"] == [got["message"]]
        assert got["address"] == alice_address
        answer = bob.evaluate("""async (alice) => {
            const reply = new TextDecoder().decode(await window.vpn.receive());
            await window.vpn.send(new TextEncoder().encode("and again"));  // the joined circuit still carries
            let refused = null;
            try { await window.vpn.openStream(alice, 80); } catch (err) { refused = err.code; }
            return { reply, refused };
        }""", alice_address)
        assert answer["reply"] == "hello bob" and answer["refused"] == "SERVICE_PORT"
        assert alice.evaluate("async () => new TextDecoder().decode(await window.vpn.receive())") == "and again"
    finally:
        alice.close()
        bob.close()
