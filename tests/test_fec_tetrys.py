"""Tetrys encoder/decoder (RFC 9407) sans-IO: exactly once and in order under independent and bursty
loss and reordering while repair covers the loss, gaps reported (never a hang) beyond that, hostile
packets refused with FECError and bounded memory, and the adaptive repair-rate rule."""

import hashlib
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmesh.errors import ConfigError, FECError, InvalidState
from zmesh.fec import Delivered, Gap, RepairRateController, TetrysDecoder, TetrysEncoder
from zmesh.fec.gf256 import coefficients, mul

SYMBOL, WINDOW = 128, 64


def gilbert_elliott(rng, p_enter_bad=0.05, p_leave_bad=0.3, loss_bad=0.6, loss_good=0.01):
    """Bursty loss: a two-state Markov chain (good/bad) with a loss probability per state."""
    bad = False

    def lost():
        nonlocal bad
        bad = rng.random() >= p_leave_bad if bad else rng.random() < p_enter_bad
        return rng.random() < (loss_bad if bad else loss_good)
    return lost


def transfer(messages, lost, *, ratio, ack_every=8, shuffle=0, rng=None):
    """Sender → lossy (optionally reordering) channel → receiver; lossless acks every ``ack_every``
    source packets; after the last message, repairs until everything is delivered."""
    enc = TetrysEncoder(symbol_size=SYMBOL, max_window=WINDOW, rng=random.Random(1))
    dec = TetrysDecoder(symbol_size=SYMBOL, max_window=WINDOW)
    in_flight, events, credit = [], [], 0.0

    def put(packet):
        if packet is not None and not lost():
            in_flight.append(packet)
        if len(in_flight) > shuffle:  # reorder within a small group
            if shuffle:
                rng.shuffle(in_flight)
            events.extend(dec.receive(in_flight.pop(), 0.0))

    for index, message in enumerate(messages):
        while enc.full:
            put(enc.repair())
            enc.on_ack(dec.ack())
        put(enc.source(message))
        credit += ratio
        while credit >= 1:
            credit -= 1
            put(enc.repair())
        if index % ack_every == ack_every - 1:
            enc.on_ack(dec.ack())
    for _ in range(100_000):
        if dec.next_deliver >= len(messages):
            break
        put(enc.repair())
        while in_flight:
            events.extend(dec.receive(in_flight.pop(), 0.0))
        enc.on_ack(dec.ack())
    return events, dec


def assert_exactly_once_in_order(events, messages):
    assert all(isinstance(e, Delivered) for e in events)
    assert [e.seq for e in events] == list(range(len(messages)))
    payloads = [e.payload for e in events]
    assert hashlib.sha256(b"".join(payloads)).digest() == hashlib.sha256(b"".join(messages)).digest()
    assert payloads == messages


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), loss=st.floats(0.0, 0.3), count=st.integers(1, 300))
def test_independent_loss_up_to_30_percent_arrives_once_in_order(seed, loss, count):
    rng = random.Random(seed)
    messages = [rng.randbytes(rng.randint(0, SYMBOL - 2)) for _ in range(count)]
    events, dec = transfer(messages, lambda: rng.random() < loss, ratio=min(1.0, 2 * loss + 0.05))
    assert_exactly_once_in_order(events, messages)
    assert len(dec._known) <= 3 * WINDOW and len(dec._rows) <= WINDOW


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_bursty_gilbert_elliott_loss_arrives_once_in_order(seed):
    rng = random.Random(seed)
    messages = [rng.randbytes(rng.randint(1, SYMBOL - 2)) for _ in range(400)]
    events, _ = transfer(messages, gilbert_elliott(rng), ratio=0.5)
    assert_exactly_once_in_order(events, messages)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), loss=st.floats(0.0, 0.2), group=st.integers(1, 8))
def test_reordered_and_lost_packets_arrive_once_in_order(seed, loss, group):
    rng = random.Random(seed)
    messages = [rng.randbytes(rng.randint(0, SYMBOL - 2)) for _ in range(200)]
    events, _ = transfer(messages, lambda: rng.random() < loss, ratio=0.5, shuffle=group, rng=rng)
    assert_exactly_once_in_order(events, messages)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32), loss=st.floats(0.3, 0.7))
