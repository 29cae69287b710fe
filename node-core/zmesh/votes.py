"""Directory votes: what one authority says about the relays it tested, for one period.

Wire form (docs/directory.md): canonical msgpack ``[body, signature]``; ``body`` is canonical
msgpack of ``{"v": 1, "kind": "vote", "authority": FP, "valid_after", "fresh_until", "valid_until",
"relays": [entry, ...]}`` and ``signature`` a hybrid entry (``zmesh.hybrid``) over
``VOTE_DOMAIN ‖ body``. An entry is ``{"id", "digest", "bandwidth", "flags"}``: the relay's PeerId
key, SHA-256 of its descriptor's wire bytes, the bandwidth the authority credits it with (bytes/s,
the relay's claim capped by the authority's measurement) and its flags (sorted, from ``FLAGS``).
Entries are sorted by ``id`` with no repeats, so each set of relays has one encoding.

Parsing checks size, shape, canonical encoding, the period, the entries, then the signer (a
configured authority) and both signatures. Each failure is a typed error; nothing is half-accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

from .crypto.provider import CryptoProvider
from .encoding import pack_canonical, unpack_canonical
from .errors import CryptoError, ProtocolError
from .hybrid import HybridKey, fingerprint_text, hybrid_sign, hybrid_verify, parse_signature
from .identity import PeerId

VOTE_DOMAIN = b"zmesh-vote-v1\x00"
FLAGS = ("Exit", "Fast", "Guard", "Stable")
MAX_RELAYS = 2048
MAX_AUTHORITIES = 9
MAX_VOTE_SIZE = 512 * 1024
MAX_PERIOD = 3 * 24 * 3600  # valid_until - valid_after
MAX_BANDWIDTH = 2**48
DIGEST_SIZE = 32
_ENTRY_FIELDS = frozenset({"id", "digest", "bandwidth", "flags"})
_TIME_FIELDS = ("valid_after", "fresh_until", "valid_until")


@dataclass(frozen=True, slots=True)
class Period:
    """When a vote or consensus applies: from ``valid_after``; a client fetches a newer one after
    ``fresh_until`` and stops using it at ``valid_until``."""

    valid_after: int
    fresh_until: int
    valid_until: int

    def __post_init__(self) -> None:
        if not (all(isinstance(t, int) and t >= 0 for t in (self.valid_after, self.fresh_until, self.valid_until))
                and self.valid_after < self.fresh_until <= self.valid_until <= self.valid_after + MAX_PERIOD):
            raise ProtocolError("a directory period needs valid_after < fresh_until <= valid_until "
                                f"within {MAX_PERIOD} s")

    @classmethod
    def at(cls, now: float, interval: int) -> Period:
        """The period that ``now`` falls in on a schedule of ``interval`` seconds (every authority
        computes the same one from its clock): fresh for one interval, valid for three."""
        start = int(now // interval) * interval
        return cls(start, start + interval, start + 3 * interval)

    def to_wire(self) -> dict:
        return {"valid_after": self.valid_after, "fresh_until": self.fresh_until, "valid_until": self.valid_until}

    @classmethod
    def from_wire(cls, fields: dict) -> Period:
        return cls(*(fields[name] for name in _TIME_FIELDS))


@dataclass(frozen=True, slots=True)
class RelayEntry:
    """One relay as a vote or the consensus lists it."""

    peer_id: PeerId
    digest: bytes
    bandwidth: int
    flags: frozenset[str]

    def __post_init__(self) -> None:
        if not isinstance(self.digest, bytes) or len(self.digest) != DIGEST_SIZE:
            raise ProtocolError(f"a relay entry's digest is {DIGEST_SIZE} bytes")
        if not isinstance(self.bandwidth, int) or isinstance(self.bandwidth, bool) \
                or not 0 <= self.bandwidth < MAX_BANDWIDTH:
            raise ProtocolError("a relay entry's bandwidth is a non-negative integer (bytes/s)")
        if not self.flags <= frozenset(FLAGS):
            raise ProtocolError(f"a relay entry has unknown flags {sorted(self.flags - frozenset(FLAGS))}")

    def to_wire(self) -> dict:
        return {"id": self.peer_id.key, "digest": self.digest, "bandwidth": self.bandwidth,
                "flags": sorted(self.flags)}


def entries_to_wire(relays: tuple[RelayEntry, ...] | list[RelayEntry]) -> list[dict]:
    """Entries sorted by PeerId (``ProtocolError`` on a repeat, which would be two claims of one relay)."""
    ordered = sorted(relays, key=lambda r: r.peer_id.key)
    if len({r.peer_id for r in ordered}) != len(ordered):
        raise ProtocolError("a relay is listed twice")
    if len(ordered) > MAX_RELAYS:
        raise ProtocolError(f"at most {MAX_RELAYS} relays are listed")
    return [r.to_wire() for r in ordered]


def parse_entries(items: object) -> tuple[RelayEntry, ...]:
    """Entries from a parsed body: a list sorted strictly by ``id``, each well formed."""
    if not isinstance(items, list) or len(items) > MAX_RELAYS:
        raise ProtocolError(f"a relay list is a list of at most {MAX_RELAYS} entries")
    out: list[RelayEntry] = []
    for item in items:
        if (not isinstance(item, dict) or set(item) != _ENTRY_FIELDS or not isinstance(item["id"], bytes)
                or not isinstance(item["flags"], list) or not all(isinstance(f, str) for f in item["flags"])
                or item["flags"] != sorted(set(item["flags"]))):
            raise ProtocolError("a relay entry is {id, digest, bandwidth, flags} with sorted distinct flags")
        try:
            peer = PeerId(item["id"])
        except CryptoError as exc:
            raise ProtocolError(f"a relay entry has a malformed PeerId: {exc}") from exc
        if out and peer.key <= out[-1].peer_id.key:
            raise ProtocolError("relay entries must be sorted by PeerId without repeats")
        out.append(RelayEntry(peer, item["digest"], item["bandwidth"], frozenset(item["flags"])))
    return tuple(out)


def parse_body(body: bytes, kind: str, extra: frozenset[str], max_size: int) -> tuple[dict, Period]:
    """The fields of a vote or consensus body of ``kind``, with its period (shape checked here)."""
    fields = unpack_canonical(body, max_size=max_size, what=f"{kind} body", max_items=MAX_RELAYS)
    expected = {"v", "kind", "relays", *_TIME_FIELDS, *extra}
    if not isinstance(fields, dict) or set(fields) != expected or fields["v"] != 1 or fields["kind"] != kind:
        raise ProtocolError(f"a {kind} body has missing, unknown or versioned-out fields")
    return fields, Period.from_wire(fields)


@dataclass(frozen=True, slots=True)
class Vote:
    """A verified (or freshly signed) vote; ``raw`` is its wire form."""

    authority: bytes
    period: Period
    relays: tuple[RelayEntry, ...]
    raw: bytes

    @property
    def authority_text(self) -> str:
        return fingerprint_text(self.authority)


async def sign_vote(provider: CryptoProvider, key: HybridKey, period: Period,
                    relays: list[RelayEntry]) -> Vote:
    body = pack_canonical({"v": 1, "kind": "vote", "authority": key.public.fingerprint,
                           **period.to_wire(), "relays": entries_to_wire(relays)})
    raw = pack_canonical([body, await hybrid_sign(provider, key, VOTE_DOMAIN, body)])
    if len(raw) > MAX_VOTE_SIZE:
        raise ProtocolError(f"the vote is {len(raw)} bytes; the limit is {MAX_VOTE_SIZE}")
    return Vote(key.public.fingerprint, period, parse_entries(unpack_canonical(
        body, max_size=MAX_VOTE_SIZE, what="vote body", max_items=MAX_RELAYS)["relays"]), raw)


async def verify_vote(provider: CryptoProvider, raw: bytes, *, authorities: frozenset[bytes]) -> Vote:
    """A vote from a peer authority: ``ProtocolError`` if malformed, ``CryptoError`` if not signed
    (with both signatures) by the configured authority it names."""
    outer = unpack_canonical(raw, max_size=MAX_VOTE_SIZE, what="vote", max_items=MAX_RELAYS)
    if not isinstance(outer, list) or len(outer) != 2 or not isinstance(outer[0], bytes):
        raise ProtocolError("a vote is [body, signature]")
    body, signature = outer[0], parse_signature(outer[1])
    fields, period = parse_body(body, "vote", frozenset({"authority"}), MAX_VOTE_SIZE)
    relays = parse_entries(fields["relays"])
    authority = fields["authority"]
    if not isinstance(authority, bytes):
        raise ProtocolError("a vote's authority is a fingerprint (bytes)")
    if authority not in authorities:
        raise CryptoError("the vote is from an authority this one is not configured with")
    if signature["fp"] != authority:
        raise CryptoError("the vote is signed by another authority than the one it names")
    await hybrid_verify(provider, signature, VOTE_DOMAIN, body)
    return Vote(authority, period, relays, bytes(raw))
