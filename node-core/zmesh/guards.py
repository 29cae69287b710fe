"""Entry guards: every circuit starts at one of a few long-lived relays (Tor's guard-spec, simplified).

Without guards each circuit draws a fresh first hop, so over enough circuits a hostile relay —
cheap to add — is the first hop of one of them and sees the user's address. With guards a user is
exposed to a few relays for weeks: either one of them is hostile (bad luck, but no worse over time)
or none is.

The **sample** is an ordered list of at most ``sample_size`` relays, drawn uniformly at random
(never weighted by the bandwidth a relay advertises about itself, which a hostile relay would
inflate) from listed, listening relays that are not browser tabs. It persists across restarts
(``to_bytes`` / ``from_bytes``). Each guard lives a random 30–60 days, then leaves the sample; one
that the directory stops listing leaves after 20 days unlisted. Nothing else removes a guard
(bar a ``sample_size`` lowered below what a saved sample holds: its tail is dropped).

The **primary guards** are the first ``primary`` listed guards of the sample. A circuit enters at
the first *usable* one: listed, and not waiting out a retry. A build that fails at its first hop
marks that guard unreachable until a retry time from a fixed schedule (Tor's legacy one: for a
primary guard every 10 minutes for the first 6 hours of failing, then every 90 minutes until
96 hours, every 4 hours until 7 days, every 9 hours after; for other guards every 1, 4, 18 and
36 hours). Meanwhile circuits use the next guard *in the sample's order* — never a fresh draw — so
knocking a guard offline, however often, only moves a client along its own sample and back: an
attacker cannot rotate anyone onto a relay of their choosing, and reachability never removes a
guard. Reachability is not persisted: a restarted client tries its guards again from the top.

A guard is never also a middle or the exit of its own circuit (``select`` passes it to
``PathSelector.select`` as ``entry``, which leaves it out of the other hops). Pure: the wall clock
(seconds since the epoch, since lifetimes outlast a process) and the randomness are passed in.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .descriptor import Descriptor
from .encoding import pack_canonical, unpack_canonical
from .errors import CircuitError, ConfigError, CryptoError, ProtocolError
from .identity import PeerId
from .path import PathSelector, listens

MINUTE = 60.0
HOUR = 60 * MINUTE
DAY = 24 * HOUR
STATE_VERSION = 1
MAX_SAMPLE = 200  # a state file may hold at most this many guards, whatever the settings
MAX_LIFETIME = 366 * DAY  # the decoder's bound on a stored lifetime

# (failing for less than this many seconds, retry after this many seconds): guard-spec appendix A.1.
RetrySchedule = tuple[tuple[float, float], ...]
PRIMARY_RETRY: RetrySchedule = ((6 * HOUR, 10 * MINUTE), (96 * HOUR, 90 * MINUTE), (7 * DAY, 4 * HOUR),
                                (math.inf, 9 * HOUR))
OTHER_RETRY: RetrySchedule = ((6 * HOUR, HOUR), (96 * HOUR, 4 * HOUR), (7 * DAY, 18 * HOUR), (math.inf, 36 * HOUR))


def retry_after(schedule: RetrySchedule, failing_for: float) -> float:
    """Seconds to wait before trying again a guard that has been failing for ``failing_for`` s."""
    return next(interval for until, interval in schedule if failing_for < until)


def is_tab(relay: Descriptor) -> bool:
    """A browser tab: reachable through a relay it names (a ``via`` address), gone when its page closes."""
    return "via" in relay.addresses


@dataclass(frozen=True, slots=True)
class GuardParams:
    """How many guards and for how long. ``allow_tabs`` lets browser tabs be sampled (off: a tab
    lives as long as a page and its operator is anyone who opens one)."""

    sample_size: int = 20
    primary: int = 2
    min_lifetime: float = 30 * DAY
    max_lifetime: float = 60 * DAY
    remove_unlisted_after: float = 20 * DAY
    allow_tabs: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.sample_size, int) or not 1 <= self.sample_size <= MAX_SAMPLE:
            raise ConfigError(f"guard sample_size must be 1..{MAX_SAMPLE}, got {self.sample_size!r}")
        if not isinstance(self.primary, int) or not 1 <= self.primary <= self.sample_size:
            raise ConfigError(f"primary guards must be 1..sample_size ({self.sample_size}), got {self.primary!r}")
        if not DAY <= self.min_lifetime <= self.max_lifetime <= MAX_LIFETIME:
            raise ConfigError("guard lifetimes must satisfy 1 day <= min_lifetime <= max_lifetime <= 366 days")
        if not HOUR <= self.remove_unlisted_after <= MAX_LIFETIME:
            raise ConfigError("remove_unlisted_after must be 1 hour..366 days")


@dataclass(slots=True)
class Guard:
    """One sampled guard. The first three fields persist; reachability lives only in memory."""

    peer_id: PeerId
    added_at: float
    expires_at: float
    unlisted_since: float | None = None
    failing_since: float | None = None
    retry_at: float | None = None


class GuardManager:
    """The sample, the primary guards and their reachability. ``on_change(state_bytes)`` is called
    whenever what ``to_bytes`` would write changes (a guard added or removed, listed or unlisted)."""

    def __init__(self, params: GuardParams | None = None, *, clock: Callable[[], float],
                 rng: random.Random, guards: Iterable[Guard] = (),
                 on_change: Callable[[bytes], None] | None = None) -> None:
        self.params = params or GuardParams()
        self._clock, self._rng, self.on_change = clock, rng, on_change
        self._sample: list[Guard] = list(guards)[:self.params.sample_size]
        # with a consensus: only relays it gives the Guard flag (``ConsensusView.is_guard``)
        self.eligible: Callable[[Descriptor], bool] | None = None

    def sample(self) -> list[PeerId]:
        """The sample in preference order."""
        return [g.peer_id for g in self._sample]

    def primary(self) -> list[PeerId]:
        """The primary guards: the first ``primary`` listed guards of the sample."""
        return [g.peer_id for g in self._listed()[:self.params.primary]]

    def update(self, relays: Iterable[Descriptor]) -> None:
        """Take in a fresh directory listing: mark guards listed (and still fit to be guards) or not, drop expired and
        long-unlisted ones, and draw new guards until the sample is full (or no relay is left)."""
        now = self._clock()
        listed = self._usable(relays)
        before = self._persisted()
        for guard in self._sample:
            if guard.peer_id in listed:
                guard.unlisted_since = None
            elif guard.unlisted_since is None:
                guard.unlisted_since = now
        self._sample = [g for g in self._sample if now < g.expires_at and (
            g.unlisted_since is None or now - g.unlisted_since < self.params.remove_unlisted_after)]
        room = self.params.sample_size - len(self._sample)
        if room > 0:
            sampled = {g.peer_id for g in self._sample}
            eligible = [r for r in listed.values() if r.peer_id not in sampled]
            for relay in self._rng.sample(eligible, min(room, len(eligible))):
                lifetime = self._rng.uniform(self.params.min_lifetime, self.params.max_lifetime)
                self._sample.append(Guard(relay.peer_id, now, now + lifetime))
        if self.on_change is not None and self._persisted() != before:
            self.on_change(self.to_bytes())

    def select(self, selector: PathSelector, relays: Iterable[Descriptor], *, exclude: Iterable[PeerId] = (),
               **path: Any) -> list[Descriptor]:
        """A path from ``selector`` that enters at the first usable guard. A guard that leaves no path
        (say it is the only exit for the port) is passed over for the next one in order, as Tor
        applies a circuit's restrictions to its guards. ``path`` is ``PathSelector.select``'s
        keywords (hops, port, rng, ...) other than ``entry``. Raises ``CircuitError`` if no guard works."""
        relays = list(relays)
        self.update(relays)
        excluded = frozenset(exclude)
        reasons: dict[str, None] = {}  # why each guard tried left no path, in order, each said once
        for entry in self._entries(relays, excluded):
            try:
                return selector.select(relays, exclude=excluded, entry=entry, **path)
            except CircuitError as exc:
                reasons[str(exc)] = None
        if reasons:
            raise CircuitError(f"no entry guard leaves a path: {'; '.join(reasons)}")
        raise CircuitError(f"none of the {len(self._sample)} sampled entry guards is listed and usable")

    def first_hop(self, peer: PeerId, ok: bool) -> None:
        """A build's first hop answered (``ok``: the circuit was built) or did not (the build
        failed at it). A failing guard waits out its retry time; an answering one is reachable again."""
        guard = next((g for g in self._sample if g.peer_id == peer), None)
        if guard is None:
            return
        if ok:
            guard.failing_since = guard.retry_at = None
            return
        now = self._clock()
        if guard.failing_since is None:
            guard.failing_since = now
        schedule = PRIMARY_RETRY if peer in self.primary() else OTHER_RETRY
        guard.retry_at = now + retry_after(schedule, now - guard.failing_since)

    def _usable(self, relays: Iterable[Descriptor]) -> dict[PeerId, Descriptor]:
        """The relays that can be guards: listed relays one can dial, not tabs unless allowed."""
        return {r.peer_id: r for r in relays
                if r.capabilities.relay and listens(r) and (self.params.allow_tabs or not is_tab(r))
                and (self.eligible is None or self.eligible(r))}

    def _listed(self) -> list[Guard]:
        return [g for g in self._sample if g.unlisted_since is None]

    def _entries(self, relays: list[Descriptor], exclude: frozenset[PeerId]) -> list[Descriptor]:
        """Listed guards to try, in sample order, skipping those waiting out a retry. If every one
        is waiting (this client's own network was down, most likely), all are tried again from the
        top (guard-spec: mark all maybe-reachable); the sample itself does not change."""
        now = self._clock()
        found = self._usable(relays)
        candidates = [g for g in self._listed() if g.peer_id in found and g.peer_id not in exclude]
        usable = [g for g in candidates if g.retry_at is None or now >= g.retry_at]
        if not usable:
            for guard in candidates:
                guard.retry_at = None
            usable = candidates
        return [found[g.peer_id] for g in usable]

    def _persisted(self) -> list[tuple[PeerId, float, float, float | None]]:
        return [(g.peer_id, g.added_at, g.expires_at, g.unlisted_since) for g in self._sample]

    def to_bytes(self) -> bytes:
        """The sample as canonical msgpack (times as whole seconds)."""
        return pack_canonical({"v": STATE_VERSION, "guards": [
            {"id": g.peer_id.key, "added": int(g.added_at), "expires": int(g.expires_at),
             "unlisted": None if g.unlisted_since is None else int(g.unlisted_since)} for g in self._sample]})

    @classmethod
    def from_bytes(cls, data: bytes, *, what: str, params: GuardParams | None = None,
                   clock: Callable[[], float], rng: random.Random,
                   on_change: Callable[[bytes], None] | None = None) -> GuardManager:
        """Read what ``to_bytes`` wrote; anything else is a ``ConfigError`` naming ``what`` (the file)."""
        return cls(params, clock=clock, rng=rng, guards=decode_guards(data, what), on_change=on_change)


def decode_guards(data: bytes, what: str) -> list[Guard]:
    """Strictly decode a guard state: exactly the fields ``to_bytes`` writes, typed and in range."""
    try:
        state = unpack_canonical(data, max_size=MAX_SAMPLE * 96 + 64, what=what)
    except ProtocolError as exc:
        raise ConfigError(f"{what} is corrupt ({exc}); move it away to start with a fresh guard sample") from exc
    if not isinstance(state, dict) or set(state) != {"v", "guards"} or state["v"] != STATE_VERSION:
        raise ConfigError(f"{what} has an unknown version or fields; move it away to start with a fresh guard sample")
    entries = state["guards"]
    if not isinstance(entries, list) or len(entries) > MAX_SAMPLE:
        raise ConfigError(f"{what}: guards must be a list of at most {MAX_SAMPLE}")
    guards: list[Guard] = []
    for index, entry in enumerate(entries):
        where = f"{what}: guard {index}"
        if not isinstance(entry, dict) or set(entry) != {"id", "added", "expires", "unlisted"}:
            raise ConfigError(f"{where} has unknown fields")
        added, expires, unlisted = entry["added"], entry["expires"], entry["unlisted"]
        if not all(_is_time(t) for t in (added, expires)) or not (unlisted is None or _is_time(unlisted)):
            raise ConfigError(f"{where} has a time that is not a non-negative whole number of seconds")
        if not 0 < expires - added <= MAX_LIFETIME:
            raise ConfigError(f"{where} has a lifetime outside 0..366 days")
        try:
            peer = PeerId(entry["id"])
        except CryptoError as exc:
            raise ConfigError(f"{where} has a malformed id") from exc
        if any(g.peer_id == peer for g in guards):
            raise ConfigError(f"{where} repeats an earlier guard")
        guards.append(Guard(peer, float(added), float(expires), None if unlisted is None else float(unlisted)))
    return guards


def _is_time(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**40
