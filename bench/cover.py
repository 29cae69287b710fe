"""Cover-traffic benchmark: what padding costs and what constant-rate cover hides, in one run of real
relay processes (docs/anonymity.md "What each defence costs").

Two meshes of a signal server and three relays (the last an exit), in loopback /16s of their own:
one with padding off everywhere (``--padding-keepalive 0``), one at the defaults (keep-alive
padding on idle links). Each mode gets a fresh SOCKS client process with 3-hop circuits:

- ``off``: the first mesh, client padding off;
- ``default``: the second mesh, client at its defaults;
- ``default relays, client off``: the second mesh, client padding off (what the client's own
  keep-alive costs, on the very relays of ``default``);
- ``poisson:R``: the second mesh, ``--cover poisson:R`` at two rates;
- ``jitter:Nms``: a third mesh whose relays run ``--jitter`` (per-hop batching, each batch held a
  delay drawn from [0, N ms]), client at its defaults.

For each: time to first byte of a new stream on a built circuit (median of ``--ttfb-runs``), one
stream's throughput over ``--seconds`` (median of ``--repeats`` rounds), both as ratios to ``off``,
and the PADDING cells the client sent and received while it downloaded. ``off``, ``default`` and
``jitter`` run interleaved, round by round, so load from other work on the machine hits them alike.

Observer: the cells per second on the client's link to its guard (the only link a client has; read
from its private /metrics every ``--window`` seconds, both directions together) during an idle
period and during a download, for ``default`` and ``constant:R``. It prints both distributions'
summaries and the two-sample Kolmogorov–Smirnov statistic D with its 5 % critical value: D above it
means an observer can tell idle from busy. Last, in one process, the core's own cost per frame
without and with a keep-alive machine. Run: ``python bench/cover.py [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import statistics
import sys
import tempfile
import time
from bisect import bisect_right
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.figures import add_json_flag, print_json  # noqa: E402
from bench.wan import _download, _Source, _throughput  # noqa: E402
from tests.test_native_mesh import Process  # noqa: E402
from zmesh_relay.socks5 import socks5_connect  # noqa: E402

MB = 1_000_000


def ks_statistic(a: list[float], b: list[float]) -> float:
    """The two-sample Kolmogorov–Smirnov D: the largest gap between the two empirical CDFs."""
    a, b = sorted(a), sorted(b)
    return max(abs(bisect_right(a, v) / len(a) - bisect_right(b, v) / len(b)) for v in a + b)


def ks_critical(n: int, m: int, c_alpha: float = 1.358) -> float:
    """D beyond which the samples differ at the 5 % level (asymptotic; c(0.05) = 1.358)."""
    return c_alpha * math.sqrt((n + m) / (n * m))


def summary(values: list[float]) -> dict:
    return {"n": len(values), "mean": statistics.fmean(values), "sd": statistics.pstdev(values),
            "min": min(values), "median": statistics.median(values), "max": max(values)}


async def start_mesh(folder: Path, name: str, port: int, page: int, relay_args: list[str]) -> list[Process]:
    processes = [await asyncio.to_thread(Process, "signal", "--listen", "127.0.0.1:0")]
    url = processes[0].address[0]
    for n in (1, 2, 3):
        extra = ["--exit", "--exit-allow", f"127.0.0.1/32:{port}", "--exit-allow", f"127.0.0.1/32:{page}"] \
            if n == 3 else []
        processes.append(await asyncio.to_thread(
            Process, "relay", "--signal", url, "--listen", f"127.{n}.0.1:0", "--data-dir", str(folder / f"{name}{n}"),
            "--padding-max-rate", "5000", *relay_args, *extra))
    return processes


class _Page:
    """An HTTP/1.0 server answering every request with a small page: a time to first byte that no
    earlier stream's backlog at a cover-shaped link (a bulk download's window) can lengthen."""

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            await writer.drain()
        writer.close()

    def close(self) -> None:
        self._server.close()


async def _ttfb(socks: tuple[str, int], port: int) -> float:
    """Seconds from the SOCKS connect to the page's first byte, on a built circuit."""
    started = time.perf_counter()
    reader, writer = await socks5_connect(socks[0], socks[1], "127.0.0.1", port)
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    await writer.drain()
    if not await reader.read(1):
        raise RuntimeError("the stream ended before its first byte")
    elapsed = time.perf_counter() - started
    await reader.read()
    writer.close()
    return elapsed


