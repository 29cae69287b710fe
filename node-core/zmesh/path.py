"""Path selection: a pure function from a directory view to a list of relays.

Hard rules first, then a score. No two hops of a path share a network (an IPv4 /16 or IPv6 /32
of a published link address, loopback included; see ``netaddr.diversity_network``) or a mutual
declared family (``Descriptor.same_family``), and no hop is in a country the user excluded:
two hops one observer can watch at once are worth little more than one. Every pair of hops is
checked, so the exit never shares a family or a network with the first hop. A node published only
through ``via`` (a browser tab) has no network of its own. When the rules leave nothing to draw,
``CircuitError`` says how many candidates each rule removed.

Among the candidates left, each gets a score in [0, 1] from three qualities — latency and
reliability as this client measured them (``trust.TrustStore``: round trips, build and stream
success, uptime, decaying over time), and published bandwidth — weighted 4 : 3 : 2 (the design's
40/30/20/10 with its 10 % for diversity made a hard rule above), and hops are *drawn* with
probability proportional to score rather than always taking the best: a deterministic "best
path" would funnel every client through the same few relays, which is both a load and an
anonymity problem. A peer never appears twice in a path; the exit is drawn first, from relays
whose published policy admits the wanted port (and country, if asked), then the hops before it.
Drawing hop by hop can corner itself (an early hop rules out the last candidates of a later
one), so a failed draw is retried a few times before its error is final. A relay the trust store
has benched (it kept failing builds) is left out of a draw unless nothing else is left.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .circuit import MAX_HOPS, MIN_HOPS
from .descriptor import EXIT_KINDS, Descriptor
from .errors import CircuitError, ConfigError, ExitPolicyError, ProtocolError
from .identity import PeerId
from .netaddr import IPV4_DIVERSITY_PREFIX, IPV6_DIVERSITY_PREFIX, LinkAddress, diversity_network
from .trust import TrustStore

DRAW_ATTEMPTS = 8
MAX_CACHED_NETWORKS = 65_536  # address sets whose networks a selector remembers (parsing dominates a draw)
SAME_NETWORK = f"same IPv4 /{IPV4_DIVERSITY_PREFIX} or IPv6 /{IPV6_DIVERSITY_PREFIX} as another hop"
SAME_FAMILY = "a mutual family with another hop"
EXCLUDED_COUNTRY = "exclude_countries"


@dataclass(frozen=True, slots=True)
class PathWeights:
    """How much each measured quality counts in a candidate's score: non-negative, summing to 1.
    Diversity is not a weight: it is a hard rule (see the module docstring)."""

    latency: float = 4 / 9
    reliability: float = 3 / 9
    bandwidth: float = 2 / 9

    def __post_init__(self) -> None:
        values = (self.latency, self.reliability, self.bandwidth)
        if (not all(math.isfinite(v) and v >= 0 for v in values)
                or not math.isclose(sum(values), 1.0, abs_tol=1e-9)):
            raise ConfigError(f"path weights must be non-negative and sum to 1, got {values}")


def networks(relay: Descriptor) -> frozenset[str]:
    """The networks of ``relay``'s ``ws`` link addresses (the ones anyone dials; a verified
    descriptor's are well-formed, an unparsable one could not be dialed and counts for nothing)."""
    return _networks_of(relay.addresses.get("ws", ()))


def _networks_of(addresses: tuple[str, ...]) -> frozenset[str]:
    out = set()
    for text in addresses:
        try:
            out.add(diversity_network(LinkAddress.parse(text).host))
        except ProtocolError:
            continue
    return frozenset(out)


@dataclass(slots=True)
class _Rules:
    """The hard rules for one selection. ``networks`` maps ws address sets to their networks; the
    selector keeps it between selections, as a directory changes little from one to the next."""

    banned_countries: frozenset[str]
    networks: dict[tuple[str, ...], frozenset[str]]

    def conflict(self, a: Descriptor, b: Descriptor) -> str | None:
        """The rule that keeps ``a`` and ``b`` out of one path, or None if they may share it."""
        if self._of(a) & self._of(b):
            return SAME_NETWORK
        if a.same_family(b):
            return SAME_FAMILY
        return None

    def refusal(self, relay: Descriptor, chosen: Sequence[Descriptor]) -> str | None:
        """Why ``relay`` may not join a path holding ``chosen``, or None if it may."""
        if relay.capabilities.country in self.banned_countries:
            return EXCLUDED_COUNTRY
        return next((rule for rule in (self.conflict(relay, other) for other in chosen) if rule), None)

    def _of(self, relay: Descriptor) -> frozenset[str]:
        addresses = relay.addresses.get("ws", ())
        found = self.networks.get(addresses)
        if found is None:
            if len(self.networks) >= MAX_CACHED_NETWORKS:
                self.networks.clear()
            found = self.networks[addresses] = _networks_of(addresses)
        return found


