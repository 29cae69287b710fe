"""A relay's long-term identity on disk: ``<data_dir>/identity.key``, created 0600 in a 0700 folder.

A key file that others can read is refused (like ssh does): whoever reads it can impersonate the
relay and decrypt the ML-KEM half of its circuit handshakes.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from zmesh.crypto.provider import CryptoProvider
from zmesh.errors import ConfigError
from zmesh.identity import Identity

KEY_FILE = "identity.key"


async def load_or_create_identity(provider: CryptoProvider, data_dir: str | Path) -> Identity:
    folder = Path(data_dir).expanduser()
    path = folder / KEY_FILE
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.exists():
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                raise ConfigError(f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}")
            return await Identity.from_bytes(provider, path.read_bytes())
        identity = await Identity.generate(provider)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(identity.to_bytes())
        return identity
    except OSError as exc:
        raise ConfigError(f"cannot use data dir {folder}: {exc.strerror}") from exc
