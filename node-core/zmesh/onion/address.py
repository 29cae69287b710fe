"""``.mesh`` onion-service addresses: ``<base32(key ‖ checksum[2] ‖ version)>.mesh``.

The layout is Tor's v3 onion address (rend-spec-v3 §6) with our checksum string: checksum =
SHA3-256(".mesh checksum" ‖ key ‖ version)[:2], version 1, so a typo is caught before anything is
fetched. It is the text form ``zmesh.identity`` gives a PeerId: what a ``.mesh`` name denotes (an
onion service's key, never a node's) is decided by whoever resolves it, not by the string.
"""

from __future__ import annotations

from ..crypto.provider import KEY_SIZE
from ..errors import OnionAddressError
from ..identity import key_from_text, key_text

SUFFIX = ".mesh"


def encode_address(service_public: bytes) -> str:
    """The lower-case ``….mesh`` address of a 32-byte Ed25519 service public key."""
    if not isinstance(service_public, bytes) or len(service_public) != KEY_SIZE:
        raise OnionAddressError(f"a service key is a {KEY_SIZE}-byte Ed25519 public key")
    return key_text(service_public) + SUFFIX


def decode_address(text: str) -> bytes:
    """The service public key of an address typed or sent by anyone; ``OnionAddressError`` for a
    wrong length, bad base32, a checksum mismatch (typo), an unknown version or no ``.mesh``.
    Upper case and one trailing dot (a fully qualified name) are accepted."""
    if not isinstance(text, str) or not text.isascii():
        raise OnionAddressError("a .mesh address is ASCII text")
    name = text.lower().removesuffix(".")
    if not name.endswith(SUFFIX):
        raise OnionAddressError("an onion-service address ends in .mesh")
    return key_from_text(name.removesuffix(SUFFIX), what="a .mesh address", error=OnionAddressError)


def is_mesh_name(host: str) -> bool:
    """Whether ``host`` is in the ``.mesh`` zone (so it must never reach DNS or an exit), valid or not."""
    return isinstance(host, str) and host.lower().removesuffix(".").endswith(SUFFIX)
