"""Issue 4 (a): the shared vector files pass through the WebCrypto provider inside real Chromium,
with the page and Pyodide served from our own origin."""

import json
from pathlib import Path

import pytest

from zmesh.selfcheck import CHECKS

VECTORS = Path(__file__).resolve().parent.parent / "tests" / "vectors"
EXPECTED = sum(len(json.loads((VECTORS / name).read_text())[key]) for name, checks in CHECKS.items()
               for key, _ in checks)


@pytest.mark.parametrize(("mlkem", "mldsa"), [("webcrypto", "webcrypto"), ("kyber-py", "dilithium-py")])
def test_vector_files_pass_in_the_browser(browser, signal_url, mlkem, mldsa):
    """Both paths of ML-KEM and ML-DSA: Chromium's WebCrypto, and the pure-Python fallbacks
    (kyber-py, dilithium-py) for other browsers."""
    page = browser.new_page()
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(f"{signal_url}/selftest.html?mlkem={mlkem}&mldsa={mldsa}")
    page.wait_for_function("window.zmeshSelftest !== undefined", timeout=90_000)
    report = page.evaluate("window.zmeshSelftest")
    assert report["failures"] == []
    assert report["count"] == EXPECTED and report["python"].startswith("3.14")
    assert (report["mlkem"], report["mldsa"]) == (mlkem, mldsa)
    assert all(url.startswith(signal_url) for url in requests), "the page contacted another origin"
    page.close()
