"""Onion-service descriptors: signed by the period's blinded key, readable only with the address.

Layout (byte-exact in docs/onion-services.md, "Descriptor format"):

    blob  = canonical msgpack [body, signature]
    body  = canonical msgpack {"v", "key" (A'), "period", "period_length", "revision", "expires",
                               "salt", "sealed"}
    signature = Ed25519 by the blinded key a' over DOMAIN ‖ body
    sealed = AES-256-GCM(outer keys, {"ephemeral", "clients", "inner"})
    inner  = AES-256-GCM(inner keys, {"intro", "x25519", "mlkem768", "pad"})

Keys come from HKDF-SHA256 over Tor's subcredential (``blinding.subcredential``), which only
someone who knows the address can compute. So the store checks what it must (``check_sealed``:
size, shape, the blinded key's signature, times) without learning which service it holds, and a
client who knows the address reads it (``open_descriptor``). With client authorisation the inner
key also takes a random descriptor cookie, encrypted to each listed client's X25519 key with an
ephemeral key (Tor's scheme); the client list is always padded with random entries to a multiple
of 16, so from a blob's size the store cannot tell whether a service lists up to 16 clients or none;
a longer list does show, by size, that the service restricts its clients, and to how many within 16.

Every decoder raises only our errors: ``ProtocolError`` (malformed), ``CryptoError`` (signature,
time, wrong address), ``OnionAuthError`` (genuine, but this client is not authorised).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..crypto.provider import (
    AES_GCM_NONCE_SIZE,
    ED25519_SIG_SIZE,
    KEY_SIZE,
    MLKEM768_EK_SIZE,
    CryptoProvider,
)
from ..encoding import pack_canonical, unpack_canonical
from ..errors import ConfigError, CryptoError, OnionAuthError, ProtocolError
from ..identity import PeerId
from . import blinding, edwards
from .address import decode_address
from .blinding import DEFAULT_PERIOD, check_period_length, time_period

__all__ = ["DEFAULT_LIFETIME", "DEFAULT_PERIOD", "IntroPoint", "SealedDescriptor", "SealedInfo",
           "ServiceDescriptor", "check_sealed", "open_descriptor", "seal_descriptor"]

VERSION = 1
DOMAIN = b"zmesh-onion-descriptor-v1\x00"
OUTER_INFO = b"zmesh-onion-outer-v1"
INNER_INFO = b"zmesh-onion-inner-v1"
CLIENT_INFO = b"zmesh-onion-client-v1"
DEFAULT_LIFETIME = 3 * 3600
MAX_LIFETIME = 12 * 3600
CLOCK_SKEW = 300
MAX_INTRO_POINTS = 10
MAX_AUTHORIZED_CLIENTS = 64
CLIENT_BLOCK = 16  # the client list is padded with random entries to a multiple of this (at least one block)
# Every inner plaintext is padded to this size, which fits MAX_INTRO_POINTS (about 2,180 bytes):
# the intro-point count stays hidden.
INNER_SIZE = 2304
SALT_SIZE = 16
CLIENT_ID_SIZE = 8
COOKIE_SIZE = 32
_TAG = 16
# The largest blob seal_descriptor makes (64 clients) is about 6,500 bytes: see
# tests/test_onion_descriptor.py::test_worst_case_fits. The rest is room for a later field.
MAX_SEALED_SIZE = 8192
_MAX_U64 = 2**64 - 1
_BODY_KEYS = frozenset({"v", "key", "period", "period_length", "revision", "expires", "salt", "sealed"})


@dataclass(frozen=True, slots=True)
class IntroPoint:
    """Where a client can introduce itself: a relay, and the key the service's ESTABLISH_INTRO
    there was signed with (the intro relay knows the circuit only by this key)."""

    relay_id: str  # the intro relay's PeerId text (PeerId.text)
    auth_key: bytes  # per-intro-point Ed25519 public key

    def __post_init__(self) -> None:
        PeerId.from_text(self.relay_id)  # ConfigError if mistyped
        if not isinstance(self.auth_key, bytes) or len(self.auth_key) != KEY_SIZE:
            raise ConfigError(f"an intro point's auth_key is a {KEY_SIZE}-byte Ed25519 public key")


@dataclass(frozen=True, slots=True)
class ServiceDescriptor:
    """What a client learns after decrypting: where to introduce itself, and the service's
    handshake keys for INTRODUCE (rotated with each descriptor)."""

    intro_points: tuple[IntroPoint, ...]
    x25519_public: bytes
    mlkem768_public: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.intro_points, tuple) or not 1 <= len(self.intro_points) <= MAX_INTRO_POINTS:
            raise ConfigError(f"a descriptor names 1 to {MAX_INTRO_POINTS} intro points (a tuple)")
        if not isinstance(self.x25519_public, bytes) or len(self.x25519_public) != KEY_SIZE:
            raise ConfigError(f"x25519_public must be {KEY_SIZE} bytes")
        if not isinstance(self.mlkem768_public, bytes) or len(self.mlkem768_public) != MLKEM768_EK_SIZE:
            raise ConfigError(f"mlkem768_public must be {MLKEM768_EK_SIZE} bytes")


@dataclass(frozen=True, slots=True)
class SealedDescriptor:
    """What a service PUTs to the store, under ``blinded_key``."""

    blinded_key: bytes  # 32 bytes: the store's lookup key
    blob: bytes


class SealedInfo(NamedTuple):
    """What anyone can read from a blob: the store keys, orders and expires descriptors by it."""

    blinded_key: bytes
    revision: int
    expires: int
    period: int
    period_length: int


# ---------------------------------------------------------------------- keys


def _u64(value: int) -> bytes:
    return value.to_bytes(8, "big")


async def _key_nonce(provider: CryptoProvider, ikm: bytes, salt: bytes, info: bytes) -> tuple[bytes, bytes]:
    material = await provider.hkdf_sha256(ikm, salt, info, KEY_SIZE + AES_GCM_NONCE_SIZE)
    return material[:KEY_SIZE], material[KEY_SIZE:]


def _layer_info(label: bytes, info: SealedInfo) -> bytes:
    return label + info.blinded_key + _u64(info.period) + _u64(info.revision)


async def _client_keys(provider: CryptoProvider, subcred: bytes, shared: bytes, salt: bytes, ephemeral: bytes,
                       client: bytes) -> tuple[bytes, bytes, bytes]:
    """(client id, cookie key, nonce) of one client entry."""
    material = await provider.hkdf_sha256(subcred + shared, salt, CLIENT_INFO + ephemeral + client,
                                          CLIENT_ID_SIZE + KEY_SIZE + AES_GCM_NONCE_SIZE)
    return material[:CLIENT_ID_SIZE], material[CLIENT_ID_SIZE:-AES_GCM_NONCE_SIZE], material[-AES_GCM_NONCE_SIZE:]


# ---------------------------------------------------------------------- sealing


def _padded(fields: dict[str, Any], size: int) -> bytes:
    """``fields`` plus a zero ``pad`` making the encoding exactly ``size`` bytes. The pad's length
    header is 2 bytes below 256 bytes of pad and 3 from there, so one of two lengths fits."""
    short = size - len(pack_canonical({**fields, "pad": b""}))
    for need in (short, short - 1):
        encoded = pack_canonical({**fields, "pad": bytes(max(0, need))})
        if len(encoded) == size:
            return encoded
    raise ConfigError(f"descriptor content does not fit in {size} bytes")  # ruled out by ServiceDescriptor


def _check_clients(clients: Sequence[bytes]) -> None:
    if len(clients) > MAX_AUTHORIZED_CLIENTS:
        raise ConfigError(f"at most {MAX_AUTHORIZED_CLIENTS} authorised clients, got {len(clients)}")
    if any(not isinstance(c, bytes) or len(c) != KEY_SIZE for c in clients):
        raise ConfigError(f"an authorised client is named by its {KEY_SIZE}-byte X25519 public key")


async def seal_descriptor(provider: CryptoProvider, service_seed: bytes, content: ServiceDescriptor, *,
                          now: float, revision: int, period_length: int = DEFAULT_PERIOD,
                          lifetime: float = DEFAULT_LIFETIME, authorized_clients: Sequence[bytes] = (),
                          period: int | None = None) -> SealedDescriptor:
    """Sign and encrypt ``content`` for ``period`` (default: the one ``now`` is in; a service also
    publishes for the next one). ``revision`` must grow with every descriptor for one period: the
    store keeps the highest. With ``authorized_clients`` (X25519 public keys) only their holders
    can read the intro points."""
    check_period_length(period_length)
    if not 0 < lifetime <= MAX_LIFETIME:
        raise ConfigError(f"lifetime must be in (0, {MAX_LIFETIME}] seconds, got {lifetime!r}")
    if not isinstance(revision, int) or not 0 <= revision <= _MAX_U64:
        raise ConfigError(f"revision must be a 64-bit unsigned number, got {revision!r}")
    _check_clients(authorized_clients)
    period = time_period(now, period_length) if period is None else period
    scalar, prefix = blinding.blinded_keys(service_seed, period, period_length)
    blinded = edwards.scalar_mult_base(scalar)
    subcred = blinding.subcredential(await provider.ed25519_public(service_seed), blinded)
    info = SealedInfo(blinded, revision, int(now + lifetime), period, period_length)
    salt = provider.random_bytes(SALT_SIZE)

    cookie = provider.random_bytes(COOKIE_SIZE) if authorized_clients else b""
    inner_plain = _padded({"intro": [[p.relay_id, p.auth_key] for p in content.intro_points],
                           "x25519": content.x25519_public, "mlkem768": content.mlkem768_public}, INNER_SIZE)
    key, nonce = await _key_nonce(provider, subcred + cookie, salt, _layer_info(INNER_INFO, info))
    inner = await provider.aes256_gcm_encrypt(key, nonce, inner_plain)

    ephemeral_secret, ephemeral = await provider.x25519_generate()
    entries = []
    for client in authorized_clients:
        shared = await provider.x25519(ephemeral_secret, client)
        client_id, cookie_key, cookie_nonce = await _client_keys(provider, subcred, shared, salt, ephemeral, client)
        entries.append([client_id, await provider.aes256_gcm_encrypt(cookie_key, cookie_nonce, cookie)])
    padded_count = max(CLIENT_BLOCK, -(-len(entries) // CLIENT_BLOCK) * CLIENT_BLOCK)
    while len(entries) < padded_count:
        entries.append([provider.random_bytes(CLIENT_ID_SIZE), provider.random_bytes(COOKIE_SIZE + _TAG)])
    entries.sort()  # real and random entries interleave: their order says nothing
    outer_plain = pack_canonical({"ephemeral": ephemeral, "clients": entries, "inner": inner})
    key, nonce = await _key_nonce(provider, subcred, salt, _layer_info(OUTER_INFO, info))
    body = pack_canonical({"v": VERSION, "key": blinded, "period": period, "period_length": period_length,
                           "revision": revision, "expires": info.expires, "salt": salt,
                           "sealed": await provider.aes256_gcm_encrypt(key, nonce, outer_plain)})
    signature = blinding.sign_expanded(scalar, prefix, DOMAIN + body)
    return SealedDescriptor(blinded, pack_canonical([body, signature]))


# ---------------------------------------------------------------------- checking and opening


def _bytes(value: Any, size: int | None, what: str) -> bytes:
    if not isinstance(value, bytes) or (size is not None and len(value) != size):
        raise ProtocolError(f"descriptor {what} must be {size} bytes" if size else f"descriptor {what} must be bytes")
    return value


def _uint(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_U64:
        raise ProtocolError(f"descriptor {what} must be a 64-bit unsigned number")
    return value


def _parse_blob(blob: bytes, max_size: int) -> tuple[SealedInfo, bytes, bytes, bytes, bytes]:
    """(info, salt, sealed, body, signature) of a blob whose shape is right; nothing verified yet."""
    if not isinstance(blob, bytes | bytearray):
        raise ProtocolError("a descriptor is bytes")
    outer = unpack_canonical(bytes(blob), max_size=max_size, what="onion descriptor")
    if not isinstance(outer, list) or len(outer) != 2:
        raise ProtocolError("onion descriptor must be [body, signature]")
    body, signature = _bytes(outer[0], None, "body"), _bytes(outer[1], ED25519_SIG_SIZE, "signature")
    fields = unpack_canonical(body, max_size=max_size, what="onion descriptor body")
    if not isinstance(fields, dict) or set(fields) != _BODY_KEYS:
        raise ProtocolError(f"onion descriptor body must have exactly the fields {sorted(_BODY_KEYS)}")
    if type(fields["v"]) is not int or fields["v"] != VERSION:  # True == 1 in Python
        raise ProtocolError(f"onion descriptor version {fields['v']!r} is not supported (expected {VERSION})")
    period_length = _uint(fields["period_length"], "period_length")
    try:
        check_period_length(period_length)
    except ConfigError as exc:
        raise ProtocolError(f"onion descriptor: {exc}") from exc
    info = SealedInfo(_bytes(fields["key"], KEY_SIZE, "key"), _uint(fields["revision"], "revision"),
                      _uint(fields["expires"], "expires"), _uint(fields["period"], "period"), period_length)
    return info, _bytes(fields["salt"], SALT_SIZE, "salt"), _bytes(fields["sealed"], None, "sealed"), body, signature


async def _checked(provider: CryptoProvider, blob: bytes, *, now: float, max_lifetime: float,
                   max_size: int) -> tuple[SealedInfo, bytes, bytes]:
    info, salt, sealed, body, signature = _parse_blob(blob, max_size)
    if not await provider.ed25519_verify(info.blinded_key, signature, DOMAIN + body):
        raise CryptoError("onion descriptor signature does not verify")
    if now >= info.expires:
        raise CryptoError("onion descriptor has expired")
    if info.expires > now + max_lifetime + CLOCK_SKEW:
        raise CryptoError(f"onion descriptor expires more than {max_lifetime} s from now; check the service's clock")
    current = time_period(now, info.period_length)
    if not current - 1 <= info.period <= current + 1:
        raise CryptoError("onion descriptor is for a time period too far from now; check the service's clock")
    return info, salt, sealed


async def check_sealed(provider: CryptoProvider, blob: bytes, *, now: float, max_lifetime: float = MAX_LIFETIME,
                       max_size: int = MAX_SEALED_SIZE) -> SealedInfo:
    """What a store can check without knowing the service: size and shape, the signature by the
    blinded key it names, that it has not expired nor expires more than ``max_lifetime`` from
    now, and that its period is the current one, or the one before or after."""
    info, _, _ = await _checked(provider, blob, now=now, max_lifetime=max_lifetime, max_size=max_size)
    return info


async def _open_cookie(provider: CryptoProvider, client_secret: bytes, outer: dict[str, Any], subcred: bytes,
                       salt: bytes) -> bytes | None:
    """The descriptor cookie if ``client_secret``'s public key is on the client list, else None."""
    ephemeral = outer["ephemeral"]
    client = await provider.x25519_public(client_secret)
    shared = await provider.x25519(client_secret, ephemeral)
    client_id, cookie_key, nonce = await _client_keys(provider, subcred, shared, salt, ephemeral, client)
    for entry in outer["clients"]:
        if entry[0] == client_id:
            return await provider.aes256_gcm_decrypt(cookie_key, nonce, entry[1])
    return None


