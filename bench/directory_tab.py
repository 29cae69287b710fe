"""``bench/directory.py`` part 4: what a tab's consensus check costs (docs/directory.md §8), in real
Chromium on the page served by a real ``zmesh signal``: one ML-DSA-65 and one Ed25519 verification
of a real consensus signature, and the whole ``accept_consensus`` (3 hybrid signatures), with
ML-DSA-65 on the browser's WebCrypto where it has it and on the pure-Python dilithium-py fallback
(each timed after one untimed verification, which loads the fallback).
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "playwright"))

from playwright.sync_api import sync_playwright  # noqa: E402
from playwright_support import CHROMIUM_ARGS  # noqa: E402

from tests.test_native_mesh import Process  # noqa: E402

# Runs in the tab's Pyodide: medians (ms) per ML-DSA path, and which path "auto" (None) took.
IN_TAB = """async ([raw, fps, now, rounds]) => {
    const { bootZmesh } = await import("/boot.mjs");
    const { pyodide } = await bootZmesh();
    pyodide.globals.set("args", pyodide.toPy([raw, fps, now, rounds]));
    return await pyodide.runPythonAsync(`
import base64, json, statistics, time
from zmesh.browser.webcrypto import WebCryptoProvider
from zmesh.consensus import CONSENSUS_DOMAIN, accept_consensus, parse_consensus

raw, fps, now, rounds = base64.b64decode(args[0]), [base64.b64decode(f) for f in args[1]], args[2], args[3]
consensus = parse_consensus(raw)
entry, data = consensus.signatures[fps[0]], CONSENSUS_DOMAIN + consensus.body

async def median_ms(run, rounds):
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        await run()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)

out = {}
for label, choice in (("auto", None), ("dilithium_py", "dilithium-py")):
    provider = WebCryptoProvider(mldsa=choice)
    n = rounds if label == "auto" else max(3, rounds // 3)
    await provider.mldsa65_verify(entry["mldsa65"], entry["sig_mldsa65"], data)  # warm up: loads dilithium-py
    out[label] = {
        "mldsa65_verify_ms": await median_ms(lambda: provider.mldsa65_verify(entry["mldsa65"], entry["sig_mldsa65"],
                                                                             data), n),
        "ed25519_verify_ms": await median_ms(lambda: provider.ed25519_verify(entry["ed25519"], entry["sig_ed25519"],
                                                                             data), n),
        "accept_ms": await median_ms(lambda: accept_consensus(provider, raw, authorities=fps, now=now), n),
        "mldsa65_path": "dilithium-py" if "Dilithium" in type(await provider._path("mldsa")).__name__ else "webcrypto",
    }
json.dumps(out)
`);
}"""


def tab_figures(raw: bytes, fingerprints: list[bytes], now: float, rounds: int) -> dict:
    """The figures of ``IN_TAB`` for the signed consensus ``raw`` (``fingerprints``: its authorities)."""
    web = Path(__file__).resolve().parent.parent / "web"
    server = Process("signal", "--listen", "127.0.0.1:0", "--web-root", str(web))
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"{server.address[0]}/example.html")
            encoded = [base64.b64encode(raw).decode(), [base64.b64encode(f).decode() for f in fingerprints]]
            figures = json.loads(page.evaluate(IN_TAB, [*encoded, now, rounds]))
            browser.close()
    finally:
        server.stop()
    return figures
