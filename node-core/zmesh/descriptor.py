"""Signed peer descriptors: what a node publishes so others can find it and build circuits.

Wire form: canonical msgpack ``[body, signature]`` where ``body`` is itself canonical msgpack and
``signature = Ed25519(identity, DOMAIN ‖ body)``. Verification checks, in this order: size, shape,
canonical encoding, key sizes, signature, then time (not before ``published - skew``, not after
``expires``). Each failure is a typed error; nothing is half-accepted.

``family`` (optional, at most ``MAX_FAMILY`` PeerIds) names the operator's other relays; path
selection keeps two relays out of one circuit only when *both* list each other, so nobody can
push a stranger out of paths by claiming them. An empty family is left out of the body, so a
descriptor without one is byte-for-byte what it was before the field existed.

Hybrid form (relays publishing to directory authorities, docs/directory.md): the body also holds
``mldsa65``, the relay's ML-DSA-65 public key, and the wire form is ``[body, ed25519_sig,
mldsa65_sig]``, both over ``DOMAIN ‖ body``; a verifier then requires both. Stripping the ML-DSA
part changes the body, so the Ed25519 signature no longer verifies: the form cannot be downgraded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .crypto.provider import ED25519_SIG_SIZE, MLDSA65_PUBLIC_SIZE, MLDSA65_SIG_SIZE, CryptoProvider
from .encoding import pack_canonical, unpack_canonical
from .errors import ConfigError, CryptoError, ProtocolError
from .identity import Identity, OnionKeys, PeerId
from .netaddr import LinkAddress

DOMAIN = b"zmesh-descriptor-v1\x00"
MAX_DESCRIPTOR_SIZE = 8192
MAX_LIFETIME = 24 * 3600
DEFAULT_LIFETIME = 3 * 3600
CLOCK_SKEW = 300
_COUNTRY = re.compile(r"[A-Z]{2}")
_MAX_ADDRESSES = 8
_MAX_ADDRESS_LEN = 256
_MAX_PORT_RANGES = 64
MAX_FAMILY = 32
# How an exit reaches its targets: itself, or through an upstream HTTP CONNECT proxy.
EXIT_KINDS = ("direct", "proxy")
_CAPS = frozenset({"relay", "exit", "country", "bandwidth"})


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a node offers. ``bandwidth`` is its advertised capacity in bytes/s; ``exit_kind`` (one of
    ``EXIT_KINDS``) is on the wire only when not ``direct``, so a direct exit's descriptor is the same
    bytes as before the field existed and an older descriptor reads as ``direct``. ``country`` and
    ``exit_kind`` are self-declared: nothing measures them yet."""

    relay: bool = True
    exit: bool = False
    country: str | None = None
    bandwidth: int = 0
    exit_kind: str = "direct"

    def __post_init__(self) -> None:
        if self.exit_kind not in EXIT_KINDS:
            raise ConfigError(f"exit kind must be one of {EXIT_KINDS}, got {self.exit_kind!r}")
        if self.country is not None and not _COUNTRY.fullmatch(self.country):
            raise ConfigError(f"country must be a two-letter ISO 3166 code like 'DE', got {self.country!r}")
        if not isinstance(self.bandwidth, int) or not 0 <= self.bandwidth < 2**48:
            raise ConfigError("bandwidth must be a non-negative integer (bytes/s)")


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A verified (or freshly signed) descriptor. ``raw`` is its exact wire form."""

    peer_id: PeerId
    published: int
    expires: int
    addresses: dict[str, tuple[str, ...]]
    capabilities: Capabilities
    exit_ports: tuple[tuple[int, int], ...]
    onion_keys: OnionKeys
    raw: bytes = field(repr=False, compare=False)
    family: tuple[PeerId, ...] = ()
    mldsa65: bytes | None = field(default=None, repr=False)  # the hybrid form's ML-DSA-65 public key

    def allows_port(self, port: int) -> bool:
        """Whether the exit's published policy summary admits ``port`` (coarse: addresses are
        checked by the exit itself after DNS resolution)."""
        return self.capabilities.exit and any(lo <= port <= hi for lo, hi in self.exit_ports)

    def is_live(self, now: float) -> bool:
        return self.published - CLOCK_SKEW <= now < self.expires

    def same_family(self, other: Descriptor) -> bool:
        """Whether both relays declare each other as family (a one-sided claim counts for nothing)."""
        return other.peer_id in self.family and self.peer_id in other.family


def _body(peer_id: PeerId, published: int, expires: int, addresses: dict[str, tuple[str, ...]],
          caps: Capabilities, exit_ports: tuple[tuple[int, int], ...], onion: OnionKeys,
          family: tuple[PeerId, ...], mldsa65: bytes | None = None) -> dict:
    body = {
        "v": 1,
        "id": peer_id.key,
        "published": published,
        "expires": expires,
        "addresses": {k: list(v) for k, v in addresses.items()},
        "caps": {"relay": caps.relay, "exit": caps.exit, "country": caps.country or "",
                 "bandwidth": caps.bandwidth, **({} if caps.exit_kind == "direct" else {"kind": caps.exit_kind})},
        "exit_ports": [list(r) for r in exit_ports],
        "onion": {"x25519": onion.x25519, "mlkem768": onion.mlkem768},
    }
    if family:
        body["family"] = [peer.key for peer in family]
    if mldsa65 is not None:
        body["mldsa65"] = mldsa65
    return body


def _check_addresses(addresses: dict) -> dict[str, tuple[str, ...]]:
    if not isinstance(addresses, dict) or len(addresses) > _MAX_ADDRESSES:
        raise ProtocolError("descriptor addresses must be a small map of transport → list")
    out: dict[str, tuple[str, ...]] = {}
    for transport, addrs in addresses.items():
        if (not isinstance(addrs, list) or len(addrs) > _MAX_ADDRESSES
                or not all(isinstance(a, str) and 0 < len(a) <= _MAX_ADDRESS_LEN for a in addrs)):
            raise ProtocolError(f"descriptor addresses for {transport!r} are malformed")
        if transport == "ws":  # dialed by others: host and port only, never a URL of the publisher's choosing
            for text in addrs:
                LinkAddress.parse(text)
        out[transport] = tuple(addrs)
    return out


def _check_ports(ranges: object) -> tuple[tuple[int, int], ...]:
    if not isinstance(ranges, list) or len(ranges) > _MAX_PORT_RANGES:
        raise ProtocolError("descriptor exit_ports must be a short list of [low, high]")
    out = []
    for r in ranges:
        if (not isinstance(r, list) or len(r) != 2 or not all(isinstance(p, int) for p in r)
                or not 1 <= r[0] <= r[1] <= 65535):
            raise ProtocolError("descriptor exit_ports has an invalid port range")
        out.append((r[0], r[1]))
    return tuple(out)


def _check_family(keys: object, own: PeerId) -> tuple[PeerId, ...]:
    """The family as published: a non-empty list of distinct 32-byte keys, not the relay's own."""
    if not isinstance(keys, list) or not 0 < len(keys) <= MAX_FAMILY:
        raise ProtocolError(f"descriptor family must be a list of 1..{MAX_FAMILY} PeerIds (omit it when empty)")
    try:
        family = tuple(PeerId(key) for key in keys)
    except CryptoError as exc:
        raise ProtocolError(f"descriptor family holds a malformed PeerId: {exc}") from exc
    if len(set(family)) != len(family) or own in family:
        raise ProtocolError("descriptor family repeats a PeerId or names the relay itself")
    return family


