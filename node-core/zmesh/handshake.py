"""Hybrid circuit handshake: ntor (X25519) combined with ML-KEM-768 (docs/protocol.md §4).

One round trip, relay authenticated, client anonymous. The client knows the relay's identity ID
and onion keys B (X25519) and EK (ML-KEM-768) from its signed descriptor.

    client:  x,X = X25519 keypair;  (CT, SS_kem) = ML-KEM.Encaps(EK)
             CREATE  = ID ‖ B ‖ X ‖ CT                                   (1184 bytes)
    relay:   y,Y = X25519 keypair;  SS_kem = ML-KEM.Decaps(dk, CT)
             secret  = X25519(y,X) ‖ X25519(b,X) ‖ SS_kem
             context = PROTOID ‖ ID ‖ B ‖ SHA256(EK) ‖ X ‖ Y ‖ SHA256(CT)
             OKM     = HKDF-SHA256(ikm = secret ‖ context, salt = PROTOID, info = "expand", 160)
             AUTH ‖ Kf ‖ Kb ‖ Df ‖ Db = OKM                              (5 × 32 bytes)
             CREATED = Y ‖ AUTH                                           (64 bytes)
    client:  computes the same with X25519(x,Y) ‖ X25519(x,B) ‖ SS_kem, checks AUTH.

``B`` in CREATE doubles as the key id: a relay that rotates its onion keys (``zmesh.onionkeys``)
answers with the set it names, current or retired within the grace period.

Why both: the X25519 half gives forward secrecy (ephemeral x and y) and the classical security of
Tor's ntor; the ML-KEM half keeps today's recorded traffic safe against a future quantum attacker.
Breaking the session keys needs breaking *both*. Only the relay can produce AUTH, since it needs b
(for X25519(b,X)) and the ML-KEM decapsulation key. Every transcript byte goes into the KDF, so a
mismatch anywhere yields different keys and a failed AUTH.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from .crypto.provider import KEY_SIZE, MLKEM768_CT_SIZE, CryptoProvider
from .errors import CryptoError, ProtocolError
from .identity import Identity, OnionKeys, PeerId
from .onionkeys import OnionKeySet

PROTOID = b"zmesh-ntor-x25519-mlkem768-sha256-v1"
CREATE_SIZE = 3 * KEY_SIZE + MLKEM768_CT_SIZE
CREATED_SIZE = 2 * KEY_SIZE
_OKM_SIZE = 5 * KEY_SIZE


@dataclass(frozen=True, slots=True, repr=False)
class HopKeys:
    """Per-hop session keys: AES-256-CTR keys and digest seeds for each direction."""

    forward_key: bytes
    backward_key: bytes
    forward_digest: bytes
    backward_digest: bytes

    def __repr__(self) -> str:
        return "HopKeys(…)"

    def reversed(self) -> HopKeys:
        """The same keys seen from the other end: an onion service's virtual hop to its client,
        whose forward direction is the service's backward one (zmesh.onion.introduce)."""
        return HopKeys(self.backward_key, self.forward_key, self.backward_digest, self.forward_digest)


@dataclass(frozen=True, slots=True, repr=False)
class ClientHandshake:
    """What the client keeps between CREATE and CREATED."""

    relay_id: PeerId
    onion: OnionKeys
    x_private: bytes
    x_public: bytes
    ciphertext: bytes
    kem_secret: bytes

    def create_payload(self) -> bytes:
        return self.relay_id.key + self.onion.x25519 + self.x_public + self.ciphertext


async def _derive(provider: CryptoProvider, secret: bytes, relay_id: bytes, onion: OnionKeys,
                  x_public: bytes, y_public: bytes, ciphertext: bytes) -> tuple[bytes, HopKeys]:
    context = (PROTOID + relay_id + onion.x25519 + hashlib.sha256(onion.mlkem768).digest() + x_public
               + y_public + hashlib.sha256(ciphertext).digest())
    okm = await provider.hkdf_sha256(secret + context, PROTOID, b"expand", _OKM_SIZE)
    auth, kf, kb, df, db = (okm[i:i + KEY_SIZE] for i in range(0, _OKM_SIZE, KEY_SIZE))
    return auth, HopKeys(kf, kb, df, db)


async def client_start(provider: CryptoProvider, relay_id: PeerId, onion: OnionKeys) -> ClientHandshake:
    x_private, x_public = await provider.x25519_generate()
    ciphertext, kem_secret = await provider.mlkem768_encapsulate(onion.mlkem768)
    return ClientHandshake(relay_id, onion, x_private, x_public, ciphertext, kem_secret)


async def client_finish(provider: CryptoProvider, state: ClientHandshake, reply: bytes) -> HopKeys:
    """Check the relay's CREATED reply; raise ``CryptoError`` unless it proves the relay's keys."""
    if len(reply) != CREATED_SIZE:
        raise ProtocolError(f"CREATED payload must be {CREATED_SIZE} bytes")
    y_public, auth = reply[:KEY_SIZE], reply[KEY_SIZE:]
    secret = (await provider.x25519(state.x_private, y_public)
              + await provider.x25519(state.x_private, state.onion.x25519) + state.kem_secret)
    expected, keys = await _derive(provider, secret, state.relay_id.key, state.onion, state.x_public,
                                   y_public, state.ciphertext)
    if not hmac.compare_digest(expected, auth):
        raise CryptoError("relay failed the circuit handshake (AUTH mismatch)")
    return keys


def create_key_id(payload: bytes) -> bytes:
    """The onion key a CREATE payload was made for: its ``B`` (see ``zmesh.onionkeys``)."""
    if len(payload) != CREATE_SIZE:
        raise ProtocolError(f"CREATE payload must be {CREATE_SIZE} bytes")
    return payload[KEY_SIZE:2 * KEY_SIZE]


async def server_respond(provider: CryptoProvider, identity: Identity, payload: bytes,
                         y_keypair: tuple[bytes, bytes] | None = None, *,
                         onion: OnionKeySet | None = None) -> tuple[bytes, HopKeys]:
    """Answer a CREATE payload with the onion key set ``onion`` (default: the identity's own);
    return ``(CREATED payload, keys)``. A relay that rotates picks ``onion`` by ``create_key_id``.

    ``y_keypair`` is only for test vectors; in use the relay draws a fresh ephemeral each time.
    """
    return await respond_as(provider, identity.peer_id.key, onion or OnionKeySet.of(identity), payload, y_keypair)


async def respond_as(provider: CryptoProvider, relay_id: bytes, onion: OnionKeySet, payload: bytes,
                     y_keypair: tuple[bytes, bytes] | None = None) -> tuple[bytes, HopKeys]:
    """``server_respond`` for any responder named by ``relay_id``: a relay (its PeerId key) or an
    onion service, whose introductions carry this same handshake to its descriptor keys."""
    if create_key_id(payload) != onion.key_id or payload[:KEY_SIZE] != relay_id:
        raise CryptoError("CREATE is addressed to another relay or an old onion key")
    x_public, ciphertext = payload[2 * KEY_SIZE:3 * KEY_SIZE], payload[3 * KEY_SIZE:]
    y_private, y_public = y_keypair or await provider.x25519_generate()
    secret = (await provider.x25519(y_private, x_public)
              + await provider.x25519(onion.x25519_private, x_public)
              + await provider.mlkem768_decapsulate(onion.mlkem_seed, ciphertext))
    auth, keys = await _derive(provider, secret, relay_id, onion.public, x_public, y_public, ciphertext)
    return y_public + auth, keys
