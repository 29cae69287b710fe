"""Cell codec (docs/protocol.md §2): exact sizes, strict parsing, bounded reassembly."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zmesh.cells import (
    BODY_SIZE,
    CELL_SIZE,
    FLAG_MORE,
    MAX_CELLS_PER_FRAME,
    RELAY_DATA_SIZE,
    CellCommand,
    Reassembler,
    RelayCommand,
    encode_cell,
    encode_relay_body,
    fragments,
    parse_cell,
    parse_frame,
    parse_relay_body,
    relay_cells,
)
from zmesh.errors import InvalidState, ProtocolError


def test_an_unknown_relay_command_parses_as_an_int_for_the_receiver_to_drop():
    msg = parse_relay_body(bytes(encode_relay_body(0x7E, 3, b"new")))
    assert (msg.command, type(msg.command), msg.stream_id, msg.data) == (0x7E, int, 3, b"new")


@pytest.mark.parametrize("encode", [
    lambda: encode_cell(CellCommand.RELAY, 5, bytes(BODY_SIZE - 1)),
    lambda: encode_cell(CellCommand.CREATE, 5, bytes(BODY_SIZE + 1)),
    lambda: encode_relay_body(RelayCommand.DATA, 1, bytes(RELAY_DATA_SIZE + 1)),
    lambda: relay_cells(5, [bytes(BODY_SIZE), bytes(BODY_SIZE - 1)]),
])
def test_encoders_raise_invalid_state_for_our_own_misuse(encode):
    """What an encoder is given comes from this node: a bad argument is our bug, not a peer's."""
    with pytest.raises(InvalidState):
        encode()


def test_relay_cells_put_the_clear_header_on_each_whole_body():
    cells = relay_cells(9, [bytes([1]) * BODY_SIZE, bytes([2]) * BODY_SIZE])
    assert [(c.command, c.circ_id, c.payload[0]) for c in parse_frame(b"".join(cells))] == [
        (CellCommand.RELAY, 9, 1), (CellCommand.RELAY, 9, 2)]


@pytest.mark.parametrize("command", [c for c in CellCommand if c != CellCommand.RELAY])
def test_link_cells_round_trip_at_fixed_size(command):
    link_level = (CellCommand.PADDING, CellCommand.PING, CellCommand.PONG, CellCommand.AUTH_CHALLENGE,
                  CellCommand.AUTHENTICATE, CellCommand.AUTHENTICATED)
    circ_id = 0 if command in link_level else 7
    raw = encode_cell(command, circ_id, b"payload", FLAG_MORE)
    assert len(raw) == CELL_SIZE
    cell = parse_cell(raw)
    assert (cell.command, cell.circ_id, cell.payload, cell.flags) == (command, circ_id, b"payload", FLAG_MORE)


def test_relay_cell_carries_whole_body():
    body = bytes(range(256)) * 3 + bytes(BODY_SIZE - 768)
    cell = parse_cell(encode_cell(CellCommand.RELAY, 9, body))
    assert cell.payload == body and cell.command == CellCommand.RELAY


def test_relay_body_round_trip():
    body = encode_relay_body(RelayCommand.DATA, 42, b"x" * RELAY_DATA_SIZE, FLAG_MORE)
    msg = parse_relay_body(bytes(body))
    assert (msg.command, msg.stream_id, msg.data, msg.flags) == (RelayCommand.DATA, 42,
                                                                 b"x" * RELAY_DATA_SIZE, FLAG_MORE)


@pytest.mark.parametrize("offset", range(16))
def test_any_header_byte_change_is_rejected_or_visible(offset):
    raw = bytearray(encode_cell(CellCommand.CREATE, 5, b"abc"))
    original = parse_cell(bytes(raw))
    raw[offset] ^= 0x40
    try:
        cell = parse_cell(bytes(raw))
    except ProtocolError:
        return
    assert cell != original


def test_nonzero_padding_is_rejected():
    raw = bytearray(encode_cell(CellCommand.DESTROY, 5, b"\x01"))
    raw[-1] = 1
    with pytest.raises(ProtocolError, match="padding"):
        parse_cell(bytes(raw))


def test_relay_cell_with_clear_length_is_rejected():
    raw = bytearray(encode_cell(CellCommand.RELAY, 5, bytes(BODY_SIZE)))
    struct.pack_into(">H", raw, 8, 10)
    with pytest.raises(ProtocolError):
        parse_cell(bytes(raw))


@given(st.binary(max_size=CELL_SIZE + 8))
def test_parse_cell_only_raises_protocol_error(data):
    try:
        parse_cell(data)
    except ProtocolError:
        pass


@given(st.binary(min_size=CELL_SIZE, max_size=CELL_SIZE))
def test_random_cells_parse_or_raise_protocol_error(data):
    data = bytes([1]) + data[1:]  # mostly exercise past the version check
    try:
        parse_cell(data)
    except ProtocolError:
        pass


@given(st.binary(max_size=RELAY_DATA_SIZE * 2))
def test_relay_body_parser_never_raises_other_errors(data):
    body = (data + bytes(BODY_SIZE))[:BODY_SIZE]
    try:
        parse_relay_body(body)
    except ProtocolError:
        pass


@pytest.mark.parametrize("size", [0, 1, CELL_SIZE - 1, CELL_SIZE * (MAX_CELLS_PER_FRAME + 1)])
def test_frames_must_be_whole_cells_and_bounded(size):
    with pytest.raises(ProtocolError):
        parse_frame(bytes(size))


def test_frame_parses_into_cells_with_the_fast_path_agreeing():
    relay = encode_cell(CellCommand.RELAY, 9, bytes(range(256)) * 3 + bytes(BODY_SIZE - 768))
    frame = relay + encode_cell(CellCommand.PING, 0, b"p") + relay
    cells = parse_frame(frame)
    assert cells == [parse_cell(relay), parse_cell(frame[CELL_SIZE:2 * CELL_SIZE]), parse_cell(relay)]


@given(st.binary(min_size=CELL_SIZE, max_size=CELL_SIZE))
def test_fast_path_accepts_exactly_what_parse_cell_accepts(data):
    data = bytes([1, 3]) + data[2:]
    try:
        expected = [parse_cell(data)]
    except ProtocolError:
        with pytest.raises(ProtocolError):
            parse_frame(data)
        return
    assert parse_frame(data) == expected


@given(st.binary(max_size=5000), st.integers(min_value=1, max_value=1500))
def test_fragments_reassemble(payload, chunk):
    reassembler = Reassembler(limit=5000)
    results = [reassembler.add(piece, flags) for piece, flags in fragments(payload, chunk)]
    assert results[-1] == payload and all(r is None for r in results[:-1])


def test_reassembler_refuses_to_grow_past_its_limit():
    reassembler = Reassembler(limit=100)
    reassembler.add(b"a" * 60, FLAG_MORE)
    with pytest.raises(ProtocolError):
        reassembler.add(b"a" * 60, FLAG_MORE)
