"""Directory benchmark: what a relay list costs on the wire, and how long a real relay waits to be
listed (the signal server probes it with a circuit handshake first).

Part 1, in one signal server (listing without probes, as for unit tests of the store): the bytes
of ``GET /v1/relays`` for N relays — plain, gzip, and ``?since=`` when nothing or one relay
changed. Part 2, a real relay (in this process) and a probing signal server: from the POST of a
fresh descriptor to the moment ``GET /v1/relays/{id}`` finds it, the median of several republishes.
Part 3, the authorities' consensus (docs/directory.md) for N simulated relays listed by 3
authorities: computing it from the 3 votes, signing it (Ed25519 + ML-DSA-65), a client's native
verification of one signature of each kind and of the whole acceptance (3 hybrid signatures), and
its size per relay. Part 4, the same check in a tab (docs/directory.md §8): real Chromium on the page
of a real ``zmesh signal``, one ML-DSA-65 and one Ed25519 verification of a real consensus
signature and the whole ``accept_consensus``, with ML-DSA-65 on WebCrypto where the browser has it
and on the pure-Python dilithium-py fallback (each timed after one untimed verification, which loads
the fallback); ``--no-tab`` skips it. Run: ``python bench/directory.py`` (about half a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "playwright"))

from playwright_support import evaluate_in_tab  # noqa: E402

from bench.figures import add_json_flag, print_json  # noqa: E402
from zmesh.consensus import (  # noqa: E402
    CONSENSUS_DOMAIN,
    Consensus,
    accept_consensus,
    compute_consensus,
    parse_consensus_body,
    sign_consensus,
)
from zmesh.descriptor import Capabilities, sign_descriptor  # noqa: E402
from zmesh.hybrid import HybridKey  # noqa: E402
from zmesh.identity import Identity, PeerId  # noqa: E402
from zmesh.native.crypto import NativeCryptoProvider  # noqa: E402
from zmesh.votes import Period, RelayEntry, sign_vote  # noqa: E402
from zmesh_relay import config  # noqa: E402
from zmesh_relay.relay import Relay  # noqa: E402
from zmesh_signal.app import SignalConfig, serving  # noqa: E402

PROVIDER = NativeCryptoProvider()


async def _size(session: aiohttp.ClientSession, url: str, encoding: str) -> tuple[int, dict]:
    """Bytes on the wire (as sent, before decompression) and the decoded answer."""
    async with session.get(url, headers={"Accept-Encoding": encoding}, auto_decompress=False) as response:
        body = await response.read()
    async with session.get(url) as response:
        return len(body), await response.json()


async def fetch_sizes(counts: list[int]) -> list[tuple[int, int, int, int, int]]:
    rows = []
    for count in counts:
        cfg = SignalConfig(verify_reachability=False, max_per_source=count + 1, post_rate=1e6, post_burst=1e6)
        async with serving(cfg, "127.0.0.1", 0) as port, aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{port}"
            for index in range(count):
                identity = await Identity.generate(PROVIDER)
                descriptor = await sign_descriptor(
                    PROVIDER, identity, now=int(time.time()), capabilities=Capabilities(exit=index % 4 == 0),
                    addresses={"ws": (f"ws://relay{index}.example.org:9000/v1/link",), "rtc": ("signal",)})
                async with session.post(f"{base}/v1/descriptors", data=descriptor.raw) as response:
                    assert response.status == 201, await response.text()
            plain, answer = await _size(session, f"{base}/v1/relays", "identity")
            gzipped, _ = await _size(session, f"{base}/v1/relays", "gzip")
            unchanged, _ = await _size(session, f"{base}/v1/relays?since={answer['cursor']}", "gzip")
            fresh = await sign_descriptor(PROVIDER, await Identity.generate(PROVIDER), now=int(time.time()),
                                          addresses={"ws": ("ws://new.example.org:9000/v1/link",)})
            await session.post(f"{base}/v1/descriptors", data=fresh.raw)
            one, _ = await _size(session, f"{base}/v1/relays?since={answer['cursor']}", "gzip")
            rows.append((count, plain, gzipped, unchanged, one))
    return rows


async def listing_latency(rounds: int) -> list[float]:
    # every republish is probed again; the relay is on loopback
    cfg = SignalConfig(reprobe_interval=0, get_rate=1e6, get_burst=1e6, allow_private_addresses=True)
    async with serving(cfg, "127.0.0.1", 0) as port, aiohttp.ClientSession() as session:
        base = f"http://127.0.0.1:{port}"
        with tempfile.TemporaryDirectory() as data:
            relay = Relay(config.load(None, env={}, flags={
                "signaling.url": base, "relay.data_dir": data, "relay.listen": "127.1.0.1:0",
                "transport.kind": "websocket", "network.allow_private_addresses": True}))
            await relay.start()
            try:
                samples = []
                for index in range(rounds):
                    # the relay's own descriptor, republished newer: the probe's circuit handshake
                    # needs its onion keys (a descriptor without them is refused, and was polled forever)
                    current = relay.descriptor
                    descriptor = await sign_descriptor(
                        PROVIDER, relay.driver.node.identity, now=int(time.time()) + index + 1,
                        addresses=current.addresses, capabilities=current.capabilities,
                        onion=relay.onion_ring.current.public)
                    start = time.perf_counter()
                    async with session.post(f"{base}/v1/descriptors", data=descriptor.raw) as response:
                        assert response.status == 202, response.status
                    deadline = start + 30
                    while True:
                        async with session.get(f"{base}/v1/relays/{relay.peer_id.text}") as response:
                            got = await response.json()
                        if got.get("descriptor") == base64.b64encode(descriptor.raw).decode():
                            break
                        if time.perf_counter() > deadline:
                            raise RuntimeError("the republished descriptor was not listed within 30 s")
                        await asyncio.sleep(0.001)
                    samples.append(time.perf_counter() - start)
                return samples
            finally:
                await relay.stop()


def _median_ms(run: Callable[[], Awaitable[object]], rounds: int) -> float:
    async def timed() -> list[float]:
        samples = []
        for _ in range(rounds):
            start = time.perf_counter()
            await run()
            samples.append((time.perf_counter() - start) * 1000)
        return samples
    return statistics.median(asyncio.run(timed()))


def consensus_figures(counts: list[int], rounds: int) -> dict[str, dict[str, float]]:
    """Per relay count: build, sign and verify times (ms, medians) and the signed consensus's size."""
    keys = [asyncio.run(HybridKey.generate(PROVIDER)) for _ in range(3)]
    return {str(count): _consensus_figures(count, keys, rounds) for count in counts}