async def sign_descriptor(provider: CryptoProvider, identity: Identity, *, now: int,
                          addresses: dict[str, tuple[str, ...]] | None = None,
                          capabilities: Capabilities | None = None,
                          exit_ports: tuple[tuple[int, int], ...] = (),
                          lifetime: int = DEFAULT_LIFETIME, onion: OnionKeys | None = None,
                          family: tuple[PeerId, ...] = (), mldsa65_seed: bytes | None = None) -> Descriptor:
    """Build and sign a descriptor for ``identity`` valid from ``now`` for ``lifetime`` seconds.
    ``onion``: the onion keys to publish (a rotating node's current set; default the identity's).
    ``family``: the operator's other relays (``ConfigError`` if repeated, own, or over ``MAX_FAMILY``).
    ``mldsa65_seed``: also sign with this ML-DSA-65 key (the hybrid form)."""
    onion = onion or identity.onion_keys
    if not 60 <= lifetime <= MAX_LIFETIME:
        raise ConfigError(f"descriptor lifetime must be 60..{MAX_LIFETIME} seconds")
    caps = capabilities or Capabilities()
    addresses = _check_addresses({k: list(v) for k, v in (addresses or {}).items()})
    exit_ports = _check_ports([list(r) for r in exit_ports])
    family = tuple(family)
    if len(family) > MAX_FAMILY or len(set(family)) != len(family) or identity.peer_id in family:
        raise ConfigError(f"a relay family is at most {MAX_FAMILY} distinct PeerIds, not the relay's own")
    mldsa65 = None if mldsa65_seed is None else await provider.mldsa65_public(mldsa65_seed)
    body = pack_canonical(_body(identity.peer_id, now, now + lifetime, addresses, caps, exit_ports,
                                onion, family, mldsa65))
    signatures = [await provider.ed25519_sign(identity.signing_key, DOMAIN + body)]
    if mldsa65_seed is not None:
        signatures.append(await provider.mldsa65_sign(mldsa65_seed, DOMAIN + body))
    raw = pack_canonical([body, *signatures])
    if len(raw) > MAX_DESCRIPTOR_SIZE:
        raise ConfigError("descriptor too large: publish fewer addresses or port ranges")
    return Descriptor(identity.peer_id, now, now + lifetime, addresses, caps, exit_ports, onion, raw, family,
                      mldsa65)


