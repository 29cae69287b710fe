"""GF(2^8) arithmetic on whole symbols, with no per-byte Python loop.

The field is GF(2)[x] / (x^8 + x^4 + x^3 + x^2 + 1) (0x11D), the field of the GF(2^8) random
linear codes of RFC 8681 that RFC 9407 (Tetrys) builds on. A *symbol* of ``size`` bytes is held as
one little-endian Python ``int`` so that adding two symbols is a single C-level XOR.

Two kernels, each a handful of C calls whatever the symbol size (see ``SymbolKernel``):

- ``scale`` (one symbol × one coefficient): ``bytes.translate`` with that coefficient's 256-byte
  multiplication table, between ``to_bytes``/``from_bytes``.
- ``combine`` (Σ cᵢ·xᵢ over a whole window): bit-sliced. For each bit k of the coefficients, XOR
  together the symbols whose coefficient has bit k set (``reduce`` over ``compress``: a C loop),
  then fold the eight partial sums Horner-style with ``double`` (×2 on every byte at once, by
  shifts and masks on the big int). About four big-int XORs per term and no per-term bytecode:
  3.8× faster than one ``scale`` per term at 64 terms of 1200 bytes (measured).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import reduce
from itertools import compress
from operator import xor

POLYNOMIAL = 0x11D

EXP = [0] * 510
LOG = [0] * 256
_value = 1
for _power in range(255):
    EXP[_power] = EXP[_power + 255] = _value
    LOG[_value] = _power
    _value <<= 1
    if _value & 0x100:
        _value ^= POLYNOMIAL


def mul(a: int, b: int) -> int:
    """Product of two field elements."""
    if a == 0 or b == 0:
        return 0
    return EXP[LOG[a] + LOG[b]]


def inv(a: int) -> int:
    """Multiplicative inverse; 0 has none."""
    if a == 0:
        raise ZeroDivisionError("0 has no inverse in GF(2^8)")
    return EXP[255 - LOG[a]]


#: ``TABLES[c][x] == mul(c, x)``: the ``bytes.translate`` table that multiplies every byte by c.
TABLES = [bytes(EXP[LOG[c] + LOG[x]] if c and x else 0 for x in range(256)) for c in range(256)]
#: ``_BIT_PLANES[i][c]`` is bit 7 - i of c: ``coefficients.translate(plane)`` selects the terms.
_BIT_PLANES = [bytes((c >> k) & 1 for c in range(256)) for k in range(7, -1, -1)]
#: Maps 0 to 1 and leaves the rest: non-zero coefficients make every repair cover every symbol.
_NONZERO = bytes([1]) + bytes(range(1, 256))
_COEFFICIENT_DOMAIN = b"zmesh-tetrys-coefficients-v1"
_SLICE_FROM = 6  # below this many terms, eight fixed ``double`` calls cost more than per-term scaling


def coefficients(seed: int, count: int) -> bytes:
    """``count`` non-zero coefficients derived from a 32-bit repair seed, identically on both ends.

    RFC 9407 §5.3 lets the coded packet identify its coefficient generator (the reference one is
    RFC 8681's, on TinyMT32); ours is SHAKE128(domain ‖ seed) with zero bytes mapped to 1: the
    standard library computes it in C (TinyMT32 in Python costs a bytecode loop per coefficient),
    it exists under Pyodide, and it is fully specified. Not interoperable with other Tetrys stacks.
    """
    return hashlib.shake_128(_COEFFICIENT_DOMAIN + seed.to_bytes(4, "big")).digest(count).translate(_NONZERO)


class SymbolKernel:
    """Whole-symbol arithmetic for one symbol size (holds the size-specific bit masks)."""

    __slots__ = ("size", "_low7", "_ones")

    def __init__(self, size: int) -> None:
        self.size = size
        self._ones = int.from_bytes(b"\x01" * size, "little")
        self._low7 = self._ones * 0x7F

    def to_int(self, symbol: bytes) -> int:
        return int.from_bytes(symbol, "little")

    def to_bytes(self, value: int) -> bytes:
        return value.to_bytes(self.size, "little")

    def scale(self, value: int, coefficient: int) -> int:
        """``coefficient × value``."""
        if coefficient == 1:
            return value
        return int.from_bytes(value.to_bytes(self.size, "little").translate(TABLES[coefficient]), "little")

    def double(self, value: int) -> int:
        """``2 × value`` on every byte: shift left, and reduce the bytes that overflowed by 0x11D."""
        return ((value & self._low7) << 1) ^ (((value >> 7) & self._ones) * (POLYNOMIAL & 0xFF))

    def combine(self, values: Sequence[int], coefficients: bytes) -> int:
        """``Σ coefficients[i] × values[i]``."""
        if len(values) < _SLICE_FROM:
            return reduce(xor, map(self.scale, values, coefficients), 0)
        total = 0
        for plane in _BIT_PLANES:  # bit 7 first: Horner's rule
            total = self.double(total) ^ reduce(xor, compress(values, coefficients.translate(plane)), 0)
        return total
