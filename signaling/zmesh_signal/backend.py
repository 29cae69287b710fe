"""Where a signal server keeps what several servers would have to share: the listing, rate-limit
buckets and who is signed in where (docs/signaling.md, "Several servers").

``MemoryBackend`` (the default) keeps all of it in this process, as one server always did.
``redis_backend.RedisBackend`` keeps the listing, the buckets and the routes in Redis so that any
number of servers on one Redis answer as one. Both decide admission with the same pure
``Directory`` (pending set, probes, per-source limits, eviction) for what was posted to *this*
server, so the rules cannot drift between them. Onion-service descriptors (``onion_put``,
``onion_get``) live in an ``OnionStore`` here and in Redis there, under the same rules.
"""

from __future__ import annotations

from typing import Protocol

from zmesh.descriptor import Descriptor
from zmesh.errors import TransportError
from zmesh.identity import PeerId
from zmesh.onion.descriptor import SealedInfo

from .directory import Changes, Directory, Stored
from .limits import KeyedLimiter
from .onion_store import OnionStore, OnionStored


class BackendUnavailable(TransportError):
    """The shared store cannot be reached: the request is refused (503), never half done."""


class LocalPeers(Protocol):
    """What a backend needs from the WebSocket hub: hand a message to a peer connected here."""

    def deliver(self, recipient: PeerId, message: dict[str, str]) -> str | None:
        """Queue ``message``; None, or the error code (``offline``, ``busy``) the sender gets."""

    def report(self, sender: PeerId, code: str, recipient: PeerId) -> None:
        """Tell ``sender`` (connected here) that its message to ``recipient`` failed with ``code``."""

    async def kick(self, peer: PeerId) -> None:
        """``peer`` signed in on another server: close its socket here (4000, replaced)."""

    def directory_changed(self) -> None:
        """The listing changed (here or on another server): tell the subscribed sockets, coalesced."""


class MemoryBackend:
    """Everything in this process: one server, lost on restart."""

    name = "memory"

    def __init__(self, directory: Directory, posts: KeyedLimiter, gets: KeyedLimiter, *,
                 onion_puts: KeyedLimiter, onion_new_keys: KeyedLimiter, onion: OnionStore) -> None:
        self.directory = directory
        self._limiters = {"post": posts, "get": gets, "onion": onion_puts, "onion_new": onion_new_keys}
        self._onion = onion
        self._peers: LocalPeers | None = None

    async def start(self, peers: LocalPeers) -> None:
        """Begin serving; ``peers`` is the hub that holds this server's sockets."""
        self._peers = peers

    async def stop(self) -> None:
        """Release what ``start`` opened."""

    async def health(self) -> str:
        """``ok``, or ``degraded`` while a shared store is unreachable."""
        return "ok"

    async def take(self, kind: str, key: str) -> float:
        """Spend a ``kind`` (``post``, ``get``, ``onion``: an onion descriptor PUT, or ``onion_new``:
        one for a blinded key not stored yet) token for client ``key``: 0.0 or seconds to wait."""
        return self._limiters[kind].take(key)

    async def put(self, descriptor: Descriptor, now: float, source: str) -> Stored:
        return self.directory.put(descriptor, now, source=source)

    def probed(self, descriptor: Descriptor, reachable: bool, now: float) -> Stored | None:
        return self.directory.probed(descriptor, reachable, now)

    def listing_changed(self, peer: PeerId, old: Descriptor | None, new: Descriptor | None) -> None:
        """The directory's ``on_listing`` hook: only this server's sockets are told."""
        if self._peers is not None:
            self._peers.directory_changed()

    async def changes(self, now: float, cursor: str | None, *, flag: str | None,
                      country: str | None) -> Changes:
        return self.directory.changes(now, cursor, flag=flag, country=country)

    async def get(self, peer: PeerId, now: float) -> Descriptor | None:
        return self.directory.get(peer, now)

    async def count(self, now: float) -> int:
        return self.directory.count(now)

    async def onion_put(self, info: SealedInfo, blob: bytes, now: float) -> OnionStored:
        """Store a checked onion descriptor under ``info.blinded_key`` (``onion_store`` rules)."""
        return self._onion.put(info, blob, now)

    async def onion_get(self, key: bytes, now: float) -> bytes | None:
        """The live blob stored under blinded key ``key``, for the caller to check again."""
        return self._onion.get(key, now)

    async def signed_in(self, peer: PeerId) -> None:
        """``peer`` authenticated on this server's socket (a newer one replaces it elsewhere)."""
        self.directory.set_present(peer, True)

    async def signed_out(self, peer: PeerId) -> None:
        self.directory.set_present(peer, False)

    async def forward(self, recipient: PeerId, message: dict[str, str], *, reply_to: PeerId) -> str | None:
        """``recipient`` is not connected here: pass ``message`` on to its server, if any. None,
        or the error code for the sender now; errors found later reach ``reply_to`` as messages."""
        return "offline"