def _parse_body(body: bytes) -> Descriptor:
    fields = unpack_canonical(body, max_size=MAX_DESCRIPTOR_SIZE, what="descriptor body")
    expected = {"v", "id", "published", "expires", "addresses", "caps", "exit_ports", "onion"}
    if not isinstance(fields, dict) or set(fields) - {"family", "mldsa65"} != expected or fields["v"] != 1:
        raise ProtocolError("descriptor body has missing, unknown or versioned-out fields")
    caps, onion = fields["caps"], fields["onion"]
    if (not isinstance(caps, dict) or set(caps) - {"kind"} != _CAPS
            or not isinstance(caps.get("kind", ""), str)
            or not isinstance(onion, dict) or set(onion) != {"x25519", "mlkem768"}
            or not all(isinstance(caps[k], bool) for k in ("relay", "exit"))
            or not isinstance(caps["country"], str)
            or not all(isinstance(fields[k], int) for k in ("published", "expires"))
            or not all(isinstance(onion[k], bytes) for k in onion)
            or not isinstance(fields["id"], bytes)):
        raise ProtocolError("descriptor body fields have the wrong types")
    if not fields["published"] < fields["expires"] <= fields["published"] + MAX_LIFETIME:
        raise ProtocolError(f"descriptor lifetime must be positive and at most {MAX_LIFETIME} s")
    try:
        capabilities = Capabilities(caps["relay"], caps["exit"], caps["country"] or None, caps["bandwidth"],
                                    caps.get("kind", "direct"))
    except ConfigError as exc:
        raise ProtocolError(f"descriptor capabilities are invalid: {exc}") from exc
    peer_id = PeerId(fields["id"])
    family = _check_family(fields["family"], peer_id) if "family" in fields else ()
    mldsa65 = fields.get("mldsa65")
    if mldsa65 is not None and (not isinstance(mldsa65, bytes) or len(mldsa65) != MLDSA65_PUBLIC_SIZE):
        raise ProtocolError(f"descriptor mldsa65 key must be {MLDSA65_PUBLIC_SIZE} bytes")
    return Descriptor(peer_id, fields["published"], fields["expires"],
                      _check_addresses(fields["addresses"]), capabilities,
                      _check_ports(fields["exit_ports"]),
                      OnionKeys(onion["x25519"], onion["mlkem768"]), b"", family, mldsa65)


async def verify_descriptor(provider: CryptoProvider, raw: bytes, *, now: float) -> Descriptor:
    """Parse and verify a descriptor received from anyone. Raises ``ProtocolError`` (malformed),
    ``CryptoError`` (bad key size or signature) or ``CryptoError`` for expired/future-dated ones."""
    outer = unpack_canonical(raw, max_size=MAX_DESCRIPTOR_SIZE, what="descriptor")
    if (not isinstance(outer, list) or len(outer) not in (2, 3)
            or not all(isinstance(part, bytes) for part in outer)):
        raise ProtocolError("descriptor must be [body, signature] or [body, signature, mldsa65 signature]")
    body, signature = outer[0], outer[1]
    if len(signature) != ED25519_SIG_SIZE:
        raise CryptoError(f"descriptor signature must be {ED25519_SIG_SIZE} bytes")
    parsed = _parse_body(body)
    if (parsed.mldsa65 is None) != (len(outer) == 2):
        raise ProtocolError("a descriptor carries an ML-DSA-65 signature exactly when its body has an mldsa65 key")
    if not await provider.ed25519_verify(parsed.peer_id.key, signature, DOMAIN + body):
        raise CryptoError("descriptor signature does not verify")
    if parsed.mldsa65 is not None and (len(outer[2]) != MLDSA65_SIG_SIZE or not await provider.mldsa65_verify(
            parsed.mldsa65, outer[2], DOMAIN + body)):
        raise CryptoError("descriptor ML-DSA-65 signature does not verify")
    if now < parsed.published - CLOCK_SKEW:
        raise CryptoError("descriptor is dated in the future; check the publisher's clock")
    if now >= parsed.expires:
        raise CryptoError("descriptor has expired")
    return Descriptor(parsed.peer_id, parsed.published, parsed.expires, parsed.addresses,
                      parsed.capabilities, parsed.exit_ports, parsed.onion_keys, bytes(raw), parsed.family,
                      parsed.mldsa65)
