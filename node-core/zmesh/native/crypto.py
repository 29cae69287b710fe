"""``CryptoProvider`` on the ``cryptography`` package (OpenSSL). Native runtimes only."""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import mlkem
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..crypto.provider import (
    AES_KEY_SIZE,
    ED25519_SIG_SIZE,
    KEY_SIZE,
    MLKEM768_CT_SIZE,
    MLKEM768_EK_SIZE,
    MLKEM768_SEED_SIZE,
)
from ..errors import CryptoError

_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw
_RAW_PRIV = serialization.PrivateFormat.Raw
_NO_ENC = serialization.NoEncryption()


def _need(value: bytes, size: int, what: str) -> None:
    if not isinstance(value, bytes | bytearray | memoryview) or len(value) != size:
        raise CryptoError(f"{what} must be {size} bytes")


class _CtrStream:
    def __init__(self, key: bytes, iv: bytes) -> None:
        self._ctx = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()

    async def apply(self, data: bytes) -> bytes:
        return self._ctx.update(data)


class NativeCryptoProvider:
    """Native provider. Every method validates sizes and raises ``CryptoError`` on bad input."""

    name = "native"

    async def x25519_generate(self) -> tuple[bytes, bytes]:
        key = X25519PrivateKey.generate()
        return key.private_bytes(_RAW, _RAW_PRIV, _NO_ENC), key.public_key().public_bytes(_RAW, _RAW_PUB)

    async def x25519_public(self, private: bytes) -> bytes:
        _need(private, KEY_SIZE, "X25519 private key")
        return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(_RAW, _RAW_PUB)

    async def x25519(self, private: bytes, peer_public: bytes) -> bytes:
        _need(private, KEY_SIZE, "X25519 private key")
        _need(peer_public, KEY_SIZE, "X25519 public key")
        try:
            return X25519PrivateKey.from_private_bytes(private).exchange(
                X25519PublicKey.from_public_bytes(peer_public))
        except ValueError as exc:  # all-zero shared secret: a low-order point
            raise CryptoError("X25519 peer key is a low-order point") from exc

    async def ed25519_generate(self) -> tuple[bytes, bytes]:
        key = Ed25519PrivateKey.generate()
        return key.private_bytes(_RAW, _RAW_PRIV, _NO_ENC), key.public_key().public_bytes(_RAW, _RAW_PUB)

    async def ed25519_public(self, private: bytes) -> bytes:
        _need(private, KEY_SIZE, "Ed25519 private key")
        return Ed25519PrivateKey.from_private_bytes(private).public_key().public_bytes(_RAW, _RAW_PUB)

    async def ed25519_sign(self, private: bytes, message: bytes) -> bytes:
        _need(private, KEY_SIZE, "Ed25519 private key")
        return Ed25519PrivateKey.from_private_bytes(private).sign(message)

    async def ed25519_verify(self, public: bytes, signature: bytes, message: bytes) -> bool:
        if len(public) != KEY_SIZE or len(signature) != ED25519_SIG_SIZE:
            return False
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True

    async def mlkem768_generate(self) -> tuple[bytes, bytes]:
        seed = os.urandom(MLKEM768_SEED_SIZE)
        return seed, await self.mlkem768_public(seed)

    async def mlkem768_public(self, seed: bytes) -> bytes:
        _need(seed, MLKEM768_SEED_SIZE, "ML-KEM-768 seed")
        return mlkem.MLKEM768PrivateKey.from_seed_bytes(seed).public_key().public_bytes_raw()

    async def mlkem768_encapsulate(self, public: bytes) -> tuple[bytes, bytes]:
        _need(public, MLKEM768_EK_SIZE, "ML-KEM-768 encapsulation key")
        try:
            key = mlkem.MLKEM768PublicKey.from_public_bytes(public)
        except ValueError as exc:  # FIPS 203 §7.2 modulus check failed
            raise CryptoError("ML-KEM-768 encapsulation key is malformed") from exc
        shared, ciphertext = key.encapsulate()
        return ciphertext, shared

    async def mlkem768_decapsulate(self, seed: bytes, ciphertext: bytes) -> bytes:
        _need(seed, MLKEM768_SEED_SIZE, "ML-KEM-768 seed")
        _need(ciphertext, MLKEM768_CT_SIZE, "ML-KEM-768 ciphertext")
        return mlkem.MLKEM768PrivateKey.from_seed_bytes(seed).decapsulate(ciphertext)

    async def hkdf_sha256(self, ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
        if not 0 < length <= 255 * 32:
            raise CryptoError("HKDF-SHA256 output length must be in 1..8160")
        return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt or None, info=info).derive(ikm)

    async def aes256_gcm_encrypt(self, key: bytes, nonce: bytes, plaintext: bytes,
                                 aad: bytes = b"") -> bytes:
        _need(key, AES_KEY_SIZE, "AES-256 key")
        _need(nonce, 12, "AES-GCM nonce")
        return AESGCM(key).encrypt(nonce, plaintext, aad)

    async def aes256_gcm_decrypt(self, key: bytes, nonce: bytes, ciphertext: bytes,
                                 aad: bytes = b"") -> bytes:
        _need(key, AES_KEY_SIZE, "AES-256 key")
        _need(nonce, 12, "AES-GCM nonce")
        try:
            return AESGCM(key).decrypt(nonce, ciphertext, aad)
        except InvalidTag as exc:
            raise CryptoError("AES-GCM authentication failed") from exc

    def aes256_ctr_stream(self, key: bytes, iv: bytes) -> _CtrStream:
        _need(key, AES_KEY_SIZE, "AES-256 key")
        _need(iv, 16, "AES-CTR initial counter block")
        return _CtrStream(key, iv)

    def random_bytes(self, n: int) -> bytes:
        return os.urandom(n)
