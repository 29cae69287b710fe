"""Tetrys FEC (RFC 9407): GF(2^8) kernels, in-order exactly-once delivery under random and bursty
loss, gaps reported instead of hangs, hostile packets refused, and the FecLink over a lossy link."""

import asyncio
import hashlib
import os
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmesh.errors import FECError, LinkClosed
from zmesh.fec import Delivered, FecLink, Gap, RepairRateController, TetrysDecoder, TetrysEncoder
from zmesh.fec.gf256 import TABLES, coefficients, inv, mul, scale
from zmesh.link import memory_link_pair


def test_field_axioms():
    for a in range(1, 256):
        assert mul(a, inv(a)) == 1 and mul(a, 1) == a and mul(a, 0) == 0
    for a, b, c in ((3, 7, 11), (200, 100, 50), (255, 254, 2)):
        assert mul(a, mul(b, c)) == mul(mul(a, b), c)
        assert mul(a, b ^ c) == mul(a, b) ^ mul(a, c)


def test_whole_symbol_scaling_matches_bytewise():
    symbol = os.urandom(64)
    for c in (1, 2, 77, 255):
        expected = bytes(mul(c, x) for x in symbol)
        assert scale(int.from_bytes(symbol, "little"), c, 64).to_bytes(64, "little") == expected
        assert symbol.translate(TABLES[c]) == expected


def test_coefficients_are_deterministic_and_nonzero():
    assert coefficients(42, 300) == coefficients(42, 300)
    assert 0 not in coefficients(7, 1000) and coefficients(1, 10) != coefficients(2, 10)


def gilbert_elliott(rng, p_bad=0.05, p_good=0.3, loss_bad=0.7, loss_good=0.01):
    bad = False

    def lost():
        nonlocal bad
        bad = (rng.random() < p_bad) if not bad else (rng.random() >= p_good)
        return rng.random() < (loss_bad if bad else loss_good)
    return lost


def simulate(messages, lost, *, ratio, window=64, feedback_every=8):
    """Sender → lossy channel → receiver, with window updates fed back (lossless feedback)."""
    enc, dec = TetrysEncoder(symbol_size=512, max_window=window), TetrysDecoder(symbol_size=512, max_window=window)
    out, credit = [], 0.0

    def deliver(packet):
        if not lost():
            out.extend(dec.receive(packet))

    for index, message in enumerate(messages):
        while enc.full:  # stalled: send repairs until the window moves
            deliver(enc.repair())
            enc.acknowledge(dec.next_deliver)
        deliver(enc.source(message))
        credit += ratio
        while credit >= 1:
            credit -= 1
            deliver(enc.repair())
        if index % feedback_every == feedback_every - 1:
            enc.acknowledge(dec.next_deliver)
    for _ in range(10_000):  # tail: repairs until everything is delivered
        if dec.next_deliver >= len(messages):
            break
        deliver(enc.repair())
    return out, dec


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), loss=st.floats(0.0, 0.3), count=st.integers(1, 300))
def test_random_loss_everything_arrives_once_in_order(seed, loss, count):
    rng = random.Random(seed)
    messages = [rng.randbytes(rng.randint(0, 510)) for _ in range(count)]
    out, _ = simulate(messages, lambda: rng.random() < loss, ratio=min(1.0, loss * 2 + 0.05))
    assert [e.payload for e in out] == messages and all(isinstance(e, Delivered) for e in out)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_bursty_loss_everything_arrives_once_in_order(seed):
    rng = random.Random(seed)
    messages = [rng.randbytes(rng.randint(1, 510)) for _ in range(400)]
    out, _ = simulate(messages, gilbert_elliott(rng), ratio=0.4)
    payloads = [e.payload for e in out]
    assert hashlib.sha256(b"".join(payloads)).digest() == hashlib.sha256(b"".join(messages)).digest()
    assert payloads == messages


def test_given_up_symbols_are_reported_as_a_gap_not_a_hang():
    enc, dec = TetrysEncoder(symbol_size=64, max_window=8), TetrysDecoder(symbol_size=64, max_window=8)
    events = []
    for index in range(5):
        packet = enc.source(bytes([index]))
        if index not in (1, 2):  # lost for good, no repair ever arrives
            events += dec.receive(packet)
    enc.give_up_oldest()
    enc.give_up_oldest()
    enc.give_up_oldest()
    events += dec.receive(enc.source(b"\x05"))
    assert events[0] == Delivered(0, b"\x00")
    assert Gap(1, 2) in events
    assert [e.payload for e in events if isinstance(e, Delivered)] == [b"\x00", b"\x03", b"\x04", b"\x05"]