def signed_consensus(count: int, keys: list[HybridKey]) -> tuple[Consensus, list, Period]:
    """A consensus of ``count`` simulated relays computed from ``keys``' votes, signed by all of them."""
    period = Period.at(time.time(), 3600)
    entries = [RelayEntry(PeerId(os.urandom(32)), os.urandom(32), 1_000_000 + i, frozenset({"Fast", "Guard"}))
               for i in range(count)]
    votes = [asyncio.run(sign_vote(PROVIDER, k, period, entries)) for k in keys]
    consensus = parse_consensus_body(compute_consensus(votes, [k.public.fingerprint for k in keys]))
    for key in keys:
        consensus = asyncio.run(sign_consensus(PROVIDER, key, consensus))
    return consensus, votes, period


def _consensus_figures(count: int, keys: list[HybridKey], rounds: int) -> dict[str, float]:
    fps = [k.public.fingerprint for k in keys]
    consensus, votes, period = signed_consensus(count, keys)
    body, raw = consensus.body, consensus.to_bytes()
    entry = consensus.signatures[fps[0]]
    data = CONSENSUS_DOMAIN + body
    empty = compute_consensus([asyncio.run(sign_vote(PROVIDER, k, period, [])) for k in keys], fps)
    return {
        "build_ms": _median_ms(lambda: _async(compute_consensus, votes, fps), rounds),
        "sign_ms": _median_ms(lambda: sign_consensus(PROVIDER, keys[0], parse_consensus_body(body)), rounds),
        "verify_mldsa65_ms": _median_ms(lambda: PROVIDER.mldsa65_verify(entry["mldsa65"], entry["sig_mldsa65"], data),
                                        rounds),
        "verify_ed25519_ms": _median_ms(lambda: PROVIDER.ed25519_verify(entry["ed25519"], entry["sig_ed25519"], data),
                                        rounds),
        "accept_ms": _median_ms(lambda: accept_consensus(PROVIDER, raw, authorities=fps, now=period.valid_after + 1),
                                rounds),
        "bytes": len(raw), "signature_bytes": len(raw) - len(body), "bytes_per_relay": (len(body) - len(empty)) / count,
    }


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
    encoded = [base64.b64encode(raw).decode(), [base64.b64encode(f).decode() for f in fingerprints]]
    return json.loads(evaluate_in_tab(IN_TAB, [*encoded, now, rounds]))


