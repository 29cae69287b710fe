"""The relay list as this node sees it: descriptors fetched from the signal server and verified
here (the server is not trusted to have checked them).

After the first fetch only changes are fetched (``GET /v1/relays?since=CURSOR``), so a node that
refreshes every 30 s downloads the whole directory once, not every time."""

from __future__ import annotations

import logging
import time

from zmesh.crypto.provider import CryptoProvider
from zmesh.descriptor import Descriptor, verify_descriptor
from zmesh.errors import CryptoError, ProtocolError
from zmesh.identity import PeerId
from zmesh_signal.client import SignalClient

log = logging.getLogger(__name__)


class Directory:
    def __init__(self, signal: SignalClient, provider: CryptoProvider, *, max_age: float = 30.0) -> None:
        self.signal = signal
        self.provider = provider
        self.max_age = max_age
        self._relays: dict[PeerId, Descriptor] = {}
        self._cursor: str | None = None
        self._fetched = float("-inf")

    async def relays(self, *, refresh: bool = False) -> list[Descriptor]:
        """Live, verified descriptors; refetched when older than ``max_age`` or on request."""
        if refresh or time.monotonic() - self._fetched > self.max_age:
            update = await self.signal.relay_updates(self._cursor)
            relays = {} if update.full else dict(self._relays)
            for peer in update.removed:
                relays.pop(peer, None)
            for raw in update.relays:
                try:
                    descriptor = await verify_descriptor(self.provider, raw, now=time.time())
                except (ProtocolError, CryptoError) as exc:
                    log.warning("ignoring a bad descriptor from the directory: %s", exc)
                    continue
                relays[descriptor.peer_id] = descriptor
            self._relays, self._cursor, self._fetched = relays, update.cursor or None, time.monotonic()
        now = time.time()
        return [d for d in self._relays.values() if d.is_live(now)]

    async def find(self, peer: PeerId) -> Descriptor | None:
        """The descriptor of ``peer``, refetching once if it is not known yet."""
        if peer not in self._relays:
            await self.relays(refresh=True)
        return self._relays.get(peer)