def _parse_outer(plain: bytes) -> dict[str, Any]:
    outer = unpack_canonical(plain, max_size=MAX_SEALED_SIZE, what="onion descriptor outer layer")
    if not isinstance(outer, dict) or set(outer) != {"ephemeral", "clients", "inner"}:
        raise ProtocolError("onion descriptor outer layer must have ephemeral, clients and inner")
    clients = outer["clients"]
    if not isinstance(clients, list) or not CLIENT_BLOCK <= len(clients) <= MAX_AUTHORIZED_CLIENTS:
        raise ProtocolError("onion descriptor client list has the wrong length")
    for entry in clients:
        if (not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[0], bytes)
                or len(entry[0]) != CLIENT_ID_SIZE or not isinstance(entry[1], bytes)
                or len(entry[1]) != COOKIE_SIZE + _TAG):
            raise ProtocolError("onion descriptor client entry must be [id(8), encrypted cookie(48)]")
    _bytes(outer["ephemeral"], KEY_SIZE, "ephemeral key")
    _bytes(outer["inner"], None, "inner layer")
    return outer


def _parse_inner(plain: bytes) -> ServiceDescriptor:
    inner = unpack_canonical(plain, max_size=MAX_SEALED_SIZE, what="onion descriptor inner layer")
    if not isinstance(inner, dict) or set(inner) != {"intro", "x25519", "mlkem768", "pad"}:
        raise ProtocolError("onion descriptor inner layer must have intro, x25519, mlkem768 and pad")
    intro = inner["intro"]
    if (not isinstance(intro, list) or any(not isinstance(p, list) or len(p) != 2 or not isinstance(p[0], str)
                                           for p in intro)):
        raise ProtocolError("onion descriptor intro points must be [[relay PeerId, auth key], ...]")
    try:
        return ServiceDescriptor(tuple(IntroPoint(p[0], p[1]) for p in intro), inner["x25519"], inner["mlkem768"])
    except ConfigError as exc:
        raise ProtocolError(f"onion descriptor inner layer: {exc}") from exc


