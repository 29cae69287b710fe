"""``CryptoProvider`` on the browser's WebCrypto (imported only under Pyodide).

The page registers ``web/zmesh-crypto.js`` as the JS module ``zmesh_js_crypto``. Each primitive is
one awaited call across the bridge (~0.1–0.2 ms), so the core calls the provider per handshake and
per *batch* of cells; the AES-CTR streams, which every cell goes through once per hop, make their
keystream ahead so that a batch rarely awaits at all (docs/browser.md, Performance).
Chromium ≥ 156 has X25519, Ed25519, HKDF, AES-GCM/CTR, ML-KEM-768 and ML-DSA-65 in WebCrypto. Where a
browser lacks ML-KEM, the pure-Python kyber-py (shipped in the page's bundle) takes over, with the
same 64-byte seed keys, so both paths pass the same vector files. ML-DSA-65 (pure mode, empty
context, 32-byte seed keys) likewise falls back to the pure-Python dilithium-py; measured cost per
verification of each: docs/browser.md.
"""

from __future__ import annotations

import os
from typing import Any

import zmesh_js_crypto as js  # type: ignore[import-not-found]  # registered by the page
from pyodide.ffi import to_js  # type: ignore[import-not-found]

from ..crypto.provider import KEY_SIZE, CheckedProvider
from ..errors import CryptoError


def _b(proxy) -> bytes:  # noqa: ANN001 - a JS Uint8Array proxy
    return proxy.to_bytes()


class _CtrStream:
    """AES-256-CTR on ``zmesh-crypto.js``'s ``CtrStream``, which makes keystream ahead in big
    WebCrypto calls and XORs it in JS: a batch of cells normally costs one synchronous call and two
    copies, and only awaits when the keystream made ahead has run out."""

    def __init__(self, key: bytes, iv: bytes) -> None:
        self._js = js.CtrStream.new(to_js(key), to_js(iv))

    async def apply(self, data: bytes) -> bytes:
        if not data:
            return b""
        array = to_js(data)  # a copy the JS side XORs in place
        out = self._js.applyNow(array)
        if out is None:
            out = await self._js.apply(array)
        return _b(out)


class _KyberPy:
    """ML-KEM-768 in pure Python (kyber-py): the fallback for browsers without it in WebCrypto."""

    def __init__(self) -> None:
        from kyber_py.ml_kem import ML_KEM_768  # type: ignore[import-not-found]

        self._kem = ML_KEM_768

    async def public(self, seed: bytes) -> bytes:
        return self._kem.key_derive(seed)[0]

    async def encapsulate(self, public: bytes) -> tuple[bytes, bytes]:
        shared, ciphertext = self._kem.encaps(public)
        return ciphertext, shared

    async def decapsulate(self, seed: bytes, ciphertext: bytes) -> bytes:
        return self._kem.decaps(self._kem.key_derive(seed)[1], ciphertext)


class _DilithiumPy:
    """ML-DSA-65 in pure Python (dilithium-py): the fallback for browsers without it in WebCrypto."""

    def __init__(self) -> None:
        from dilithium_py.ml_dsa import ML_DSA_65  # type: ignore[import-not-found]

        self._dsa = ML_DSA_65

    async def public(self, seed: bytes) -> bytes:
        return self._dsa.key_derive(seed)[0]

    async def sign(self, seed: bytes, message: bytes) -> bytes:
        return self._dsa.sign(self._dsa.key_derive(seed)[1], message)  # hedged, empty context, as OpenSSL's

    async def verify(self, public: bytes, signature: bytes, message: bytes) -> bool:
        try:
            return bool(self._dsa.verify(public, message, signature))
        except (ValueError, IndexError):  # an undecodable signature is a failed one
            return False


class _WebCryptoDsa:
    async def public(self, seed: bytes) -> bytes:
        return _b(await js.mldsaPublic(to_js(seed)))

    async def sign(self, seed: bytes, message: bytes) -> bytes:
        return _b(await js.mldsaSign(to_js(seed), to_js(message)))

    async def verify(self, public: bytes, signature: bytes, message: bytes) -> bool:
        return bool(await js.mldsaVerify(to_js(public), to_js(signature), to_js(message)))


class _WebCryptoKem:
    async def public(self, seed: bytes) -> bytes:
        return _b(await js.mlkemPublic(to_js(seed)))

    async def encapsulate(self, public: bytes) -> tuple[bytes, bytes]:
        ciphertext, shared = await js.mlkemEncapsulate(to_js(public))
        return _b(ciphertext), _b(shared)

    async def decapsulate(self, seed: bytes, ciphertext: bytes) -> bytes:
        return _b(await js.mlkemDecapsulate(to_js(seed), to_js(ciphertext)))


