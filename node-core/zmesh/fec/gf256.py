"""GF(2^8) arithmetic over whole symbols without a per-byte Python loop.

The field uses the primitive polynomial x^8 + x^4 + x^3 + x^2 + 1 (0x11D). Multiplying a symbol by
a coefficient ``c`` is one ``bytes.translate`` with a 256-byte table for ``c``; adding symbols is an
XOR of two Python integers holding the symbol bytes. Both run in C, so a 1 KiB multiply-accumulate
costs about a microsecond.
"""

from __future__ import annotations

_EXP = [0] * 512
_LOG = [0] * 256
_value = 1
for _power in range(255):
    _EXP[_power] = _value
    _LOG[_value] = _power
    _value <<= 1
    if _value & 0x100:
        _value ^= 0x11D
for _power in range(255, 512):
    _EXP[_power] = _EXP[_power - 255]


def mul(a: int, b: int) -> int:
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def inv(a: int) -> int:
    if a == 0:
        raise ZeroDivisionError("0 has no inverse in GF(2^8)")
    return _EXP[255 - _LOG[a]]


TABLES = [bytes(mul(c, x) for x in range(256)) for c in range(256)]


def scale(symbol: int, coefficient: int, size: int) -> int:
    """``coefficient × symbol`` for a symbol held as a little-endian integer of ``size`` bytes."""
    if coefficient == 1:
        return symbol
    return int.from_bytes(symbol.to_bytes(size, "little").translate(TABLES[coefficient]), "little")


def scale_bytes(symbol: bytes, coefficient: int) -> int:
    """Like ``scale`` for a symbol still in bytes form (saves one conversion when encoding)."""
    return int.from_bytes(symbol.translate(TABLES[coefficient]) if coefficient != 1 else symbol, "little")


def coefficients(seed: int, count: int) -> list[int]:
    """``count`` non-zero coefficients from a 32-bit seed (xorshift32).

    RFC 9407 §4 names the generator by an identifier and uses TinyMT32 (RFC 8682); ours is a
    simpler generator, so zmesh's repair packets are Tetrys-structured but not wire-compatible
    with other Tetrys implementations.
    """
    state = seed & 0xFFFFFFFF or 0x9E3779B9
    out = []
    while len(out) < count:
        state ^= (state << 13) & 0xFFFFFFFF
        state ^= state >> 17
        state ^= (state << 5) & 0xFFFFFFFF
        for shift in (0, 8, 16, 24):
            byte = (state >> shift) & 0xFF
            if byte and len(out) < count:
                out.append(byte)
    return out
