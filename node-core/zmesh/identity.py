"""Who a node is: its Ed25519 identity, its PeerId and its onion (circuit-handshake) keys.

A PeerId is the 32-byte Ed25519 public key. Its text form copies Tor's v3 onion address layout
(rend-spec-v3 §6): base32(key ‖ checksum[2] ‖ version), checksum = SHA3-256(".mesh checksum" ‖ key ‖
version)[:2], so a typo is caught before it is dialled. ``<text>.mesh`` is a node's address.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

from .crypto.provider import KEY_SIZE, MLKEM768_EK_SIZE, MLKEM768_SEED_SIZE, CryptoProvider
from .encoding import pack_canonical, unpack_canonical
from .errors import ConfigError, CryptoError, ProtocolError, ZmeshError

PEER_ID_VERSION = 1
PEER_ID_TEXT_LEN = 56
_BASE32 = re.compile(r"[a-z2-7]*")


def _checksum(key: bytes) -> bytes:
    return hashlib.sha3_256(b".mesh checksum" + key + bytes([PEER_ID_VERSION])).digest()[:2]


def key_text(key: bytes) -> str:
    """A 32-byte Ed25519 key's text form, base32(key ‖ checksum[2] ‖ version), lower case: a
    PeerId's, and an onion service's address (``zmesh.onion.address``) without ``.mesh``."""
    return base64.b32encode(key + _checksum(key) + bytes([PEER_ID_VERSION])).decode("ascii").lower()


def key_from_text(text: str, *, what: str, error: type[ZmeshError]) -> bytes:
    """The key of ``key_text`` (already stripped of any ``.mesh``), or ``error`` naming ``what``.

    Peers and URLs supply this text, so anything that is not exactly 56 base32 letters is refused
    (ASCII is checked first: case mapping can change a non-ASCII string's length, and padding
    would decode to fewer than 35 bytes)."""
    if len(text) != PEER_ID_TEXT_LEN:
        raise error(f"{what} is {PEER_ID_TEXT_LEN} base32 characters, got {len(text)}")
    if not _BASE32.fullmatch(text):
        raise error(f"{what} contains characters outside base32 (a-z, 2-7)")
    raw = base64.b32decode(text.upper())
    key, checksum, version = raw[:32], raw[32:34], raw[34]
    if version != PEER_ID_VERSION:
        raise error(f"{what} has version {version}, which is not supported")
    if checksum != _checksum(key):
        raise error(f"{what} checksum does not match: it is mistyped")
    return key


@dataclass(frozen=True, slots=True)
class PeerId:
    """A node's identity: its Ed25519 public key."""

    key: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes) or len(self.key) != KEY_SIZE:
            raise CryptoError(f"a PeerId is a {KEY_SIZE}-byte Ed25519 public key")

    @property
    def text(self) -> str:
        return key_text(self.key)

    @classmethod
    def from_text(cls, text: str) -> PeerId:
        """Parse the text form (with or without ``.mesh``); raise ``ConfigError`` if mistyped."""
        if not isinstance(text, str) or not text.isascii():
            raise ConfigError("a PeerId is ASCII text")
        return cls(key_from_text(text.strip().lower().removesuffix(".mesh"), what="a PeerId", error=ConfigError))

    def short(self) -> str:
        """First characters of the text form, for logs and dashboards."""
        return self.text[:10]

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"PeerId({self.short()}…)"


@dataclass(frozen=True, slots=True)
class OnionKeys:
    """Public keys a client needs to run the hybrid circuit handshake with a relay."""

    x25519: bytes
    mlkem768: bytes

    def __post_init__(self) -> None:
        if len(self.x25519) != KEY_SIZE:
            raise CryptoError("onion X25519 key must be 32 bytes")
        if len(self.mlkem768) != MLKEM768_EK_SIZE:
            raise CryptoError(f"onion ML-KEM-768 key must be {MLKEM768_EK_SIZE} bytes")


@dataclass(frozen=True, slots=True, repr=False)
class Identity:
    """A node's secret keys. ``repr`` never shows them."""

    signing_key: bytes
    peer_id: PeerId
    onion_x25519_private: bytes
    onion_keys: OnionKeys
    onion_mlkem_seed: bytes

    @classmethod
    async def generate(cls, provider: CryptoProvider) -> Identity:
        signing, public = await provider.ed25519_generate()
        x_priv, x_pub = await provider.x25519_generate()
        seed, ek = await provider.mlkem768_generate()
        return cls(signing, PeerId(public), x_priv, OnionKeys(x_pub, ek), seed)

    def to_bytes(self) -> bytes:
        """Secret serialisation for the node's key file (store it with mode 0600)."""
        return pack_canonical({"v": 1, "ed25519": self.signing_key, "x25519": self.onion_x25519_private,
                               "mlkem768_seed": self.onion_mlkem_seed})

    @classmethod
    async def from_bytes(cls, provider: CryptoProvider, data: bytes) -> Identity:
        """Read a key file; anything but the exact shape ``to_bytes`` writes is a ``ConfigError``."""
        try:
            fields = unpack_canonical(data, max_size=512, what="identity file")
        except ProtocolError as exc:
            raise ConfigError("identity file is corrupt; move it away to create a new identity") from exc
        if not isinstance(fields, dict) or set(fields) != {"v", "ed25519", "x25519", "mlkem768_seed"} \
                or fields["v"] != 1:
            raise ConfigError("identity file has an unknown version or fields; move it away to create a new identity")
        signing, x_priv, seed = fields["ed25519"], fields["x25519"], fields["mlkem768_seed"]
        if not all(isinstance(k, bytes) for k in (signing, x_priv, seed)) \
                or len(signing) != KEY_SIZE or len(x_priv) != KEY_SIZE or len(seed) != MLKEM768_SEED_SIZE:
            raise ConfigError("identity file has keys of the wrong size")
        return cls(signing, PeerId(await provider.ed25519_public(signing)), x_priv,
                   OnionKeys(await provider.x25519_public(x_priv), await provider.mlkem768_public(seed)),
                   seed)

    def __repr__(self) -> str:
        return f"Identity({self.peer_id!r})"
