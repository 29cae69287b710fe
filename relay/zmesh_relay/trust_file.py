"""The client's trust scores on disk: ``<client.data_dir>/trust.json``, 0600, replaced atomically.

Unlike the guard file, a trust file that does not decode is only a warning: the scores are a hint
for choosing reliable relays, and starting from neutral scores loses measurements, not protection.
Saves are throttled (``SAVE_INTERVAL``) because every build and stream outcome changes the scores;
``TrustFile.save`` at shutdown writes the last ones. The file names relays this user has used, so it
is as private as the guard file.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from zmesh.errors import ConfigError, ProtocolError
from zmesh.trust import TrustStore

from .guard_file import write_atomically

log = logging.getLogger(__name__)

TRUST_FILE = "trust.json"
SAVE_INTERVAL = 30.0  # seconds between two throttled saves


class TrustFile:
    """Loads a ``TrustStore`` from ``data_dir`` and keeps the file current (in memory only without one)."""

    def __init__(self, data_dir: str, store: TrustStore) -> None:
        self.store = store
        self._path = Path(data_dir).expanduser() / TRUST_FILE if data_dir else None
        self._saved_at = 0.0
        if self._path is None:
            return
        try:
            self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            text = self._path.read_text() if self._path.exists() else None
        except OSError as exc:
            raise ConfigError(f"cannot use data dir {self._path.parent}: {exc.strerror}") from exc
        if text is not None:
            self._load(text)
        store.on_change = self._save_throttled

    def _load(self, text: str) -> None:
        try:
            data = json.loads(text)
            offline = time.time() - float(data["saved_at"])
            self.store.load_json(data, offline=offline)
        except (ValueError, TypeError, KeyError, OverflowError, ProtocolError) as exc:
            log.warning("ignoring trust file %s (%s): relay scores start neutral", self._path, exc)

    def _save_throttled(self) -> None:
        if time.monotonic() - self._saved_at >= SAVE_INTERVAL:
            self.save()

    def save(self) -> None:
        if self._path is None:
            return
        self._saved_at = time.monotonic()
        data = self.store.to_json() | {"saved_at": time.time()}
        try:
            write_atomically(self._path, json.dumps(data).encode())
        except ConfigError as exc:  # a full disk must not stop circuits
            log.warning("%s", exc)
