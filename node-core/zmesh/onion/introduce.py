"""The end-to-end half of an introduction: what only the client and the service can read
(docs/onion-services.md, "Introduction and rendezvous").

The client runs zmesh's hybrid handshake (``zmesh.handshake``: X25519 + ML-KEM-768) to the keys in
the service's descriptor, with the service's public key in the place of a relay's identity. Its half
(CREATE = ID ‖ B ‖ X ‖ CT) travels in INTRODUCE1, followed by the rendezvous details sealed with
AES-256-GCM under a key only the service can derive from that half alone::

    encrypted = CREATE:1184 ‖ GCM(K_intro, nonce 0, plaintext, aad = auth_key ‖ CREATE)
    plaintext = version:u8=1 ‖ rendezvous PeerId:32 ‖ its onion key id B:32 ‖ cookie:20
    K_intro   = HKDF-SHA256(X25519(x,B) ‖ SS_kem ‖ INTRO_PROTOID ‖ SHA256(CREATE) ‖ auth_key,
                            salt = INTRO_PROTOID, info = "introduce", 32)

A fresh X and CT make K_intro single-use, so the zero nonce never repeats under one key. The
service answers with its half (Y ‖ AUTH, as a relay's CREATED) in RENDEZVOUS1; both ends then hold
the handshake's hop keys and add them as a virtual fourth hop (the service with the directions
swapped: ``HopKeys.reversed``). The rendezvous point sees only ciphertext under those keys.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..crypto.provider import KEY_SIZE, MLKEM768_SEED_SIZE, CryptoProvider
from ..errors import CryptoError, ProtocolError
from ..handshake import CREATE_SIZE, ClientHandshake, HopKeys, client_finish, client_start, respond_as
from ..identity import OnionKeys, PeerId
from ..onionkeys import OnionKeySet
from .wire import COOKIE_SIZE

INTRO_PROTOID = b"zmesh-introduce-x25519-mlkem768-v1"
_SERVICE_KEYS = b"zmesh-service-handshake-keys-v1"
_VERSION = 1
_NONCE = bytes(12)
_PLAINTEXT_SIZE = 1 + 2 * KEY_SIZE + COOKIE_SIZE
ENCRYPTED_SIZE = CREATE_SIZE + _PLAINTEXT_SIZE + 16


@dataclass(frozen=True, slots=True, repr=False)
class ServiceKeys:
    """A service's keys, all from its 32-byte Ed25519 seed (the service key file holds only that):
    ``public`` is the address key, ``onion`` the handshake keys its descriptor publishes, derived as
    ``HKDF-SHA256(seed, salt = "zmesh-service-handshake-keys-v1", info = "x25519" | "mlkem768")``.
    Session keys stay forward secret (both handshake ends add ephemeral X25519); a stolen seed would
    open recorded introductions (rendezvous point and cookie), as a stolen relay onion key would."""

    seed: bytes
    public: bytes
    onion: OnionKeySet

    @classmethod
    async def from_seed(cls, provider: CryptoProvider, seed: bytes) -> ServiceKeys:
        x_private = await provider.hkdf_sha256(seed, _SERVICE_KEYS, b"x25519", KEY_SIZE)
        kem_seed = await provider.hkdf_sha256(seed, _SERVICE_KEYS, b"mlkem768", MLKEM768_SEED_SIZE)
        public = OnionKeys(await provider.x25519_public(x_private), await provider.mlkem768_public(kem_seed))
        return cls(seed, await provider.ed25519_public(seed), OnionKeySet(x_private, kem_seed, public))


@dataclass(frozen=True, slots=True)
class RendezvousPoint:
    """Where the client waits: the relay (and the onion key the client knows it by) and the cookie."""

    relay: PeerId
    onion_key_id: bytes
    cookie: bytes

    def __post_init__(self) -> None:
        if len(self.onion_key_id) != KEY_SIZE or len(self.cookie) != COOKIE_SIZE:
            raise ProtocolError("a rendezvous point needs a 32-byte onion key id and a 20-byte cookie")

    def to_bytes(self) -> bytes:
        return bytes([_VERSION]) + self.relay.key + self.onion_key_id + self.cookie

    @classmethod
    def from_bytes(cls, data: bytes) -> RendezvousPoint:
        if len(data) != _PLAINTEXT_SIZE or data[0] != _VERSION:
            raise ProtocolError("introduction plaintext has the wrong size or version")
        relay, key_id, cookie = data[1:33], data[33:65], data[65:]
        try:
            return cls(PeerId(relay), key_id, cookie)
        except CryptoError as exc:
            raise ProtocolError("introduction names an invalid rendezvous relay") from exc


async def _intro_key(provider: CryptoProvider, secret: bytes, create: bytes, auth_key: bytes) -> bytes:
    context = INTRO_PROTOID + hashlib.sha256(create).digest() + auth_key
    return await provider.hkdf_sha256(secret + context, INTRO_PROTOID, b"introduce", KEY_SIZE)


async def seal_introduction(provider: CryptoProvider, service_key: bytes, keys: OnionKeys, auth_key: bytes,
                            point: RendezvousPoint) -> tuple[bytes, ClientHandshake]:
    """The client's encrypted part of INTRODUCE1, and the handshake state RENDEZVOUS2 completes."""
    handshake = await client_start(provider, PeerId(service_key), keys)
    create = handshake.create_payload()
    secret = await provider.x25519(handshake.x_private, keys.x25519) + handshake.kem_secret
    key = await _intro_key(provider, secret, create, auth_key)
    return create + await provider.aes256_gcm_encrypt(key, _NONCE, point.to_bytes(), auth_key + create), handshake


async def open_introduction(provider: CryptoProvider, service_key: bytes, keyset: OnionKeySet, auth_key: bytes,
                            encrypted: bytes) -> tuple[RendezvousPoint, bytes]:
    """At the service: the rendezvous point and the client's handshake half (for ``answer_introduction``).
    ``ProtocolError`` for a malformed part, ``CryptoError`` for one not made to these keys."""
    if len(encrypted) != ENCRYPTED_SIZE:
        raise ProtocolError(f"an introduction's encrypted part is {ENCRYPTED_SIZE} bytes")
    create, sealed = encrypted[:CREATE_SIZE], encrypted[CREATE_SIZE:]
    if create[:KEY_SIZE] != service_key or create[KEY_SIZE:2 * KEY_SIZE] != keyset.key_id:
        raise CryptoError("introduction is addressed to another service or an old service key")
    x_public, ciphertext = create[2 * KEY_SIZE:3 * KEY_SIZE], create[3 * KEY_SIZE:]
    secret = (await provider.x25519(keyset.x25519_private, x_public)
              + await provider.mlkem768_decapsulate(keyset.mlkem_seed, ciphertext))
    key = await _intro_key(provider, secret, create, auth_key)
    plaintext = await provider.aes256_gcm_decrypt(key, _NONCE, sealed, auth_key + create)
    return RendezvousPoint.from_bytes(plaintext), create


async def answer_introduction(provider: CryptoProvider, service_key: bytes, keyset: OnionKeySet,
                              create: bytes) -> tuple[bytes, HopKeys]:
    """The service's half for RENDEZVOUS1 and the keys of its virtual hop to the client."""
    reply, keys = await respond_as(provider, service_key, keyset, create)
    return reply, keys.reversed()


async def finish_rendezvous(provider: CryptoProvider, handshake: ClientHandshake, reply: bytes) -> HopKeys:
    """At the client: check RENDEZVOUS2 proves the service's keys; the virtual hop's keys."""
    return await client_finish(provider, handshake, reply)