@dataclass(slots=True)
class PathSelector:
    weights: PathWeights = field(default_factory=PathWeights)
    trust: TrustStore = field(default_factory=lambda: TrustStore(time.monotonic))
    latency_scale_ms: float = 100.0  # an unmeasured relay counts as this far away
    _networks: dict[tuple[str, ...], frozenset[str]] = field(default_factory=dict, repr=False)

    def record(self, peer: PeerId, *, ok: bool, latency_ms: float | None = None) -> None:
        """Feed a circuit build's outcome at ``peer`` (and a measured RTT) back into future choices."""
        self.trust.record_build(peer, ok=ok)
        if latency_ms is not None:
            self.trust.record_rtt(peer, latency_ms)

    def record_stream(self, exit_peer: PeerId, *, ok: bool) -> None:
        """Feed a stream's outcome at its exit back (only failures that are the exit's own)."""
        self.trust.record_stream(exit_peer, ok=ok)

    def score(self, relay: Descriptor, max_bandwidth: int) -> float:
        w = self.weights
        rtt = self.trust.rtt_ms(relay.peer_id)
        latency = 1.0 / (1.0 + (self.latency_scale_ms if rtt is None else rtt) / self.latency_scale_ms)
        bandwidth = relay.capabilities.bandwidth / max_bandwidth if max_bandwidth else 0.0
        return w.latency * latency + w.reliability * self.trust.reliability(relay.peer_id) + w.bandwidth * bandwidth

    def select(self, relays: Iterable[Descriptor], *, hops: int = 3, port: int | None = None,
               country: str | None = None, exit_kind: str | None = None, exit_required: bool = True,
               exclude: Iterable[PeerId] = (), destination: Descriptor | None = None,
               entry: Descriptor | None = None, exclude_countries: Iterable[str] = (),
               rng: random.Random | None = None) -> list[Descriptor]:
        """Choose ``hops`` relays. With ``destination`` the path ends at that node instead of an
        exit; with ``entry`` it starts at that node (a first hop the user chose, like Tor's
        EntryNodes). Both obey the diversity rules with the hops drawn around them. Relays whose
        declared country is in ``exclude_countries`` are never drawn (a chosen entry, a destination
        and a tab destination's own relay are given, not drawn). Raises ``ConfigError`` for a bad
        hop count, ``CircuitError`` if the relays (or the rules) leave no path or no exit is of that
        ``exit_kind`` and ``country``, and ``ExitPolicyError`` if no such exit accepts ``port``: then
        no circuit is worth building."""
        if not MIN_HOPS <= hops <= MAX_HOPS:
            raise ConfigError(f"hops must be {MIN_HOPS}..{MAX_HOPS}, got {hops}")
        rng = rng or random.SystemRandom()
        rules = _Rules(frozenset(code.upper() for code in exclude_countries), self._networks)
        excluded = set(exclude) | ({entry.peer_id} if entry is not None else set())
        relays = list(relays)
        self.trust.observe_listing(r.peer_id for r in relays)
        # Nodes reachable only through another relay (browser tabs: `via` addresses) are never
        # drawn at random; a circuit can end at one, entering through the relay it names.
        pool = [r for r in relays if r.capabilities.relay and r.peer_id not in excluded and listens(r)]
        first: list[Descriptor] = [] if entry is None else [entry]
        exits: list[Descriptor] = []
        if destination is not None and not listens(destination):
            if entry is not None:
                raise ConfigError("a destination reached through its relay cannot also have a chosen entry")
            home = next((r for r in pool if r.peer_id.text in destination.addresses.get("via", ())), None)
            if home is None:
                raise CircuitError("the destination's relay is not in the directory")
            last = [home, destination]
        elif destination is not None:
            if entry is not None and entry.peer_id == destination.peer_id:
                raise ConfigError("the chosen entry cannot also be the last hop")
            last = [destination]
        else:
            last = []
            exits = self._exits(relays, pool, port, country, exit_kind) if exit_required else pool
        fixed = first + last
        for index, hop in enumerate(fixed):
            for other in fixed[index + 1:]:
                rule = rules.conflict(hop, other)
                if rule is not None:
                    raise CircuitError(f"the chosen hops cannot share a path: {rule}")
        max_bw = max((r.capabilities.bandwidth for r in pool), default=0)
        error = CircuitError("no path")
        for _ in range(DRAW_ATTEMPTS):
            try:
                end = last or [self._draw(exits, fixed, rules, max_bw, rng, "exit")]
                middle: list[Descriptor] = []
                for _ in range(hops - len(first) - len(end)):
                    middle.insert(0, self._draw(pool, first + middle + end, rules, max_bw, rng, "relay"))
                return first + middle + end
            except CircuitError as exc:
                error = exc
        raise error

    @staticmethod
    def _exits(relays: list[Descriptor], pool: list[Descriptor], port: int | None, country: str | None,
               kind: str | None) -> list[Descriptor]:
        """``eligible_exits`` of the pool, judged on every *listed* relay when the pool has none: an
        exit left out of this path (excluded, or the chosen entry) may serve another path, so that is
        a ``CircuitError`` (no path here), not "no exit accepts the port"."""
        try:
            return eligible_exits(pool, port=port, country=country, kind=kind)
        except (ExitPolicyError, CircuitError):
            eligible_exits(relays, port=port, country=country, kind=kind)  # raises what the directory lacks
            raise CircuitError("every exit that would do is excluded from this path "
                               "(a relay that failed, or the chosen entry)") from None

    def _draw(self, pool: list[Descriptor], chosen: Sequence[Descriptor], rules: _Rules, max_bw: int,
              rng: random.Random, what: str) -> Descriptor:
        """One hop from ``pool`` that obeys the rules against every hop in ``chosen``; if none
        does, ``CircuitError`` counting the candidates each rule removed."""
        taken = {c.peer_id for c in chosen}
        removed: Counter[str] = Counter()
        candidates = []
        for relay in pool:
            if relay.peer_id in taken:
                continue
            rule = rules.refusal(relay, chosen)
            if rule is None:
                candidates.append(relay)
            else:
                removed[rule] += 1
        if not candidates:
            if not removed:
                raise CircuitError(f"not enough usable relays to pick a {what}")
            why = ", ".join(f"{count} by {rule}" for rule, count in removed.most_common())
            raise CircuitError(f"no {what} left: {sum(removed.values())} relays excluded, {why}")
        candidates = [r for r in candidates if not self.trust.benched(r.peer_id)] or candidates
        scores = [self.score(r, max_bw) for r in candidates]
        return rng.choices(candidates, weights=scores, k=1)[0]


