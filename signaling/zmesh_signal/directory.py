"""The relay directory: verified descriptors in memory, one per PeerId.

Pure and synchronous (the caller passes ``now``), so it is tested without a server or a clock.
Only descriptors that already passed ``verify_descriptor`` are stored; expired ones are dropped
lazily whenever the directory is read. A restart forgets everything until relays republish.
"""

from __future__ import annotations

import enum

from zmesh.descriptor import Descriptor
from zmesh.errors import ConfigError
from zmesh.identity import PeerId

FLAGS = ("relay", "exit")


class Stored(enum.Enum):
    """What ``Directory.put`` did with a descriptor."""

    ACCEPTED = "accepted"
    STALE = "stale"  # not newer than the one already stored for that peer: a replay loses
    FULL = "full"  # the directory holds ``capacity`` live descriptors of other peers


class Directory:
    """Live descriptors keyed by PeerId, at most ``capacity`` of them (bounded memory, whoever
    mints identities)."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._by_peer: dict[PeerId, Descriptor] = {}

    def put(self, descriptor: Descriptor, now: float) -> Stored:
        """Store ``descriptor`` unless one at least as recent is held for its peer."""
        current = self._by_peer.get(descriptor.peer_id)
        if current is not None and current.published >= descriptor.published:
            return Stored.STALE
        if current is None and len(self._by_peer) >= self.capacity:
            self._purge(now)
            if len(self._by_peer) >= self.capacity:
                return Stored.FULL
        self._by_peer[descriptor.peer_id] = descriptor
        return Stored.ACCEPTED

    def get(self, peer: PeerId, now: float) -> Descriptor | None:
        """The live descriptor of ``peer``, if any."""
        self._purge(now)
        return self._by_peer.get(peer)

    def live(self, now: float, *, flag: str | None = None, country: str | None = None) -> list[Descriptor]:
        """Unexpired descriptors, optionally only those with ``flag`` ("relay" or "exit") set and
        in ``country`` (ISO 3166 alpha-2, upper case)."""
        if flag is not None and flag not in FLAGS:
            raise ConfigError(f"flag must be one of {', '.join(FLAGS)}, got {flag!r}")
        self._purge(now)
        return [d for d in self._by_peer.values()
                if (flag is None or getattr(d.capabilities, flag))
                and (country is None or d.capabilities.country == country)]

    def count(self, now: float) -> int:
        """How many live descriptors are held."""
        self._purge(now)
        return len(self._by_peer)

    def _purge(self, now: float) -> None:
        for peer in [p for p, d in self._by_peer.items() if now >= d.expires]:
            del self._by_peer[peer]
