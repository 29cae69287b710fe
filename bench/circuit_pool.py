"""Time to first byte of a new isolation key's first stream, with and without the circuit pool.

Real processes on loopback: a signal server, 4 relays (1 exit) each on a loopback /16 of its own,
a local HTTP server, and two `zmesh client`s in the same run, one with `--circuit-pool 2` and one
with `--circuit-pool 0`. Each run opens a SOCKS connection with fresh credentials (a key no
circuit has yet) and times connect → first response byte; with the pool, the run starts once the
control port shows the pool full again (the pool's premise: the client had a moment since its
last new key). The baseline row is a stream on the circuit the client already has.

Run: ``python bench/circuit_pool.py [--runs N] [--json]`` (about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.figures import add_json_flag, print_json  # noqa: E402
from tests.conftest import wait_until  # noqa: E402
from tests.test_circuit_control import ClientProcess  # noqa: E402
from tests.test_native_mesh import Process, _http_server  # noqa: E402
from zmesh_relay.socks5 import socks5_connect  # noqa: E402


async def ttfb(client: ClientProcess, port: int, user: str) -> float:
    """Seconds from the SOCKS connect to the first byte of the answer to a GET."""
    start = time.perf_counter()
    reader, writer = await socks5_connect(*client.socks, "127.0.0.1", port, username=user, password="bench")
    writer.write(b"GET /small HTTP/1.0\r\nHost: bench\r\n\r\n")
    await writer.drain()
    if not await reader.read(1):
        raise SystemExit("no answer through the mesh: benchmark invalid")
    elapsed = time.perf_counter() - start
    await reader.read()
    writer.close()
    return elapsed


async def pool_full(client: ClientProcess, size: int) -> None:
    await wait_until(lambda: sum(c["purpose"] == "pool" for c in client.circuits()["circuits"]) >= size, 60)


@contextlib.contextmanager
def local_mesh() -> Iterator[tuple[str, int]]:
    """Signal server, 4 relays (the last an exit), a file server; yields (signal URL, file port)."""
    files, files_port = _http_server()
    processes = [Process("signal", "--listen", "127.0.0.1:0")]
    try:
        with tempfile.TemporaryDirectory() as data:
            for n in range(1, 5):
                exit_flags = ["--exit", "--exit-allow", f"127.0.0.1/32:{files_port}"] if n == 4 else []
                processes.append(Process("relay", "--signal", processes[0].address[0], "--listen", f"127.{n}.0.1:0",
                                         "--data-dir", str(Path(data) / f"r{n}"), *exit_flags))
            yield processes[0].address[0], files_port
    finally:
        for process in reversed(processes):
            process.stop()
        files.shutdown()


async def measure(signal: str, port: int, runs: int) -> dict[str, list[float]]:
    pooled, unpooled = ClientProcess(signal, "--circuit-pool", "2"), ClientProcess(signal, "--circuit-pool", "0")
    try:
        samples: dict[str, list[float]] = {"new key, no pool": [], "new key, pool of 2": [], "built circuit": []}
        await ttfb(unpooled, port, "warm-up")  # the directory is fetched once, outside the timings
        for run in range(runs):
            samples["new key, no pool"].append(await ttfb(unpooled, port, f"user{run}"))
            await pool_full(pooled, 2)
            samples["new key, pool of 2"].append(await ttfb(pooled, port, f"user{run}"))
            samples["built circuit"].append(await ttfb(unpooled, port, "warm-up"))
        return samples
    finally:
        pooled.stop()
        unpooled.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    add_json_flag(parser)
    args = parser.parse_args()
    with local_mesh() as (signal, port):
        samples = asyncio.run(measure(signal, port, args.runs))
    medians = {name: 1000 * statistics.median(values) for name, values in samples.items()}
    baseline = medians["built circuit"]
    print(f"time to first byte of a new key's first stream — {os.cpu_count()} CPUs, 3 hops, "
          f"median of {args.runs}, real processes on loopback")
    print("| stream                 | TTFB (ms) | × built circuit |")
    print("|------------------------|-----------|-----------------|")
    for name, value in medians.items():
        print(f"| {name:<22} | {value:9.2f} | {value / baseline:15.2f} |")
    print_json(args, {"runs": args.runs, "cpus": os.cpu_count(), "ttfb_ms_median": medians,
                      "ratio_to_built_circuit": {k: v / baseline for k, v in medians.items()}})


if __name__ == "__main__":
    main()
