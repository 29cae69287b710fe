"""The ``CryptoProvider`` interface.

Why async: WebCrypto only offers promises, and one awaited call from Python in Pyodide costs
~0.1–0.2 ms, so the core awaits providers per *handshake* and per *batch of cells*, never per byte.
Natively the coroutines finish without suspending.

Private keys are opaque ``bytes`` (raw 32-byte X25519/Ed25519 scalars, the 64-byte ML-KEM seed
d‖z) so that both providers can store and exchange them identically and test vectors can drive
either one.
"""

from __future__ import annotations

from typing import Protocol

KEY_SIZE = 32
AES_KEY_SIZE = 32
ED25519_SIG_SIZE = 64
MLKEM768_EK_SIZE = 1184
MLKEM768_CT_SIZE = 1088
MLKEM768_SEED_SIZE = 64


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