def eligible_exits(relays: Iterable[Descriptor], *, port: int | None = None, country: str | None = None,
                   kind: str | None = None) -> list[Descriptor]:
    """The exits of ``relays`` of that ``kind`` (``EXIT_KINDS``) and ``country`` whose published port
    summary admits ``port`` (each constraint None: any). The error says which constraint no exit meets."""
    if kind is not None and kind not in EXIT_KINDS:
        raise ConfigError(f"exit kind must be one of {EXIT_KINDS}, got {kind!r}")
    exits = [r for r in relays if r.capabilities.exit and kind in (None, r.capabilities.exit_kind)
             and (country is None or r.capabilities.country == country.upper())]
    wanted = " ".join(part for part in (kind, "exit", country and f"in country {country.upper()}") if part)
    if not exits and (kind is not None or country is not None):
        raise CircuitError(f"no {wanted} is in the directory (relays declare their country and kind themselves)")
    accepting = [r for r in exits if port is None or r.allows_port(port)]
    if exits and not accepting:
        raise ExitPolicyError(f"no {wanted} accepts port {port}: their published exit policies refuse it")
    return accepting


def listens(relay: Descriptor) -> bool:
    """Whether anyone can open a link to ``relay`` (it publishes an address other than ``via``)."""
    return any(transport != "via" and addresses for transport, addresses in relay.addresses.items())
