"""STAND-IN until the descriptor work lands (helper onion-desc): the shapes of ``address.py`` and
``descriptor.py`` that introduction and rendezvous are built against. Delete on merge."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from ..crypto.provider import KEY_SIZE
from ..errors import ProtocolError


class OnionAddressError(ProtocolError):
    """A malformed ``.mesh`` address."""

_SUFFIX = ".mesh"


def encode_address(service_public32: bytes) -> str:
    check = hashlib.sha256(b".mesh checksum" + service_public32).digest()[:2]
    return base64.b32encode(service_public32 + check + b"\x01").decode().rstrip("=").lower() + _SUFFIX


def decode_address(text: str) -> bytes:
    label = text.lower().removesuffix(_SUFFIX)
    try:
        raw = base64.b32decode(label.upper() + "=" * (-len(label) % 8))
    except ValueError as exc:
        raise OnionAddressError(f"{text!r} is not a .mesh address") from exc
    if len(raw) != KEY_SIZE + 3 or encode_address(raw[:KEY_SIZE]) != text.lower():
        raise OnionAddressError(f"{text!r} is not a valid .mesh address (a typo?)")
    return raw[:KEY_SIZE]


def is_mesh_name(host: str) -> bool:
    return host.lower().endswith(_SUFFIX)


@dataclass(frozen=True, slots=True)
class IntroPoint:
    relay_id: str
    auth_key: bytes


@dataclass(frozen=True, slots=True)
class ServiceDescriptor:
    intro_points: tuple[IntroPoint, ...]
    x25519_public: bytes
    mlkem768_public: bytes


class StoreDescriptors:
    """The signal server's descriptor store: not in this branch yet."""

    def __init__(self, http: object, signal_url: str, provider: object) -> None:
        pass

    async def publish(self, keys: object, descriptor: ServiceDescriptor) -> None:
        raise ProtocolError("the onion descriptor store is not in this build yet")

    async def lookup(self, address: str) -> ServiceDescriptor:
        raise ProtocolError("the onion descriptor store is not in this build yet")
