"""Onion-service benchmark: real `zmesh` processes on loopback (signal server, 6 relays on
127.N.0.1, one of them an exit, `zmesh service` forwarding to a local HTTP server) and a SOCKS
client in this process, so its descriptor cache and joined circuits can be dropped between samples.

Measures, as medians over ``--runs``:
- time from SOCKS CONNECT to the first response byte for a ``.mesh`` target: *cold* (no cached
  descriptor: lookup, rendezvous), *warm* (cached descriptor, new rendezvous) and on an already
  *joined* circuit;
- single-stream throughput of a 10 MiB file over the 6-hop path;
- the same-run baseline: the same fetches through an ordinary 3-hop exit circuit.

Prints a table beside a private Tor network's figures on this machine (issue 12); with ``--json``
the last line is one JSON object. Run: ``python bench/onion.py`` (about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.native import _get  # noqa: E402
from tests.private_network import relay_listen  # noqa: E402
from tests.test_native_mesh import PAYLOAD, Process, _http_server  # noqa: E402
from zmesh_relay import config  # noqa: E402
from zmesh_relay.client import Client  # noqa: E402
from zmesh_relay.socks5 import socks5_connect  # noqa: E402

DIGEST = hashlib.sha256(PAYLOAD).digest()
VPORT = 80
TOR = {"new_rendezvous_ms": 241.0, "built_ms": 28.0, "throughput_mbs": 4.8}  # chutney hs-v3-min, Tor 0.4.9.11


async def _fetch(socks: tuple[str, int], host: str, port: int, path: str) -> tuple[float, bytes]:
    """(seconds from SOCKS CONNECT to the first response byte, body)."""
    start = time.perf_counter()
    reader, writer = await socks5_connect(socks[0], socks[1], host, port)
    connected = time.perf_counter() - start
    ttfb, body = await _get(reader, writer, path)
    return connected + ttfb, body


async def _ttfbs(runs: int, fetch: Callable[[], Awaitable[tuple[float, bytes]]],
                 before: Callable[[], Awaitable[None]] | None = None) -> list[float]:
    samples = []
    for _ in range(runs):
        if before is not None:
            await before()
        ttfb, body = await fetch()
        if body != b"small page":
            raise SystemExit("wrong answer: benchmark invalid")
        samples.append(ttfb * 1000)
    return samples


async def _rates(runs: int, fetch: Callable[[], Awaitable[tuple[float, bytes]]]) -> list[float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        _, body = await fetch()
        elapsed = time.perf_counter() - start
        if hashlib.sha256(body).digest() != DIGEST:
            raise SystemExit("corrupted transfer: benchmark invalid")
        samples.append(len(body) / elapsed / 1e6)
    return samples


@contextlib.contextmanager
def onion_mesh() -> Iterator[tuple[str, str, int]]:
    """Yields (signal URL, the service's .mesh address, the file server's port); stops all after."""
    files, files_port = _http_server()
    processes: list[Process] = []
    with tempfile.TemporaryDirectory() as data:
        try:
            processes.append(Process("signal", "--listen", "127.0.0.1:0"))
            url = processes[0].address[0]
            for number in range(1, 7):
                exit_flags = ["--exit", "--exit-allow", f"127.0.0.1/32:{files_port}"] if number == 6 else []
                processes.append(Process("relay", "--signal", url, "--listen", relay_listen(number),
                                         "--data-dir", f"{data}/r{number}", *exit_flags))
            service = Process("service", "--signal", url, "--data-dir", f"{data}/service",
                              "--forward", f"{VPORT}=127.0.0.1:{files_port}")
            processes.append(service)
            yield url, service.address[0], files_port
        finally:
            for process in reversed(processes):
                process.stop()
            files.shutdown()


async def measure(url: str, address: str, files_port: int, runs: int) -> dict[str, float]:
    client = Client({**config.load(env={}), "signaling.url": url, "client.socks": "127.0.0.1:0",
                     "network.allow_private_addresses": True})  # the bench mesh is on loopback
    await client.start()
    try:
        socks = ("127.0.0.1", client.socks_port)
        onion = client.onion
        assert onion is not None

        async def cold() -> None:
            await onion.forget(address, descriptor=True)

        async def warm() -> None:
            await onion.forget(address)

        small = lambda: _fetch(socks, address, VPORT, "/small")  # noqa: E731
        cold_ms, warm_ms = [], []
        for _ in range(runs):  # interleaved, so a load that drifts during the run hits both alike
            cold_ms += await _ttfbs(1, small, cold)
            warm_ms += await _ttfbs(1, small, warm)
        joined_ms = await _ttfbs(runs * 4, small)
        onion_rate = await _rates(runs, lambda: _fetch(socks, address, VPORT, "/big"))
        exit_small = lambda: _fetch(socks, "127.0.0.1", files_port, "/small")  # noqa: E731
        await exit_small()  # the exit circuit is built: its TTFB is on a built one, like "joined"
        exit_ms = await _ttfbs(runs * 4, exit_small)
        exit_rate = await _rates(runs, lambda: _fetch(socks, "127.0.0.1", files_port, "/big"))
    finally:
        await client.stop()
    med = statistics.median
    return {"cold_ms": med(cold_ms), "warm_ms": med(warm_ms), "joined_ms": med(joined_ms),
            "onion_mbs": med(onion_rate), "exit_ttfb_ms": med(exit_ms), "exit_mbs": med(exit_rate),
            "warm_min_ms": min(warm_ms), "warm_max_ms": max(warm_ms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="end with one JSON object on the last line")
    args = parser.parse_args()
    with onion_mesh() as (url, address, files_port):
        result = asyncio.run(measure(url, address, files_port, args.runs))
    r = result
    print(f"zmesh onion-service benchmark — {os.cpu_count()} CPUs, {len(PAYLOAD) // 2**20} MiB file, real "
          f"processes on loopback, medians of {args.runs} (TTFB on built circuits: {args.runs * 4})")
    print("| measurement                                   |  .mesh (6 hops) | exit (3 hops) | Tor hs-v3-min |")
    print("|-----------------------------------------------|-----------------|---------------|---------------|")
    print(f"| CONNECT→first byte, cold (ms)                 | {r['cold_ms']:15.1f} |             — |             — |")
    print(f"| CONNECT→first byte, warm: new rendezvous (ms) | {r['warm_ms']:15.1f} |             — | "
          f"{TOR['new_rendezvous_ms']:13.0f} |")
    print(f"| CONNECT→first byte, built circuit (ms)        | {r['joined_ms']:15.1f} | {r['exit_ttfb_ms']:13.1f} | "
          f"{TOR['built_ms']:13.0f} |")
    print(f"| single-stream throughput (MB/s)               | {r['onion_mbs']:15.1f} | {r['exit_mbs']:13.1f} | "
          f"{TOR['throughput_mbs']:13.1f} |")
    print(f"warm range {r['warm_min_ms']:.0f}–{r['warm_max_ms']:.0f} ms (Tor: 181–374 ms). Ratios to Tor: warm "
          f"{r['warm_ms'] / TOR['new_rendezvous_ms']:.2f}×, built {r['joined_ms'] / TOR['built_ms']:.2f}×, "
          f"throughput {r['onion_mbs'] / TOR['throughput_mbs']:.2f}× (lower is better for times). Onion vs. exit "
          f"in this run: built-circuit TTFB {r['joined_ms'] / r['exit_ttfb_ms']:.2f}×, throughput "
          f"{r['onion_mbs'] / r['exit_mbs']:.2f}×.")
    if args.json:
        print(json.dumps({**r, "runs": args.runs, "tor": TOR}))


if __name__ == "__main__":
    main()
