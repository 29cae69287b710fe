"""FEC benchmark: Tetrys codec speed, and delivery latency under loss, FEC versus retransmission.

Codec: two ``FecEndpoint``s in one process, 1200-byte symbols, independent loss on the data path,
window updates returned after a fixed lag of 32 packets each way (so the window holds what a real
RTT would leave in flight). Encode = time inside the sending endpoint (sources, repairs, updates
applied), decode = time inside the receiving one; MB/s of application payload.

Latency: a discrete-event simulation on a fake clock (no sleeping): the application sends one
frame per millisecond, 25 ms one-way delay, independent loss both ways (window updates too),
delivery in order (head-of-line blocking counts). FEC is ``FecEndpoint`` with its defaults.
Retransmission-only (ARQ): a loss shows when the next packet arrives, the NACK takes one delay,
the resend another; a lost NACK or resend costs one more round trip.

Lying window updates: a sender with a full window (256 frames of 1024 bytes) gets 200 updates,
1 ms apart, each claiming every packet numbered so far was lost; repair bytes it sends and CPU
time it spends per 17-byte update. Every figure is the median of ``RUNS`` runs. Run:
``.venv/bin/python bench/fec.py``.
"""

from __future__ import annotations

import argparse
import heapq
import os
import random
import statistics
import struct
import sys
import time
from collections import deque
from pathlib import Path

from zmesh.fec import Delivered, FecEndpoint

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.figures import add_json_flag, print_json  # noqa: E402

SYMBOL = 1200
DELAY = 0.025  # s one way
RUNS = 7


def codec_mb_s(loss: float, frames: int = 3000, lag: int = 32, seed: int = 1) -> tuple[float, float, float]:
    """(encode MB/s, decode MB/s, mean repair span in symbols). One frame per step; packets and
    window updates reach the other end ``lag`` steps after they leave."""
    rng = random.Random(seed)
    sender = FecEndpoint(symbol_size=SYMBOL, window=256, rng=random.Random(seed))
    receiver = FecEndpoint(symbol_size=SYMBOL, window=256)
    payloads = [os.urandom(SYMBOL - 2) for _ in range(64)]
    forward: deque[tuple[int, bytes]] = deque()
    backward: deque[tuple[int, bytes]] = deque()
    encode = decode = 0.0
    step = delivered = sent = spans = repairs = 0
    while delivered < frames:
        step += 1
        now = step * 0.001
        start = time.perf_counter()
        while backward and backward[0][0] <= step:
            sender.receive(backward.popleft()[1], now)
        if sent < frames and sender.writable:
            sender.send(payloads[sent % 64], now)
            sent += 1
        sender.handle_timer(now)
        out = sender.data_to_send()
        encode += time.perf_counter() - start
        for packet in out:
            if packet[0] & 0x0F == 1:
                repairs += 1
                spans += int.from_bytes(packet[9:11], "big")
        forward.extend((step + lag, p) for p in out if rng.random() >= loss)
        start = time.perf_counter()
        while forward and forward[0][0] <= step:
            receiver.receive(forward.popleft()[1], now)
        receiver.handle_timer(now)
        while (event := receiver.next_event()) is not None:
            delivered += isinstance(event, Delivered)
        acks = receiver.data_to_send()
        decode += time.perf_counter() - start
        backward.extend((step + lag, ack) for ack in acks)
    megabytes = frames * (SYMBOL - 2) / 1e6
    return megabytes / encode, megabytes / decode, spans / max(repairs, 1)


def fec_latencies(loss: float, frames: int, seed: int) -> tuple[list[float], float]:
    """Latencies and repair packets sent per frame."""
    rng = random.Random(seed)
    ends = (FecEndpoint(symbol_size=64, rng=random.Random(seed)), FecEndpoint(symbol_size=64))
    events: list[tuple[float, int, int, bytes]] = []  # (time, tiebreak, destination, packet)
    sent_at: list[float] = []
    latencies: list[float] = []
    tiebreak = 0

    def flush(source: int, now: float) -> None:
        nonlocal tiebreak
        for packet in ends[source].data_to_send():
            if rng.random() >= loss:
                tiebreak += 1
                heapq.heappush(events, (now + DELAY, tiebreak, 1 - source, packet))

    now = 0.0
    while len(latencies) < frames:
        timers = [t for t in (ends[0].get_timer(), ends[1].get_timer()) if t is not None]
        next_frame = len(sent_at) * 0.001 if len(sent_at) < frames and ends[0].writable else float("inf")
        now = min([next_frame, *timers, events[0][0] if events else float("inf")])
        if now == next_frame:
            sent_at.append(now)
            ends[0].send(len(sent_at).to_bytes(4, "big"), now)
        elif events and events[0][0] == now:
            _, _, destination, packet = heapq.heappop(events)
            ends[destination].receive(packet, now)
        for side in (0, 1):
            ends[side].handle_timer(now)
            flush(side, now)
        while (event := ends[1].next_event()) is not None:
            latencies.append(now - sent_at[int.from_bytes(event.payload, "big") - 1])
    return latencies, ends[0].repairs_sent / frames


