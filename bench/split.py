"""Split-message benchmark: Shamir split and combine of one message (``zmesh.split``), natively and,
with ``--browser``, in Pyodide in real Chromium (the page the signal server serves; run it inside
the private namespace, ``tests/netns-run``). Figures are medians over ``--runs`` runs, in ms.

Run: ``python bench/split.py [--size 262144] [--runs 7] [--browser] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CASES = ((2, 3), (3, 5))

# Runs as-is natively and under Pyodide: returns {"k-of-n": [split ms median, combine ms median]}.
TIMING = """
import os, statistics, time
from zmesh.split import combine, split

def timings(size, runs, cases):
    data = os.urandom(size)
    out = {}
    for k, n in cases:
        splits, combines = [], []
        for _ in range(runs):
            start = time.perf_counter()
            shares = split(data, k=k, n=n, now=time.time())
            middle = time.perf_counter()
            assert combine(shares[-k:]) == data
            combines.append((time.perf_counter() - middle) * 1e3)
            splits.append((middle - start) * 1e3)
        out[f"{k}-of-{n}"] = [statistics.median(splits), statistics.median(combines)]
    return out
"""


def native(size: int, runs: int) -> dict[str, list[float]]:
    scope: dict = {}
    exec(TIMING, scope)  # noqa: S102 (our own constant, shared with the browser run)
    return scope["timings"](size, runs, CASES)


def browser(size: int, runs: int) -> dict[str, list[float]]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "playwright"))
    from playwright.sync_api import sync_playwright
    from playwright_support import CHROMIUM_ARGS

    from tests.test_native_mesh import Process

    server = Process("signal", "--listen", "127.0.0.1:0")
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = chromium.new_page()
            page.goto(f"{server.address[0]}/")
            answer = page.evaluate("""async ([code, call]) => {
                const { bootZmesh } = await import('/boot.mjs');
                const { pyodide } = await bootZmesh();
                pyodide.runPython(code);
                return pyodide.runPython(call);
            }""", [TIMING, f"import json; json.dumps(timings({size}, {runs}, {list(CASES)!r}))"])
            chromium.close()
        return json.loads(answer)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=256 * 1024)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--browser", action="store_true", help="also time it in Pyodide in Chromium")
    parser.add_argument("--json", action="store_true", help="print the medians as JSON")
    args = parser.parse_args()
    results = {"native": native(args.size, args.runs)}
    if args.browser:
        results["pyodide"] = browser(args.size, args.runs)
    if args.json:
        print(json.dumps({"size": args.size, "runs": args.runs, "ms_median_split_combine": results}))
        return
    print(f"{args.size} bytes, median of {args.runs} runs (ms)")
    print(f"{'where':<10}{'k-of-n':<8}{'split':>10}{'combine':>10}")
    for where, cases in results.items():
        for case, (split_ms, combine_ms) in cases.items():
            print(f"{where:<10}{case:<8}{split_ms:>10.1f}{combine_ms:>10.1f}")


if __name__ == "__main__":
    main()
