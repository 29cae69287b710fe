"""Ed25519 group arithmetic in pure Python, for what no provider offers: key blinding (a public
key times a scalar) and signing with a derived scalar (``blinding``).

Points are extended coordinates ``(X, Y, Z, T)`` with x = X/Z, y = Y/Z, xy = T/Z on
-x² + y² = 1 + d·x²y² (RFC 8032 §5.1). Not constant-time: a service's secret scalar goes through
``scalar_mult_base`` once per signature, which matches the exposure of the other pure-Python
fallbacks; native providers' signatures are used wherever a plain key signs.
"""

from __future__ import annotations

from ..errors import CryptoError

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493  # the prime order of the base point
D = -121665 * pow(121666, -1, P) % P
_SQRT_M1 = pow(2, (P - 1) // 4, P)

Point = tuple[int, int, int, int]
IDENTITY: Point = (0, 1, 1, 0)
_BY = 4 * pow(5, -1, P) % P
_BX = 15112221349535400772501151409588531511454012693041857206046113283949847762202
BASE: Point = (_BX, _BY, 1, _BX * _BY % P)


def add(p: Point, q: Point) -> Point:
    """p + q (add-2008-hwcd-3: complete for a = -1, so it also doubles)."""
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = 2 * D * t1 * t2 % P
    dd = 2 * z1 * z2 % P
    e, f, g, h = b - a, dd - c, dd + c, b + a
    return e * f % P, g * h % P, f * g % P, e * h % P


def scalar_mult(k: int, point: Point) -> Point:
    """k·point, by double-and-add from the top bit."""
    result = IDENTITY
    for bit in bin(k)[2:] if k > 0 else "":
        result = add(result, result)
        if bit == "1":
            result = add(result, point)
    return result


def scalar_mult_base(k: int) -> bytes:
    """The encoded point k·B: a public key from a (blinded) scalar."""
    return encode(scalar_mult(k % L, BASE))


def equal(p: Point, q: Point) -> bool:
    return (p[0] * q[2] - q[0] * p[2]) % P == 0 and (p[1] * q[2] - q[1] * p[2]) % P == 0


def encode(point: Point) -> bytes:
    x, y, z, _ = point
    zi = pow(z, -1, P)
    x, y = x * zi % P, y * zi % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def decode(data: bytes) -> Point:
    """The point of a 32-byte encoding; ``CryptoError`` unless canonical (y < p, no "negative
    zero" x) and on the curve (RFC 8032 §5.1.3)."""
    if len(data) != 32:
        raise CryptoError("an Ed25519 point is 32 bytes")
    value = int.from_bytes(data, "little")
    y, sign = value & ((1 << 255) - 1), value >> 255
    if y >= P:
        raise CryptoError("Ed25519 point is not canonically encoded")
    u, v = (y * y - 1) % P, (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    if v * x * x % P == (-u) % P:
        x = x * _SQRT_M1 % P
    if v * x * x % P != u:
        raise CryptoError("bytes are not an Ed25519 point")
    if x == 0 and sign:
        raise CryptoError("Ed25519 point is not canonically encoded")
    if x & 1 != sign:
        x = P - x
    return x, y, 1, x * y % P


def decode_public(data: bytes) -> Point:
    """A public key someone else chose: canonical, and in the prime-order subgroup, so neither a
    small-order point (whose multiples say nothing of a secret) nor one with a torsion part (two
    encodings of "one" key) is blinded or trusted."""
    point = decode(data)
    if equal(scalar_mult(8, point), IDENTITY):
        raise CryptoError("Ed25519 key is a small-order point")
    if not equal(scalar_mult(L, point), IDENTITY):
        raise CryptoError("Ed25519 key is not in the prime-order subgroup")
    return point