def arq_latencies(loss: float, frames: int, seed: int) -> tuple[list[float], float]:
    """Latencies and resends per frame."""
    rng = random.Random(seed)
    delivered_at, latencies, resends = 0.0, [], 0
    for index in range(frames):
        sent = index * 0.001
        arrival = sent + DELAY
        if rng.random() < loss:  # noticed at the next arrival, NACKed, resent
            arrival, resends = sent + 0.001 + 3 * DELAY, resends + 1
            while rng.random() < 1 - (1 - loss) ** 2:  # NACK or resend lost: one more round trip
                arrival, resends = arrival + 2 * DELAY, resends + 1
        delivered_at = max(delivered_at, arrival)
        latencies.append(delivered_at - sent)
    return latencies, resends / frames


def lying_updates(updates: int = 200, seed: int = 1) -> tuple[float, float, float]:
    """(repair bytes after the first update, mean repair bytes per update, CPU µs per update)."""
    sender = FecEndpoint(symbol_size=SYMBOL, rng=random.Random(seed))
    for _ in range(256):
        sender.send(bytes(1024), 0.0)
    sender.data_to_send()
    per_update, cpu = [], 0.0
    for step in range(1, updates + 1):
        update = struct.pack(">BIIII", 0x12, 0, 0, 0, sender.encoder.packets_sent & 0xFFFFFFFF)
        start = time.process_time()
        sender.receive(update, step * 0.001)
        out = sender.data_to_send()
        cpu += time.process_time() - start
        per_update.append(sum(len(p) for p in out if p[0] & 0x0F == 1))
    return per_update[0], statistics.fmean(per_update), cpu / updates * 1e6


def summary(run: tuple[list[float], float]) -> tuple[float, float, float, float]:
    """(p50, p95, p99 in ms, extra packets per frame)."""
    cuts = statistics.quantiles(run[0], n=100)
    return cuts[49] * 1e3, cuts[94] * 1e3, cuts[98] * 1e3, run[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_json_flag(parser)
    args = parser.parse_args()
    figures: dict[str, float] = {}
    began = time.perf_counter()
    print(f"zmesh Tetrys FEC benchmark: {os.cpu_count()} CPUs, medians of {RUNS} runs")
    print(f"\nCodec, {SYMBOL}-byte symbols, adaptive repair, updates lagging 32 packets each way:")
    print("| loss | encode MB/s | decode MB/s | mean repair span (symbols) |")
    print("|------|-------------|-------------|----------------------------|")
    for loss in (0.0, 0.1):
        runs = [codec_mb_s(loss, seed=seed) for seed in range(RUNS)]
        encode, decode, span = (statistics.median(r[i] for r in runs) for i in range(3))
        print(f"| {loss:4.0%} | {encode:11.1f} | {decode:11.1f} | {span:26.1f} |")
        figures |= {f"encode_MBps_loss_{loss:.0%}": encode, f"decode_MBps_loss_{loss:.0%}": decode}
    print(f"\nDelivery latency (ms), {DELAY * 1e3:.0f} ms one way, one frame per ms, in order:")
    print("| loss | method         |   p50 |   p95 |   p99 | p50 / ARQ | p99 / ARQ | extra packets/frame |")
    print("|------|----------------|-------|-------|-------|-----------|-----------|---------------------|")
    for loss in (0.05, 0.10, 0.20):
        fec = [summary(fec_latencies(loss, 10_000, seed)) for seed in range(RUNS)]
        arq = [summary(arq_latencies(loss, 10_000, seed)) for seed in range(RUNS)]
        fec_m, arq_m = ([statistics.median(r[i] for r in runs) for i in range(4)] for runs in (fec, arq))
        for name, (p50, p95, p99, extra) in (("FEC (adaptive)", fec_m), ("ARQ", arq_m)):
            print(f"| {loss:4.0%} | {name:<14} | {p50:5.1f} | {p95:5.1f} | {p99:5.1f} | "
                  f"{p50 / arq_m[0]:9.2f} | {p99 / arq_m[2]:9.2f} | {extra:19.2f} |")
        figures |= {f"fec_p99_ms_loss_{loss:.0%}": fec_m[2], f"arq_p99_ms_loss_{loss:.0%}": arq_m[2],
                    f"fec_extra_packets_per_frame_loss_{loss:.0%}": fec_m[3]}
    runs = [lying_updates(seed=seed) for seed in range(RUNS)]
    first, mean, cpu = (statistics.median(r[i] for r in runs) for i in range(3))
    print("\nLying window updates (17 bytes each, claiming every packet lost) against a full window:")
    print("| repair bytes, first update | mean repair bytes per update | CPU per update (µs) |")
    print("|----------------------------|------------------------------|---------------------|")
    print(f"| {first:26.0f} | {mean:28.0f} | {cpu:19.1f} |")
    print(f"\n(bench ran {time.perf_counter() - began:.0f} s)")
    print_json(args, figures | {"lying_update_first_repair_bytes": first, "lying_update_mean_repair_bytes": mean,
                                "lying_update_cpu_us": cpu})


if __name__ == "__main__":
    main()
