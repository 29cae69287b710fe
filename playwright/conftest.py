"""Real Chromium (Debian's, never a downloaded one) driven by Playwright against real servers."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from tests.test_native_mesh import Process

WEB = Path(__file__).resolve().parent.parent / "web"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
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
