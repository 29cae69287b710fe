"""Rebuilding a circuit that died under its user: which hop to avoid and when to try again.

Pure (no asyncio): the clock and the randomness are injected, and the driver asks ``next_deadline()``
and sleeps until it, as with the node's own timers. ``zmesh.aio.healing`` runs it for ``MeshVPN``.

Which hop failed is known exactly only when this node's own link to the entry closed (the node
names that link's peer). A DESTROY that came down the circuit is a link-level cell: it does not say
which relay sent it, and relays pass its reason on unchanged. What is known then is that the entry
still answers (its link is up), so the first hop that *may* have failed is the second: that is the
hop blamed and avoided. If a later hop was the one that died, the rebuild finds out as it extends
(``zmesh.aio.building`` leaves out each hop that fails to answer).

Attempts follow ``Backoff``: exponential with full jitter, so tabs that lost the same relay do not
all rebuild in the same instant, and a circuit that dies again soon after each rebuild is retried
more and more slowly; one that stayed up for ``cap`` seconds starts over from ``first``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .backoff import Backoff
from .cells import DestroyReason
from .errors import ConfigError
from .identity import PeerId


@dataclass(frozen=True, slots=True)
class CircuitLoss:
    """A circuit that died while in use: ``failed_hop`` is the hop blamed (see the module docstring),
    ``None`` for a one-hop path with no known culprit."""

    circuit: int
    reason: DestroyReason
    failed_hop: PeerId | None
    path: tuple[PeerId, ...]


def blame(path: Sequence[PeerId], failed_peer: PeerId | None) -> PeerId | None:
    """The hop to avoid after ``path`` died: the peer the node named (its own link to it closed),
    else the first hop after the entry, the first that may have failed."""
    if failed_peer is not None:
        return failed_peer
    return path[1] if len(path) > 1 else None


class Healer:
    """When to rebuild a lost circuit, and without which hops. ``lost()`` starts a rebuild,
    ``failed()`` reports a rebuild that did not work, ``rebuilt()`` one that did; at most
    ``max_rounds`` rebuilds are tried per loss before ``gave_up``."""

    def __init__(self, clock: Callable[[], float], rng: Callable[[], float], *, first: float = 0.5,
                 cap: float = 30.0, max_rounds: int = 8) -> None:
        if not 0 < first <= cap <= 3600:
            raise ConfigError(f"backoff must satisfy 0 < first <= cap <= 3600, got {first}, {cap}")
        if not isinstance(max_rounds, int) or not 1 <= max_rounds <= 1000:
            raise ConfigError(f"max_rounds must be 1..1000, got {max_rounds!r}")
        self._clock = clock
        self._backoff = Backoff(first, cap, rng, clock)
        self.max_rounds = max_rounds
        self.loss: CircuitLoss | None = None  # the loss being healed, None while healthy
        self.avoid: frozenset[PeerId] = frozenset()  # left out of the rebuilt path
        self.rounds = 0
        self.gave_up = False
        self._due: float | None = None

    def lost(self, circuit: int, reason: DestroyReason, path: Sequence[PeerId],
             failed_peer: PeerId | None) -> CircuitLoss:
        """The circuit in use died: blame a hop and schedule the first rebuild (jittered)."""
        failed = blame(path, failed_peer)
        self.loss = CircuitLoss(circuit, reason, failed, tuple(path))
        self.avoid = frozenset({failed}) if failed is not None else frozenset()
        self.rounds, self.gave_up = 0, False
        self._backoff.closed()
        self._due = self._clock() + self._backoff.delay()
        return self.loss

    def next_deadline(self) -> float | None:
        """When the next rebuild is due (on the injected clock), None if none is pending."""
        return self._due

    def due(self, now: float) -> bool:
        """Whether a rebuild should start now; it is then no longer pending until ``failed()``."""
        if self._due is None or now < self._due:
            return False
        self._due = None
        self.rounds += 1
        return True

    def failed(self, failed_peer: PeerId | None) -> None:
        """A rebuild failed (``failed_peer`` is also avoided from now on): retry later, or give up
        after ``max_rounds``."""
        if failed_peer is not None:
            self.avoid = self.avoid | {failed_peer}
        if self.rounds >= self.max_rounds:
            self.gave_up, self._due = True, None
            return
        self._due = self._clock() + self._backoff.delay()

    def rebuilt(self) -> None:
        """A rebuild worked: healthy again. The backoff starts over only once the circuit has
        stayed up for ``cap`` seconds (``Backoff.closed``)."""
        self.loss, self.avoid, self._due, self.rounds = None, frozenset(), None, 0
        self._backoff.opened()

    def cancel(self) -> None:
        """The user disconnected: nothing is pending any more."""
        self.loss, self.avoid, self._due, self.rounds = None, frozenset(), None, 0
