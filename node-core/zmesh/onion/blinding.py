"""Tor's key blinding (rend-spec-v3 appendix A.2): one service key, an unlinkable key per period.

For a service key A (seed → scalar a, prefix), period number n and period length:

    N  = "key-blind" ‖ INT_8(n) ‖ INT_8(period length in minutes)
    h  = clamp(SHA3-256("Derive temporary signing key" ‖ INT_1(0) ‖ A ‖ B ‖ N))
    A' = h·A                      (what anyone who knows the address can compute)
    a' = h·a mod l, prefix' = SHA-512("Derive temporary signing key hash input" ‖ prefix)[:32]

B is the base point written as Tor writes it. A' is an ordinary Ed25519 public key: ``blinded_sign``
makes a standard signature that any provider's ``ed25519_verify(A', sig, msg)`` accepts, so a
descriptor store checks signatures by keys it cannot link to a service or to each other.
Periods are Tor's: ``(minutes since the epoch − 12 h) // length``, so they change at 12:00 UTC
with the default one-day length.

Hashes come from ``hashlib`` (stdlib): no provider offers blinding, and these are public inputs
except the seed's SHA-512 expansion, which Ed25519 itself defines.
"""

from __future__ import annotations

import hashlib

from ..crypto.provider import KEY_SIZE
from ..errors import ConfigError, CryptoError
from . import edwards

DEFAULT_PERIOD = 24 * 3600
MAX_PERIOD = 7 * 24 * 3600
ROTATION_OFFSET = 12 * 3600
BLIND_STRING = b"Derive temporary signing key\x00"
PREFIX_BLIND_STRING = b"Derive temporary signing key hash input"
BASEPOINT_TEXT = (b"(15112221349535400772501151409588531511454012693041857206046113283949847762202, "
                  b"46316835694926478169428394003475163141307993866256225615783033603165251855960)")


def check_period_length(period_length: int) -> None:
    """Whole minutes (N carries minutes, as Tor's does), at most ``MAX_PERIOD``."""
    if (not isinstance(period_length, int) or isinstance(period_length, bool) or period_length % 60
            or not 60 <= period_length <= MAX_PERIOD):
        raise ConfigError(f"period_length must be whole minutes between 60 and {MAX_PERIOD} seconds, "
                          f"got {period_length!r}")


def time_period(now: float, period_length: int) -> int:
    """The number of the period ``now`` (Unix seconds) falls in."""
    check_period_length(period_length)
    return (int(now // 60) - ROTATION_OFFSET // 60) // (period_length // 60)


def period_start(period: int, period_length: int) -> int:
    """When ``period`` begins (Unix seconds)."""
    check_period_length(period_length)
    return period * period_length + ROTATION_OFFSET


def blinding_factor(public: bytes, period: int, period_length: int) -> bytes:
    """h before clamping, for ``public`` in ``period``."""
    check_period_length(period_length)
    if not 0 <= period < 2**64:
        raise ConfigError(f"a time period is a 64-bit unsigned number, got {period!r}")
    nonce = b"key-blind" + period.to_bytes(8, "big") + (period_length // 60).to_bytes(8, "big")
    return hashlib.sha3_256(BLIND_STRING + public + BASEPOINT_TEXT + nonce).digest()


def _clamp(param: bytes) -> int:
    value = bytearray(param)
    value[0] &= 248
    value[31] &= 63
    value[31] |= 64
    return int.from_bytes(value, "little")


def blind_public_with(public: bytes, param: bytes) -> bytes:
    """h·A for an unclamped 32-byte ``param``; ``CryptoError`` for a key that is not a canonical
    point of prime order (a small-order key would blind to the same key in every period)."""
    if len(public) != KEY_SIZE:
        raise CryptoError(f"an Ed25519 public key is {KEY_SIZE} bytes")
    return edwards.encode(edwards.scalar_mult(_clamp(param), edwards.decode_public(public)))


def blind_public(public: bytes, period: int, period_length: int) -> bytes:
    """A' of service key ``public`` for ``period``: the descriptor store's lookup key."""
    return blind_public_with(public, blinding_factor(public, period, period_length))


def expand_seed(seed: bytes) -> tuple[int, bytes]:
    """An Ed25519 seed's secret scalar (clamped, RFC 8032 §5.1.5) and its 32-byte nonce prefix."""
    if len(seed) != KEY_SIZE:
        raise CryptoError(f"an Ed25519 private key is {KEY_SIZE} bytes")
    digest = hashlib.sha512(seed).digest()
    return _clamp(digest[:32]), digest[32:]


def blind_expanded(scalar: int, prefix: bytes, param: bytes) -> tuple[int, bytes]:
    """The blinded expanded key (a', prefix') of (a, prefix) for an unclamped ``param``."""
    return _clamp(param) * scalar % edwards.L, hashlib.sha512(PREFIX_BLIND_STRING + prefix).digest()[:32]


def sign_expanded(scalar: int, prefix: bytes, message: bytes) -> bytes:
    """A standard Ed25519 signature (RFC 8032 §5.1.6) by an expanded key that has no seed."""
    public = edwards.scalar_mult_base(scalar)
    r = int.from_bytes(hashlib.sha512(prefix + message).digest(), "little") % edwards.L
    big_r = edwards.scalar_mult_base(r)
    k = int.from_bytes(hashlib.sha512(big_r + public + message).digest(), "little") % edwards.L
    return big_r + ((r + k * scalar) % edwards.L).to_bytes(32, "little")


def blinded_keys(seed: bytes, period: int, period_length: int) -> tuple[int, bytes]:
    """The service's blinded expanded key for ``period``."""
    scalar, prefix = expand_seed(seed)
    public = edwards.scalar_mult_base(scalar)
    return blind_expanded(scalar, prefix, blinding_factor(public, period, period_length))


def blinded_sign(seed: bytes, period: int, period_length: int, message: bytes) -> bytes:
    """Sign ``message`` with the service key ``seed`` blinded for ``period``; it verifies under
    ``blind_public(public, period, period_length)``."""
    return sign_expanded(*blinded_keys(seed, period, period_length), message)


def subcredential(public: bytes, blinded: bytes) -> bytes:
    """Tor's subcredential: SHA3-256("subcredential" ‖ SHA3-256("credential" ‖ A) ‖ A'). Only who
    knows the address can compute it; it keys the descriptor's encryption."""
    credential = hashlib.sha3_256(b"credential" + public).digest()
    return hashlib.sha3_256(b"subcredential" + credential + blinded).digest()
