"""Crypto for the core, behind one interface so the same protocol code runs natively and in a tab.

``CryptoProvider`` (in ``provider``) is what the core calls; callers pass one in. Get the native one
(on the ``cryptography`` package) from ``zmesh.native.crypto``, the tab's (on WebCrypto) from
``zmesh.browser.webcrypto``. Neither is imported here: importing ``zmesh`` must not pull in a
native library, and the interface does not depend on its implementations.
"""

from .provider import (
    AES_KEY_SIZE,
    ED25519_SIG_SIZE,
    KEY_SIZE,
    MLDSA65_PUBLIC_SIZE,
    MLDSA65_SEED_SIZE,
    MLDSA65_SIG_SIZE,
    MLKEM768_CT_SIZE,
    MLKEM768_EK_SIZE,
    MLKEM768_SEED_SIZE,
    CryptoProvider,
    StreamCipher,
)

__all__ = [
    "AES_KEY_SIZE",
    "ED25519_SIG_SIZE",
    "KEY_SIZE",
    "MLDSA65_PUBLIC_SIZE",
    "MLDSA65_SEED_SIZE",
    "MLDSA65_SIG_SIZE",
    "MLKEM768_CT_SIZE",
    "MLKEM768_EK_SIZE",
    "MLKEM768_SEED_SIZE",
    "CryptoProvider",
    "StreamCipher",
]
