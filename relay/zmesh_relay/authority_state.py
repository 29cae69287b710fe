"""What one directory authority knows (docs/directory.md §5): the relays that passed its test, the
votes of the current periods, and the consensus it signed with the signatures gathered on it.
Everything a peer can fill is bounded: ``MAX_RELAYS`` relays, one vote per configured authority
per period for at most two periods, pending signatures only from configured authorities.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from zmesh.consensus import Consensus
from zmesh.descriptor import Descriptor
from zmesh.identity import PeerId
from zmesh.votes import MAX_RELAYS, RelayEntry, Vote

from .measure import Measurement

FAST_MIN = 50_000  # bytes/s credited for the Fast flag


@dataclass(slots=True)
class Tested:
    """A relay that passed this authority's test: its descriptor and what was measured."""

    descriptor: Descriptor
    measurement: Measurement
    first_ok: float  # when it first passed (wall clock), for Stable
    tested_at: float

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.descriptor.raw).digest()

    @property
    def credited(self) -> int:
        """The bandwidth voted for: the relay's claim, never more than what was measured."""
        return min(self.descriptor.capabilities.bandwidth, self.measurement.bandwidth)

    def flags(self, now: float, stable_after: float) -> frozenset[str]:
        caps = self.descriptor.capabilities
        flags = set()
        if caps.exit and self.descriptor.exit_ports:
            flags.add("Exit")
        if self.credited >= FAST_MIN:
            flags.add("Fast")
        if now - self.first_ok >= stable_after:
            flags.add("Stable")
        if {"Fast", "Stable"} <= flags:
            flags.add("Guard")
        return frozenset(flags)


class AuthorityState:
    def __init__(self, fingerprint: bytes, authorities: frozenset[bytes], *, stable_after: float) -> None:
        self.fingerprint, self.authorities, self.stable_after = fingerprint, authorities, stable_after
        self.relays: dict[PeerId, Tested] = {}
        self.votes: dict[int, dict[bytes, Vote]] = {}  # valid_after → authority → vote
        self.consensus: Consensus | None = None
        self.pending: dict[bytes, dict[bytes, dict]] = {}  # consensus digest → fp → signature entry
        self.descriptors: dict[bytes, bytes] = {}  # digest → raw, for the relays of the served consensus

    def room_for(self, peer: PeerId) -> bool:
        return peer in self.relays or len(self.relays) < MAX_RELAYS

    def passed(self, descriptor: Descriptor, measurement: Measurement, now: float) -> Tested:
        known = self.relays.get(descriptor.peer_id)
        tested = Tested(descriptor, measurement, known.first_ok if known else now, now)
        self.relays[descriptor.peer_id] = tested
        return tested

    def failed(self, peer: PeerId) -> None:
        self.relays.pop(peer, None)

    def entries(self, now: float) -> list[RelayEntry]:
        """This authority's vote: every relay it tested whose descriptor is still live."""
        return [RelayEntry(peer, t.digest, t.credited, t.flags(now, self.stable_after))
                for peer, t in self.relays.items() if t.descriptor.is_live(now)]

    def add_vote(self, vote: Vote, current: int, interval: int) -> bool:
        """Keep ``vote`` if it is for this period or the next and the first from its authority."""
        if not current - interval <= vote.period.valid_after <= current + interval:
            return False
        votes = self.votes.setdefault(vote.period.valid_after, {})
        if vote.authority in votes:
            return votes[vote.authority].raw == vote.raw
        votes[vote.authority] = vote
        for old in [p for p in self.votes if p < current - interval]:
            del self.votes[old]
        return True

    def adopt(self, consensus: Consensus) -> None:
        """Serve ``consensus`` (signed by this authority, early signatures already verified onto it)."""
        self.pending.clear()
        self.consensus = consensus
        by_digest = {t.digest: t.descriptor.raw for t in self.relays.values()}
        wanted = {r.digest for r in consensus.relays}
        self.descriptors = {d: raw for d, raw in {**self.descriptors, **by_digest}.items() if d in wanted}

    def hold_signature(self, digest: bytes, entry: dict) -> None:
        """A verified-later signature on a consensus this authority has not computed yet."""
        if digest in self.pending or len(self.pending) < len(self.authorities):
            self.pending.setdefault(digest, {})[entry["fp"]] = entry
