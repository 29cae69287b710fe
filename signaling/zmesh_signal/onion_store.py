"""The onion-service descriptor store kept in this process (docs/onion-services.md, "Descriptor
store API"): sealed blobs by blinded key, at most ``capacity`` live ones.

The rules, which the Redis backend's script applies alike (``redis_backend._ONION_PUT``): a blob
replaces the stored one for its key only with a higher revision (lower: ``STALE``, equal:
``REPLAY``); an expired entry counts as absent; a new key is refused (``FULL``) when ``capacity``
live entries are stored, after dropping the expired ones. Nothing else is ever dropped for a
newcomer, so a flood of keys cannot push out live services, only wait for them to expire.

Pure and synchronous (the caller passes ``now``); what is put has been checked by the caller
(``zmesh.onion.descriptor.check_sealed``).
"""

from __future__ import annotations

import enum
import heapq
from dataclasses import dataclass

from zmesh.errors import ConfigError
from zmesh.onion.descriptor import SealedInfo


class OnionStored(enum.Enum):
    """What ``OnionStore.put`` did with a blob."""

    STORED = "stored"
    STALE = "stale"  # a higher revision is stored for that key
    REPLAY = "replay"  # that very revision is stored
    FULL = "full"  # ``capacity`` live descriptors are stored


@dataclass(frozen=True, slots=True)
class _Entry:
    blob: bytes
    revision: int
    expires: int


class OnionStore:
    """Sealed descriptors by blinded key, with the limits above."""

    def __init__(self, capacity: int) -> None:
        if not isinstance(capacity, int) or capacity < 1:
            raise ConfigError(f"max_onion_descriptors must be a positive integer, got {capacity!r}")
        self.capacity = capacity
        self._entries: dict[bytes, _Entry] = {}
        self._expiries: list[tuple[int, bytes]] = []  # a heap; stale pairs are skipped when popped

    def _drop_expired(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] <= now:
            expires, key = heapq.heappop(self._expiries)
            entry = self._entries.get(key)
            if entry is not None and entry.expires == expires:
                del self._entries[key]

    def put(self, info: SealedInfo, blob: bytes, now: float) -> OnionStored:
        self._drop_expired(now)
        current = self._entries.get(info.blinded_key)
        if current is not None:
            if info.revision < current.revision:
                return OnionStored.STALE
            if info.revision == current.revision:
                return OnionStored.REPLAY
        elif len(self._entries) >= self.capacity:
            return OnionStored.FULL
        self._entries[info.blinded_key] = _Entry(bytes(blob), info.revision, info.expires)
        heapq.heappush(self._expiries, (info.expires, info.blinded_key))
        if len(self._expiries) > 2 * self.capacity:  # replaced entries left pairs behind: rebuild
            self._expiries = [(e.expires, k) for k, e in self._entries.items()]
            heapq.heapify(self._expiries)
        return OnionStored.STORED

    def get(self, key: bytes, now: float) -> bytes | None:
        entry = self._entries.get(key)
        return entry.blob if entry is not None and now < entry.expires else None

    def count(self, now: float) -> int:
        self._drop_expired(now)
        return len(self._entries)
