"""Real Chromium (Debian's, never a downloaded one) driven by Playwright against real servers."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright
from playwright_support import CHROMIUM_ARGS, PAYLOAD

from tests.https_support import answering
from tests.private_network import declare_private_test_network, relay_listen, require_private_network
from tests.test_native_mesh import Process


def pytest_configure(config: pytest.Config) -> None:
    require_private_network()
    declare_private_test_network()

WEB = Path(__file__).resolve().parent.parent / "web"


@pytest.fixture(scope="module")  # not session: Playwright's sync API holds an event loop while open
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def signal_url():
    server = Process("signal", "--listen", "127.0.0.1:0", "--web-root", str(WEB))
    yield server.address[0]
    server.stop()


_File = answering(PAYLOAD)  # answers every GET with ``PAYLOAD``


def serve_payload() -> http.server.ThreadingHTTPServer:
    """An HTTP server on 127.0.0.1 (port 0) answering every GET with ``PAYLOAD``; call ``shutdown``."""
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _File)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    return files


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    files = serve_payload()
    port = files.server_address[1]
    data = tmp_path_factory.mktemp("relays")
    processes = [Process("signal", "--listen", "127.0.0.1:0", "--web-root", str(WEB))]
    url = processes[0].address[0]
    try:
        for index in range(4):
            extra = ["--exit", "--exit-allow", f"127.0.0.1/32:{port}"] if index >= 2 else []
            processes.append(Process("relay", "--signal", url, "--listen", relay_listen(index + 1),
                                     "--data-dir", str(data / f"r{index}"), *extra))
        yield url, port
    finally:
        for process in reversed(processes):
            process.stop()
        files.shutdown()
