"""MeshVPN's ``cover`` option in real Chromium against real relay processes (docs/anonymity.md):
the option is validated where it is given, and a tab with ``cover: 'constant:RATE'`` negotiates
cover with its first hop, which the relay counts in its private /metrics (``padding_negotiated``)."""

import time
from pathlib import Path

import pytest
from playwright_support import JOIN, example_page

from tests.private_network import relay_listen
from tests.test_native_mesh import Process

WEB_ROOT = Path(__file__).resolve().parent.parent / "web"


@pytest.fixture(scope="module")
def metered_mesh(tmp_path_factory):
    """A signal server serving the page and three relays with /metrics (the last an exit)."""
    data = tmp_path_factory.mktemp("cover")
    processes = [Process("signal", "--listen", "127.0.0.1:0", "--web-root", str(WEB_ROOT))]
    url = processes[0].address[0]
    try:
        for index in range(3):
            extra = ["--exit", "--exit-allow", "127.0.0.1/32:9"] if index == 2 else []
            processes.append(Process("relay", "--signal", url, "--listen", relay_listen(index + 1),
                                     "--metrics", "127.0.0.1:0", "--data-dir", str(data / f"r{index}"), *extra))
        yield url, processes[1:]
    finally:
        for process in reversed(processes):
            process.stop()


def _negotiated(relays) -> float:
    return sum(relay.scrape().samples.get(("zmesh_node_events_total", (("event", "padding_negotiated"),)), 0.0)
               for relay in relays)


@pytest.mark.parametrize("cover", ["constant", "constant:", "constant:fast", "uniform:5", "on", 5, "poisson:-1"])
def test_a_bad_cover_option_is_refused_when_given(browser, metered_mesh, cover):
    url, _ = metered_mesh
    page = example_page(browser, url)
    message = page.evaluate("""async (cover) => {
        const { MeshVPN } = await import("/meshvpn.js");
        try { new MeshVPN({ cover }); return "accepted"; } catch (err) { return `${err.name}: ${err.message}`; }
    }""", cover)
    assert message.startswith("TypeError: cover must be"), message
    page.close()


def test_a_tab_with_constant_cover_negotiates_it_with_its_first_hop(browser, metered_mesh):
    url, relays = metered_mesh
    before = _negotiated(relays)
    page = example_page(browser, url)
    page.evaluate(JOIN, {"hops": 3, "cover": "constant:20"})
    deadline = time.monotonic() + 30
    while _negotiated(relays) <= before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _negotiated(relays) > before
    stats = page.evaluate("window.vpn.getStats()")
    assert stats["metrics"].get("padding_negotiated", 0) >= 1  # the tab heard its first hop's answer
    assert stats["metrics"].get("padding_setup_negotiated", 0) >= 1  # and pads its circuits' setups
    page.close()


@pytest.mark.parametrize("cover", ["constant:0", "poisson:1000000"])
def test_a_cover_rate_out_of_range_fails_connect_with_the_reason(browser, metered_mesh, cover):
    url, _ = metered_mesh
    page = example_page(browser, url)
    message = page.evaluate("""async (cover) => {
        const { MeshVPN } = await import("/meshvpn.js");
        const vpn = new MeshVPN({ hops: 3, cover });
        try { await vpn.connect(); return "connected"; } catch (err) { return err.message; }
    }""", cover)
    assert "cover rate must be" in message, message
    page.close()
