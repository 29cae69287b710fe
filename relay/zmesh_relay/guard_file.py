"""The client's entry guards on disk: ``<client.data_dir>/guards.state``, 0600 in a 0700 folder.

The file says which relays this user enters the mesh through, so only its owner may read it, and it
is replaced atomically (write a temporary file, fsync, rename) so a crash never leaves half a
sample. A file that does not decode is refused with a ``ConfigError`` naming it, and the client does
not start: silently drawing a fresh sample would throw away the protection guards give (and an
attacker who can corrupt the file could force it). Moving the file away is how a user asks for a
fresh sample. Without a data dir the guards live in memory and a restart draws new ones.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from pathlib import Path

from zmesh.errors import ConfigError
from zmesh.guards import GuardManager, GuardParams

log = logging.getLogger(__name__)

GUARD_FILE = "guards.state"


def open_guards(data_dir: str, params: GuardParams | None = None) -> GuardManager:
    """The guard manager for ``data_dir`` (loaded, or empty if the file does not exist yet), saving
    every change; with an empty ``data_dir``, one kept in memory only."""
    rng = random.SystemRandom()
    if not data_dir:
        log.warning("client.data_dir is not set: entry guards are kept in memory and a restart draws new ones")
        return GuardManager(params, clock=time.time, rng=rng)
    folder = Path(data_dir).expanduser()
    path = folder / GUARD_FILE
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = path.read_bytes() if path.exists() else None
    except OSError as exc:
        raise ConfigError(f"cannot use data dir {folder}: {exc.strerror}") from exc

    def save(state: bytes) -> None:
        try:
            write_atomically(path, state)
        except ConfigError as exc:  # a full disk must not stop circuits; the next change tries again
            log.warning("%s", exc)

    if data is None:
        return GuardManager(params, clock=time.time, rng=rng, on_change=save)
    return GuardManager.from_bytes(data, what=f"guard state file {path}", params=params, clock=time.time,
                                   rng=rng, on_change=save)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (mode 0600) so that readers see the old or the new file, never a mix."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)  # a leftover of a crash: never reuse its mode
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from exc
