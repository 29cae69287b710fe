"""Path selection: a pure function from a directory view to a list of relays.

Each candidate gets a score in [0, 1] from four measured qualities, weighted by default as the
design asks — latency 40 %, reliability 30 %, bandwidth 20 %, diversity 10 % — and hops are *drawn*
with probability proportional to score rather than always taking the best: a deterministic
"best path" would funnel every client through the same few relays, which is both a load and an
anonymity problem. A peer never appears twice in a path; the exit is drawn first, from relays whose
published policy admits the wanted port (and country, if asked), so the rest of the path can be
kept apart from it.
"""

from __future__ import annotations

import ipaddress
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .circuit import MAX_HOPS, MIN_HOPS
from .descriptor import EXIT_KINDS, Descriptor
from .errors import CircuitError, ConfigError, ExitPolicyError
from .identity import PeerId


@dataclass(frozen=True, slots=True)
class PathWeights:
    latency: float = 0.4
    reliability: float = 0.3
    bandwidth: float = 0.2
    diversity: float = 0.1

    def __post_init__(self) -> None:
        values = (self.latency, self.reliability, self.bandwidth, self.diversity)
        if any(v < 0 for v in values) or not math.isclose(sum(values), 1.0, abs_tol=1e-9):
            raise ConfigError(f"path weights must be non-negative and sum to 1, got {sum(values):.3f}")


@dataclass(slots=True)
class PeerStats:
    """What this node has measured about a peer. Unknown peers start neutral."""

    latency_ms: float = 100.0
    successes: int = 0
    failures: int = 0

    @property
    def reliability(self) -> float:
        # Laplace smoothing: a new peer is 0.5, not 0 or 1.
        return (self.successes + 1) / (self.successes + self.failures + 2)


@dataclass(slots=True)
class PathSelector:
    weights: PathWeights = field(default_factory=PathWeights)
    stats: dict[PeerId, PeerStats] = field(default_factory=dict)
    latency_scale_ms: float = 100.0

    def record(self, peer: PeerId, *, ok: bool, latency_ms: float | None = None) -> None:
        """Feed a circuit outcome or a measured RTT back into future choices."""
        stats = self.stats.setdefault(peer, PeerStats())
        if ok:
            stats.successes += 1
        else:
            stats.failures += 1
        if latency_ms is not None:
            stats.latency_ms = 0.8 * stats.latency_ms + 0.2 * latency_ms

    def score(self, relay: Descriptor, chosen: Sequence[Descriptor], max_bandwidth: int) -> float:
        stats = self.stats.get(relay.peer_id, PeerStats())
        w = self.weights
        latency = 1.0 / (1.0 + stats.latency_ms / self.latency_scale_ms)
        bandwidth = relay.capabilities.bandwidth / max_bandwidth if max_bandwidth else 0.0
        diversity = 1.0 if all(not _same_family(relay, other) for other in chosen) else 0.0
        return (w.latency * latency + w.reliability * stats.reliability + w.bandwidth * bandwidth
                + w.diversity * diversity)

    def select(self, relays: Iterable[Descriptor], *, hops: int = 3, port: int | None = None,
               country: str | None = None, exit_kind: str | None = None, exit_required: bool = True,
               exclude: Iterable[PeerId] = (), destination: Descriptor | None = None,
               entry: Descriptor | None = None, rng: random.Random | None = None) -> list[Descriptor]:
        """Choose ``hops`` relays. With ``destination`` the path ends at that node instead of an
        exit; with ``entry`` it starts at that node (a first hop the user chose, like Tor's
        EntryNodes). Raises ``ConfigError`` for a bad hop count, ``CircuitError`` if too few relays
        (or no exit of that ``exit_kind`` and ``country``) and ``ExitPolicyError`` if no such exit
        accepts ``port``: then no circuit is worth building."""
        if not MIN_HOPS <= hops <= MAX_HOPS:
            raise ConfigError(f"hops must be {MIN_HOPS}..{MAX_HOPS}, got {hops}")
        rng = rng or random.SystemRandom()
        excluded = set(exclude) | ({entry.peer_id} if entry is not None else set())
        relays = list(relays)
        # Nodes reachable only through another relay (browser tabs: `via` addresses) are never
        # drawn at random; a circuit can end at one, entering through the relay it names.
        pool = [r for r in relays if r.capabilities.relay and r.peer_id not in excluded and listens(r)]
        max_bw = max((r.capabilities.bandwidth for r in pool), default=0)
        if destination is not None and not listens(destination):
            if entry is not None:
                raise ConfigError("a destination reached through its relay cannot also have a chosen entry")
            entry = next((r for r in pool if r.peer_id.text in destination.addresses.get("via", ())), None)
            if entry is None:
                raise CircuitError("the destination's relay is not in the directory")
            chosen = [entry, destination]
            for _ in range(hops - 2):
                rest = [r for r in pool if all(r.peer_id != c.peer_id for c in chosen)]
                chosen.insert(0, self._draw(rest, chosen, max_bw, rng, "relay"))
            return chosen
        if destination is not None:
            last = destination
        else:
            exits = eligible_exits(pool, port=port, country=country, kind=exit_kind) if exit_required else pool
            last = self._draw(exits, [], max_bw, rng, "exit")
        chosen = [last]
        for _ in range(hops - 1 - (entry is not None)):
            rest = [r for r in pool if all(r.peer_id != c.peer_id for c in chosen)]
            chosen.insert(0, self._draw(rest, chosen, max_bw, rng, "relay"))
        if entry is not None:
            if entry.peer_id == last.peer_id:
                raise ConfigError("the chosen entry cannot also be the last hop")
            chosen.insert(0, entry)
        return chosen

    def _draw(self, candidates: list[Descriptor], chosen: list[Descriptor], max_bw: int,
              rng: random.Random, what: str) -> Descriptor:
        if not candidates:
            raise CircuitError(f"not enough usable relays to pick a {what}")
        scores = [self.score(r, chosen, max_bw) for r in candidates]
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


def _family(relay: Descriptor) -> set[str]:
    """Coarse network families of a relay: its country and the /16 (IPv4) or /32 (IPv6) of each
    address it publishes — two hops in one family are more likely watched by one observer."""
    families = {f"cc:{relay.capabilities.country}"} if relay.capabilities.country else set()
    for addresses in relay.addresses.values():
        for address in addresses:
            host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]").split("/")[0]
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                continue
            if ip.is_loopback:
                continue
            prefix = 16 if ip.version == 4 else 32
            families.add(f"net:{ipaddress.ip_network(f'{ip}/{prefix}', strict=False)}")
    return families


def _same_family(a: Descriptor, b: Descriptor) -> bool:
    return bool(_family(a) & _family(b))