def tab_consensus(count: int, rounds: int) -> dict:
    """Part 4: the tab's check of a consensus of ``count`` relays signed by 3 authorities."""
    keys = [asyncio.run(HybridKey.generate(PROVIDER)) for _ in range(3)]
    consensus, _votes, period = signed_consensus(count, keys)
    figures = tab_figures(consensus.to_bytes(), [k.public.fingerprint for k in keys], period.valid_after + 1, rounds)
    print(f"in the tab, {count} relays, 3 authorities: {'':>22}{'ML-DSA ms':>10} {'Ed25519 ms':>11} {'accept ms':>10}")
    for label, f in figures.items():
        print(f"  ML-DSA-65 on {label} ({f['mldsa65_path']}){'':>14}"[:58] + f"{f['mldsa65_verify_ms']:>10.2f} "
              f"{f['ed25519_verify_ms']:>11.2f} {f['accept_ms']:>10.2f}")
    print()
    return {"relays": count, **figures}


async def _async(function: Callable[..., object], *args: object) -> object:
    return function(*args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relays", type=int, nargs="*", default=[100, 1000])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--consensus-relays", type=int, nargs="*", default=[10, 100, 1000])
    parser.add_argument("--tab-relays", type=int, default=100, help="relays in the consensus the tab checks")
    parser.add_argument("--no-tab", action="store_true", help="skip part 4 (Chromium)")
    add_json_flag(parser)
    args = parser.parse_args()
    consensus = consensus_figures(args.consensus_relays, args.rounds)
    print(f"{'relays':>7} {'build ms':>9} {'sign ms':>8} {'ML-DSA ms':>10} {'Ed25519 ms':>11} {'accept ms':>10} "
          f"{'bytes':>9} {'B/relay':>8}")
    for count, f in consensus.items():
        print(f"{count:>7} {f['build_ms']:>9.2f} {f['sign_ms']:>8.2f} {f['verify_mldsa65_ms']:>10.3f} "
              f"{f['verify_ed25519_ms']:>11.3f} {f['accept_ms']:>10.2f} {f['bytes']:>9,} {f['bytes_per_relay']:>8.1f}")
    print("(accept: a client's whole check, 3 hybrid signatures; bytes include 3 signatures of "
          f"{consensus[next(iter(consensus))]['signature_bytes'] // 3:,} B each)\n")
    tab = None if args.no_tab else tab_consensus(args.tab_relays, args.rounds)
    rows = asyncio.run(fetch_sizes(args.relays))
    print(f"{'relays':>7} {'plain':>10} {'gzip':>10} {'ratio':>6} {'since, none':>12} {'since, one':>11}")
    for count, plain, gzipped, unchanged, one in rows:
        print(f"{count:>7} {plain:>10,} {gzipped:>10,} {gzipped / plain:>6.2f} {unchanged:>12,} {one:>11,}")
    samples = asyncio.run(listing_latency(args.rounds))
    print(f"\nPOST → listed (probe: link + CREATE/CREATED), median of {len(samples)}: "
          f"{statistics.median(samples) * 1000:.1f} ms (min {min(samples) * 1000:.1f}, max {max(samples) * 1000:.1f})")
    print_json(args, {"listing_bytes": {str(count): {"plain": plain, "gzip": gzipped, "since_unchanged": unchanged,
                                                     "since_one_changed": one}
                                        for count, plain, gzipped, unchanged, one in rows},
                      "post_to_listed_ms_median": statistics.median(samples) * 1000,
                      "consensus": consensus, **({} if tab is None else {"tab": tab})})


if __name__ == "__main__":
    main()
