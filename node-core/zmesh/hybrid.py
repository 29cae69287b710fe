"""Hybrid signatures for the directory: Ed25519 **and** ML-DSA-65 (FIPS 204) over the same bytes.

A forger must break both schemes, so the directory stays sound if either one falls (a quantum
computer against Ed25519, a flaw in the younger ML-DSA). A verifier requires both signatures.

An authority's long-term identity is the pair of public keys; its *fingerprint* is
``SHA3-256(FINGERPRINT_DOMAIN ‖ ed25519 ‖ mldsa65)``, written like a PeerId (``identity.key_text``:
base32 with a checksum, 56 letters), so one short string pins both keys. Signed documents carry
the public keys beside the signatures; the verifier hashes them and compares with the fingerprint
it was configured with.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .crypto.provider import (
    ED25519_SIG_SIZE,
    KEY_SIZE,
    MLDSA65_PUBLIC_SIZE,
    MLDSA65_SEED_SIZE,
    MLDSA65_SIG_SIZE,
    CryptoProvider,
)
from .encoding import pack_canonical, unpack_canonical
from .errors import ConfigError, CryptoError, ProtocolError
from .identity import key_from_text, key_text

FINGERPRINT_DOMAIN = b"zmesh-authority-fingerprint-v1\x00"
FINGERPRINT_SIZE = 32
SIGNATURE_FIELDS = frozenset({"fp", "ed25519", "mldsa65", "sig_ed25519", "sig_mldsa65"})


def fingerprint_text(fingerprint: bytes) -> str:
    return key_text(fingerprint)


def parse_fingerprint(text: str) -> bytes:
    """A fingerprint's 32 bytes from its text form; ``ConfigError`` if mistyped."""
    if not isinstance(text, str) or not text.isascii():
        raise ConfigError("an authority fingerprint is ASCII text")
    return key_from_text(text.strip().lower(), what="an authority fingerprint", error=ConfigError)


@dataclass(frozen=True, slots=True)
class HybridPublic:
    """An authority's public keys."""

    ed25519: bytes
    mldsa65: bytes

    def __post_init__(self) -> None:
        if len(self.ed25519) != KEY_SIZE or len(self.mldsa65) != MLDSA65_PUBLIC_SIZE:
            raise CryptoError(f"hybrid public keys are {KEY_SIZE} (Ed25519) and {MLDSA65_PUBLIC_SIZE} "
                              "(ML-DSA-65) bytes")

    @property
    def fingerprint(self) -> bytes:
        return hashlib.sha3_256(FINGERPRINT_DOMAIN + self.ed25519 + self.mldsa65).digest()

    @property
    def fingerprint_text(self) -> str:
        return fingerprint_text(self.fingerprint)


@dataclass(frozen=True, slots=True, repr=False)
class HybridKey:
    """An authority's secret keys (``repr`` never shows them)."""

    ed25519_private: bytes
    mldsa65_seed: bytes
    public: HybridPublic

    @classmethod
    async def generate(cls, provider: CryptoProvider) -> HybridKey:
        ed_priv, ed_pub = await provider.ed25519_generate()
        seed, ml_pub = await provider.mldsa65_generate()
        return cls(ed_priv, seed, HybridPublic(ed_pub, ml_pub))

    def to_bytes(self) -> bytes:
        """Secret serialisation for the key file (store it with mode 0600)."""
        return pack_canonical({"v": 1, "ed25519": self.ed25519_private, "mldsa65_seed": self.mldsa65_seed})

    @classmethod
    async def from_bytes(cls, provider: CryptoProvider, data: bytes) -> HybridKey:
        try:
            fields = unpack_canonical(data, max_size=256, what="authority key file")
        except ProtocolError as exc:
            raise ConfigError("authority key file is corrupt; move it away to create a new key") from exc
        if (not isinstance(fields, dict) or set(fields) != {"v", "ed25519", "mldsa65_seed"} or fields["v"] != 1
                or not isinstance(fields["ed25519"], bytes) or len(fields["ed25519"]) != KEY_SIZE
                or not isinstance(fields["mldsa65_seed"], bytes) or len(fields["mldsa65_seed"]) != MLDSA65_SEED_SIZE):
            raise ConfigError("authority key file has an unknown version, fields or key sizes")
        ed, seed = fields["ed25519"], fields["mldsa65_seed"]
        return cls(ed, seed, HybridPublic(await provider.ed25519_public(ed), await provider.mldsa65_public(seed)))

    def __repr__(self) -> str:
        return f"HybridKey({self.public.fingerprint_text[:10]}…)"


async def hybrid_sign(provider: CryptoProvider, key: HybridKey, domain: bytes, message: bytes) -> dict:
    """The signature entry for ``domain ‖ message``: fingerprint, both public keys, both signatures."""
    data = domain + message
    return {"fp": key.public.fingerprint, "ed25519": key.public.ed25519, "mldsa65": key.public.mldsa65,
            "sig_ed25519": await provider.ed25519_sign(key.ed25519_private, data),
            "sig_mldsa65": await provider.mldsa65_sign(key.mldsa65_seed, data)}


def parse_signature(entry: object) -> dict:
    """Check a signature entry's shape and sizes (``ProtocolError``); returns it unchanged."""
    if (not isinstance(entry, dict) or set(entry) != SIGNATURE_FIELDS
            or not all(isinstance(v, bytes) for v in entry.values())):
        raise ProtocolError(f"a hybrid signature is a map of {sorted(SIGNATURE_FIELDS)} byte strings")
    sizes = {"fp": FINGERPRINT_SIZE, "ed25519": KEY_SIZE, "mldsa65": MLDSA65_PUBLIC_SIZE,
             "sig_ed25519": ED25519_SIG_SIZE, "sig_mldsa65": MLDSA65_SIG_SIZE}
    for name, size in sizes.items():
        if len(entry[name]) != size:
            raise ProtocolError(f"a hybrid signature's {name} must be {size} bytes")
    return entry


async def hybrid_verify(provider: CryptoProvider, entry: dict, domain: bytes, message: bytes) -> bytes:
    """Verify a (shape-checked) entry over ``domain ‖ message``; return the signer's fingerprint.
    ``CryptoError`` naming the part that failed: keys not matching the fingerprint, Ed25519, ML-DSA-65."""
    public = HybridPublic(entry["ed25519"], entry["mldsa65"])
    if public.fingerprint != entry["fp"]:
        raise CryptoError(f"the keys signed as {fingerprint_text(entry['fp'])[:10]}… do not hash to that fingerprint")
    data = domain + message
    if not await provider.ed25519_verify(public.ed25519, entry["sig_ed25519"], data):
        raise CryptoError(f"the Ed25519 signature of {public.fingerprint_text[:10]}… does not verify")
    if not await provider.mldsa65_verify(public.mldsa65, entry["sig_mldsa65"], data):
        raise CryptoError(f"the ML-DSA-65 signature of {public.fingerprint_text[:10]}… does not verify")
    return entry["fp"]
