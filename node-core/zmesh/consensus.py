"""The directory consensus: computed the same way by every authority from the votes, signed by each.

Computation (``compute_consensus``, docs/directory.md §3) is a pure function of the votes and the
configured authority list, so honest authorities holding the same votes produce the same bytes
and their signatures add up on one document:

* a relay is listed when **more than half of the configured authorities** (not of those that
  voted) list it: an authority alone, or a minority, cannot add relays;
* its descriptor digest is the one most of those votes name (ties: the smallest digest);
* its bandwidth is the low median of the listing votes' figures, and it has a flag when more than
  half of the listing votes give it (the median of yes/no), so a minority can neither inflate a
  relay nor give it Guard.

Wire form: canonical msgpack ``[body, [signature, ...]]``, signatures sorted by fingerprint, each a
hybrid entry over ``CONSENSUS_DOMAIN ‖ body``. A client accepts it (``accept_consensus``) only with
valid signatures from more than half of *its* configured authorities and inside the validity window.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from .crypto.provider import CryptoProvider
from .encoding import pack_canonical, unpack_canonical
from .errors import ConsensusRefused, CryptoError, ProtocolError
from .hybrid import FINGERPRINT_SIZE, HybridKey, fingerprint_text, hybrid_sign, hybrid_verify, parse_signature
from .identity import PeerId
from .votes import (
    FLAGS,
    MAX_AUTHORITIES,
    MAX_RELAYS,
    Period,
    RelayEntry,
    Vote,
    entries_to_wire,
    parse_body,
    parse_entries,
)

CONSENSUS_DOMAIN = b"zmesh-consensus-v1\x00"
MAX_CONSENSUS_SIZE = 512 * 1024
CLOCK_SKEW = 60


def majority(configured: int) -> int:
    """How many of ``configured`` authorities are more than half."""
    return configured // 2 + 1


def compute_consensus(votes: Sequence[Vote], authorities: Sequence[bytes]) -> bytes:
    """The consensus body for ``votes`` (one per configured authority, all for one period).
    ``ProtocolError`` if they are not, or if fewer than a majority of the authorities voted."""
    configured = frozenset(authorities)
    if not 0 < len(configured) <= MAX_AUTHORITIES:
        raise ProtocolError(f"a directory has 1..{MAX_AUTHORITIES} authorities")
    voters = [v.authority for v in votes]
    if len(set(voters)) != len(voters) or not set(voters) <= configured:
        raise ProtocolError("votes must come from distinct configured authorities")
    if len(votes) < majority(len(configured)):
        raise ProtocolError(f"{len(votes)} of {len(configured)} authorities voted; a consensus needs "
                            f"{majority(len(configured))}")
    periods = {v.period for v in votes}
    if len(periods) != 1:
        raise ProtocolError("the votes are for different periods")
    listings: dict[PeerId, list[RelayEntry]] = {}
    for vote in votes:
        for entry in vote.relays:
            listings.setdefault(entry.peer_id, []).append(entry)
    listed = [_combine(peer, entries) for peer, entries in listings.items()
              if len(entries) >= majority(len(configured))]
    return pack_canonical({"v": 1, "kind": "consensus", **periods.pop().to_wire(),
                           "voters": sorted(voters), "relays": entries_to_wire(listed)})


def _combine(peer: PeerId, entries: list[RelayEntry]) -> RelayEntry:
    counts = Counter(e.digest for e in entries)
    digest = min(counts, key=lambda d: (-counts[d], d))
    bandwidths = sorted(e.bandwidth for e in entries)
    flags = frozenset(f for f in FLAGS if 2 * sum(f in e.flags for e in entries) > len(entries))
    return RelayEntry(peer, digest, bandwidths[(len(bandwidths) - 1) // 2], flags)


@dataclass(frozen=True, slots=True)
class Consensus:
    """A consensus body and the signatures gathered on it (by fingerprint)."""

    body: bytes
    period: Period
    voters: tuple[bytes, ...]
    relays: tuple[RelayEntry, ...]
    signatures: dict[bytes, dict] = field(default_factory=dict)

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.body).digest()

    def to_bytes(self) -> bytes:
        return pack_canonical([self.body, [self.signatures[fp] for fp in sorted(self.signatures)]])

    def with_signature(self, entry: dict) -> Consensus:
        """This consensus with one more signature (not verified here: ``add_signature`` does)."""
        return Consensus(self.body, self.period, self.voters, self.relays, {**self.signatures, entry["fp"]: entry})

    def entry(self, peer: PeerId) -> RelayEntry | None:
        return next((r for r in self.relays if r.peer_id == peer), None)


def parse_consensus_body(body: bytes) -> Consensus:
    fields, period = parse_body(body, "consensus", frozenset({"voters"}), MAX_CONSENSUS_SIZE)
    voters = fields["voters"]
    if (not isinstance(voters, list) or not 0 < len(voters) <= MAX_AUTHORITIES
            or not all(isinstance(v, bytes) and len(v) == FINGERPRINT_SIZE for v in voters)
            or voters != sorted(set(voters))):
        raise ProtocolError("a consensus names 1..9 distinct sorted voter fingerprints")
    return Consensus(body, period, tuple(voters), parse_entries(fields["relays"]))


def parse_consensus(raw: bytes) -> Consensus:
    """Shape only: the body and signature entries, *nothing verified* (``accept_consensus`` does that)."""
    outer = unpack_canonical(raw, max_size=MAX_CONSENSUS_SIZE, what="consensus", max_items=MAX_RELAYS)
    if (not isinstance(outer, list) or len(outer) != 2 or not isinstance(outer[0], bytes)
            or not isinstance(outer[1], list) or len(outer[1]) > MAX_AUTHORITIES):
        raise ProtocolError(f"a consensus is [body, [at most {MAX_AUTHORITIES} signatures]]")
    consensus = parse_consensus_body(outer[0])
    entries = [parse_signature(e) for e in outer[1]]
    if [e["fp"] for e in entries] != sorted({e["fp"] for e in entries}):
        raise ProtocolError("consensus signatures must be sorted by fingerprint without repeats")
    return Consensus(consensus.body, consensus.period, consensus.voters, consensus.relays,
                     {e["fp"]: e for e in entries})


async def sign_consensus(provider: CryptoProvider, key: HybridKey, consensus: Consensus) -> Consensus:
    return consensus.with_signature(await hybrid_sign(provider, key, CONSENSUS_DOMAIN, consensus.body))


async def add_signature(provider: CryptoProvider, consensus: Consensus, entry: object,
                        authorities: frozenset[bytes]) -> Consensus:
    """``consensus`` with a peer authority's signature on it (``ProtocolError``/``CryptoError`` if
    it is malformed, from an authority not configured, or does not verify over this body)."""
    entry = parse_signature(entry)
    if entry["fp"] not in authorities:
        raise CryptoError("a consensus signature from an authority this one is not configured with")
    await hybrid_verify(provider, entry, CONSENSUS_DOMAIN, consensus.body)
    return consensus.with_signature(entry)


async def accept_consensus(provider: CryptoProvider, raw: bytes, *, authorities: Sequence[bytes],
                           now: float, skew: float = CLOCK_SKEW) -> Consensus:
    """A consensus a client may use: ``ProtocolError`` if malformed; ``ConsensusRefused`` if it is
    future-dated, expired, or has valid signatures from no more than half of ``authorities``
    (the message names each configured authority without a valid signature, and why)."""
    consensus = parse_consensus(raw)
    period = consensus.period
    if now < period.valid_after - skew:
        raise ConsensusRefused(f"the consensus is dated in the future (valid after {period.valid_after}, "
                               f"now {int(now)}); check this machine's clock")
    if now >= period.valid_until:
        raise ConsensusRefused(f"the consensus expired at {period.valid_until} (now {int(now)})")
    configured = list(dict.fromkeys(authorities))
    valid: dict[bytes, dict] = {}
    missing: list[str] = []
    for fp in configured:
        entry = consensus.signatures.get(fp)
        if entry is None:
            missing.append(f"{fingerprint_text(fp)} (no signature)")
            continue
        try:
            await hybrid_verify(provider, entry, CONSENSUS_DOMAIN, consensus.body)
        except CryptoError as exc:
            missing.append(f"{fingerprint_text(fp)} ({exc})")
            continue
        valid[fp] = entry
    need = majority(len(configured))
    if len(valid) < need:
        raise ConsensusRefused(
            f"the consensus has valid signatures from {len(valid)} of the {len(configured)} configured "
            f"authorities and needs {need}; missing: {'; '.join(missing)}",
            tuple(m.split(" ", 1)[0] for m in missing))
    return Consensus(consensus.body, period, consensus.voters, consensus.relays, valid)
