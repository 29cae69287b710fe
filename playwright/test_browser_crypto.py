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


STREAM_CHECK = """async ([keyHex, chunks]) => {
    const { bootZmesh } = await import("/boot.mjs");
    const { pyodide } = await bootZmesh();
    pyodide.globals.set("KEY", keyHex);
    pyodide.globals.set("CHUNKS", pyodide.toPy(chunks));
    return await pyodide.runPythonAsync(`
from zmesh.browser.webcrypto import WebCryptoProvider
provider = WebCryptoProvider()
key, data = bytes.fromhex(KEY), bytes(sum(CHUNKS))
whole = await provider.aes256_ctr_stream(key, bytes(15) + b"\\\\xff").apply(data)
stream, parts, at = provider.aes256_ctr_stream(key, bytes(15) + b"\\\\xff"), [], 0
for size in CHUNKS:
    parts.append(await stream.apply(data[at:at + size]))
    at += size
[whole.hex(), b"".join(parts).hex()]
`).then((r) => r.toJs());
}"""


def test_ctr_stream_made_ahead_matches_native_across_refills(browser, signal_url):
    """The page's AES-CTR streams make keystream ahead (16 KiB growing to 256 KiB per refill): applied
    in uneven pieces (odd sizes, empty ones, cells' 1008-byte bodies, one larger than a whole refill)
    they give exactly the native keystream, with the counter carrying across its low byte."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = bytes(range(32))
    chunks = [1, 15, 0, 1008 * 3, 17, 20_000, 1008 * 64, 300_000, 5, 1008 * 200, 1]
    counter = bytes(15) + b"\xff"
    encryptor = Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor()
    expected = encryptor.update(bytes(sum(chunks))).hex()
    page = browser.new_page()
    page.goto(f"{signal_url}/")
    whole, pieces = page.evaluate(STREAM_CHECK, [key.hex(), chunks])
    page.close()
    assert whole == expected and pieces == expected
