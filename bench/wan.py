"""WAN benchmark: 3-hop circuits through real relay processes whose links cross emulated delay and a
bandwidth cap, because loopback hides what limits a real network: windows per round trip.

This kernel has no ``netem`` (nor ``tbf``) qdisc, so the network is emulated in user space: each
relay listens on 127.N.0.1 and advertises 127.N.0.2 (``--advertise``), where a ``DelayProxy``
forwards to it after a one-way delay and through a rate-capped, bounded queue in each direction.
Every link of the circuit (client → guard → middle → exit) crosses one proxy, so the circuit's
round-trip time is 6 one-way delays; the exit's connection to the web server is direct. TCP under
the proxy cannot lose packets we could see, so there is no loss here (FEC's benchmark covers loss).

Prints, for circuit RTTs of 20, 100 and 300 ms and a 10 MB/s bottleneck: one stream's and 8 parallel
streams' throughput as a fraction of the bottleneck, and the queueing delay the bottleneck adds
(p95 of the time chunks wait for it). A first row without delay is the same run's ceiling: what the
proxies and relays move on this machine when only the rate cap applies.
Then the multipath case (docs/protocol.md "Multipath"): five relays, each leg's entry and middle
behind its own capped proxy (``--leg-rate``), one stream with one leg and with two legs
(``fraction_multipath_rtt_100ms`` is their ratio; ``--only-multipath`` runs just this case).
``--json`` prints the figures as one JSON object on the last line. Run: ``python bench/wan.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.figures import add_json_flag, print_json  # noqa: E402
from tests.private_network import free_port  # noqa: E402
from tests.test_native_mesh import Process  # noqa: E402
from zmesh_relay.socks5 import socks5_connect  # noqa: E402

MB = 1_000_000
CHUNK = 64 * 1024


class _Direction:
    """One direction of an emulated link, shared by every connection through the proxy: a
    bottleneck of ``rate`` bytes/s in front of a ``delay`` s wire, with at most ``buffer`` bytes
    waiting for the bottleneck (then the reader stops reading: TCP pushes back on the sender)."""

    def __init__(self, proxy: DelayProxy) -> None:
        self.proxy = proxy
        self.next_free = 0.0  # when the bottleneck finishes what it has accepted so far

    def backlog(self, now: float) -> float:
        return max(0.0, self.next_free - now) * self.proxy.rate

    def schedule(self, size: int, now: float) -> float:
        """Accept ``size`` bytes at ``now``; return when they arrive at the far end."""
        start = max(now, self.next_free)
        self.proxy.queueing.append(start - now)
        self.next_free = start + size / self.proxy.rate
        return self.next_free + self.proxy.delay


class DelayProxy:
    """A TCP forwarder from ``listen`` to ``target`` with delay, rate and buffer per direction."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], *, delay: float = 0.0,
                 rate: float = 10 * MB, buffer: int = 4 * 2**20) -> None:
        self.listen, self.target = listen, target
        self.delay, self.rate, self.buffer = delay, rate, buffer
        self.queueing: deque[float] = deque(maxlen=100_000)  # seconds each chunk waited for the bottleneck
        self._down, self._up = _Direction(self), _Direction(self)
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, *self.listen)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pumps):
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        for pump in (self._pump(reader, up_writer, self._up), self._pump(up_reader, writer, self._down)):
            task = asyncio.ensure_future(pump)
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, way: _Direction) -> None:
        """Read, schedule each chunk on the emulated link, write it when it arrives; in order."""
        loop = asyncio.get_running_loop()
        in_flight: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await in_flight.get()
                if not data:
                    break
                await asyncio.sleep(max(0.0, due - loop.time()))
                writer.write(data)
                await writer.drain()

        delivering = asyncio.ensure_future(deliver())
        try:
            while True:
                while way.backlog(loop.time()) > self.buffer:
                    await asyncio.sleep(way.backlog(loop.time()) / self.rate / 2)
                data = await reader.read(CHUNK)
                if not data:
                    break
                in_flight.put_nowait((way.schedule(len(data), loop.time()), data))
            in_flight.put_nowait((0.0, b""))
            await delivering
        except ConnectionError:
            pass  # either side reset: this direction is over
        finally:
            delivering.cancel()
            writer.close()


