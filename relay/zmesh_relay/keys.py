"""A relay's keys on disk, in ``<data_dir>`` (created 0700): its long-term identity ``identity.key``
and its rotating onion keys ``onion_keys.state`` (``zmesh.onionkeys``), both 0600.

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
from collections.abc import Callable
from pathlib import Path

from zmesh.crypto.provider import CryptoProvider
from zmesh.errors import ConfigError
from zmesh.identity import Identity
from zmesh.onionkeys import OnionKeyRing

KEY_FILE = "identity.key"
ONION_FILE = "onion_keys.state"


def _folder(data_dir: str | Path) -> Path:
    folder = Path(data_dir).expanduser()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


def _read_private(path: Path) -> bytes:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}")
    return path.read_bytes()


async def load_or_create_identity(provider: CryptoProvider, data_dir: str | Path) -> Identity:
    folder = Path(data_dir).expanduser()
    path = folder / KEY_FILE
    try:
        folder = _folder(data_dir)
        if path.exists():
            return await Identity.from_bytes(provider, _read_private(path))
        identity = await Identity.generate(provider)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(identity.to_bytes())
        return identity
    except OSError as exc:
        raise ConfigError(f"cannot use data dir {folder}: {exc.strerror}") from exc


async def load_or_create_service_key(provider: CryptoProvider, data_dir: str | Path) -> bytes:
    """STAND-IN (the descriptor work brings the real one): the service's 32-byte seed, 0600."""
    path = _folder(data_dir) / "service.key"
    if path.exists():
        return _read_private(path)
    seed, _ = await provider.ed25519_generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(seed)
    return seed


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
