"""Issue 4 (f): the page a person opens joins the mesh, fetches through it, and looks right
(a screenshot is saved under playwright/artifacts/)."""

from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def test_dashboard_joins_fetches_and_renders(browser, mesh):
    url, port = mesh
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{url}/")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('connected')",
                           timeout=60_000)
    assert len(page.text_content("#peer")) == 56
    assert page.locator("#path li").count() == 3
    assert "WebRTC" in page.text_content("#transport")  # e.g. "2 WebRTC": which transport carries the links
    page.fill("#url", f"http://127.0.0.1:{port}/file")
    page.click("#fetch button")
    page.wait_for_function("document.getElementById('fetch-result').textContent.startsWith('HTTP 200')",
                           timeout=60_000)
    assert "unencrypted at the exit" in page.text_content("#fetch-result")  # http:// is labelled
    page.wait_for_function("Number(document.getElementById('in').textContent.replace(/\\D/g, '')) > 5000000",
                           timeout=10_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert errors == [] and page.is_hidden("#errors-card")
    page.close()


def test_a_reload_keeps_the_peer_id_and_a_second_tab_gets_its_own(browser, mesh):
    url, _ = mesh
    context = browser.new_context()
    first = context.new_page()
    join = """async () => { const { MeshVPN } = await import("/meshvpn.js");
        const vpn = new MeshVPN({ hops: 3, relay: false }); await vpn.connect(); return vpn.peerId; }"""
    first.goto(f"{url}/example.html")
    before = first.evaluate(join)
    first.reload()
    assert first.evaluate(join) == before  # kept in IndexedDB across the reload
    second = context.new_page()  # same origin, same storage, while the first tab holds the key
    second.goto(f"{url}/example.html")
    assert second.evaluate(join) != before
    context.close()
