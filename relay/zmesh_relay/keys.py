"""A node's keys on disk, in ``<data_dir>`` (created 0700): its long-term identity ``identity.key``,
its rotating onion keys ``onion_keys.state`` (``zmesh.onionkeys``) and, for ``zmesh service``, the
onion service's key ``service.key`` (whose public half is the ``.mesh`` address), all 0600; and,
anywhere the user names, an onion client's authorisation key (``load_or_create_client_auth_key``).

A key file that others can read is refused (like ssh does): whoever reads it can impersonate the
relay or decrypt the ML-KEM half of its circuit handshakes. The onion key state is rewritten on
every rotation by atomic replace (a temporary file in the same folder, fsynced, then renamed), so a
crash leaves the old state or the new one, never half of either; the replaced file's blocks are
not overwritten (the filesystem may keep them until reused). The identity file also holds the onion
keys it was created with; a relay does not use them (it answers only for its ring's sets).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from zmesh.crypto.provider import KEY_SIZE, CryptoProvider
from zmesh.encoding import pack_canonical, unpack_canonical
from zmesh.errors import ConfigError, ZmeshError
from zmesh.hybrid import HybridKey
from zmesh.identity import Identity
from zmesh.onionkeys import OnionKeyRing

KEY_FILE = "identity.key"
ONION_FILE = "onion_keys.state"
SERVICE_KEY_FILE = "service.key"
MLDSA_KEY_FILE = "descriptor_mldsa65.key"
_SERVICE_KEY_VERSION = 1
T = TypeVar("T")


def _folder(data_dir: str | Path) -> Path:
    folder = Path(data_dir).expanduser()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


def _read_private(path: Path) -> bytes:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}")
    return path.read_bytes()


async def _load_or_create(data_dir: str | Path, name: str, load: Callable[[bytes], Awaitable[T]],
                          create: Callable[[], Awaitable[tuple[T, bytes]]]) -> T:
    """The key in ``<data_dir>/<name>`` (refused if others can read it), or a new one from
    ``create`` (the key and its file bytes) written 0600 with O_EXCL before it is used."""
    folder = Path(data_dir).expanduser()
    path = folder / name
    try:
        folder = _folder(data_dir)
        if path.exists():
            return await load(_read_private(path))
        key, data = await create()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return key
    except OSError as exc:
        raise ConfigError(f"cannot use data dir {folder}: {exc.strerror}") from exc


async def load_or_create_identity(provider: CryptoProvider, data_dir: str | Path) -> Identity:
    async def create() -> tuple[Identity, bytes]:
        identity = await Identity.generate(provider)
        return identity, identity.to_bytes()

    return await _load_or_create(data_dir, KEY_FILE, lambda data: Identity.from_bytes(provider, data), create)


async def load_or_create_service_key(provider: CryptoProvider, data_dir: str | Path) -> bytes:
    """The onion service's Ed25519 seed from ``<data_dir>/service.key``, or a new one saved there.
    Losing the file loses the ``.mesh`` address; copying it (and nothing else) moves the service.
    The file is canonical msgpack ``{"v": 1, "seed": <32 bytes>}``."""
    return await _load_or_create_seed(data_dir, SERVICE_KEY_FILE, "zmesh service key", provider.ed25519_generate)


async def load_or_create_descriptor_mldsa_key(provider: CryptoProvider, data_dir: str | Path) -> bytes:
    """The relay's ML-DSA-65 seed for hybrid-signed descriptors (docs/directory.md) from
    ``<data_dir>/descriptor_mldsa65.key``, same file shape as ``service.key``, or a new one."""
    return await _load_or_create_seed(data_dir, MLDSA_KEY_FILE, "zmesh ML-DSA-65 key", provider.mldsa65_generate)


async def _load_or_create_seed(data_dir: str | Path, name: str, what: str,
                               generate: Callable[[], Awaitable[tuple[bytes, bytes]]]) -> bytes:
    async def load(data: bytes) -> bytes:
        path = Path(data_dir).expanduser() / name
        try:
            saved = unpack_canonical(data, max_size=256, what=str(path))
        except ZmeshError as exc:
            raise ConfigError(f"{path} is not a {what}: {exc}") from exc
        if (not isinstance(saved, dict) or saved.keys() != {"v", "seed"} or saved["v"] != _SERVICE_KEY_VERSION
                or not isinstance(saved["seed"], bytes) or len(saved["seed"]) != KEY_SIZE):
            raise ConfigError(f"{path} is not a version-{_SERVICE_KEY_VERSION} {what}")
        return saved["seed"]

    async def create() -> tuple[bytes, bytes]:
        seed, _ = await generate()
        return seed, pack_canonical({"v": _SERVICE_KEY_VERSION, "seed": seed})

    return await _load_or_create(data_dir, name, load, create)


async def load_or_create_client_auth_key(provider: CryptoProvider, path: str | Path) -> bytes:
    """An onion client's X25519 private key from ``path`` (64 hex digits, 0600), or a new one saved
    there; its public half is (re)written beside it in ``<path>.pub`` (not secret: what a service
    lists with ``--authorized-client``). One key for every service that authorises this client."""
    file = Path(path).expanduser()
    try:
        file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if file.exists():
            text = _read_private(file).decode("ascii", "replace").strip()
            if len(text) != 2 * KEY_SIZE or any(c not in "0123456789abcdefABCDEF" for c in text):
                raise ConfigError(f"{file} is not a client authorisation key (64 hex digits)")
            secret = bytes.fromhex(text)
        else:
            secret, _ = await provider.x25519_generate()
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secret.hex() + "\n")
        file.with_name(file.name + ".pub").write_text((await provider.x25519_public(secret)).hex() + "\n")
    except OSError as exc:
        raise ConfigError(f"cannot use the client authorisation key {file}: {exc.strerror}") from exc
    return secret


async def load_or_create_onion_ring(provider: CryptoProvider, data_dir: str | Path, clock: Callable[[], float], *,
                                    lifetime: float, grace: float) -> OnionKeyRing:
    """The ring saved in ``data_dir`` (retired sets still in their grace period keep working across
    a restart), or a fresh one, saved before it is used."""
    path = Path(data_dir).expanduser() / ONION_FILE
    try:
        if path.exists():
            return await OnionKeyRing.from_bytes(provider, _read_private(path), clock, lifetime=lifetime, grace=grace)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    ring = await OnionKeyRing.generate(provider, clock, lifetime=lifetime, grace=grace)
    save_onion_ring(ring, data_dir)
    return ring


def save_onion_ring(ring: OnionKeyRing, data_dir: str | Path) -> None:
    """Replace the saved ring atomically with ``ring``'s state (mode 0600)."""
    folder = Path(data_dir).expanduser()
    try:
        folder = _folder(data_dir)
        temporary = folder / f".{ONION_FILE}.tmp"
        with contextlib.suppress(FileNotFoundError):  # left by a crash: O_EXCL makes ours 0600
            temporary.unlink()
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(ring.to_bytes())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, folder / ONION_FILE)
    except OSError as exc:
        raise ConfigError(f"cannot save the onion keys in {folder}: {exc.strerror}") from exc


AUTHORITY_KEY_FILE = "authority.key"


async def load_or_create_authority_key(provider: CryptoProvider, data_dir: str | Path) -> HybridKey:
    """A directory authority's hybrid (Ed25519 + ML-DSA-65) key from ``<data_dir>/authority.key``,
    or a new one saved there (0600). Its fingerprint is what clients and peers are configured with."""
    async def create() -> tuple[HybridKey, bytes]:
        key = await HybridKey.generate(provider)
        return key, key.to_bytes()

    return await _load_or_create(data_dir, AUTHORITY_KEY_FILE, lambda data: HybridKey.from_bytes(provider, data),
                                 create)
