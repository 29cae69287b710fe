"""The pure multipath core (docs/protocol.md "Multipath"; Tor proposal 329): sequencing, the
bounded reorder buffer, the MinRTT scheduler, authenticated linking and hostile input. No I/O;
time only through a fake clock."""

import hashlib
import os

import pytest

from zmesh.cells import DestroyReason
from zmesh.errors import InvalidState, MultipathError
from zmesh.multipath import LegView, LinkRegistry, MessageReader, MultipathCommand, Reorder, SendBuffer, pick_leg
from zmesh.multipath.sequencing import FIN
from zmesh.multipath.wire import (
    MAX_BODY,
    MAX_DATA,
    encode,
    encode_link,
    encode_linked,
    encode_seq,
    parse_link,
    parse_linked,
    parse_seq,
)
from zmesh.testing.wire import FakeClock


def _reason(excinfo) -> DestroyReason:
    return excinfo.value.reason


# ---------------------------------------------------------------- reordering


def test_reorder_delivers_in_sequence_whatever_leg_order():
    reorder = Reorder(window=8)
    assert reorder.push(1, b"b") == []  # the fast leg got ahead
    assert reorder.push(2, b"c") == []
    assert reorder.held() == 2
    assert reorder.push(0, b"a") == [b"a", b"b", b"c"]
    assert reorder.held() == 0 and reorder.next == 3


def test_reorder_drops_a_resent_duplicate_and_counts_it():
    reorder = Reorder(window=8)
    reorder.push(0, b"a")
    reorder.push(2, b"c")
    assert reorder.push(0, b"a") == [] and reorder.push(2, b"c") == []
    assert reorder.duplicates == 2 and reorder.held() == 1


def test_reorder_refuses_a_sequence_number_outside_the_window_without_buffering_it():
    reorder = Reorder(window=4)
    with pytest.raises(MultipathError) as excinfo:
        reorder.push(4, b"x")  # 0..3 is all the sender may use before an ACK
    assert _reason(excinfo) is DestroyReason.MP_OUT_OF_WINDOW
    with pytest.raises(MultipathError):
        reorder.push(2**63, b"x")
    assert reorder.held() == 0


def test_reorder_window_moves_with_the_acks_it_sent_not_with_what_arrived():
    reorder = Reorder(window=4)
    assert reorder.push(0, b"a") == [b"a"]
    assert reorder.ack_due(every=2) is None  # one taken: not yet
    reorder.push(1, b"b")
    with pytest.raises(MultipathError):
        reorder.push(4, b"x")  # delivered up to 2, but acknowledged nothing: the window still ends at 4
    assert reorder.ack_due(every=2) == 2
    assert reorder.push(5, b"f") == []  # now 2..5 is open
    assert reorder.held() == 1


def test_reorder_fin_ends_the_stream_in_order_and_nothing_may_follow():
    reorder = Reorder(window=8)
    assert reorder.push(1, FIN) == []
    assert not reorder.finished
    assert reorder.push(0, b"last") == [b"last", FIN]
    assert reorder.finished and reorder.ack_due(every=100) == 2  # the FIN is acknowledged at once
    with pytest.raises(MultipathError):
        reorder.push(2, b"late")


def test_reorder_refuses_data_numbered_after_the_fin():
    reorder = Reorder(window=8)
    reorder.push(3, FIN)
    with pytest.raises(MultipathError) as excinfo:
        reorder.push(4, b"x")
    assert _reason(excinfo) is DestroyReason.MP_PROTOCOL


def test_reorder_buffer_is_bounded_by_the_window_whatever_the_order():
    reorder = Reorder(window=16)
    for seq in range(15, 0, -1):
        reorder.push(seq, b"x")
    assert reorder.held() == 15
    with pytest.raises(MultipathError):
        reorder.push(16, b"x")
    assert len(reorder.push(0, b"x")) == 16


# ---------------------------------------------------------------- sending


def test_send_buffer_stops_at_the_window_and_an_ack_reopens_it():
    send = SendBuffer(window=3)
    for data in (b"a", b"b", b"c"):
        send.sent(send.assign(data), leg=0)
    assert send.room() == 0
    with pytest.raises(InvalidState):
        send.assign(b"d")
    send.on_ack(2)
    assert send.room() == 2 and send.acked == 2 and not send.done()
    send.on_ack(3)
    assert send.done()


