"""FEC benchmark: Tetrys encode/decode speed, and delivery latency under loss, FEC vs retransmission.

Latency is a discrete-event simulation on a fake clock (no sleeping): one packet slot per
millisecond, 25 ms one-way delay, independent loss; messages are delivered in order (head-of-line
blocking counts). Retransmission-only: a loss is noticed when the next packet arrives, NACKed, and
resent (one RTT later; a lost resend is retried after another RTT). Run: ``python bench/fec.py``.
"""

from __future__ import annotations

import os
import random
import statistics
import time

from zmesh.fec.adaptive import RepairRateController
from zmesh.fec.tetrys import Delivered, TetrysDecoder, TetrysEncoder

SYMBOL = 1200
DELAY = 25.0  # ms one way
RUNS = 5


def codec_mb_s(loss: float, count: int = 4000) -> tuple[float, float]:
    """(encode MB/s, decode MB/s) with repairs at ``2 × loss`` (at least 5 %) and prompt feedback."""
    rng = random.Random(1)
    payloads = [os.urandom(SYMBOL - 2) for _ in range(256)]
    enc, dec = TetrysEncoder(symbol_size=SYMBOL, max_window=64), TetrysDecoder(symbol_size=SYMBOL, max_window=64)
    ratio, credit, packets = max(0.05, 2 * loss), 0.0, []
    start = time.perf_counter()
    for index in range(count):
        packets.append(enc.source(payloads[index % 256]))
        credit += ratio
        while credit >= 1:
            credit -= 1
            packets.append(enc.repair())
        if index % 16 == 15:
            enc.acknowledge(max(0, index - 32))
    encode = count * (SYMBOL - 2) / (time.perf_counter() - start) / 1e6
    kept = [p for p in packets if rng.random() >= loss]
    start = time.perf_counter()
    delivered = 0
    for packet in kept:
        delivered += sum(1 for e in dec.receive(packet) if isinstance(e, Delivered))
    decode = delivered * (SYMBOL - 2) / (time.perf_counter() - start) / 1e6
    return encode, decode


def fec_latencies(loss: float, count: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    enc, dec = TetrysEncoder(symbol_size=64, max_window=256), TetrysDecoder(symbol_size=64, max_window=256)
    controller = RepairRateController(min_ratio=0.05, max_ratio=0.6)
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    feedback: list[tuple[float, bytes]] = []  # (arrival at sender, window update)
    clock, credit, index = 0.0, 0.0, 0
    while len(latencies) < count:
        while feedback and feedback[0][0] <= clock:
            _, update = feedback.pop(0)
            next_expected, received, highest = (int.from_bytes(update[i:i + 4], "big") for i in (1, 5, 9))
            enc.acknowledge(next_expected)
            credit += controller.update(highest, received)
        if credit >= 1 or enc.full or index >= count:
            credit = max(0.0, credit - 1)
            packet = enc.repair()
        else:
            sent_at[index] = clock
            packet = enc.source(index.to_bytes(4, "big"))
            index += 1
            credit += controller.ratio
        if packet is not None and rng.random() >= loss:
            arrival = clock + DELAY
            for event in dec.receive(packet):
                latencies.append(arrival - sent_at[int.from_bytes(event.payload, "big")])
            feedback.append((arrival + DELAY, dec.update_packet()))
        clock += 1.0
    return latencies


def arq_latencies(loss: float, count: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    arrival = []
    for index in range(count):
        sent = float(index)
        at = sent + DELAY
        if rng.random() < loss:  # noticed when the next packet arrives, NACKed, resent, maybe lost again
            at = sent + 1 + DELAY + 2 * DELAY
            while rng.random() < loss:
                at += 2 * DELAY
        arrival.append((at, sent))
    latencies, delivered = [], 0.0
    for at, sent in arrival:
        delivered = max(delivered, at)
        latencies.append(delivered - sent)
    return latencies


def pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100)[int(p) - 1]


def main() -> None:
    print(f"zmesh Tetrys FEC benchmark — {os.cpu_count()} CPUs, {SYMBOL}-byte symbols, medians of {RUNS} runs")
    print("| codec              | encode MB/s | decode MB/s |")
    print("|--------------------|-------------|-------------|")
    for loss in (0.0, 0.1):
        runs = [codec_mb_s(loss) for _ in range(RUNS)]
        print(f"| {int(loss * 100):>2} % loss          | {statistics.median(r[0] for r in runs):11.1f} "
              f"| {statistics.median(r[1] for r in runs):11.1f} |")
    print()
    print(f"Delivery latency, {DELAY:.0f} ms one-way, 1 packet/ms, in-order delivery (ms):")
    print("| loss | method            |   p50 |   p95 |   p99 | p99 vs retransmission |")
    print("|------|-------------------|-------|-------|-------|-----------------------|")
    for loss in (0.05, 0.10, 0.20):
        fec = [fec_latencies(loss, 5000, seed) for seed in range(RUNS)]
        arq = [arq_latencies(loss, 5000, seed) for seed in range(RUNS)]
        rows = {name: [statistics.median(pct(r, p) for r in runs) for p in (50, 95, 99)]
                for name, runs in (("FEC (adaptive)", fec), ("retransmission", arq))}
        for name, (p50, p95, p99) in rows.items():
            ratio = p99 / rows["retransmission"][2]
            print(f"| {int(loss * 100):>3}% | {name:<17} | {p50:5.1f} | {p95:5.1f} | {p99:5.1f} | {ratio:21.2f} |")


if __name__ == "__main__":
    main()
