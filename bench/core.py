"""Core benchmark: circuit build, one relay's forward path, 3-hop in-memory throughput.

Prints a table; every figure is the median of repeated runs, and throughput is compared with raw
AES-256-GCM over the same bytes measured in the same run. Run: ``python bench/core.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from zmesh.cells import CELL_SIZE, RELAY_DATA_SIZE
from zmesh.events import LinkNeeded, StreamRequested
from zmesh.identity import Identity
from zmesh.link import LinkRole
from zmesh.native.crypto import NativeCryptoProvider
from zmesh.node import Node
from zmesh.testing.memnet import MemoryNetwork, blob_service

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.figures import add_json_flag, print_json  # noqa: E402

MiB = 1024 * 1024


async def mesh(provider, payload: bytes):
    net = MemoryNetwork(provider)
    client = await net.add_node()
    relays = [await net.add_node() for _ in range(2)]
    exit_ = await net.add_node(exit=True, stream_handler=blob_service(payload))
    return net, client, [net.descriptors[d.node.identity.peer_id] for d in relays + [exit_]]


async def circuit_build_ms(provider, runs: int) -> list[float]:
    net, client, path = await mesh(provider, b"")
    samples = []
    try:
        for _ in range(runs):
            start = time.perf_counter()
            circuit = await client.build_circuit(path)
            samples.append((time.perf_counter() - start) * 1000)
            await client.destroy_circuit(circuit)
    finally:
        await net.close()
    return samples


async def three_hop_mb_s(provider, size: int, runs: int) -> list[float]:
    payload = os.urandom(size)
    digest = hashlib.sha256(payload).digest()
    samples = []
    for _ in range(runs):
        net, client, path = await mesh(provider, payload)
        try:
            circuit = await client.build_circuit(path)
            stream = await client.open_stream(circuit, "bench.test", 80)
            start = time.perf_counter()
            hasher, got = hashlib.sha256(), 0
            while part := await stream.read():
                hasher.update(part)
                got += len(part)
            elapsed = time.perf_counter() - start
        finally:
            await net.close()
        if got != size or hasher.digest() != digest:
            raise SystemExit("transfer corrupted: benchmark invalid")
        samples.append(size / elapsed / 1e6)
    return samples


class _Pump:
    """Three sans-IO nodes wired by hand (client → relay → exit), frames moved synchronously, so
    one relay's work can be timed without any driver or link around it."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes
        self.wires: dict[tuple[int, int], tuple[int, int]] = {}

    async def connect(self, a: int, b: int, role: LinkRole = LinkRole.CLIENT) -> None:
        la = await self.nodes[a].link_opened(self.nodes[b].identity.peer_id, initiator=True, role=role)
        lb = await self.nodes[b].link_opened(self.nodes[a].identity.peer_id, initiator=False)
        self.wires[(a, la)] = (b, lb)
        self.wires[(b, lb)] = (a, la)

    async def run(self) -> None:
        moved = True
        while moved:
            moved = False
            for index, node in enumerate(self.nodes):
                for event in node.events():
                    if isinstance(event, LinkNeeded):
                        await self.connect(index, next(i for i, n in enumerate(self.nodes)
                                                       if n.identity.peer_id == event.peer), event.role)
                    elif isinstance(event, StreamRequested):
                        await node.accept_stream(event.circuit, event.stream_id)
                    moved = True
            for (a, la), (b, lb) in list(self.wires.items()):
                while (frame := self.nodes[a].take_frame(la)) is not None:
                    await self.nodes[b].receive_frame(lb, frame)
                    moved = True


async def relay_cells_per_s(provider, runs: int) -> list[float]:
    identities = [await Identity.generate(provider) for _ in range(4)]
    samples = []
    for _ in range(runs):
        nodes = [Node(i, provider, time.monotonic) for i in identities]
        pump = _Pump(nodes)
        client, relay = nodes[0], nodes[1]
        path = [type("R", (), {"peer_id": i.peer_id, "onion_keys": i.onion_keys}) for i in identities[1:]]
        circuit = await client.build_circuit(path)
        await pump.run()
        stream_id = await client.open_stream(circuit, "bench.test", 80)
        await pump.run()
        await client.send(circuit, stream_id, bytes(RELAY_DATA_SIZE * 500))  # one stream window
        client_link = next(la for (a, la) in pump.wires if a == 0)
        relay_in = pump.wires[(0, client_link)][1]
        frames = []
        while (frame := client.take_frame(client_link)) is not None:
            frames.append(frame)
        cells = sum(len(f) for f in frames) // CELL_SIZE
        start = time.perf_counter()
        for frame in frames:
            await relay.receive_frame(relay_in, frame)
            for link_id in relay.links_with_output():
                while relay.take_frame(link_id) is not None:
                    pass
        samples.append(cells / (time.perf_counter() - start))
    return samples


def aes_gcm_mb_s(size: int, runs: int) -> list[float]:
    aead = AESGCM(os.urandom(32))
    chunk = os.urandom(CELL_SIZE)
    nonce = bytes(12)
    count = size // CELL_SIZE
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(count):
            aead.encrypt(nonce, chunk, None)
        samples.append(size / (time.perf_counter() - start) / 1e6)
    return samples


def row(name: str, samples: list[float], unit: str, ratio: str = "") -> str:
    return f"| {name:<44} | {statistics.median(samples):>12,.1f} {unit:<7} | {len(samples):>4} | {ratio:<18} |"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=32, help="bytes moved per throughput run")
    parser.add_argument("--runs", type=int, default=5)
    add_json_flag(parser)
    args = parser.parse_args()
    provider = NativeCryptoProvider()
    size = args.size_mib * MiB
    build = await circuit_build_ms(provider, args.runs * 4)
    relay = await relay_cells_per_s(provider, args.runs * 4)
    mesh_tp = await three_hop_mb_s(provider, size, args.runs)
    gcm = aes_gcm_mb_s(size, args.runs)
    ratio = statistics.median(mesh_tp) / statistics.median(gcm)
    print(f"zmesh core benchmark — {os.cpu_count()} CPUs, cell {CELL_SIZE} B, {args.size_mib} MiB per run")
    print("| measurement                                  |       median         | runs | vs baseline        |")
    print("|----------------------------------------------|----------------------|------|--------------------|")
    print(row("3-hop circuit build (in memory)", build, "ms"))
    print(row("one relay forward path (64-cell frames)", relay, "cells/s",
              f"= {statistics.median(relay) * CELL_SIZE / 1e6:,.0f} MB/s"))
    print(row("3-hop in-memory stream throughput", mesh_tp, "MB/s", f"{ratio:.3f}x raw AES-GCM"))
    print(row("baseline: raw AES-256-GCM, 1 KiB messages", gcm, "MB/s", "1.000x"))
    med = statistics.median
    print_json(args, {"circuit_build_ms": med(build), "relay_cells_per_s": med(relay), "three_hop_MBps": med(mesh_tp),
                      "aes_gcm_MBps": med(gcm), "three_hop_over_aes_gcm": round(ratio, 4)})


if __name__ == "__main__":
    asyncio.run(main())
