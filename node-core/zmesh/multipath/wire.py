"""Multipath messages inside a leg's stream (docs/protocol.md "Multipath").

Each message is ``command:u8 ‖ length:u16 ‖ body``, back to back in the leg's stream bytes.
Commands come from the multipath allocation (48–55)::

    LINK    48  version:u8 ‖ nonce:32 ‖ leg:u8 ‖ target (leg 0 only: BEGIN's "host:port")
    LINKED  49  version:u8 ‖ leg:u8
    DATA    50  seq:u64 ‖ bytes (1..MAX_DATA)
    ACK     51  next:u64   every seq below ``next`` was delivered to the application
    FIN     52  seq:u64    the stream ends, in order, at ``seq``

``MessageReader`` parses incrementally and never holds more than one message's worth of bytes.
Anything malformed is a ``MultipathError`` with reason ``MP_PROTOCOL``.
"""

from __future__ import annotations

import struct
from enum import IntEnum

from ..cells import RELAY_DATA_SIZE, DestroyReason
from ..errors import MultipathError
from ..streams import format_target, parse_target

MULTIPATH_PORT = 3  # beside MESSAGE_PORT (1) and SHARE_PORT (2): the exit's multipath service
VERSION = 1
NONCE_SIZE = 32
MAX_LEGS = 2
_HEAD = struct.Struct(">BH")
_SEQ = struct.Struct(">Q")
# A DATA message is exactly 16 cells of stream data, so a leg's cells carry no partial message.
MAX_DATA = 16 * RELAY_DATA_SIZE - _HEAD.size - _SEQ.size
MAX_BODY = _SEQ.size + MAX_DATA


class MultipathCommand(IntEnum):
    LINK = 48
    LINKED = 49
    DATA = 50
    ACK = 51
    FIN = 52


_COMMANDS = frozenset(int(c) for c in MultipathCommand)


def _fail(message: str) -> MultipathError:
    return MultipathError(message, DestroyReason.MP_PROTOCOL)


def encode(command: MultipathCommand, body: bytes) -> bytes:
    return _HEAD.pack(command, len(body)) + body


def encode_link(nonce: bytes, leg: int, host: str = "", port: int = 0) -> bytes:
    target = format_target(host, port) if leg == 0 else b""
    return encode(MultipathCommand.LINK, bytes([VERSION]) + nonce + bytes([leg]) + target)


def parse_link(body: bytes) -> tuple[bytes, int, tuple[str, int] | None]:
    """(nonce, leg, target or None): leg 0 names the target, the others must not."""
    if len(body) < 2 + NONCE_SIZE or body[0] != VERSION:
        raise _fail("malformed multipath LINK")
    nonce, leg, target = body[1:1 + NONCE_SIZE], body[1 + NONCE_SIZE], body[2 + NONCE_SIZE:]
    if leg >= MAX_LEGS or bool(target) != (leg == 0):
        raise _fail("multipath LINK with a bad leg number or target")
    try:
        return nonce, leg, parse_target(target) if target else None
    except Exception as exc:  # parse_target raises ProtocolError; say it as a multipath fault
        raise _fail(f"multipath LINK target: {exc}") from exc


def encode_linked(leg: int) -> bytes:
    return encode(MultipathCommand.LINKED, bytes([VERSION, leg]))


def parse_linked(body: bytes) -> int:
    if len(body) != 2 or body[0] != VERSION or body[1] >= MAX_LEGS:
        raise _fail("malformed multipath LINKED")
    return body[1]


def encode_seq(command: MultipathCommand, seq: int, data: bytes = b"") -> bytes:
    return _HEAD.pack(command, _SEQ.size + len(data)) + _SEQ.pack(seq) + data


def parse_seq(body: bytes, *, data: bool = False) -> tuple[int, bytes]:
    """(seq, data) of DATA (``data``: 1..MAX_DATA bytes follow) or of ACK / FIN (nothing follows)."""
    if len(body) < _SEQ.size or (len(body) > _SEQ.size) != data:
        raise _fail("malformed multipath sequence message")
    return _SEQ.unpack_from(body)[0], body[_SEQ.size:]


class MessageReader:
    """Bytes of one leg in, whole ``(command, body)`` messages out; bounded by ``MAX_BODY``."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[MultipathCommand, bytes]]:
        self._buffer += data
        messages, view, at = [], self._buffer, 0
        while len(view) - at >= _HEAD.size:
            command, length = _HEAD.unpack_from(view, at)
            if command not in _COMMANDS or length > MAX_BODY:
                raise _fail(f"unknown multipath command {command} or a body of {length} bytes")
            if len(view) - at - _HEAD.size < length:
                break
            start = at + _HEAD.size
            messages.append((MultipathCommand(command), bytes(view[start:start + length])))
            at = start + length
        del self._buffer[:at]
        return messages
