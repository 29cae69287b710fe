"""``CryptoProvider`` on the ``cryptography`` package (OpenSSL). Native runtimes only."""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..crypto.provider import CheckedProvider
from ..errors import CryptoError

_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw
_RAW_PRIV = serialization.PrivateFormat.Raw
_NO_ENC = serialization.NoEncryption()


class _CtrStream:
    def __init__(self, key: bytes, iv: bytes) -> None:
        self._ctx = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()

    async def apply(self, data: bytes) -> bytes:
        return self._ctx.update(data)


class NativeCryptoProvider(CheckedProvider):
    """Native provider; ``CheckedProvider`` checks every argument before a primitive here runs."""

    name = "native"

    async def x25519_generate(self) -> tuple[bytes, bytes]:
        key = X25519PrivateKey.generate()
        return key.private_bytes(_RAW, _RAW_PRIV, _NO_ENC), key.public_key().public_bytes(_RAW, _RAW_PUB)

    async def _x25519_public(self, private: bytes) -> bytes:
        return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(_RAW, _RAW_PUB)

    async def _x25519(self, private: bytes, peer_public: bytes) -> bytes:
        try:
            return X25519PrivateKey.from_private_bytes(private).exchange(
                X25519PublicKey.from_public_bytes(peer_public))
        except ValueError as exc:  # all-zero shared secret: a low-order point
            raise CryptoError("X25519 peer key is a low-order point") from exc

    async def ed25519_generate(self) -> tuple[bytes, bytes]:
        key = Ed25519PrivateKey.generate()
        return key.private_bytes(_RAW, _RAW_PRIV, _NO_ENC), key.public_key().public_bytes(_RAW, _RAW_PUB)

    async def _ed25519_public(self, private: bytes) -> bytes:
        return Ed25519PrivateKey.from_private_bytes(private).public_key().public_bytes(_RAW, _RAW_PUB)

    async def _ed25519_sign(self, private: bytes, message: bytes) -> bytes:
        return Ed25519PrivateKey.from_private_bytes(private).sign(message)

    async def _ed25519_verify(self, public: bytes, signature: bytes, message: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True

    async def _mlkem768_public(self, seed: bytes) -> bytes:
        return mlkem.MLKEM768PrivateKey.from_seed_bytes(seed).public_key().public_bytes_raw()

    async def _mlkem768_encapsulate(self, public: bytes) -> tuple[bytes, bytes]:
        try:
            key = mlkem.MLKEM768PublicKey.from_public_bytes(public)
        except ValueError as exc:  # FIPS 203 §7.2 modulus check failed
            raise CryptoError("ML-KEM-768 encapsulation key is malformed") from exc
        shared, ciphertext = key.encapsulate()
        return ciphertext, shared

    async def _mlkem768_decapsulate(self, seed: bytes, ciphertext: bytes) -> bytes:
        return mlkem.MLKEM768PrivateKey.from_seed_bytes(seed).decapsulate(ciphertext)

    async def _mldsa65_public(self, seed: bytes) -> bytes:
        return mldsa.MLDSA65PrivateKey.from_seed_bytes(seed).public_key().public_bytes_raw()

    async def _mldsa65_sign(self, seed: bytes, message: bytes) -> bytes:
        return mldsa.MLDSA65PrivateKey.from_seed_bytes(seed).sign(message)

    async def _mldsa65_verify(self, public: bytes, signature: bytes, message: bytes) -> bool:
        try:
            mldsa.MLDSA65PublicKey.from_public_bytes(public).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True

    async def _hkdf_sha256(self, ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt or None, info=info).derive(ikm)

    async def _aes256_gcm_encrypt(self, key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return AESGCM(key).encrypt(nonce, plaintext, aad)

    async def _aes256_gcm_decrypt(self, key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        try:
            return AESGCM(key).decrypt(nonce, ciphertext, aad)
        except InvalidTag as exc:
            raise CryptoError("AES-GCM authentication failed") from exc

    def _aes256_ctr_stream(self, key: bytes, iv: bytes) -> _CtrStream:
        return _CtrStream(key, iv)

    def random_bytes(self, n: int) -> bytes:
        return os.urandom(n)