async def _cells(client: Process) -> float:
    scrape = await asyncio.to_thread(client.scrape)
    return scrape.total("zmesh_cells_total")


async def observe(client: Process, socks: tuple[str, int], port: int, windows: int, window: float) -> dict:
    """Cells/s on the client's link, ``windows`` windows idle, then as many during a download."""
    async def sample() -> list[float]:
        rates, before, at = [], await _cells(client), time.perf_counter()
        for _ in range(windows):
            await asyncio.sleep(window)
            now_cells, now = await _cells(client), time.perf_counter()
            rates.append((now_cells - before) / (now - at))
            before, at = now_cells, now
        return rates

    await asyncio.sleep(2.0)  # the streams of the throughput runs have drained
    idle = await sample()
    download = asyncio.create_task(_download(socks, port, time.perf_counter() + windows * window + 3.0, []))
    await asyncio.sleep(1.0)  # past slow start
    busy = await sample()
    await download
    links = (await asyncio.to_thread(client.scrape)).total("zmesh_links")
    d = ks_statistic(idle, busy)
    return {"idle": summary(idle), "busy": summary(busy), "ks_d": d, "ks_critical": ks_critical(windows, windows),
            "distinguishable": d > ks_critical(windows, windows), "client_links": links}


async def setup_cost(mesh: list[Process], port: int, circuits: int) -> dict:
    """Circuit-setup padding: a client with it off and one at the default, each opening ``circuits``
    streams on new circuits (a SOCKS username of its own isolates each), interleaved; per mode the
    median time to first byte of such a stream (its circuit's build included) and the cells each
    new circuit cost the client's link, both ways, once its setup window was over."""
    clients = {}
    for name, args in (("off", ["--setup-padding", "0"]), ("default", [])):
        clients[name] = mode = Mode(name, mesh, [*args, "--circuit-pool", "0"])
        await mode.start(port)
    ttfb: dict[str, list[float]] = {name: [] for name in clients}
    cells: dict[str, float] = {}
    for name, mode in clients.items():
        before = await _cells(mode.client)
        for n in range(circuits):
            started = time.perf_counter()
            reader, writer = await socks5_connect(*mode.socks, "127.0.0.1", port, username=f"{name}{n}",
                                                  password="x")
            writer.write(b"GET / HTTP/1.0\r\n\r\n")
            await writer.drain()
            await reader.read(1)
            ttfb[name].append(time.perf_counter() - started)
            await reader.read()
            writer.close()
            await asyncio.sleep(2.5)  # the setup window (2 s) is over: the cells below are all it cost
        cells[name] = (await _cells(mode.client) - before) / circuits
    for mode in clients.values():
        await mode.stop()
    return {name: {"new_circuit_ttfb_ms": statistics.median(ttfb[name]) * 1000,
                   "cells_per_new_circuit": cells[name]} for name in clients}


class Mode:
    """One client process (``client_args``) on one mesh, kept across the rounds."""

    def __init__(self, name: str, mesh: list[Process], client_args: list[str]) -> None:
        self.name, self.mesh, self.client_args = name, mesh, client_args
        self.ttfb: list[float] = []
        self.rates: list[float] = []
        self.padding_during_downloads = 0.0  # PADDING cells in and out at the client while it downloaded

    async def start(self, page: int) -> None:
        self.client = await asyncio.to_thread(Process, "client", "--signal", self.mesh[0].address[0], "--socks",
                                              "127.0.0.1:0", "--metrics", "127.0.0.1:0", *self.client_args)
        host, socks_port = self.client.address[0].rsplit(":", 1)
        self.socks = (host, int(socks_port))
        await _ttfb(self.socks, page)  # build the circuit, open every link

    async def round(self, port: int, page: int, args: argparse.Namespace, ttfb_runs: int) -> None:
        self.ttfb += [await _ttfb(self.socks, page) for _ in range(ttfb_runs)]
        before = (await asyncio.to_thread(self.client.scrape)).total("zmesh_padding_cells_total")
        self.rates.append(await _throughput(self.socks, port, 1, 1.0, args.seconds))
        after = (await asyncio.to_thread(self.client.scrape)).total("zmesh_padding_cells_total")
        self.padding_during_downloads += after - before

    def result(self) -> dict:
        return {"ttfb_ms": statistics.median(self.ttfb) * 1000, "MBps": statistics.median(self.rates) / MB,
                "MBps_runs": [rate / MB for rate in self.rates],
                "ttfb_ms_quartiles": [q * 1000 for q in statistics.quantiles(self.ttfb, n=4)],
                "padding_cells_during_downloads": self.padding_during_downloads}

    async def stop(self) -> None:
        await asyncio.to_thread(self.client.stop)


