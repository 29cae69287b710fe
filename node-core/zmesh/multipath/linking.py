"""Joining legs into a set at the exit, authenticated by a secret nonce (Tor proposal 329's LINK).

The client draws a 32-byte nonce for each multipath stream and sends it in the LINK of every leg.
It travels only inside the legs' circuits, encrypted end to end to the exit, so only the client
and the exit know it: nobody else can attach a leg to the set (to read or inject its data). Leg 0's
LINK creates the set; a later leg must name an existing set (else ``MP_UNKNOWN_SET``), a leg number
not yet taken, on a circuit not already in the set (else ``MP_DUPLICATE_LEG``), within
``link_timeout`` of the set's creation. Sets are held by the SHA-256 of the nonce, so looking one
up compares digests, not the secret. At most ``max_sets`` sets exist at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ..cells import DestroyReason
from ..errors import MultipathError
from .wire import MAX_LEGS, NONCE_SIZE

S = TypeVar("S")


@dataclass(slots=True)
class MultipathSet(Generic[S]):
    """One set: its legs' circuits by leg number, and what the glue keeps for it (``state``)."""

    created: float
    state: S
    circuits: dict[int, int] = field(default_factory=dict)


class LinkRegistry(Generic[S]):
    """The exit's sets, keyed by nonce digest; ``clock`` is the node's injected clock."""

    def __init__(self, clock: Callable[[], float], *, max_sets: int = 1024, link_timeout: float = 30.0) -> None:
        self.clock = clock
        self.max_sets = max_sets
        self.link_timeout = link_timeout
        self._sets: dict[bytes, MultipathSet[S]] = {}

    @staticmethod
    def _key(nonce: bytes) -> bytes:
        if len(nonce) != NONCE_SIZE:
            raise MultipathError("multipath nonce of the wrong size", DestroyReason.MP_PROTOCOL)
        return hashlib.sha256(nonce).digest()

    def create(self, nonce: bytes, circuit: int, state: S) -> MultipathSet[S]:
        """Leg 0's LINK: a new set."""
        key = self._key(nonce)
        if key in self._sets:
            raise MultipathError("a multipath set with this nonce exists already", DestroyReason.MP_DUPLICATE_LEG)
        if len(self._sets) >= self.max_sets:
            raise MultipathError(f"more than {self.max_sets} multipath sets", DestroyReason.RESOURCE_LIMIT)
        entry = self._sets[key] = MultipathSet(self.clock(), state, {0: circuit})
        return entry

    def join(self, nonce: bytes, leg: int, circuit: int) -> MultipathSet[S]:
        """A later leg's LINK: the set it joins, or a ``MultipathError``."""
        entry = self._sets.get(self._key(nonce))
        if entry is None or self.clock() - entry.created > self.link_timeout:
            raise MultipathError("LINK for an unknown (or expired) multipath set", DestroyReason.MP_UNKNOWN_SET)
        if not 0 < leg < MAX_LEGS or leg in entry.circuits or circuit in entry.circuits.values():
            raise MultipathError(f"multipath leg {leg} is taken, or its circuit is already a leg",
                                 DestroyReason.MP_DUPLICATE_LEG)
        entry.circuits[leg] = circuit
        return entry

    def remove(self, nonce: bytes) -> None:
        self._sets.pop(self._key(nonce), None)

    def __len__(self) -> int:
        return len(self._sets)
