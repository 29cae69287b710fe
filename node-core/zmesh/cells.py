"""Fixed-size cells and the frames that carry them (docs/protocol.md §2–3).

Every cell on every hop is exactly ``CELL_SIZE`` bytes, so a cell's size tells an observer nothing.

Link cell (1024 bytes) = 16-byte header ‖ 1008-byte body::

    version:u8  command:u8  circ_id:u32  stream_id:u16  length:u16  flags:u8  reserved:5×00

For link commands (CREATE, CREATED, DESTROY, PING, PONG, PADDING) ``length`` counts the payload at
the start of the body and every byte after it is zero. RELAY cells carry an onion-encrypted body:
their clear header has stream_id = length = flags = 0, and the real stream id, relay command and
length sit in the *encrypted* relay header inside the body::

    recognized:u16=0  relay_command:u8  flags:u8  stream_id:u16  length:u16  digest:8 bytes

A frame is 1..``MAX_CELLS_PER_FRAME`` cells back to back, optionally followed by a zero *trailer* of
fewer than ``CELL_SIZE`` bytes (frame padding, so frame sizes on the wire are not all multiples of
1024; docs/protocol.md "Padding negotiation"), never past ``MAX_FRAME_SIZE``. The parser checks lengths first, never
allocates on a peer's say-so, and raises only ``ProtocolError``. The encoders raise ``InvalidState``:
what they are given comes from this node, so a bad argument is our bug, never the peer's fault.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import NamedTuple

from .errors import InvalidState, ProtocolError

VERSION = 1
CELL_SIZE = 1024
HEADER_SIZE = 16
BODY_SIZE = CELL_SIZE - HEADER_SIZE
RELAY_HEADER_SIZE = 16
RELAY_DATA_SIZE = BODY_SIZE - RELAY_HEADER_SIZE
MAX_CELLS_PER_FRAME = 64
MAX_FRAME_SIZE = CELL_SIZE * MAX_CELLS_PER_FRAME
FLAG_MORE = 0x01  # a fragmented payload continues in the next cell (CREATE/CREATED, EXTEND/EXTENDED)
DIGEST_SLICE = slice(8, 16)  # where the digest sits inside a relay body

_HEADER = struct.Struct(">BBIHHB5x")
_RELAY_HEADER = struct.Struct(">HBBHH8s")
_ZERO_BODY = bytes(BODY_SIZE)
_ZERO_CELL = bytes(CELL_SIZE)
_ZERO_DIGEST = bytes(8)
_RELAY_PREFIX = bytes([VERSION, 3])  # version, CellCommand.RELAY
_ZERO_TAIL = bytes(HEADER_SIZE - 6)  # stream id, length, flags, reserved
_ZERO_CIRC = bytes(4)


class CellCommand(IntEnum):
    PADDING = 0
    CREATE = 1
    CREATED = 2
    RELAY = 3
    DESTROY = 4
    PING = 5
    PONG = 6
    AUTH_CHALLENGE = 7  # listener → dialer: 32 random bytes
    AUTHENTICATE = 8  # dialer → listener: PeerId ‖ Ed25519 signature (docs/protocol.md §3)
    AUTHENTICATED = 9  # listener → dialer: the proof was accepted; circuits can now reach you

_LINK_LEVEL = frozenset({0, 5, 6, 7, 8, 9})  # commands that travel on circuit id 0

class RelayCommand(IntEnum):
    BEGIN = 1
    DATA = 2
    END = 3
    CONNECTED = 4
    SENDME = 5
    EXTEND = 6
    EXTENDED = 7
    DROP = 8  # long-range padding: recognised by the hop it is for, then discarded
    # Onion services (docs/onion-services.md, "Introduction and rendezvous"): 16–31.
    ESTABLISH_INTRO = 16  # service → its intro point: auth key ‖ signature over the circuit binding
    INTRO_ESTABLISHED = 17  # intro point → service
    INTRODUCE1 = 18  # client → intro point (fragmented): auth key ‖ encrypted introduction
    INTRODUCE2 = 19  # intro point → service (fragmented): the same bytes
    INTRODUCE_ACK = 20  # intro point → client: one status byte
    ESTABLISH_RENDEZVOUS = 21  # client → rendezvous point: 20-byte cookie
    RENDEZVOUS_ESTABLISHED = 22  # rendezvous point → client
    RENDEZVOUS1 = 23  # service → rendezvous point: cookie ‖ the service's handshake half
    RENDEZVOUS2 = 24  # rendezvous point → client: the service's handshake half
    # congestion and flow control (docs/protocol.md §10): 40–47
    CC_OFFER = 40  # client → each hop once it answered: "I run congestion control; buffer this much"
    CC_ACCEPT = 41  # hop → client: the window (cells) this hop buffers per circuit and link
    XOFF = 42  # stream receiver → sender: stop sending on this stream (its reader is behind)
    XON = 43  # stream receiver → sender: resume, with the rate the reader drained at (bytes/s)
    # padding machines (docs/protocol.md "Padding negotiation"): 32–39
    PADDING_NEGOTIATE = 32  # client → a hop: run this padding machine on the link this circuit came in on
    PADDING_NEGOTIATED = 33  # hop → client: the machine now runs
    PADDING_SETUP = 34  # client → its first hop: pad this circuit's setup (zmesh.setuppad)
    PADDING_SETUP_OK = 35  # first hop → client: it pads the setup's backward direction


class DestroyReason(IntEnum):
    NONE = 0
    PROTOCOL = 1
    INTERNAL = 2
    REQUESTED = 3
    TIMEOUT = 4
    CONNECT_FAILED = 5
    RESOURCE_LIMIT = 6
    LINK_CLOSED = 7
    TAMPERED = 8
    ONION_KEY_OUTDATED = 9  # the CREATE named an onion key the relay no longer holds: refetch its descriptor
    # Onion services: 16–23.
    INTRO_BAD_AUTH = 16  # ESTABLISH_INTRO's signature does not cover this circuit
    INTRO_REPLACED = 17  # the same intro auth key was established on a newer circuit
    REND_UNKNOWN_COOKIE = 18  # RENDEZVOUS1 for a cookie no client circuit waits with
    REND_COOKIE_IN_USE = 19  # ESTABLISH_RENDEZVOUS with a cookie another circuit waits with
    REND_CLOSED = 20  # the circuit joined to this one at the rendezvous point closed
    # congestion and flow control (docs/protocol.md §10): 28–31
    BAD_SENDME = 28  # a SENDME named a cell that was never sent (or not yet received): a forged acknowledgement
    FLOW_VIOLATION = 29  # a sender ignored XOFF, or a congestion-control message broke its negotiation
    # padding (docs/protocol.md "Padding negotiation"): 24–27
    PADDING_LIMIT = 24  # PADDING_NEGOTIATE asked for more padding than this relay's limit allows
    # multipath (docs/protocol.md "Multipath"): 32–35
    MP_OUT_OF_WINDOW = 32  # a sequence number outside the receiver's reorder window (or an ACK beyond what was sent)
    MP_UNKNOWN_SET = 33  # a LINK named a multipath set this exit does not have
    MP_DUPLICATE_LEG = 34  # a LINK for a leg the set already has, or a second leg on the same circuit
    MP_PROTOCOL = 35  # a malformed or out-of-order multipath message


class EndReason(IntEnum):
    DONE = 1
    MISC = 2
    RESOLVE_FAILED = 3
    CONNECT_REFUSED = 4
    EXIT_POLICY = 5
    DESTROYED = 6
    TIMEOUT = 7
    PROTOCOL = 8
    UPSTREAM_FAILED = 9  # an upstream-proxy exit's proxy was unreachable or refused the CONNECT
    # Onion services: 16–23.
    SERVICE_PORT = 16  # the onion service forwards no such virtual port


_CELL_COMMANDS = frozenset(int(c) for c in CellCommand)
_RELAY_COMMANDS = frozenset(int(c) for c in RelayCommand)


class Cell(NamedTuple):
    """A parsed link cell. For RELAY cells ``payload`` is the whole (encrypted) body.

    A NamedTuple rather than a frozen dataclass: one is built per cell on the hot path."""

    command: CellCommand
    circ_id: int
    payload: bytes
    flags: int = 0


def encode_cell(command: CellCommand, circ_id: int, payload: bytes = b"", flags: int = 0) -> bytes:
    """A link cell. RELAY cells pass their full ``BODY_SIZE`` body as ``payload``."""
    if command == CellCommand.RELAY:
        if len(payload) != BODY_SIZE:
            raise InvalidState("a RELAY cell body must be exactly BODY_SIZE bytes")
        return _HEADER.pack(VERSION, command, circ_id, 0, 0, 0) + payload
    if len(payload) > BODY_SIZE:
        raise InvalidState(f"link cell payload is limited to {BODY_SIZE} bytes")
    return (_HEADER.pack(VERSION, command, circ_id, 0, len(payload), flags) + payload
            + _ZERO_BODY[len(payload):])


def relay_cells(circ_id: int, bodies: list[bytes]) -> list[bytes]:
    """The one place relay bodies become RELAY cells: each whole (encrypted) body gets the clear
    header for ``circ_id``, which is all a relay rewrites when it forwards a body."""
    header = _HEADER.pack(VERSION, CellCommand.RELAY, circ_id, 0, 0, 0)
    cells = [header + body for body in bodies]
    if any(len(cell) != CELL_SIZE for cell in cells):
        raise InvalidState(f"a RELAY cell body must be exactly {BODY_SIZE} bytes")
    return cells


def split_bodies(data: bytes) -> list[bytes]:
    """Whole bodies back to back, one by one (what a layer of relay crypto is applied to)."""
    return [data[i:i + BODY_SIZE] for i in range(0, len(data), BODY_SIZE)]


def parse_cell(raw: bytes | memoryview) -> Cell:
    """Parse one ``CELL_SIZE`` cell; anything off is a ``ProtocolError``."""
    if len(raw) != CELL_SIZE:
        raise ProtocolError(f"cell must be {CELL_SIZE} bytes, got {len(raw)}")
    version, command, circ_id, stream_id, length, flags = _HEADER.unpack_from(raw)
    if version != VERSION:
        raise ProtocolError(f"unsupported cell version {version}")
    if command not in _CELL_COMMANDS:
        raise ProtocolError(f"unknown cell command {command}")
    if bytes(raw[11:HEADER_SIZE]) != bytes(5) or stream_id != 0:
        raise ProtocolError("reserved cell header bytes must be zero")
    body = bytes(raw[HEADER_SIZE:])
    if command == CellCommand.RELAY:
        if length or flags:
            raise ProtocolError("RELAY cells carry length and flags inside the encrypted body")
        if circ_id == 0:
            raise ProtocolError("RELAY cell on circuit id 0")
        return Cell(CellCommand.RELAY, circ_id, body)
    if length > BODY_SIZE or flags & ~FLAG_MORE:
        raise ProtocolError("link cell length or flags out of range")
    if body[length:] != _ZERO_BODY[length:]:
        raise ProtocolError("link cell padding must be zero")
    command = CellCommand(command)
    if (circ_id == 0) != (command in _LINK_LEVEL):
        raise ProtocolError(f"{command.name} cell has an invalid circuit id")
    return Cell(command, circ_id, body[:length], flags)


def parse_frame(frame: bytes, max_cells: int = MAX_CELLS_PER_FRAME) -> list[Cell]:
    """Parse a whole frame, or raise ``ProtocolError`` before anything in it is acted on.

    The cell count is checked before anything is sliced. RELAY cells — nearly all traffic — take a
    fast path that checks the same header rules as ``parse_cell`` with two slice comparisons.
    """
    size = len(frame)
    if size < CELL_SIZE or size // CELL_SIZE > max_cells or size > MAX_FRAME_SIZE:
        raise ProtocolError(f"frame of {size} bytes is not 1..{max_cells} whole {CELL_SIZE}-byte cells")
    frame = bytes(frame)
    if size % CELL_SIZE:  # frame padding: a zero trailer shorter than a cell
        size -= size % CELL_SIZE
        if frame[size:] != _ZERO_CELL[:len(frame) - size]:
            raise ProtocolError("frame padding must be zero")
    cells = []
    for start in range(0, size, CELL_SIZE):
        if frame[start:start + 2] == _RELAY_PREFIX and frame[start + 6:start + HEADER_SIZE] == _ZERO_TAIL \
                and frame[start + 2:start + 6] != _ZERO_CIRC:
            cells.append(Cell(CellCommand.RELAY, int.from_bytes(frame[start + 2:start + 6], "big"),
                              frame[start + HEADER_SIZE:start + CELL_SIZE]))
        else:
            cells.append(parse_cell(frame[start:start + CELL_SIZE]))
    return cells


class RelayMessage(NamedTuple):
    """A decrypted, recognised relay body (a NamedTuple for the same reason as ``Cell``).

    ``command`` is a plain int when it is no ``RelayCommand`` this version knows: a newer peer's
    command, which the receiver counts and drops (zmesh.acceptance) rather than failing the circuit.
    ``tag`` is the body's digest field: the sender's running digest after this body, which only the
    two ends of the circuit can compute, so an authenticated SENDME names a cell by it (§10)."""

    command: RelayCommand | int
    stream_id: int
    data: bytes
    flags: int = 0
    tag: bytes = b""


def encode_relay_body(command: RelayCommand, stream_id: int, data: bytes, flags: int = 0) -> bytearray:
    """A plaintext relay body with a zero digest (the sender's hop crypto fills it in)."""
    if len(data) > RELAY_DATA_SIZE:
        raise InvalidState(f"relay data is limited to {RELAY_DATA_SIZE} bytes per cell")
    body = bytearray(BODY_SIZE)
    _RELAY_HEADER.pack_into(body, 0, 0, command, flags, stream_id, len(data), _ZERO_DIGEST)
    body[RELAY_HEADER_SIZE:RELAY_HEADER_SIZE + len(data)] = data
    return body


def parse_relay_body(body: bytes) -> RelayMessage:
    """Parse a body whose digest already verified: it came from the far end of our own circuit,
    so a bad field here means a buggy or hostile endpoint — still a ``ProtocolError``. An unknown
    command byte is not one: it comes back as an int, for the receiver to drop."""
    if len(body) != BODY_SIZE:
        raise ProtocolError(f"relay body must be {BODY_SIZE} bytes, got {len(body)}")
    _recognized, command, flags, stream_id, length, digest = _RELAY_HEADER.unpack_from(body)
    if length > RELAY_DATA_SIZE or flags & ~FLAG_MORE:
        raise ProtocolError("relay length or flags out of range")
    end = RELAY_HEADER_SIZE + length
    if body[end:] != _ZERO_BODY[end:]:
        raise ProtocolError("relay cell padding must be zero")
    return RelayMessage(RelayCommand(command) if command in _RELAY_COMMANDS else command, stream_id,
                        bytes(body[RELAY_HEADER_SIZE:end]), flags, digest)


def fragments(payload: bytes, chunk: int) -> list[tuple[bytes, int]]:
    """Split a handshake payload into ``(piece, flags)`` with ``FLAG_MORE`` on all but the last."""
    pieces = [payload[i:i + chunk] for i in range(0, len(payload), chunk)] or [b""]
    return [(p, FLAG_MORE if i < len(pieces) - 1 else 0) for i, p in enumerate(pieces)]


class Reassembler:
    """Collects a fragmented handshake payload, refusing to grow past ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._parts: list[bytes] = []
        self._size = 0

    def add(self, piece: bytes, flags: int) -> bytes | None:
        """Add a piece; return the whole payload once the last piece has arrived."""
        self._size += len(piece)
        if self._size > self.limit:
            raise ProtocolError(f"fragmented payload exceeds {self.limit} bytes")
        self._parts.append(piece)
        if flags & FLAG_MORE:
            return None
        whole, self._parts, self._size = b"".join(self._parts), [], 0
        return whole