async def run(folder: Path, args: argparse.Namespace) -> dict:
    """The modes that cost CPU, not bandwidth (off, default, jitter), run interleaved round by round,
    so a load change on a shared machine hits them alike; the cover modes, whose rate is their
    ceiling, run one after the other (a cover client pads all the time: it would load the others)."""
    source, pages = _Source(), _Page()
    port, page = await source.start(), await pages.start()
    meshes: list[list[Process]] = []
    modes: list[Mode] = []
    results: dict = {}
    low, high = args.rates
    try:
        for name, relay_args in (("off", ["--padding-keepalive", "0"]), ("on", []),
                                 ("jitter", ["--jitter", f"{args.jitter:g}"])):
            meshes.append(await start_mesh(folder, name, port, page, relay_args))
        off, on, jittered = meshes
        modes = [Mode("off", off, ["--padding-keepalive", "0"]), Mode("default", on, []),
                 Mode("default relays, client off", on, ["--padding-keepalive", "0"]),
                 Mode(f"jitter:{args.jitter * 1000:g}ms", jittered, [])]
        for mode in modes:
            await mode.start(page)
        per_round = max(1, args.ttfb_runs // args.repeats)
        for number in range(args.repeats):
            for mode in modes[number % len(modes):] + modes[:number % len(modes)]:  # rotate who goes first
                await mode.round(port, page, args, per_round)
        results.update({mode.name: mode.result() for mode in modes})
        for mode in modes:  # each round against off's download in the same round: the load they shared
            paired = [rate / base for rate, base in zip(mode.rates, modes[0].rates, strict=True)]
            results[mode.name]["paired_ratio_median"] = statistics.median(paired)
            results[mode.name]["paired_ratios"] = paired
        results["default"]["observer"] = await observe(modes[1].client, modes[1].socks, port, args.windows,
                                                       args.window)
        for mode in modes:
            await mode.stop()
        modes = []
        results["setup_padding"] = await setup_cost(on, page, args.circuits)
        for cover in (f"poisson:{low:g}", f"poisson:{high:g}", f"constant:{low:g}"):
            mode = Mode(cover, on, ["--cover", cover])
            modes = [mode]
            await mode.start(page)
            for _ in range(args.repeats):
                await mode.round(port, page, args, per_round)
            results[cover] = mode.result()
            if cover.startswith("constant"):
                results[cover]["observer"] = await observe(mode.client, mode.socks, port, args.windows, args.window)
            await mode.stop()
            modes = []
    finally:
        for mode in modes:
            await mode.stop()
        for mesh in meshes:
            for process in reversed(mesh):
                await asyncio.to_thread(process.stop)
        source.close()
        pages.close()
    return results


def core_frame_cost(frames: int = 20_000, repeats: int = 7) -> dict:
    """Microseconds one node spends per 64-cell frame queued and taken (``_enqueue`` +
    ``take_frame``) on a link without and with a keep-alive machine: the machine's whole per-frame
    work. Interleaved, best of ``repeats`` (the least disturbed by other load)."""
    from zmesh.cells import CellCommand, encode_cell
    from zmesh.cover import PaddingPolicy
    from zmesh.identity import Identity
    from zmesh.native.crypto import NativeCryptoProvider
    from zmesh.node import Node
    from zmesh.testing.wire import FakeClock

    async def node_with(policy: PaddingPolicy) -> tuple[Node, int]:
        provider = NativeCryptoProvider()
        node = Node(await Identity.generate(provider), provider, FakeClock(), accept_circuits=False)
        node.padding_policy = policy
        return node, await node.link_opened((await Identity.generate(provider)).peer_id, initiator=True)

    async def build() -> dict:
        return {"off": await node_with(PaddingPolicy()), "keepalive": await node_with(PaddingPolicy(keepalive=9.5))}

    nodes = asyncio.run(build())
    cells = [encode_cell(CellCommand.PING, 0, b"12345678")] * 64
    best = dict.fromkeys(nodes, math.inf)
    for _ in range(repeats):
        for name, (node, link) in nodes.items():
            started = time.perf_counter()
            for _ in range(frames):
                node._enqueue(link, 0, cells)
                node.take_frame(link)
            best[name] = min(best[name], (time.perf_counter() - started) / frames * 1e6)
    return {"us_per_frame": best, "ratio": best["keepalive"] / best["off"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=float, nargs=2, default=[200.0, 1000.0], metavar=("LOW", "HIGH"),
                        help="cover rates in cells/s (default 200 1000); constant cover runs at LOW")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per download (default 4)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds: downloads per mode, median taken (default 5)")
    parser.add_argument("--ttfb-runs", type=int, default=15, help="new streams per mode for TTFB (default 15)")
    parser.add_argument("--windows", type=int, default=20, help="observer windows idle and busy (default 20)")
    parser.add_argument("--jitter", type=float, default=0.02,
                        help="relays' timing jitter for the last mode, seconds (default 0.02)")
    parser.add_argument("--circuits", type=int, default=8,
                        help="new circuits per mode for the circuit-setup padding cost (default 8)")
    parser.add_argument("--window", type=float, default=0.5, help="observer window, seconds (default 0.5)")
    add_json_flag(parser)
    args = parser.parse_args()
    core = core_frame_cost()
    with tempfile.TemporaryDirectory(prefix="zmesh-cover-") as folder:
        results = asyncio.run(run(Path(folder), args))
    base = results["off"]
    print(f"zmesh cover benchmark — {os.cpu_count()} CPUs, 3 hops through real relay processes, loopback")
    print("| padding | throughput (MB/s) | vs off | paired | TTFB (ms) | vs off | PADDING at client, downloading |")
    print("|---|---|---|---|---|---|---|")
    setup = results.pop("setup_padding")
    for mode, row in results.items():
        row["throughput_ratio"] = row["MBps"] / base["MBps"]
        row["ttfb_ratio"] = row["ttfb_ms"] / base["ttfb_ms"]
        paired = f"{row['paired_ratio_median']:.2f}" if "paired_ratio_median" in row else "—"
        print(f"| {mode} | {row['MBps']:.2f} | {row['throughput_ratio']:.2f} | {paired} | {row['ttfb_ms']:.1f} | "
              f"{row['ttfb_ratio']:.2f} | {row['padding_cells_during_downloads']:g} |")
    for mode in ("default", f"constant:{args.rates[0]:g}"):
        obs = results[mode]["observer"]
        print(f"\nobserver on the client's link ({obs['client_links']:g} link(s)), {mode}: cells/s per "
              f"{args.window:g} s window")
        for phase in ("idle", "busy"):
            s = obs[phase]
            print(f"  {phase:4}: n={s['n']} mean={s['mean']:.1f} sd={s['sd']:.1f} min={s['min']:.1f} "
                  f"median={s['median']:.1f} max={s['max']:.1f}")
        verdict = "distinguishable" if obs["distinguishable"] else "indistinguishable"
        print(f"  Kolmogorov–Smirnov D = {obs['ks_d']:.2f} (5 % critical {obs['ks_critical']:.2f}): {verdict}")
    print("\ncircuit-setup padding: a stream on a new circuit (build included), and the cells it cost both ways")
    for mode, row in setup.items():
        print(f"  {mode:7}: TTFB {row['new_circuit_ttfb_ms']:.1f} ms, {row['cells_per_new_circuit']:.1f} cells")
    results["setup_padding"] = setup
    print("\n'paired': the median over rounds of each round's download against off's in the same round.")
    print(f"core cost per 64-cell frame queued and taken: {core['us_per_frame']['off']:.2f} µs without a padding "
          f"machine, {core['us_per_frame']['keepalive']:.2f} µs with keep-alive ({core['ratio']:.3f}×)")
    results["core_frame_cost"] = core
    print_json(args, results)


if __name__ == "__main__":
    main()
