"""Signature benchmark: what one ML-DSA-65 and one Ed25519 verification cost in a tab (WebCrypto,
through the Pyodide bridge, as the consensus verifier calls them; and ML-DSA-65 on the pure-Python
dilithium-py fallback for browsers without it) and natively (OpenSSL), and so what the consensus
check per refresh costs (3 authorities: 3 ML-DSA-65 + 3 Ed25519 verifications).

Real Chromium on the page served by a real ``zmesh signal``; run inside the private namespace
(``tests/netns-run``). Run: ``python bench/signatures.py`` (about twenty seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "playwright"))

from playwright_support import evaluate_in_tab  # noqa: E402

from bench.figures import add_json_flag, print_json  # noqa: E402

# One body for both runtimes: Python that times `runs` verifications of each kind with `provider`.
TIMING = """
import time

async def timing(provider, runs):
    message = bytes(range(256)) * 16  # a 4 KiB document, the order of a small consensus
    out = {}
    for name, generate, sign, verify in (
            ("ML-DSA-65", provider.mldsa65_generate, provider.mldsa65_sign, provider.mldsa65_verify),
            ("Ed25519", provider.ed25519_generate, provider.ed25519_sign, provider.ed25519_verify)):
        secret, public = await generate()
        signature = await sign(secret, message)
        samples = []
        for _ in range(runs):
            start = time.perf_counter()
            assert await verify(public, signature, message)
            samples.append((time.perf_counter() - start) * 1000)
        out[name] = samples
    return out
"""

IN_TAB = """async ([timing, runs]) => {
    const { bootZmesh } = await import("/boot.mjs");
    const { pyodide } = await bootZmesh();
    pyodide.globals.set("runs", runs);
    return await pyodide.runPythonAsync(timing + `
import json
from zmesh.browser.webcrypto import WebCryptoProvider
out = await timing(WebCryptoProvider(), runs)
fallback = await timing(WebCryptoProvider(mldsa="dilithium-py"), max(3, runs // 10))
out["ML-DSA-65 (dilithium-py)"] = fallback["ML-DSA-65"]
json.dumps(out)
`);
}"""


def native(runs: int) -> dict[str, list[float]]:
    from zmesh.native.crypto import NativeCryptoProvider

    scope: dict = {"time": time}
    exec(TIMING, scope)  # noqa: S102 - our own constant, shared with the tab
    return asyncio.run(scope["timing"](NativeCryptoProvider(), runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=50)
    add_json_flag(parser)
    args = parser.parse_args()
    tab = json.loads(evaluate_in_tab(IN_TAB, [TIMING, args.runs]))
    here = native(args.runs)
    print(f"median of {args.runs} verifications of a 4 KiB message, milliseconds")
    print(f"{'':12}{'tab (WebCrypto)':>18}{'native (OpenSSL)':>18}")
    for name in ("ML-DSA-65", "Ed25519"):
        print(f"{name:12}{statistics.median(tab[name]):18.3f}{statistics.median(here[name]):18.3f}")
    fallback = statistics.median(tab["ML-DSA-65 (dilithium-py)"])
    print(f"ML-DSA-65 on dilithium-py in the tab (browsers without it in WebCrypto): {fallback:.1f} ms")
    ed25519 = statistics.median(tab["Ed25519"])
    for label, mldsa in (("WebCrypto", statistics.median(tab["ML-DSA-65"])), ("dilithium-py", fallback)):
        print(f"consensus check in the tab, ML-DSA on {label} (3 ML-DSA-65 + 3 Ed25519): "
              f"{3 * (mldsa + ed25519):.1f} ms")
    print_json(args, {"tab_mldsa65_verify_ms": statistics.median(tab["ML-DSA-65"]),
                      "tab_ed25519_verify_ms": ed25519, "tab_mldsa65_dilithium_py_verify_ms": fallback,
                      "native_mldsa65_verify_ms": statistics.median(here["ML-DSA-65"]),
                      "native_ed25519_verify_ms": statistics.median(here["Ed25519"])})


if __name__ == "__main__":
    main()
