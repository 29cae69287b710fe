"""The ``CryptoProvider`` interface.

Why async: WebCrypto only offers promises, and one awaited call from Python in Pyodide costs
~0.1–0.2 ms, so the core awaits providers per *handshake* and per *batch of cells*, never per byte.
Natively the coroutines finish without suspending.

Private keys are opaque ``bytes`` (raw 32-byte X25519/Ed25519 scalars, the 64-byte ML-KEM seed
d‖z) so that both providers can store and exchange them identically and test vectors can drive
either one.

``CheckedProvider`` holds the argument checks both providers share, written once: its public
methods check sizes and call the ``_``-prefixed primitive each provider implements.
"""

from __future__ import annotations

from typing import Protocol

from ..errors import CryptoError

KEY_SIZE = 32
AES_KEY_SIZE = 32
ED25519_SIG_SIZE = 64
MLKEM768_EK_SIZE = 1184
MLKEM768_CT_SIZE = 1088
MLKEM768_SEED_SIZE = 64
MLDSA65_SEED_SIZE = 32
MLDSA65_PUBLIC_SIZE = 1952
MLDSA65_SIG_SIZE = 3309


class StreamCipher(Protocol):
    """A stateful AES-256-CTR keystream: successive calls continue where the last one stopped.

    Applying it to ``a`` then ``b`` equals applying it to ``a + b``, which lets a relay decrypt a
    whole batch of cells in one call.
    """

    async def apply(self, data: bytes) -> bytes: ...


