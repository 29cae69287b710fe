"""Two signal servers on one Redis (issue 14): a tab whose page comes from server B builds a
circuit through relays that registered through server A, so its WebRTC signaling to them (and
its home relay's) crosses the servers. Real Chromium, real `zmesh` processes, real redis-server."""

import hashlib
import http.server
import threading

from conftest import WEB, _File
from playwright_support import PAYLOAD, example_page

from tests.private_network import relay_listen
from tests.signal_backends import redis_server
from tests.test_native_mesh import Process


def test_a_tab_on_server_b_fetches_through_relays_registered_on_server_a(browser, tmp_path):
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _File)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    port = files.server_address[1]
    processes: list[Process] = []
    try:
        with redis_server() as redis_url:
            for _ in range(2):
                processes.append(Process("signal", "--listen", "127.0.0.1:0", "--web-root", str(WEB),
                                         "--redis", redis_url))
            a, b = (process.address[0] for process in processes)
            for index in range(4):
                extra = ["--exit", "--exit-allow", f"127.0.0.1/32:{port}"] if index >= 2 else []
                processes.append(Process("relay", "--signal", a, "--listen", relay_listen(index + 1),
                                         "--data-dir", str(tmp_path / f"r{index}"), *extra))
            page = example_page(browser, b)
            result = page.evaluate("""async (target) => {
                const { MeshVPN } = await import("/meshvpn.js");
                const vpn = new MeshVPN({ hops: 3 });
                await vpn.connect();
                const { status, body } = await vpn.fetch(target);
                const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", body));
                return { status, sha256: Array.from(digest), stats: await vpn.getStats() };
            }""", f"http://127.0.0.1:{port}/file")
            assert result["status"] == 200 and bytes(result["sha256"]) == hashlib.sha256(PAYLOAD).digest()
            assert len(result["stats"]["path"]) == 3
            assert result["stats"]["transport"]["open_links"].get("webrtc", 0) >= 1  # signaled across servers
            page.close()
            for process in reversed(processes):
                process.stop()
    finally:
        for process in reversed(processes):
            process.stop()
        files.shutdown()