class _Source:
    """An HTTP/1.0 server that streams bytes until the client hangs up."""

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        block = os.urandom(CHUNK)
        with contextlib.suppress(ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
            while True:
                writer.write(block)
                await writer.drain()
        writer.close()

    def close(self) -> None:
        self._server.close()


async def _download(socks: tuple[str, int], port: int, until: float, arrivals: list[tuple[float, int]]) -> None:
    """Read one stream until ``until`` (``time.perf_counter``), noting each chunk's arrival."""
    reader, writer = await socks5_connect(socks[0], socks[1], "127.0.0.1", port)
    writer.write(b"GET /stream HTTP/1.0\r\n\r\n")
    await writer.drain()
    try:
        while time.perf_counter() < until:
            data = await reader.read(CHUNK)
            if not data:
                raise RuntimeError("the stream ended early")
            arrivals.append((time.perf_counter(), len(data)))
    finally:
        writer.close()


async def _throughput(socks: tuple[str, int], port: int, streams: int, warmup: float, seconds: float) -> float:
    """Bytes/s ``streams`` parallel streams move together, counted in one wall-clock window after
    ``warmup`` (so streams that start late cannot each claim the whole link in windows of their own)."""
    arrivals: list[tuple[float, int]] = []
    begin = time.perf_counter() + warmup
    end = begin + seconds
    await asyncio.gather(*(_download(socks, port, end, arrivals) for _ in range(streams)))
    return sum(size for at, size in arrivals if begin <= at < end) / seconds


async def _relay_behind_proxy(url: str, folder: Path, n: int, port: int, *, rate: float, delay: float = 0.0,
                              exit: bool = False) -> tuple[Process, DelayProxy]:
    """Relay ``n`` on 127.n.0.1, advertising a ``DelayProxy`` on 127.n.0.2 in front of it (an exit
    allowed to reach the source on ``port`` when ``exit``)."""
    relay = (f"127.{n}.0.1", free_port(f"127.{n}.0.1"))
    proxy = DelayProxy((f"127.{n}.0.2", free_port(f"127.{n}.0.2")), relay, delay=delay, rate=rate)
    await proxy.start()
    extra = ["--exit", "--exit-allow", f"127.0.0.1/32:{port}"] if exit else []
    try:
        process = await asyncio.to_thread(
            Process, "relay", "--signal", url, "--listen", f"{relay[0]}:{relay[1]}",
            "--advertise", f"ws://{proxy.listen[0]}:{proxy.listen[1]}/v1/link",
            "--data-dir", str(folder / f"r{n}"), *extra)
    except BaseException:
        await proxy.close()
        raise
    return process, proxy


@contextlib.asynccontextmanager
async def _network(folder: Path, rates: list[float], delay: float = 0.0
                   ) -> AsyncIterator[tuple[str, int, list[DelayProxy]]]:
    """A signal server, a source, and a relay behind a proxy per rate in ``rates`` (the last one an
    exit): yields the signal URL, the source's port and the proxies; stops everything after."""
    processes = [Process("signal", "--listen", "127.0.0.1:0")]
    url = processes[0].address[0]
    proxies: list[DelayProxy] = []
    source = _Source()
    port = await source.start()
    try:
        for n, rate in enumerate(rates, start=1):
            process, proxy = await _relay_behind_proxy(url, folder, n, port, rate=rate, delay=delay,
                                                       exit=n == len(rates))
            processes.append(process)
            proxies.append(proxy)
        yield url, port, proxies
    finally:
        for process in reversed(processes):
            await asyncio.to_thread(process.stop)
        for proxy in proxies:
            await proxy.close()
        source.close()


async def run(folder: Path, rtts_ms: list[int], rate: float, seconds: float, parallel: int) -> dict:
    async with _network(folder, [rate] * 3) as (url, port, proxies):
        results = {}
        for rtt in rtts_ms:
            for proxy in proxies:
                proxy.delay = rtt / 1000 / 6  # 3 links, each crossed twice per round trip
            # A fresh client per row, so each row's circuit is built at its RTT: a real circuit has
            # one base RTT, and a controller that measured 0 ms would misread 100 ms as queueing.
            client = await asyncio.to_thread(Process, "client", "--signal", url, "--socks", "127.0.0.1:0")
            try:
                host, socks_port = client.address[0].rsplit(":", 1)
                socks = (host, int(socks_port))
                await _throughput(socks, port, 1, 0.0, 1.0)  # build the circuit and open every link
                warmup, measured = max(1.0, 4 * rtt / 1000), max(seconds, 20 * rtt / 1000)
                for proxy in proxies:
                    proxy.queueing.clear()
                one = await _throughput(socks, port, 1, warmup, measured)
                queue_one = _p95(proxies)
                for proxy in proxies:
                    proxy.queueing.clear()
                many = await _throughput(socks, port, parallel, warmup, measured)
            finally:
                await asyncio.to_thread(client.stop)
            results[rtt] = {"one": one, "many": many, "queue_one_ms": queue_one * 1000,
                            "queue_many_ms": _p95(proxies) * 1000}
        return results


async def run_multipath(folder: Path, rtt_ms: int, leg_rate: float, seconds: float) -> dict:
    """The multipath case: four relays each behind a proxy capped at ``leg_rate`` and an exit behind
    one capped at 3 × ``leg_rate``, so a circuit's bottleneck is its own entry and middle, and two
    circuits sharing only the exit have separate bottlenecks. One stream of a plain client (one
    leg) and one of a ``--multipath`` client (two legs), in the same run."""
    # entries and middles capped at leg_rate, the exit (shared by both legs) at 3 × leg_rate
    async with _network(folder / "multipath", [leg_rate] * 4 + [3 * leg_rate], rtt_ms / 6000) as (url, port, _):
        results = {}
        for name, flags in (("one_leg", []), ("two_legs", ["--multipath"])):
            client = await asyncio.to_thread(Process, "client", "--signal", url, "--socks", "127.0.0.1:0",
                                             "--circuit-pool", "0", *flags)
            try:
                host, socks_port = client.address[0].rsplit(":", 1)
                socks = (host, int(socks_port))
                await _throughput(socks, port, 1, 0.0, 1.0)  # build the circuits (and the second leg)
                results[name] = await _throughput(socks, port, 1, max(1.0, 4 * rtt_ms / 1000),
                                                  max(seconds, 20 * rtt_ms / 1000))
            finally:
                await asyncio.to_thread(client.stop)
        return results


def _p95(proxies: list[DelayProxy]) -> float:
    samples = sorted(s for proxy in proxies for s in proxy.queueing)
    return samples[int(0.95 * (len(samples) - 1))] if samples else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rtt", type=int, action="append", help="circuit RTT in ms (repeatable; default 20 100 300)")
    parser.add_argument("--rate", type=float, default=10.0, help="bottleneck, MB/s (default 10)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per download, at least")
    parser.add_argument("--parallel", type=int, default=8, help="parallel streams (default 8)")
    parser.add_argument("--leg-rate", type=float, default=3.0,
                        help="multipath case: each leg's bottleneck, MB/s (default 3)")
    parser.add_argument("--only-multipath", action="store_true", help="run only the multipath case")
    add_json_flag(parser)
    args = parser.parse_args()
    rtts = [0, *(args.rtt or [20, 100, 300])]  # 0: the proxies alone, the same-run ceiling
    rate = args.rate * MB
    with tempfile.TemporaryDirectory(prefix="zmesh-wan-") as folder:
        results = {} if args.only_multipath else asyncio.run(run(Path(folder), rtts, rate, args.seconds,
                                                                 args.parallel))
        multipath = asyncio.run(run_multipath(Path(folder), 100, args.leg_rate * MB, args.seconds))
    print(f"zmesh WAN benchmark — {os.cpu_count()} CPUs, 3 hops through real relays, {args.rate:g} MB/s "
          "bottleneck on every link, delay emulated in user space (no netem here)")
    print(f"| circuit RTT | 1 stream (MB/s) | fraction | {args.parallel} streams (MB/s) | fraction "
          "| queueing p95, 1 / many (ms) | ÷ RTT |")
    print("|---|---|---|---|---|---|---|")
    figures: dict[str, float | None] = {}
    for rtt, r in results.items():
        queueing = max(r["queue_one_ms"], r["queue_many_ms"])
        per_rtt = f"{queueing / rtt:.2f}" if rtt else "—"
        print(f"| {rtt} ms | {r['one'] / MB:.2f} | {r['one'] / rate:.2f} | {r['many'] / MB:.2f} | "
              f"{r['many'] / rate:.2f} | {r['queue_one_ms']:.1f} / {r['queue_many_ms']:.1f} | {per_rtt} |")
        figures[f"fraction_one_stream_rtt_{rtt}ms"] = round(r["one"] / rate, 3)
        figures[f"fraction_{args.parallel}_streams_rtt_{rtt}ms"] = round(r["many"] / rate, 3)
        figures[f"queueing_p95_ms_rtt_{rtt}ms"] = round(queueing, 1)
    print("Circuits run congestion control (docs/protocol.md §10) when every hop negotiates it: the window "
          "follows the path, up to 4096 cells (about 4 MB) per round trip.")
    one, two = multipath["one_leg"], multipath["two_legs"]
    print(f"Multipath at 100 ms circuit RTT, each leg's entry and middle capped at {args.leg_rate:g} MB/s: "
          f"one leg {one / MB:.2f} MB/s, two legs {two / MB:.2f} MB/s, ratio {two / one:.2f}")
    figures["fraction_multipath_rtt_100ms"] = round(two / one, 3)
    figures["multipath_one_leg_MBps_rtt_100ms"] = round(one / MB, 2)
    figures["multipath_two_legs_MBps_rtt_100ms"] = round(two / MB, 2)
    print_json(args, figures)


if __name__ == "__main__":
    main()
