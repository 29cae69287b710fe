"""The bytes of the introduction and rendezvous relay messages (docs/onion-services.md,
"Introduction and rendezvous"). Decoders check every length first and raise only ``ProtocolError``.

    ESTABLISH_INTRO         auth_key:32 ‖ signature:64
                            signature = Ed25519(auth, ESTABLISH_DOMAIN ‖ auth_key ‖ binding)
    INTRO_ESTABLISHED       (empty)
    INTRODUCE1, INTRODUCE2  auth_key:32 ‖ encrypted (zmesh.onion.introduce), fragmented
    INTRODUCE_ACK           status:u8
    ESTABLISH_RENDEZVOUS    cookie:20
    RENDEZVOUS_ESTABLISHED  (empty)
    RENDEZVOUS1             cookie:20 ‖ Y:32 ‖ AUTH:32
    RENDEZVOUS2             Y:32 ‖ AUTH:32

``binding`` is the circuit's ``HopCrypto.binding`` at the intro point: a signature made on one
circuit proves nothing on another.
"""

from __future__ import annotations

from enum import IntEnum

from ..crypto.provider import KEY_SIZE
from ..errors import ProtocolError
from ..handshake import CREATED_SIZE

ESTABLISH_DOMAIN = b"zmesh-establish-intro-v1\x00"
SIGNATURE_SIZE = 64
COOKIE_SIZE = 20
ESTABLISH_INTRO_SIZE = KEY_SIZE + SIGNATURE_SIZE
RENDEZVOUS1_SIZE = COOKIE_SIZE + CREATED_SIZE
MAX_INTRODUCE_SIZE = 2048  # what an intro point reassembles at most (an introduction is 1,317 bytes)


class IntroduceStatus(IntEnum):
    """INTRODUCE_ACK's status byte (as Tor's, minus what we do not have)."""

    SUCCESS = 0  # forwarded to the service as INTRODUCE2
    UNKNOWN_SERVICE = 1  # no service circuit is established with that auth key here
    BAD_FORMAT = 2
    RATE_LIMITED = 3  # the intro point's budget for that service is spent: try another intro point


def establish_intro_message(auth_key: bytes, binding: bytes) -> bytes:
    """What the per-intro auth key signs."""
    return ESTABLISH_DOMAIN + auth_key + binding


def parse_establish_intro(data: bytes) -> tuple[bytes, bytes]:
    if len(data) != ESTABLISH_INTRO_SIZE:
        raise ProtocolError(f"ESTABLISH_INTRO must be {ESTABLISH_INTRO_SIZE} bytes")
    return data[:KEY_SIZE], data[KEY_SIZE:]


def parse_introduce(data: bytes) -> tuple[bytes, bytes]:
    """INTRODUCE1/2: (auth key, encrypted part)."""
    if not KEY_SIZE < len(data) <= MAX_INTRODUCE_SIZE:
        raise ProtocolError(f"INTRODUCE must be {KEY_SIZE + 1}..{MAX_INTRODUCE_SIZE} bytes")
    return data[:KEY_SIZE], data[KEY_SIZE:]


def parse_cookie(data: bytes) -> bytes:
    if len(data) != COOKIE_SIZE:
        raise ProtocolError(f"ESTABLISH_RENDEZVOUS carries a {COOKIE_SIZE}-byte cookie")
    return data


def parse_rendezvous1(data: bytes) -> tuple[bytes, bytes]:
    """(cookie, the service's handshake half)."""
    if len(data) != RENDEZVOUS1_SIZE:
        raise ProtocolError(f"RENDEZVOUS1 must be {RENDEZVOUS1_SIZE} bytes")
    return data[:COOKIE_SIZE], data[COOKIE_SIZE:]


def parse_introduce_ack(data: bytes) -> IntroduceStatus:
    if len(data) != 1 or data[0] not in IntroduceStatus._value2member_map_:
        raise ProtocolError("INTRODUCE_ACK must be one known status byte")
    return IntroduceStatus(data[0])


def expect_empty(data: bytes, what: str) -> None:
    if data:
        raise ProtocolError(f"{what} carries no data")