@pytest.mark.parametrize("packet", [
    b"", b"\x07junk", b"\x00\x00", struct.pack(">BIIHI", 1, 0, 0, 0, 1) + bytes(64),
    struct.pack(">BIIHI", 1, 0, 0, 5000, 1) + bytes(64), struct.pack(">BIIHI", 1, 0, 0, 2, 1) + bytes(10),
    struct.pack(">BIII", 0, 0, 10_000, 0) + b"x", struct.pack(">BIII", 0, 0, 0, 0) + bytes(100),
])
def test_hostile_packets_are_fec_errors_and_change_nothing(packet):
    dec = TetrysDecoder(symbol_size=64, max_window=16)
    with pytest.raises(FECError):
        dec.receive(packet)
    assert dec.next_deliver == 0 and not dec._known and not dec._rows


def test_lying_length_in_a_repaired_symbol_is_refused():
    enc, dec = TetrysEncoder(symbol_size=64, max_window=8), TetrysDecoder(symbol_size=64, max_window=8)
    enc.source(b"a")
    packet = bytearray(enc.repair())
    header = 15
    lie = (0xFFFF).to_bytes(2, "little")  # the symbol's length field after the coefficient is undone
    coefficient = coefficients(int.from_bytes(packet[11:15], "big"), 1)[0]
    packet[header:header + 2] = bytes(mul(coefficient, b) for b in lie)
    with pytest.raises(FECError, match="length field"):
        dec.receive(bytes(packet))


@pytest.mark.parametrize("kwargs", [{"symbol_size": 4}, {"max_window": 0}, {"max_window": 10**6}])
def test_absurd_limits_are_refused(kwargs):
    with pytest.raises(FECError):
        TetrysEncoder(**kwargs)


def test_repair_rate_follows_loss_and_stays_in_bounds():
    controller = RepairRateController(min_ratio=0.0, max_ratio=0.5)
    controller.update(99, 100)
    assert controller.ratio == 0.0  # clean link: no overhead
    highest, received = 99, 100
    for _ in range(20):
        highest, received = highest + 100, received + 80
        controller.update(highest, received)
    assert 0.25 < controller.ratio <= 0.5 and 0.15 < controller.loss < 0.25


@pytest.mark.parametrize("loss", [0.0, 0.1, 0.2])
def test_fec_link_delivers_in_order_over_a_lossy_link(loss):
    async def main():
        a, b = memory_link_pair(loss=loss, seed=7)
        sender = FecLink(a, symbol_size=512, window=64, min_repair=0.1 if loss else 0.0, max_repair=0.6)
        receiver = FecLink(b, symbol_size=512, window=64)
        rng = random.Random(3)
        frames = [rng.randbytes(rng.randint(1, 500)) for _ in range(1500)]

        async def send_all():
            for frame in frames:
                await sender.send(frame)

        writer = asyncio.create_task(send_all())
        got = [await asyncio.wait_for(receiver.recv(), 30) for _ in frames]
        await writer
        assert got == frames and not receiver.gaps
        if loss:
            assert receiver.decoder.recovered > 0
        await sender.close()
        await receiver.close()
        with pytest.raises(LinkClosed):
            await receiver.recv()

    asyncio.run(main())


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32), loss=st.floats(0.0, 0.2))
def test_reordered_and_lost_packets_still_arrive_once_in_order(seed, loss):
    rng = random.Random(seed)
    enc, dec = TetrysEncoder(symbol_size=128, max_window=128), TetrysDecoder(symbol_size=128, max_window=128)
    messages = [rng.randbytes(rng.randint(0, 126)) for _ in range(100)]
    packets = []
    for index, message in enumerate(messages):
        packets.append(enc.source(message))
        if index % 3 == 2:
            packets.append(enc.repair())
    for start in range(0, len(packets), 5):  # shuffle within small groups: an unordered channel
        group = packets[start:start + 5]
        rng.shuffle(group)
        packets[start:start + 5] = group
    out = [e for p in packets if rng.random() >= loss for e in dec.receive(p)]
    while dec.next_deliver < len(messages):
        out += dec.receive(enc.repair())
    assert [e.payload for e in out] == messages