async def open_descriptor(provider: CryptoProvider, address: str, blob: bytes, *, now: float,
                          period_length: int = DEFAULT_PERIOD, client_secret: bytes | None = None,
                          max_lifetime: float = MAX_LIFETIME) -> ServiceDescriptor:
    """Verify and decrypt a blob fetched for ``address``. ``client_secret`` is this client's
    X25519 private key, for a service that admits only listed clients. Raises ``CryptoError``
    for a blob that is not this address's or out of date, ``ProtocolError`` for a malformed
    one, ``OnionAuthError`` when the service does not list this client."""
    service = decode_address(address)
    check_period_length(period_length)
    info, salt, sealed = await _checked(provider, blob, now=now, max_lifetime=max_lifetime, max_size=MAX_SEALED_SIZE)
    if info.period_length != period_length:
        raise ProtocolError(f"onion descriptor uses {info.period_length} s periods, expected {period_length}")
    if blinding.blind_public(service, info.period, period_length) != info.blinded_key:
        raise CryptoError("onion descriptor is not for this address")
    subcred = blinding.subcredential(service, info.blinded_key)
    key, nonce = await _key_nonce(provider, subcred, salt, _layer_info(OUTER_INFO, info))
    outer = _parse_outer(await provider.aes256_gcm_decrypt(key, nonce, sealed))
    cookie = None if client_secret is None else await _open_cookie(provider, client_secret, outer, subcred, salt)
    key, nonce = await _key_nonce(provider, subcred + (cookie or b""), salt, _layer_info(INNER_INFO, info))
    try:
        inner = await provider.aes256_gcm_decrypt(key, nonce, outer["inner"])
    except CryptoError as exc:  # the outer layer is the service's own: it did not write this client in
        if client_secret is None:
            raise OnionAuthError("this service admits only authorised clients, and no client key was given") from exc
        raise OnionAuthError("this client's key is not authorised for this service") from exc
    return _parse_inner(inner)