class CryptoProvider(Protocol):
    """Every primitive the protocol uses. Implementations must agree byte for byte."""

    name: str

    # X25519 (RFC 7748)
    async def x25519_generate(self) -> tuple[bytes, bytes]:
        """Return ``(private, public)``."""

    async def x25519_public(self, private: bytes) -> bytes: ...

    async def x25519(self, private: bytes, peer_public: bytes) -> bytes:
        """Shared secret; raises ``CryptoError`` for an all-zero result (low-order point)."""

    # Ed25519 (RFC 8032)
    async def ed25519_generate(self) -> tuple[bytes, bytes]: ...

    async def ed25519_public(self, private: bytes) -> bytes: ...

    async def ed25519_sign(self, private: bytes, message: bytes) -> bytes: ...

    async def ed25519_verify(self, public: bytes, signature: bytes, message: bytes) -> bool:
        """True if valid; False (never an exception) for a bad signature or malformed key."""

    # ML-KEM-768 (FIPS 203)
    async def mlkem768_generate(self) -> tuple[bytes, bytes]:
        """Return ``(seed d‖z, encapsulation key)``."""

    async def mlkem768_public(self, seed: bytes) -> bytes: ...

    async def mlkem768_encapsulate(self, public: bytes) -> tuple[bytes, bytes]:
        """Return ``(ciphertext, shared_secret)``."""

    async def mlkem768_decapsulate(self, seed: bytes, ciphertext: bytes) -> bytes: ...

    # ML-DSA-65 (FIPS 204), pure mode with an empty context string; private keys are the 32-byte seed ξ
    async def mldsa65_generate(self) -> tuple[bytes, bytes]:
        """Return ``(seed, public key)``."""

    async def mldsa65_public(self, seed: bytes) -> bytes: ...

    async def mldsa65_sign(self, seed: bytes, message: bytes) -> bytes: ...

    async def mldsa65_verify(self, public: bytes, signature: bytes, message: bytes) -> bool:
        """True if valid; False (never an exception) for a bad signature or malformed key."""

    # Symmetric
    async def hkdf_sha256(self, ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes: ...

    async def aes256_gcm_encrypt(self, key: bytes, nonce: bytes, plaintext: bytes,
                                 aad: bytes = b"") -> bytes: ...

    async def aes256_gcm_decrypt(self, key: bytes, nonce: bytes, ciphertext: bytes,
                                 aad: bytes = b"") -> bytes:
        """Raises ``CryptoError`` if the tag does not verify."""

    def aes256_ctr_stream(self, key: bytes, iv: bytes) -> StreamCipher: ...

    def random_bytes(self, n: int) -> bytes:
        """CSPRNG output; synchronous in every runtime."""



AES_GCM_NONCE_SIZE = 12
AES_CTR_IV_SIZE = 16
HKDF_MAX_LENGTH = 255 * 32


def _need(value: bytes, size: int, what: str) -> None:
    if not isinstance(value, bytes | bytearray | memoryview) or len(value) != size:
        raise CryptoError(f"{what} must be {size} bytes")


class CheckedProvider:
    """Base of both providers: every public method validates its arguments (``CryptoError``, or
    ``False`` from ``ed25519_verify``) before the subclass's primitive sees them."""

    async def x25519_public(self, private: bytes) -> bytes:
        _need(private, KEY_SIZE, "X25519 private key")
        return await self._x25519_public(private)

    async def x25519(self, private: bytes, peer_public: bytes) -> bytes:
        _need(private, KEY_SIZE, "X25519 private key")
        _need(peer_public, KEY_SIZE, "X25519 public key")
        shared = await self._x25519(private, peer_public)
        if shared == bytes(KEY_SIZE):
            raise CryptoError("X25519 peer key is a low-order point")
        return shared

    async def ed25519_public(self, private: bytes) -> bytes:
        _need(private, KEY_SIZE, "Ed25519 private key")
        return await self._ed25519_public(private)

    async def ed25519_sign(self, private: bytes, message: bytes) -> bytes:
        _need(private, KEY_SIZE, "Ed25519 private key")
        return await self._ed25519_sign(private, message)

    async def ed25519_verify(self, public: bytes, signature: bytes, message: bytes) -> bool:
        if len(public) != KEY_SIZE or len(signature) != ED25519_SIG_SIZE:
            return False
        return await self._ed25519_verify(public, signature, message)

    async def mlkem768_generate(self) -> tuple[bytes, bytes]:
        seed = self.random_bytes(MLKEM768_SEED_SIZE)
        return seed, await self.mlkem768_public(seed)

    async def mlkem768_public(self, seed: bytes) -> bytes:
        _need(seed, MLKEM768_SEED_SIZE, "ML-KEM-768 seed")
        return await self._mlkem768_public(seed)

    async def mlkem768_encapsulate(self, public: bytes) -> tuple[bytes, bytes]:
        _need(public, MLKEM768_EK_SIZE, "ML-KEM-768 encapsulation key")
        return await self._mlkem768_encapsulate(public)

    async def mlkem768_decapsulate(self, seed: bytes, ciphertext: bytes) -> bytes:
        _need(seed, MLKEM768_SEED_SIZE, "ML-KEM-768 seed")
        _need(ciphertext, MLKEM768_CT_SIZE, "ML-KEM-768 ciphertext")
        return await self._mlkem768_decapsulate(seed, ciphertext)

    async def mldsa65_generate(self) -> tuple[bytes, bytes]:
        seed = self.random_bytes(MLDSA65_SEED_SIZE)
        return seed, await self.mldsa65_public(seed)

    async def mldsa65_public(self, seed: bytes) -> bytes:
        _need(seed, MLDSA65_SEED_SIZE, "ML-DSA-65 seed")
        return await self._mldsa65_public(seed)

    async def mldsa65_sign(self, seed: bytes, message: bytes) -> bytes:
        _need(seed, MLDSA65_SEED_SIZE, "ML-DSA-65 seed")
        return await self._mldsa65_sign(seed, message)

    async def mldsa65_verify(self, public: bytes, signature: bytes, message: bytes) -> bool:
        if len(public) != MLDSA65_PUBLIC_SIZE or len(signature) != MLDSA65_SIG_SIZE:
            return False
        return await self._mldsa65_verify(public, signature, message)

    async def hkdf_sha256(self, ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
        if not 0 < length <= HKDF_MAX_LENGTH:
            raise CryptoError(f"HKDF-SHA256 output length must be in 1..{HKDF_MAX_LENGTH}")
        return await self._hkdf_sha256(ikm, salt, info, length)

    async def aes256_gcm_encrypt(self, key: bytes, nonce: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
        _need(key, AES_KEY_SIZE, "AES-256 key")
        _need(nonce, AES_GCM_NONCE_SIZE, "AES-GCM nonce")
        return await self._aes256_gcm_encrypt(key, nonce, plaintext, aad)

    async def aes256_gcm_decrypt(self, key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes = b"") -> bytes:
        _need(key, AES_KEY_SIZE, "AES-256 key")
        _need(nonce, AES_GCM_NONCE_SIZE, "AES-GCM nonce")
        return await self._aes256_gcm_decrypt(key, nonce, ciphertext, aad)

    def aes256_ctr_stream(self, key: bytes, iv: bytes) -> StreamCipher:
        _need(key, AES_KEY_SIZE, "AES-256 key")
        _need(iv, AES_CTR_IV_SIZE, "AES-CTR initial counter block")
        return self._aes256_ctr_stream(key, iv)

    # The primitives, called only with checked arguments.
    def random_bytes(self, n: int) -> bytes:
        raise NotImplementedError

    async def _x25519_public(self, private: bytes) -> bytes:
        raise NotImplementedError

    async def _x25519(self, private: bytes, peer_public: bytes) -> bytes:
        raise NotImplementedError

    async def _ed25519_public(self, private: bytes) -> bytes:
        raise NotImplementedError

    async def _ed25519_sign(self, private: bytes, message: bytes) -> bytes:
        raise NotImplementedError

    async def _ed25519_verify(self, public: bytes, signature: bytes, message: bytes) -> bool:
        raise NotImplementedError

    async def _mlkem768_public(self, seed: bytes) -> bytes:
        raise NotImplementedError

    async def _mlkem768_encapsulate(self, public: bytes) -> tuple[bytes, bytes]:
        raise NotImplementedError

    async def _mlkem768_decapsulate(self, seed: bytes, ciphertext: bytes) -> bytes:
        raise NotImplementedError

    async def _mldsa65_public(self, seed: bytes) -> bytes:
        raise NotImplementedError

    async def _mldsa65_sign(self, seed: bytes, message: bytes) -> bytes:
        raise NotImplementedError

    async def _mldsa65_verify(self, public: bytes, signature: bytes, message: bytes) -> bool:
        raise NotImplementedError

    async def _hkdf_sha256(self, ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
        raise NotImplementedError

    async def _aes256_gcm_encrypt(self, key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        raise NotImplementedError

    async def _aes256_gcm_decrypt(self, key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        raise NotImplementedError

    def _aes256_ctr_stream(self, key: bytes, iv: bytes) -> StreamCipher:
        raise NotImplementedError