def test_send_buffer_refuses_an_ack_for_data_never_sent():
    send = SendBuffer(window=8)
    send.assign(b"a")
    with pytest.raises(MultipathError) as excinfo:
        send.on_ack(5)
    assert _reason(excinfo) is DestroyReason.MP_OUT_OF_WINDOW
    assert send.acked == 0


def test_a_lost_leg_gives_back_exactly_its_unacknowledged_messages_in_order():
    send = SendBuffer(window=8)
    for index, data in enumerate((b"a", b"b", b"c", b"d", b"e")):
        send.sent(send.assign(data), leg=index % 2)
    send.on_ack(1)  # "a" (leg 0) arrived
    assert send.leg_lost(0) == [(2, b"c"), (4, b"e")]
    assert send.leg_lost(1) == [(1, b"b"), (3, b"d")]
    send.sent(2, leg=1)  # sent again on the other leg: now that leg's to answer for
    assert send.leg_lost(0) == [(4, b"e")]


# ---------------------------------------------------------------- scheduling


def test_scheduler_prefers_the_lower_rtt_leg_with_window():
    legs = [LegView(0, 0.120, 64, True), LegView(1, 0.040, 64, True)]
    assert pick_leg(legs) == 1


def test_scheduler_switches_when_the_rtts_change():
    assert pick_leg([LegView(0, 0.050, 10, True), LegView(1, 0.080, 10, True)]) == 0
    assert pick_leg([LegView(0, 0.150, 10, True), LegView(1, 0.080, 10, True)]) == 1  # leg 0's queue grew


def test_scheduler_passes_over_a_leg_whose_congestion_window_is_full():
    legs = [LegView(0, 0.040, 0, True), LegView(1, 0.200, 5, True)]
    assert pick_leg(legs) == 1


def test_scheduler_waits_for_the_fastest_when_no_window_has_room():
    assert pick_leg([LegView(0, 0.040, 0, True), LegView(1, 0.200, 0, True)]) == 0
    assert pick_leg([LegView(0, 0.040, 9, False), LegView(1, 0.200, 9, False)]) is None  # both busy


def test_scheduler_takes_a_leg_without_rtt_sample_only_after_measured_ones():
    assert pick_leg([LegView(0, None, 9, True), LegView(1, 0.3, 9, True)]) == 1
    assert pick_leg([LegView(0, None, 9, True), LegView(1, None, 9, True)]) == 0


# ---------------------------------------------------------------- linking


def test_registry_links_a_second_leg_that_names_the_set():
    registry = LinkRegistry(FakeClock())
    nonce = os.urandom(32)
    registry.create(nonce, circuit=7, state="set")
    joined = registry.join(nonce, leg=1, circuit=9)
    assert joined.state == "set" and joined.circuits == {0: 7, 1: 9}


def test_registry_refuses_a_link_to_an_unknown_set():
    registry = LinkRegistry(FakeClock())
    registry.create(os.urandom(32), circuit=7, state="set")
    with pytest.raises(MultipathError) as excinfo:
        registry.join(os.urandom(32), leg=1, circuit=9)  # an attacker guessing a nonce
    assert _reason(excinfo) is DestroyReason.MP_UNKNOWN_SET


def test_registry_refuses_duplicate_legs():
    registry = LinkRegistry(FakeClock())
    nonce = os.urandom(32)
    registry.create(nonce, circuit=7, state="set")
    with pytest.raises(MultipathError) as excinfo:
        registry.join(nonce, leg=1, circuit=7)  # the same circuit twice
    assert _reason(excinfo) is DestroyReason.MP_DUPLICATE_LEG
    registry.join(nonce, leg=1, circuit=9)
    for leg, circuit in ((1, 11), (0, 11)):  # a taken leg number; leg 0 again
        with pytest.raises(MultipathError) as excinfo:
            registry.join(nonce, leg=leg, circuit=circuit)
        assert _reason(excinfo) is DestroyReason.MP_DUPLICATE_LEG
    with pytest.raises(MultipathError) as excinfo:
        registry.create(nonce, circuit=12, state="again")  # a second set under the same nonce
    assert _reason(excinfo) is DestroyReason.MP_DUPLICATE_LEG


