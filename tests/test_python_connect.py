"""``zmesh.connect``: the README's Python example, run verbatim against real relay processes, and
the awaitable form closing everything it opened."""

from __future__ import annotations

import asyncio
import http.server
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import zmesh

from .private_network import PRIVATE_NETWORK_ENV
from .test_native_mesh import Process

README = Path(__file__).resolve().parents[1] / "README.md"
PAGE = b"<!doctype html><title>through the mesh</title>"


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def readme_mesh(tmp_path_factory):
    """The mesh the README example names: a signal server on 127.0.0.1:8080 and a site on
    127.0.0.1:8000 (free inside the tests' private network namespace), three relays."""
    site = http.server.ThreadingHTTPServer(("127.0.0.1", 8000), _Page)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    folder = tmp_path_factory.mktemp("relays")
    processes = [Process("signal", "--listen", "127.0.0.1:8080")]
    try:
        for n in range(1, 4):
            extra = ["--exit", "--exit-allow", "127.0.0.1/32:8000"] if n == 3 else []
            processes.append(Process("relay", "--signal", "http://127.0.0.1:8080", "--listen", f"127.{n}.0.1:0",
                                     "--data-dir", str(folder / f"r{n}"), *extra))
        yield "http://127.0.0.1:8080"
    finally:
        for process in reversed(processes):
            process.stop()
        site.shutdown()


def test_the_readme_example_runs_verbatim(readme_mesh):
    block = re.search(r"<!-- tests/test_python_connect.py runs this block verbatim -->\n```python\n(.*?)```",
                      README.read_text(), re.S)
    assert block is not None
    env = {**os.environ, PRIVATE_NETWORK_ENV: "true"}
    done = subprocess.run([sys.executable, "-c", block[1]], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [f"200 text/html {len(PAGE)}", "b'HTTP/1.0 200 OK'"]


def test_the_awaitable_form_is_a_connected_meshvpn_and_close_ends_its_links(readme_mesh, monkeypatch):
    monkeypatch.setenv(PRIVATE_NETWORK_ENV, "true")

    async def run() -> tuple[int, int, int]:
        vpn = await zmesh.connect(readme_mesh, hops=3)
        try:
            assert vpn.connected and len(vpn.get_stats()["path"]) == 3
            response = await vpn.fetch("http://127.0.0.1:8000/")
            links_open = len(vpn.driver.links())
        finally:
            await vpn.close()
        return response.status, links_open, len(vpn.driver.links())

    status, links_open, links_after = asyncio.run(run())
    assert (status, links_after) == (200, 0) and links_open >= 1
