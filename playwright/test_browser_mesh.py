"""Issue 4 (b): a tab joins the mesh with the MeshVPN JS API and fetches 5 MiB through 3 native
relays (real `zmesh` processes), byte-exact."""

import hashlib
import http.server
import os
import threading
from pathlib import Path

import pytest

from tests.test_native_mesh import Process

WEB = Path(__file__).resolve().parent.parent / "web"  # (the folder name shadows the playwright package)

PAYLOAD = os.urandom(5 * 1024 * 1024)


class _File(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        self.wfile.write(PAYLOAD)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _File)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    port = files.server_address[1]
    data = tmp_path_factory.mktemp("relays")
    processes = [Process("signal", "--listen", "127.0.0.1:0", "--web-root", str(WEB))]
    url = processes[0].address[0]
    try:
        for index in range(4):
            extra = ["--exit", "--exit-allow", f"127.0.0.1/32:{port}"] if index == 3 else []
            processes.append(Process("relay", "--signal", url, "--listen", "127.0.0.1:0",
                                     "--data-dir", str(data / f"r{index}"), *extra))
        yield url, port
    finally:
        for process in reversed(processes):
            process.stop()
        files.shutdown()


def test_tab_fetches_through_three_relays(browser, mesh):
    url, port = mesh
    page = browser.new_page()
    page.goto(f"{url}/")
    result = page.evaluate("""async (target) => {
        const { MeshVPN } = await import("/meshvpn.js");
        const vpn = new MeshVPN({ hops: 3 });
        await vpn.connect();
        const { status, body } = await vpn.fetch(target);
        const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", body));
        return { status, size: body.length, sha256: Array.from(digest), stats: vpn.getStats(), peerId: vpn.peerId };
    }""", f"http://127.0.0.1:{port}/file")
    assert result["status"] == 200 and result["size"] == len(PAYLOAD)
    assert bytes(result["sha256"]) == hashlib.sha256(PAYLOAD).digest()
    assert len(result["stats"]["path"]) == 3 and len(result["peerId"]) == 56
    page.close()


def test_bad_options_reject_with_clear_errors(browser, mesh):
    url, _ = mesh
    page = browser.new_page()
    page.goto(f"{url}/")
    message = page.evaluate("""async () => {
        const { MeshVPN } = await import("/meshvpn.js");
        try { new MeshVPN({ hops: 12 }); return "accepted"; } catch (err) { return err.message; }
    }""")
    assert "hops must be" in message
    page.close()