# algorithm -> (the fallback's name, the fallback, the WebCrypto path, the JS probe for WebCrypto support)
_PATHS = {"mlkem": ("kyber-py", _KyberPy, _WebCryptoKem, "mlkemSupported"),
          "mldsa": ("dilithium-py", _DilithiumPy, _WebCryptoDsa, "mldsaSupported")}


class WebCryptoProvider(CheckedProvider):
    """``mlkem``: "webcrypto", "kyber-py"; ``mldsa``: "webcrypto", "dilithium-py"; None uses
    WebCrypto where the browser has it. ``CheckedProvider`` checks every argument before a primitive
    here runs."""

    name = "webcrypto"

    def __init__(self, mlkem: str | None = None, mldsa: str | None = None) -> None:
        self._choices = {"mlkem": mlkem, "mldsa": mldsa}
        for kind, choice in self._choices.items():
            if choice not in (None, "webcrypto", _PATHS[kind][0]):
                raise CryptoError(f"{kind} must be 'webcrypto' or {_PATHS[kind][0]!r}")
        self._paths: dict[str, Any] = {}

    async def _path(self, kind: str) -> Any:
        if kind not in self._paths:
            fallback_name, fallback, webcrypto, probe = _PATHS[kind]
            choice = self._choices[kind] or ("webcrypto" if await getattr(js, probe)() else fallback_name)
            self._paths[kind] = webcrypto() if choice == "webcrypto" else fallback()
        return self._paths[kind]

    async def x25519_generate(self) -> tuple[bytes, bytes]:
        private = os.urandom(KEY_SIZE)
        return private, await self.x25519_public(private)

    async def _x25519_public(self, private: bytes) -> bytes:
        return _b(await js.x25519Public(to_js(private)))

    async def _x25519(self, private: bytes, peer_public: bytes) -> bytes:
        try:
            return _b(await js.x25519(to_js(private), to_js(peer_public)))
        except Exception as exc:  # WebCrypto rejects low-order points with an OperationError
            raise CryptoError("X25519 peer key is a low-order point") from exc

    async def ed25519_generate(self) -> tuple[bytes, bytes]:
        private = os.urandom(KEY_SIZE)
        return private, await self.ed25519_public(private)

    async def _ed25519_public(self, private: bytes) -> bytes:
        return _b(await js.ed25519Public(to_js(private)))

    async def _ed25519_sign(self, private: bytes, message: bytes) -> bytes:
        return _b(await js.ed25519Sign(to_js(private), to_js(message)))

    async def _ed25519_verify(self, public: bytes, signature: bytes, message: bytes) -> bool:
        return bool(await js.ed25519Verify(to_js(public), to_js(signature), to_js(message)))

    async def _mlkem768_public(self, seed: bytes) -> bytes:
        return await (await self._path("mlkem")).public(seed)

    async def _mlkem768_encapsulate(self, public: bytes) -> tuple[bytes, bytes]:
        try:
            return await (await self._path("mlkem")).encapsulate(public)
        except Exception as exc:  # the FIPS 203 modulus check failed
            raise CryptoError("ML-KEM-768 encapsulation key is malformed") from exc

    async def _mlkem768_decapsulate(self, seed: bytes, ciphertext: bytes) -> bytes:
        return await (await self._path("mlkem")).decapsulate(seed, ciphertext)

    async def _mldsa65_public(self, seed: bytes) -> bytes:
        return await (await self._path("mldsa")).public(seed)

    async def _mldsa65_sign(self, seed: bytes, message: bytes) -> bytes:
        return await (await self._path("mldsa")).sign(seed, message)

    async def _mldsa65_verify(self, public: bytes, signature: bytes, message: bytes) -> bool:
        return await (await self._path("mldsa")).verify(public, signature, message)

    async def _hkdf_sha256(self, ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
        # RFC 5869: an absent salt is HashLen zero bytes (WebCrypto wants it explicit).
        return _b(await js.hkdf(to_js(ikm), to_js(salt or bytes(32)), to_js(info), length))

    async def _aes256_gcm_encrypt(self, key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return _b(await js.aesGcmEncrypt(to_js(key), to_js(nonce), to_js(plaintext), to_js(aad)))

    async def _aes256_gcm_decrypt(self, key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        result = await js.aesGcmDecrypt(to_js(key), to_js(nonce), to_js(ciphertext), to_js(aad))
        if result is None:
            raise CryptoError("AES-GCM authentication failed")
        return _b(result)

    def _aes256_ctr_stream(self, key: bytes, iv: bytes) -> _CtrStream:
        return _CtrStream(key, iv)

    def random_bytes(self, n: int) -> bytes:
        return os.urandom(n)  # Pyodide backs os.urandom with crypto.getRandomValues
