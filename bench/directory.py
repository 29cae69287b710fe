"""Directory benchmark: what a relay list costs on the wire, and how long a real relay waits to be
listed (the signal server probes it with a circuit handshake first).

Part 1, in one signal server (listing without probes, as for unit tests of the store): the bytes
of ``GET /v1/relays`` for N relays — plain, gzip, and ``?since=`` when nothing or one relay
changed. Part 2, a real relay (in this process) and a probing signal server: from the POST of a
fresh descriptor to the moment ``GET /v1/relays/{id}`` finds it, the median of several republishes.
Run: ``python bench/directory.py`` (about half a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.figures import add_json_flag, print_json  # noqa: E402
from zmesh.descriptor import Capabilities, sign_descriptor  # noqa: E402
from zmesh.identity import Identity  # noqa: E402
from zmesh.native.crypto import NativeCryptoProvider  # noqa: E402
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
                    descriptor = await sign_descriptor(
                        PROVIDER, relay.driver.node.identity, now=int(time.time()) + index + 1,
                        addresses={"ws": (relay.link_url,)})
                    start = time.perf_counter()
                    async with session.post(f"{base}/v1/descriptors", data=descriptor.raw) as response:
                        assert response.status == 202, response.status
                    while True:
                        async with session.get(f"{base}/v1/relays/{relay.peer_id.text}") as response:
                            got = await response.json()
                        if got.get("descriptor") == base64.b64encode(descriptor.raw).decode():
                            break
                    samples.append(time.perf_counter() - start)
                return samples
            finally:
                await relay.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relays", type=int, nargs="*", default=[100, 1000])
    parser.add_argument("--rounds", type=int, default=9)
    add_json_flag(parser)
    args = parser.parse_args()
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
                      "post_to_listed_ms_median": statistics.median(samples) * 1000})


if __name__ == "__main__":
    main()
