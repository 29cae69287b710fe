"""The relay directory: verified descriptors in memory, one per PeerId, listed only once their peer
has shown it can be reached (docs/signaling.md, "Listing").

A signature proves only that someone holds a key, and keys are free: a flood of self-signed
descriptors must neither reach clients nor crowd out real relays. So a descriptor is *listed*
(served to clients) only when

- it has a WebSocket link address (``ws``) and the server's probe completed a circuit handshake
  with the published onion keys there (``probe.py``), or
- it has none (a tab, reachable ``via`` a home relay or over WebRTC) and its PeerId is signed in
  to this server's signaling socket right now, and its ``via`` relay, if any, is listed (here, or
  by another server sharing this directory through Redis: ``set_listed_elsewhere``).

Until then a ``ws`` descriptor waits in a bounded *pending* set. Every source address may hold
``max_per_source`` peers (pending or stored); a full pending set drops the oldest entry of the
source holding the most; a full directory makes room by dropping unproven entries (tabs not
signed in first), never by refusing a relay that proved itself because of them.

Pure and synchronous (the caller passes ``now``), so it is tested without a server or a clock.
Changes are numbered so a client can fetch only what changed since its last fetch (``changes``).
"""

from __future__ import annotations

import enum
import secrets
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from zmesh.descriptor import Descriptor
from zmesh.errors import ConfigError
from zmesh.identity import PeerId

FLAGS = ("relay", "exit")
ListingHook = Callable[[PeerId, "Descriptor | None", "Descriptor | None"], None]


class Stored(enum.Enum):
    """What ``Directory.put`` did with a descriptor."""

    LISTED = "listed"  # served to clients from now on
    PENDING = "pending"  # waiting for its reachability probe
    WAITING = "waiting"  # stored; listed while its peer is signed in (and its ``via`` relay listed)
    STALE = "stale"  # not newer than the one already stored for that peer: a replay loses
    FULL = "full"  # the directory holds ``capacity`` entries that may not be dropped for it
    SOURCE_LIMIT = "source_limit"  # its source address already holds ``max_per_source`` peers


@dataclass(slots=True)
class _Entry:
    descriptor: Descriptor
    source: str
    since: float  # when it was stored here (oldest are dropped first)
    probed: float | None = None  # when its ``ws`` addresses last passed a probe
    probing: bool = False  # handed to a prober, result not back yet


@dataclass(frozen=True, slots=True)
class Changes:
    """What changed in the listing after a cursor: descriptors to add or replace and PeerIds to
    drop. ``full`` means ``listed`` is the whole listing (the cursor was unknown or too old)."""

    listed: list[Descriptor]
    removed: list[PeerId]
    cursor: str
    full: bool


def needs_probe(descriptor: Descriptor) -> bool:
    """A relay's descriptor (it names a WebSocket link address), not a tab's."""
    return bool(descriptor.addresses.get("ws"))


def _same_reachability(a: Descriptor, b: Descriptor) -> bool:
    return a.addresses.get("ws") == b.addresses.get("ws") and a.onion_keys == b.onion_keys


