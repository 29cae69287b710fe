"""The relay list as this node sees it: descriptors fetched through any fetch function and verified
here (the signal server is not trusted to have checked them). Native nodes fetch over aiohttp, the
tab over its page's origin; both use this one view.

After the first fetch only changes are fetched (``GET /v1/relays?since=CURSOR``, docs/signaling.md),
so a node that refreshes every 30 s downloads the whole directory once, not every time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .crypto.provider import CryptoProvider
from .descriptor import Descriptor, verify_descriptor
from .encoding import decode_base64
from .errors import ConfigError, CryptoError, ProtocolError
from .identity import PeerId

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RelayUpdate:
    """One answer of ``GET /v1/relays``: raw descriptors (to verify), PeerIds to drop, the cursor
    for the next fetch, and whether ``relays`` is the whole listing (then forget the rest)."""

    relays: list[bytes]
    removed: list[PeerId]
    cursor: str
    full: bool

    @classmethod
    def from_answer(cls, answer: Any) -> RelayUpdate:
        """Parse the server's decoded JSON answer; ``ProtocolError`` for any malformed part."""
        if not isinstance(answer, dict):
            raise ProtocolError("the signal server's relay list is malformed")
        listed, removed, cursor = answer.get("relays"), answer.get("removed", []), answer.get("cursor", "")
        if (not isinstance(listed, list) or not isinstance(removed, list) or not isinstance(cursor, str)
                or not all(isinstance(item, str) for item in (*listed, *removed))):
            raise ProtocolError("the signal server's relay list is malformed")
        try:
            gone = [PeerId.from_text(text) for text in removed]
        except ConfigError as exc:
            raise ProtocolError("the signal server's relay list names a malformed PeerId") from exc
        return cls([decode_base64(item, "a descriptor in the signal server's relay list") for item in listed],
                   gone, cursor, answer.get("full", True) is not False)


FetchRelays = Callable[[str | None], Awaitable[RelayUpdate]]


class DirectoryView:
    """Verified descriptors from ``fetch(cursor)``. ``wall_clock`` (Unix seconds) decides which
    descriptors are live; ``clock`` (monotonic) how old the last fetch is."""

    def __init__(self, fetch: FetchRelays, provider: CryptoProvider, *, max_age: float = 30.0,
                 wall_clock: Callable[[], float] = time.time, clock: Callable[[], float] = time.monotonic) -> None:
        if not max_age >= 0:
            raise ConfigError(f"max_age must be at least 0 seconds, got {max_age!r}")
        self.fetch, self.provider, self.max_age = fetch, provider, max_age
        self.wall_clock, self.clock = wall_clock, clock
        self.rejected = 0  # descriptors that failed verification (forged, expired, malformed)
        self._relays: dict[PeerId, Descriptor] = {}
        self._cursor: str | None = None
        self._fetched = float("-inf")
        self._begun = 0  # refreshes begun so far: each answer is applied only if none begun later was
        self._applied = 0
        # told the live relays after each refresh (a relay sizes its peer table by them)
        self.on_refresh: Callable[[list[Descriptor]], Awaitable[None]] | None = None

    async def refresh(self) -> list[Descriptor]:
        """Fetch what changed since the last answer (everything the first time) and verify it; a
        bad descriptor is skipped and counted in ``rejected``. Returns the live relays."""
        self._begun += 1
        ticket = self._begun
        update = await self.fetch(self._cursor)
        verified = []
        for raw in update.relays:
            try:
                verified.append(await verify_descriptor(self.provider, raw, now=self.wall_clock()))
            except (ProtocolError, CryptoError) as exc:
                self.rejected += 1
                log.warning("ignoring a bad descriptor from the directory: %s", exc)
        if ticket < self._applied:  # a refresh begun later already applied a newer answer: keep it
            return self.live()
        # No await from here on: concurrent refreshes (a notice and a build) apply one at a time,
        # each on top of the last, so the cursor never goes back and no change is lost.
        relays = {} if update.full else dict(self._relays)
        for peer in update.removed:
            relays.pop(peer, None)
        for descriptor in verified:
            relays[descriptor.peer_id] = descriptor
        self._relays, self._cursor, self._fetched = relays, update.cursor or None, self.clock()
        self._applied = ticket
        live = self.live()
        if self.on_refresh is not None:
            await self.on_refresh(live)
        return live

    def live(self) -> list[Descriptor]:
        """The relays as last fetched, less those that expired since."""
        now = self.wall_clock()
        return [d for d in self._relays.values() if d.is_live(now)]

    async def relays(self, *, refresh: bool = False) -> list[Descriptor]:
        """The live relays, refetched first when the last fetch is older than ``max_age`` or on request."""
        if refresh or self.clock() - self._fetched > self.max_age:
            return await self.refresh()
        return self.live()

    async def find(self, peer: PeerId) -> Descriptor | None:
        """The live descriptor of ``peer``, refetching once if it is not known yet."""
        if peer not in self._relays:
            await self.refresh()
        found = self._relays.get(peer)
        return found if found is not None and found.is_live(self.wall_clock()) else None
