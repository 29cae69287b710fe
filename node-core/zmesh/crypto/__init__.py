"""Crypto for the core, behind one interface so the same protocol code runs natively and in a tab.

``CryptoProvider`` (in ``provider``) is what the core calls. ``native`` implements it on the
``cryptography`` package; the browser adapter implements it on WebCrypto. Neither is imported here:
importing ``zmesh`` must not pull in a native library.
"""

from .provider import (
    AES_KEY_SIZE,
    ED25519_SIG_SIZE,
    KEY_SIZE,
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
    "MLKEM768_CT_SIZE",
    "MLKEM768_EK_SIZE",
    "MLKEM768_SEED_SIZE",
    "CryptoProvider",
    "StreamCipher",
]