class Directory:
    """Stored and pending descriptors keyed by PeerId, with the limits above.

    ``verify=False`` lists every verified descriptor at once (no probe, no sign-in): only for unit
    tests of the store, whose descriptors name addresses nobody listens on.
    """

    def __init__(self, capacity: int = 10_000, *, max_pending: int = 256, max_per_source: int = 8,
                 reprobe_interval: float = 600.0, max_tombstones: int | None = None,
                 verify: bool = True, on_listing: ListingHook | None = None) -> None:
        """``on_listing(peer, old, new)`` hears every change of the listing (``old`` or ``new``
        None when ``peer`` is newly listed or unlisted): how a shared backend mirrors it."""
        for name, value in (("capacity", capacity), ("max_pending", max_pending),
                            ("max_per_source", max_per_source)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"directory {name} must be a positive integer, got {value!r}")
        if reprobe_interval < 0:
            raise ConfigError(f"reprobe_interval must be >= 0 seconds, got {reprobe_interval!r}")
        self.capacity, self.max_pending, self.max_per_source = capacity, max_pending, max_per_source
        self.reprobe_interval, self.verify = reprobe_interval, verify
        self._on_listing = on_listing or (lambda _peer, _old, _new: None)
        self._max_tombstones = max_tombstones or capacity
        self._stored: dict[PeerId, _Entry] = {}
        self._pending: OrderedDict[PeerId, _Entry] = OrderedDict()
        self._source: dict[PeerId, str] = {}  # the source of each peer's latest accepted post
        self._per_source: Counter[str] = Counter()
        self._present: set[PeerId] = set()
        self._listed: dict[PeerId, Descriptor] = {}
        self._elsewhere: OrderedDict[PeerId, float] = OrderedDict()  # relays other servers listed → expiry
        # source → (failed probes in a row, turn its last entry went to a prober)
        self._record: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._turn = 0
        self._in_flight: dict[PeerId, str] = {}  # peers handed to probers → their source
        # the listing's change log: every change to ``_listed`` gets the next sequence number
        self._epoch = secrets.token_hex(8)
        self._seq = 0
        self._changed: dict[PeerId, int] = {}
        self._tombstones: OrderedDict[PeerId, int] = OrderedDict()
        self._horizon = 0  # changes at or before this may have been forgotten

    # ------------------------------------------------------------------ publishing

    def put(self, descriptor: Descriptor, now: float, *, source: str = "") -> Stored:
        """Take a verified descriptor posted from ``source`` (the client's address)."""
        self._purge(now)
        peer = descriptor.peer_id
        newest = self._pending.get(peer) or self._stored.get(peer)
        if newest is not None and newest.descriptor.published >= descriptor.published:
            return Stored.STALE
        if self._source.get(peer) != source and not self._make_source_room(source):
            return Stored.SOURCE_LIMIT
        stored = self._stored.get(peer)
        if not self.verify or not needs_probe(descriptor):
            return self._store(_Entry(descriptor, source, now), proven=not self.verify)
        if (stored is not None and stored.probed is not None and now - stored.probed < self.reprobe_interval
                and _same_reachability(stored.descriptor, descriptor)):
            return self._store(_Entry(descriptor, source, now, stored.probed), proven=True)
        self._drop_pending(peer)
        while len(self._pending) >= self.max_pending:
            self._evict_pending()
        self._pending[peer] = _Entry(descriptor, source, now)
        self._claim(peer, source)
        return Stored.PENDING

    def _store(self, entry: _Entry, *, proven: bool) -> Stored:
        """Store ``entry``; at capacity a ``proven`` relay may push out any tab, anything else only
        a tab that is not listed."""
        peer = entry.descriptor.peer_id
        if peer not in self._stored and len(self._stored) >= self.capacity \
                and not self._evict_unproven(listed_too=proven):
            return Stored.FULL
        self._drop_pending(peer)
        self._stored[peer] = entry
        self._claim(peer, entry.source)
        self._relist(peer)
        if self._is_relay(peer):
            self._relist_tabs()
        return Stored.LISTED if peer in self._listed else Stored.WAITING

    def _claim(self, peer: PeerId, source: str) -> None:
        old = self._source.get(peer)
        if old == source:
            return
        if old is not None:
            self._release(peer)
        self._source[peer] = source
        self._per_source[source] += 1

    def _release(self, peer: PeerId) -> None:
        source = self._source.pop(peer)
        self._per_source[source] -= 1
        if not self._per_source[source]:
            del self._per_source[source]

    def _make_source_room(self, source: str) -> bool:
        """Room for one more peer from ``source``: a tab of its own that is not listed may go;
        otherwise False (its pending entries leave when their probes end or they expire)."""
        if self._per_source[source] < self.max_per_source:
            return True
        for peer, entry in self._stored.items():
            if entry.source == source and peer not in self._listed and not self._is_relay(peer):
                self._forget(peer)
                return True
        return False

    def _evict_pending(self) -> None:
        """The pending set is full: drop the oldest entry of the source holding the most, so a
        flood from a few addresses pushes out its own entries before anyone else's."""
        counts = Counter(entry.source for entry in self._pending.values())
        heaviest = max(counts, key=counts.__getitem__)
        for peer, entry in self._pending.items():
            if entry.source == heaviest:
                self._drop_pending(peer)
                return

    def _evict_unproven(self, *, listed_too: bool) -> bool:
        """Drop the stored entry that proved least: the oldest tab not listed, else (``listed_too``)
        the oldest listed tab. Relays that passed a probe are never dropped for room. False if
        none may go."""
        tabs = [(peer in self._listed, entry.since, peer) for peer, entry in self._stored.items()
                if not self._is_relay(peer) and (listed_too or peer not in self._listed)]
        if not tabs:
            return False
        self._forget(min(tabs, key=lambda t: (t[0], t[1]))[2])
        return True

    # ------------------------------------------------------------------ probing

    def next_pending(self) -> Descriptor | None:
        """A pending descriptor for a prober. Sources take turns: first those whose probes have
        not failed, then the one served longest ago, then the one with fewest entries waiting.
        So addresses that feed probers tarpits fall behind, and one relay from a new address
        is not stuck behind a flood."""
        waiting = Counter(entry.source for entry in self._pending.values() if not entry.probing)
        best: tuple[tuple[int, int, int], PeerId] | None = None
        for peer, entry in self._pending.items():
            if entry.probing or entry.source not in waiting:
                continue
            failures, served = self._record.get(entry.source, (0, -1))
            key = (failures, served, waiting.pop(entry.source))
            if best is None or key < best[0]:
                best = (key, peer)
        if best is None:
            return None
        entry = self._pending[best[1]]
        entry.probing = True
        self._turn += 1
        self._note_source(entry.source, served=self._turn)
        self._in_flight[best[1]] = entry.source
        return entry.descriptor

    def _note_source(self, source: str, *, served: int | None = None, failed: bool | None = None) -> None:
        failures, last = self._record.pop(source, (0, -1))
        if failed is not None:
            failures = failures + 1 if failed else 0
        self._record[source] = (failures, last if served is None else served)
        while len(self._record) > self.max_pending:  # forget the sources seen least recently
            self._record.popitem(last=False)

    def probed(self, descriptor: Descriptor, reachable: bool, now: float) -> Stored | None:
        """The probe of ``descriptor`` (from ``next_pending``) finished. Reachable: it is listed
        (``LISTED``, or ``FULL`` if proven relays fill the directory). Unreachable: it and any
        earlier descriptor of that peer are dropped (None). A result for a descriptor that has
        since been replaced or dropped changes nothing (None)."""
        peer = descriptor.peer_id
        source = self._in_flight.pop(peer, None)
        if source is not None:
            self._note_source(source, failed=not reachable)
        entry = self._pending.get(peer)
        if entry is None or entry.descriptor is not descriptor:
            return None
        if not reachable:
            self._forget(peer)
            return None
        entry.probed, entry.probing = now, False
        outcome = self._store(entry, proven=True)
        if outcome is Stored.FULL:
            self._drop_pending(peer)
        return outcome

    def pending_count(self) -> int:
        return len(self._pending)

    # ------------------------------------------------------------------ presence

    def set_present(self, peer: PeerId, present: bool) -> None:
        """``peer`` signed in to (or left) this server's signaling socket."""
        if present:
            self._present.add(peer)
        else:
            self._present.discard(peer)
        if peer in self._stored:
            self._relist(peer)

    def set_listed_elsewhere(self, relay: PeerId, expires: float | None) -> None:
        """Another server sharing this directory listed ``relay`` until ``expires`` (None: it
        unlisted it), so tabs posted here may name it as their ``via``. At most ``capacity`` are
        remembered, the oldest forgotten first."""
        self._elsewhere.pop(relay, None)
        if expires is not None:
            self._elsewhere[relay] = expires
            while len(self._elsewhere) > self.capacity:
                self._elsewhere.popitem(last=False)
        self._relist_tabs()

    # ------------------------------------------------------------------ reading

    def get(self, peer: PeerId, now: float) -> Descriptor | None:
        """The listed descriptor of ``peer``, if any."""
        self._purge(now)
        return self._listed.get(peer)

    def live(self, now: float, *, flag: str | None = None, country: str | None = None) -> list[Descriptor]:
        """Listed descriptors, optionally only those with ``flag`` ("relay" or "exit") set and in
        ``country`` (ISO 3166 alpha-2, upper case)."""
        _check_flag(flag)
        self._purge(now)
        return [d for d in self._listed.values() if matches(d, flag, country)]

    def changes(self, now: float, cursor: str | None, *, flag: str | None = None,
                country: str | None = None) -> Changes:
        """The listing as changes since ``cursor`` (from an earlier answer), or whole (``full``)
        when there is none or it is from another server instance or older than what is kept.
        A changed peer that no longer matches the filter is reported removed."""
        _check_flag(flag)
        self._purge(now)
        since = self._parse_cursor(cursor)
        current = f"{self._epoch}:{self._seq}"
        if since is None:
            return Changes(self.live(now, flag=flag, country=country), [], current, True)
        listed, removed = [], []
        for peer, seq in self._changed.items():
            if seq > since:
                descriptor = self._listed.get(peer)
                if descriptor is not None and matches(descriptor, flag, country):
                    listed.append(descriptor)
                else:
                    removed.append(peer)
        removed.extend(peer for peer, seq in self._tombstones.items() if seq > since)
        return Changes(listed, removed, current, False)

    def _parse_cursor(self, cursor: str | None) -> int | None:
        if cursor is None:
            return None
        epoch, _, seq = cursor.partition(":")
        if epoch != self._epoch or not seq.isdigit() or len(seq) > 18:
            return None
        since = int(seq)
        return since if self._horizon <= since <= self._seq else None

    def count(self, now: float) -> int:
        """How many descriptors are listed."""
        self._purge(now)
        return len(self._listed)

    # ------------------------------------------------------------------ bookkeeping

    def _is_relay(self, peer: PeerId) -> bool:
        """A stored relay that proved reachable (without ``verify``, any stored descriptor)."""
        entry = self._stored.get(peer)
        return entry is not None and (not self.verify or entry.probed is not None)

    def _should_list(self, peer: PeerId) -> bool:
        entry = self._stored.get(peer)
        if entry is None:
            return False
        if not self.verify or needs_probe(entry.descriptor):
            return True
        vias = entry.descriptor.addresses.get("via", ())
        return peer in self._present and all(
            (via := _peer_or_none(text)) is not None
            and (via in self._elsewhere or (via in self._listed and self._is_relay(via)))
            for text in vias)

    def _relist(self, peer: PeerId) -> None:
        """Bring ``_listed`` (and the change log) in line with ``peer``'s entry."""
        entry, old = self._stored.get(peer), self._listed.get(peer)
        if self._should_list(peer):
            assert entry is not None
            if old is not entry.descriptor:
                self._listed[peer] = entry.descriptor
                self._note(peer)
                self._on_listing(peer, old, entry.descriptor)
        elif old is not None:
            del self._listed[peer]
            self._note(peer)
            self._on_listing(peer, old, None)

    def _relist_tabs(self) -> None:
        for peer in [p for p in self._stored if not self._is_relay(p)]:
            self._relist(peer)

    def _note(self, peer: PeerId) -> None:
        self._seq += 1
        self._tombstones.pop(peer, None)
        if peer in self._listed:
            self._changed[peer] = self._seq
            return
        self._changed.pop(peer, None)
        self._tombstones[peer] = self._seq
        while len(self._tombstones) > self._max_tombstones:
            _, self._horizon = self._tombstones.popitem(last=False)

    def _drop_pending(self, peer: PeerId) -> None:
        if self._pending.pop(peer, None) is not None and peer not in self._stored:
            self._release(peer)

    def _forget(self, peer: PeerId) -> None:
        """Drop every trace of ``peer`` (pending and stored)."""
        was_relay = self._is_relay(peer)
        self._pending.pop(peer, None)
        self._stored.pop(peer, None)
        if peer in self._source:
            self._release(peer)
        self._relist(peer)
        if was_relay:
            self._relist_tabs()

    def _purge(self, now: float) -> None:
        for peer in [p for p, e in self._pending.items() if now >= e.descriptor.expires]:
            self._drop_pending(peer)
        expired = [p for p, e in self._stored.items() if now >= e.descriptor.expires]
        for peer in expired:
            self._forget(peer)
        gone = [p for p, expires in self._elsewhere.items() if now >= expires]
        for peer in gone:
            del self._elsewhere[peer]
        if gone:
            self._relist_tabs()


def _check_flag(flag: str | None) -> None:
    if flag is not None and flag not in FLAGS:
        raise ConfigError(f"flag must be one of {', '.join(FLAGS)}, got {flag!r}")


def matches(descriptor: Descriptor, flag: str | None, country: str | None) -> bool:
    return ((flag is None or getattr(descriptor.capabilities, flag))
            and (country is None or descriptor.capabilities.country == country))


def _peer_or_none(text: str) -> PeerId | None:
    try:
        return PeerId.from_text(text)
    except ConfigError:
        return None
