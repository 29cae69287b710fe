"""What this client has measured about each relay, decaying over time: the "zero-trust score".

Path selection weighs a candidate by latency, reliability and bandwidth (``path.PathWeights``). The
first two come from here, and every input is something this client *measured* itself rather than
something a relay claims:

- **latency**: an exponentially weighted moving average of round-trip times (link PING→PONG, or a
  circuit build's time per link round trip);
- **reliability**: the mean of three success rates, each Laplace-smoothed so an unknown relay is
  0.5 rather than 0 or 1: circuit builds through the relay, streams the relay carried as an exit,
  and *uptime*, the fraction of this client's directory observations since it first saw the relay in
  which the relay was listed.

Counts decay with a half-life (``TrustPolicy.half_life``): last week's outage should not outweigh
this hour's behaviour, and a relay that recovers earns its place back. A relay whose builds fail
``bench_after`` times in a row is *benched*, left out of the draw for ``bench_for`` seconds (doubling
on each repeat, up to ``bench_max``), so a client stops paying a timeout per circuit for it.

This is a hint against *unreliable* relays, not a defence against malicious ones: a hostile relay
can behave perfectly until it is chosen, and the scores are local to one client (not shared, so
they cannot be poisoned by others, and they leak nothing when persisted only in the client's data
directory). docs/anonymity.md says what that means for path selection.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, ProtocolError, ZmeshError
from .identity import PeerId

TRUST_FORMAT = 1


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    half_life: float = 6 * 3600.0  # seconds after which a measured outcome counts half
    bench_after: int = 3  # consecutive build failures that bench a relay
    bench_for: float = 600.0  # first benching, seconds; doubles on each repeat
    bench_max: float = 6 * 3600.0
    max_relays: int = 10_000  # relays remembered; the longest unseen are forgotten first
    latency_smoothing: float = 0.2  # weight of a new RTT sample in the moving average

    def __post_init__(self) -> None:
        if not (math.isfinite(self.half_life) and self.half_life > 0):
            raise ConfigError(f"trust half_life must be a positive number of seconds, got {self.half_life}")
        if self.bench_after < 1 or self.max_relays < 1:
            raise ConfigError("trust bench_after and max_relays must be at least 1")
        if not 0 < self.bench_for <= self.bench_max:
            raise ConfigError("trust bench_for must be positive and at most bench_max")
        if not 0 < self.latency_smoothing <= 1:
            raise ConfigError("trust latency_smoothing must be in (0, 1]")


@dataclass(slots=True)
class RelayRecord:
    """One relay's measurements. Success/failure counts are decayed to ``updated``."""

    updated: float
    rtt_ms: float | None = None
    builds_ok: float = 0.0
    builds_failed: float = 0.0
    streams_ok: float = 0.0
    streams_failed: float = 0.0
    first_seen: float | None = None
    listed_seconds: float = 0.0
    last_listed: float | None = None  # when the last observation that listed it was made
    failures_in_a_row: int = 0
    benchings: int = 0
    benched_until: float = 0.0

    def uptime(self, now: float) -> float:
        if self.first_seen is None:
            return 0.5
        return (self.listed_seconds + 1.0) / (max(0.0, now - self.first_seen) + 2.0)


def _rate(ok: float, failed: float) -> float:
    return (ok + 1.0) / (ok + failed + 2.0)