def test_registry_link_after_the_timeout_is_an_unknown_set():
    clock = FakeClock()
    registry = LinkRegistry(clock, link_timeout=30.0)
    nonce = os.urandom(32)
    registry.create(nonce, circuit=7, state="set")
    clock.now += 30.5
    with pytest.raises(MultipathError) as excinfo:
        registry.join(nonce, leg=1, circuit=9)
    assert _reason(excinfo) is DestroyReason.MP_UNKNOWN_SET


def test_registry_is_bounded_and_forgets_removed_sets():
    registry = LinkRegistry(FakeClock(), max_sets=2)
    nonces = [os.urandom(32) for _ in range(3)]
    registry.create(nonces[0], 1, "a")
    registry.create(nonces[1], 2, "b")
    with pytest.raises(MultipathError) as excinfo:
        registry.create(nonces[2], 3, "c")
    assert _reason(excinfo) is DestroyReason.RESOURCE_LIMIT
    registry.remove(nonces[0])
    registry.create(nonces[2], 3, "c")
    assert len(registry) == 2
    with pytest.raises(MultipathError):
        registry.join(nonces[0], 1, 4)


def test_registry_keeps_only_the_nonce_digest():
    registry = LinkRegistry(FakeClock())
    nonce = os.urandom(32)
    registry.create(nonce, 1, "a")
    assert list(registry._sets) == [hashlib.sha256(nonce).digest()]


# ---------------------------------------------------------------- wire


def test_link_round_trip_and_target_only_on_leg_zero():
    nonce = os.urandom(32)
    command, body = MessageReader().feed(encode_link(nonce, 0, "example.org", 443))[0]
    assert command is MultipathCommand.LINK and parse_link(body) == (nonce, 0, ("example.org", 443))
    assert parse_link(MessageReader().feed(encode_link(nonce, 1))[0][1]) == (nonce, 1, None)
    for bad in (bytes([1]) + nonce + bytes([1]) + b"example.org:80",  # a target on leg 1
                bytes([1]) + nonce + bytes([0]),  # no target on leg 0
                bytes([1]) + nonce + bytes([2]),  # leg 2 of 2
                bytes([9]) + nonce + bytes([1]),  # unknown version
                bytes([1]) + nonce[:10]):
        with pytest.raises(MultipathError):
            parse_link(bad)


def test_reader_reassembles_messages_split_anywhere():
    stream = (encode_seq(MultipathCommand.DATA, 5, b"x" * MAX_DATA) + encode_linked(1)
              + encode_seq(MultipathCommand.ACK, 9))
    reader, got = MessageReader(), []
    for start in range(0, len(stream), 997):
        got += reader.feed(stream[start:start + 997])
    assert [c for c, _ in got] == [MultipathCommand.DATA, MultipathCommand.LINKED, MultipathCommand.ACK]
    assert parse_seq(got[0][1], data=True) == (5, b"x" * MAX_DATA)
    assert parse_linked(got[1][1]) == 1 and parse_seq(got[2][1]) == (9, b"")


def test_reader_refuses_unknown_commands_and_oversized_bodies_before_buffering_them():
    with pytest.raises(MultipathError) as excinfo:
        MessageReader().feed(bytes([53, 0, 1, 0]))
    assert _reason(excinfo) is DestroyReason.MP_PROTOCOL
    with pytest.raises(MultipathError):
        MessageReader().feed(encode(MultipathCommand.DATA, b"")[:1] + (MAX_BODY + 1).to_bytes(2, "big"))


def test_sequence_messages_must_have_their_exact_shape():
    with pytest.raises(MultipathError):
        parse_seq(b"\x00" * 7)
    with pytest.raises(MultipathError):
        parse_seq(b"\x00" * 9)  # an ACK with a tail
    with pytest.raises(MultipathError):
        parse_seq(b"\x00" * 8, data=True)  # DATA without data


def test_a_data_message_fills_whole_cells():
    from zmesh.cells import RELAY_DATA_SIZE
    assert len(encode_seq(MultipathCommand.DATA, 0, b"x" * MAX_DATA)) == 16 * RELAY_DATA_SIZE