def test_loss_beyond_repair_is_reported_as_gaps_not_a_hang(seed, loss):
    """No repairs at all and heavy loss: after max_stall (fake clock) the missing symbols become
    Gap events; together with the deliveries they cover every sequence number exactly once."""
    rng = random.Random(seed)
    enc = TetrysEncoder(symbol_size=SYMBOL, max_window=WINDOW)
    dec = TetrysDecoder(symbol_size=SYMBOL, max_window=WINDOW, max_stall=0.5)
    messages = [rng.randbytes(rng.randint(0, 20)) for _ in range(150)]
    events, now = [], 0.0
    for message in messages + [b"end"]:
        now += 0.01
        while enc.full:  # the sender waits; the receiver's stall timer is what frees the window
            now = max(now, dec.get_timer())
            events += dec.handle_timer(now)
            enc.on_ack(dec.ack())
        packet = enc.source(message)
        if rng.random() >= loss or message == b"end":
            events += dec.receive(packet, now)
        events += dec.handle_timer(now)
        enc.on_ack(dec.ack())
    while dec.get_timer() is not None:
        now = dec.get_timer()
        events += dec.handle_timer(now)
    covered = []
    for event in events:
        covered += [event.seq] if isinstance(event, Delivered) else list(range(event.first, event.last + 1))
    assert covered == list(range(len(messages) + 1))
    assert [e.payload for e in events if isinstance(e, Delivered)] == \
        [m for i, m in enumerate(messages + [b"end"]) if i in {e.seq for e in events if isinstance(e, Delivered)}]
    assert not dec.stalled


def test_stall_timer_gives_up_only_after_max_stall():
    enc = TetrysEncoder(symbol_size=SYMBOL, max_window=WINDOW)
    dec = TetrysDecoder(symbol_size=SYMBOL, max_window=WINDOW, max_stall=1.0)
    enc.source(b"lost")
    assert dec.receive(enc.source(b"second"), 10.0) == []
    assert dec.stalled and dec.get_timer() == 11.0
    assert dec.handle_timer(10.9) == []
    assert dec.handle_timer(11.0) == [Gap(0, 0), Delivered(1, b"second")]
    assert dec.get_timer() is None


def test_sender_window_moving_past_a_missing_symbol_reports_the_gap():
    enc = TetrysEncoder(symbol_size=SYMBOL, max_window=WINDOW)
    dec = TetrysDecoder(symbol_size=SYMBOL, max_window=WINDOW)
    assert dec.receive(enc.source(b"a"), 0) == [Delivered(0, b"a")]
    enc.source(b"lost")
    enc.source(b"lost too")
    enc.on_ack(struct.pack(">BIIII", 0x12, 3, 3, 1, 3))  # pretend the receiver had them
    assert dec.receive(enc.source(b"d"), 0) == [Gap(1, 2), Delivered(3, b"d")]


def test_sequence_numbers_survive_32_bit_wraparound():
    enc = TetrysEncoder(symbol_size=SYMBOL, max_window=WINDOW, rng=random.Random(3))
    dec = TetrysDecoder(symbol_size=SYMBOL, max_window=WINDOW)
    start = 2**32 - 5
    enc.window_start = enc.decoded = dec.next_deliver = dec._floor = start
    messages = [bytes([i]) * i for i in range(20)]
    events = []
    for i, message in enumerate(messages):
        packet = enc.source(message)
        if i % 4 != 1:
            events += dec.receive(packet, 0)
        if i % 4 == 3:
            events += dec.receive(enc.repair(), 0)
            enc.on_ack(dec.ack())
    assert [e.seq for e in events] == list(range(start, start + 20))
    assert [e.payload for e in events] == messages


def repair_packet(first, count, seed, size=SYMBOL):
    return struct.pack(">BIIHI", 0x11, 0, first, count, seed) + bytes(size)


HOSTILE = [
    b"",
    b"\x17junk",  # unknown type
    b"\x20" + bytes(20),  # unknown version
    b"\x10\x00\x00",  # truncated source
    struct.pack(">BIII", 0x10, 0, 0, 0) + bytes(SYMBOL),  # payload larger than a symbol allows
    struct.pack(">BIII", 0x10, 0, 5, 6),  # window starts after its own symbol
    struct.pack(">BIII", 0x10, 0, 10_000, 10_000) + b"x",  # far ahead of the window
    struct.pack(">BIII", 0x10, 0, 100, 0) + b"x",  # spans more than the window
    repair_packet(0, 0, 1),  # covers nothing
    repair_packet(0, 5000, 1),  # absurd count
    repair_packet(60, 10, 1),  # reaches beyond the window
    repair_packet(0, 2, 1)[:-10],  # truncated symbol
    repair_packet(0, 2, 1) + b"\x00",  # symbol too long
    struct.pack(">BIIII", 0x12, 0, 0, 0, 0),  # a window update sent to the decoder
]


@pytest.mark.parametrize("packet", HOSTILE)
def test_hostile_packets_are_fec_errors_and_change_nothing(packet):
    dec = TetrysDecoder(symbol_size=SYMBOL, max_window=WINDOW)
    with pytest.raises(FECError):
        dec.receive(packet, 0.0)
    assert (dec.next_deliver, dec.packets_received, dec._known, dec._rows) == (0, 0, {}, {})


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.binary(max_size=200),
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
              st.binary(max_size=SYMBOL - 2)).map(lambda t: struct.pack(">BIII", 0x10, *t[:3]) + t[3]),
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 200), st.integers(0, 2**16 - 1), st.integers(0, 2**32 - 1),
              st.binary(min_size=SYMBOL, max_size=SYMBOL))
    .map(lambda t: struct.pack(">BIIHI", 0x11, *t[:4]) + t[4])), max_size=60))