@dataclass(slots=True)
class TrustStore:
    clock: Callable[[], float]
    policy: TrustPolicy = field(default_factory=TrustPolicy)
    records: dict[PeerId, RelayRecord] = field(default_factory=dict)
    on_change: Callable[[], None] | None = None  # told after each recorded outcome (the client saves)
    _last_observation: float | None = None

    # -- measurements ------------------------------------------------------------------------
    def record_build(self, peer: PeerId, *, ok: bool) -> None:
        """A circuit build through ``peer`` succeeded, or failed at ``peer``."""
        now = self.clock()
        record = self._decayed(peer, now)
        if ok:
            record.builds_ok += 1
            record.failures_in_a_row = 0
            record.benchings = 0
        else:
            self._failed_build(record, now)
        self._changed()

    def _failed_build(self, record: RelayRecord, now: float) -> None:
        record.builds_failed += 1
        record.failures_in_a_row += 1
        if record.failures_in_a_row >= self.policy.bench_after:
            hold = min(self.policy.bench_max, self.policy.bench_for * 2 ** record.benchings)
            record.benched_until = now + hold
            record.benchings += 1
            record.failures_in_a_row = 0

    def record_stream(self, peer: PeerId, *, ok: bool) -> None:
        """A stream the exit ``peer`` carried opened, or failed for a reason that is the exit's."""
        record = self._decayed(peer, self.clock())
        if ok:
            record.streams_ok += 1
        else:
            record.streams_failed += 1
        self._changed()

    def record_rtt(self, peer: PeerId, rtt_ms: float) -> None:
        if not (math.isfinite(rtt_ms) and rtt_ms >= 0):
            return
        record = self._decayed(peer, self.clock())
        a = self.policy.latency_smoothing
        record.rtt_ms = rtt_ms if record.rtt_ms is None else (1 - a) * record.rtt_ms + a * rtt_ms

    def observe_listing(self, listed: Iterable[PeerId]) -> None:
        """The directory this client just read lists ``listed``: the input to uptime. Time between
        two observations counts as listed time for a relay listed at both."""
        now = self.clock()
        previous = self._last_observation
        for peer in set(listed):
            record = self._record(peer, now)
            if record.first_seen is None:
                record.first_seen = now
            elif previous is not None and record.last_listed == previous:
                record.listed_seconds += max(0.0, now - previous)
            record.last_listed = now
        self._last_observation = now

    # -- what path selection reads ---------------------------------------------------------------
    def rtt_ms(self, peer: PeerId) -> float | None:
        record = self.records.get(peer)
        return None if record is None else record.rtt_ms

    def reliability(self, peer: PeerId) -> float:
        """In (0, 1): the mean of build success, stream success and uptime; 0.5 for a stranger."""
        record = self.records.get(peer)
        if record is None:
            return 0.5
        now = self.clock()
        factor = self._decay_factor(record, now)
        builds = _rate(record.builds_ok * factor, record.builds_failed * factor)
        streams = _rate(record.streams_ok * factor, record.streams_failed * factor)
        return (builds + streams + record.uptime(now)) / 3.0

    def benched(self, peer: PeerId) -> bool:
        record = self.records.get(peer)
        return record is not None and self.clock() < record.benched_until

    # -- persistence ------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """A plain dict for the client's data directory. Clocks need not survive a restart, so times
        are stored as ages relative to now."""
        now = self.clock()

        def age(t: float | None) -> float | None:
            return None if t is None else now - t

        return {"format": TRUST_FORMAT, "relays": {
            peer.text: {"age": now - r.updated, "rtt_ms": r.rtt_ms, "builds": [r.builds_ok, r.builds_failed],
                        "streams": [r.streams_ok, r.streams_failed], "first_seen_age": age(r.first_seen),
                        "listed_seconds": r.listed_seconds, "benched_for": max(0.0, r.benched_until - now),
                        "benchings": r.benchings}
            for peer, r in self.records.items()}}

    def load_json(self, data: object, *, offline: float = 0.0) -> None:
        """Replace the records with saved ones, ``offline`` seconds after they were saved (the
        counts decay over that time too, and a benching runs out); ``ProtocolError`` (and nothing
        loaded) if malformed."""
        try:
            if not isinstance(data, dict) or data.get("format") != TRUST_FORMAT:
                raise ValueError("unknown format")
            relays = data["relays"]
            if not isinstance(relays, dict) or len(relays) > self.policy.max_relays:
                raise ValueError("bad relay table")
            now = self.clock()
            saved_at = now - max(0.0, offline)
            loaded = {PeerId.from_text(text): self._parse(entry, saved_at, now) for text, entry in relays.items()}
        except (ValueError, TypeError, KeyError, OverflowError, ZmeshError) as exc:  # Overflow: an int beyond floats
            raise ProtocolError(f"trust file is malformed: {exc}") from None
        self.records = loaded

    @staticmethod
    def _parse(entry: dict[str, Any], saved_at: float, loaded_at: float) -> RelayRecord:
        """``saved_at``: when the entry was saved (counts decay and benchings run out over the time
        offline); ``loaded_at``: the clock now. Uptime's first sighting moves with the clock, as
        no observation was made while the client was off."""
        def number(value: object, *, optional: bool = False) -> float | None:
            if value is None and optional:
                return None
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"not a non-negative number: {value!r}")
            return float(value)

        builds, streams = entry["builds"], entry["streams"]
        if len(builds) != 2 or len(streams) != 2:
            raise ValueError("counts must be pairs")
        first_age = number(entry["first_seen_age"], optional=True)
        benchings = entry["benchings"]
        if not isinstance(benchings, int) or not 0 <= benchings <= 64:
            raise ValueError("bad benchings")
        return RelayRecord(updated=saved_at - number(entry["age"]), rtt_ms=number(entry["rtt_ms"], optional=True),
                           builds_ok=number(builds[0]), builds_failed=number(builds[1]),
                           streams_ok=number(streams[0]), streams_failed=number(streams[1]),
                           first_seen=None if first_age is None else loaded_at - first_age,
                           listed_seconds=number(entry["listed_seconds"]),
                           benched_until=saved_at + number(entry["benched_for"]), benchings=benchings)

    # -- internals --------------------------------------------------------------------------------
    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _decay_factor(self, record: RelayRecord, now: float) -> float:
        return 0.5 ** (max(0.0, now - record.updated) / self.policy.half_life)

    def _decayed(self, peer: PeerId, now: float) -> RelayRecord:
        record = self._record(peer, now)
        factor = self._decay_factor(record, now)
        record.builds_ok *= factor
        record.builds_failed *= factor
        record.streams_ok *= factor
        record.streams_failed *= factor
        record.updated = now
        return record

    def _forget_longest_unseen(self) -> None:
        """Make room by forgetting the tenth of the table unseen longest: one sort per tenth, not
        a scan of the whole table per newcomer (a directory full of new relays made that quadratic)."""
        def seen(peer: PeerId) -> float:
            record = self.records[peer]
            return record.last_listed or record.updated

        for peer in sorted(self.records, key=seen)[:max(1, len(self.records) // 10)]:
            del self.records[peer]

    def _record(self, peer: PeerId, now: float) -> RelayRecord:
        record = self.records.get(peer)
        if record is None:
            if len(self.records) >= self.policy.max_relays:
                self._forget_longest_unseen()
            record = self.records[peer] = RelayRecord(updated=now)
        return record