def test_fuzzed_packets_never_escape_as_other_errors_or_grow_memory(packets):
    dec = TetrysDecoder(symbol_size=SYMBOL, max_window=WINDOW, max_stall=0.1)
    for now, packet in enumerate(packets):
        try:
            dec.receive(packet, float(now))
            dec.handle_timer(float(now))
        except FECError:
            pass
        assert len(dec._known) <= 3 * WINDOW and len(dec._rows) <= WINDOW
        assert all(min(row.coefficients) >= dec.next_deliver for row in dec._rows.values())


def test_a_decoded_length_field_that_lies_is_refused_for_good():
    enc = TetrysEncoder(symbol_size=SYMBOL, max_window=WINDOW)
    dec = TetrysDecoder(symbol_size=SYMBOL, max_window=WINDOW)
    enc.source(b"a")  # lost; its repair is forged to decode to a length of 0xFFFF
    packet = bytearray(enc.repair())
    c = coefficients(int.from_bytes(packet[11:15], "big"), 1)[0]
    packet[15:17] = bytes(mul(c, b) for b in b"\xff\xff")
    with pytest.raises(FECError, match="length field"):
        dec.receive(bytes(packet), 0.0)
    with pytest.raises(FECError, match="earlier error"):
        dec.receive(enc.source(b"b"), 0.0)


@pytest.mark.parametrize("ack", [
    struct.pack(">BIIII", 0x12, 5, 5, 0, 0),  # acknowledges unsent symbols
    struct.pack(">BIIII", 0x12, 2, 1, 0, 0),  # consumed beyond decoded
    struct.pack(">BIIII", 0x12, 0, 0, 0, 99),  # claims packets never sent
    struct.pack(">BIIII", 0x12, 0, 0, 0, 0)[:-1],  # truncated
])
def test_lying_window_updates_are_fec_errors_and_change_nothing(ack):
    enc = TetrysEncoder(symbol_size=SYMBOL, max_window=WINDOW)
    enc.source(b"x")
    with pytest.raises(FECError):
        enc.on_ack(ack)
    assert (enc.window_start, enc.decoded, len(enc.window)) == (0, 0, 1)


@pytest.mark.parametrize("kwargs", [{"symbol_size": 4}, {"symbol_size": 70_000}, {"max_window": 0},
                                    {"max_window": 10**6}])
def test_absurd_limits_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        TetrysEncoder(**kwargs)
    with pytest.raises(ConfigError):
        TetrysDecoder(**kwargs)


def test_encoder_refuses_oversized_frames_and_a_full_window():
    enc = TetrysEncoder(symbol_size=32, max_window=2)
    with pytest.raises(InvalidState):
        enc.source(bytes(31))
    enc.source(b"1")
    enc.source(b"2")
    with pytest.raises(InvalidState):
        enc.source(b"3")


def test_repairs_cover_only_what_the_receiver_may_lack():
    enc = TetrysEncoder(symbol_size=SYMBOL, max_window=WINDOW)
    dec = TetrysDecoder(symbol_size=SYMBOL, max_window=WINDOW)
    for i in range(5):
        dec.receive(enc.source(bytes([i])), 0.0)
    enc.on_ack(dec.ack(consumed=2))  # the application took 2; the decoder holds all 5
    assert (enc.window_start, enc.decoded) == (2, 5) and enc.repair() is None
    assert struct.unpack_from(">BIIH", enc.repair(probe=True))[2:] == (4, 1)  # a probe: newest symbol
    enc.source(b"new")
    assert struct.unpack_from(">BIIH", enc.repair())[2:] == (5, 1)


def test_rate_controller_clean_link_pays_nothing_and_lossy_link_stays_in_bounds():
    controller = RepairRateController(min_ratio=0.0, max_ratio=0.5)
    for seen in range(16, 1600, 16):
        assert controller.on_update(seen, seen) == 0
    assert controller.ratio == 0.0
    seen = received = 0
    newly = 0
    for _ in range(40):
        seen, received = seen + 100, received + 80
        newly += controller.on_update(seen, received)
    assert newly == 800  # every loss is answered by one immediate repair
    assert 0.15 < controller.loss < 0.25 and 0.25 < controller.ratio <= 0.5
    for _ in range(40):
        seen, received = seen + 100, received + 10
        controller.on_update(seen, received)
    assert controller.ratio == 0.5  # clamped at max
    with pytest.raises(ConfigError):
        RepairRateController(min_ratio=0.6, max_ratio=0.5)
