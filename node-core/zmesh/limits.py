"""``NodeLimits``: every bound on what a peer can make a node hold, with safe defaults, checked once."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError
from .flow import CIRCUIT_WINDOW

# The QNet document's peer-table tiers: (networks smaller than this many nodes, peer links kept).
DEFAULT_PEER_TIERS: tuple[tuple[int, int], ...] = ((10, 8), (100, 50), (1000, 100))
DEFAULT_PEER_LIMIT_LARGEST = 500


@dataclass(frozen=True, slots=True)
class PeerTiers:
    """How many *peer* links (relay links: ones this node dialed to relay, and inbound ones whose
    dialer proved its PeerId) a node keeps, by the size of the network it sees. A node in a small
    mesh has no use for hundreds of peer links, and each costs memory, keep-alives and a socket; in
    a large one it needs more to reach the relays its circuits extend to. Clients' anonymous links
    are not peers: ``NodeLimits.max_links`` bounds those. ``fixed`` replaces the tiers by one number.
    Text form (config): ``auto`` or ``N``."""

    tiers: tuple[tuple[int, int], ...] = DEFAULT_PEER_TIERS
    largest: int = DEFAULT_PEER_LIMIT_LARGEST  # networks at least as large as the last tier's bound
    fixed: int | None = None

    def __post_init__(self) -> None:
        bounds = [bound for bound, _ in self.tiers]
        limits = [limit for _, limit in self.tiers] + [self.largest]
        if bounds != sorted(set(bounds)) or any(limit < 1 for limit in limits) or limits != sorted(limits):
            raise ConfigError("peer tiers must have increasing network sizes and non-decreasing limits of at least 1")
        if self.fixed is not None and self.fixed < 1:
            raise ConfigError(f"a fixed peer limit must be at least 1, got {self.fixed}")

    def limit(self, network_size: int) -> int:
        if self.fixed is not None:
            return self.fixed
        return next((limit for bound, limit in self.tiers if network_size < bound), self.largest)

    @classmethod
    def parse(cls, text: str) -> PeerTiers:
        text = str(text).strip().lower()
        if text == "auto":
            return cls()
        if not (text.isascii() and text.isdigit()):  # str.isdigit also takes "²" and other scripts' digits
            raise ConfigError(f"a peer limit is 'auto' or a number of links, got {text!r}")
        return cls(fixed=int(text))


@dataclass(frozen=True, slots=True)
class NodeLimits:
    """Bounds on what a peer can make this node hold. Defaults are safe for a public relay."""

    build_timeout: float = 30.0
    max_circuits_per_link: int = 4096
    max_streams_per_circuit: int = 256
    # A sender that respects the circuit window never has more than CIRCUIT_WINDOW DATA cells
    # queued here; the slack covers SENDME/END/handshake cells.
    max_queued_cells_per_circuit: int = CIRCUIT_WINDOW + 64
    # Link liveness (docs/protocol.md §3): PING a link silent this long; close it once silent for
    # dead_after, so circuits over a peer that vanished without closing its link are torn down.
    keepalive_interval: float = 15.0
    dead_after: float = 45.0
    # Global caps (defect: a relay held whatever it was sent): ~22 KiB per link, ~3.4 KiB per circuit.
    max_links: int = 1000  # a link opened to this node beyond this many links is closed at once
    peer_tiers: PeerTiers = PeerTiers()  # peer (relay) links kept, by network size (see PeerTiers)
    max_circuits: int = 16384  # CREATEs beyond this many circuits are refused with RESOURCE_LIMIT
    # A peer that does not read loses its link once this much waits for it: link cells (PONG, DESTROY,
    # AUTH…), which must hold a DESTROY for every circuit a link can carry, and all cells together.
    max_queued_link_cells: int = 8192
    max_queued_cells_per_link: int = 32768
    # Handshake fairness (zmesh.admission): per link, CREATEs wait in a bounded queue and are answered
    # at up to handshake_rate per second (bursts of handshake_burst), round-robin across links.
    handshake_rate: float = 100.0
    handshake_burst: int = 32
    max_pending_handshakes_per_link: int = 64
    handshake_queue_delay: float = 1.75  # Tor's MaxOnionQueueDelay: older CREATEs are refused
    # Congestion control (docs/protocol.md §10): the most cells a circuit may have in flight, which this
    # node offers as a client and grants as a hop (then buffering up to about that much per circuit and
    # link); 0 keeps fixed windows, as an older node. 4096 cells ≈ 4 MB: 10 MB/s at 400 ms round trip.
    cc_max_window: int = 4096
    # With congestion control a stream's receiver sends XOFF once this many cells wait for its reader.
    xoff_cells: int = 500
    # Onion services (zmesh.points): how many intro and rendezvous points this relay serves at once,
    # how long a rendezvous cookie waits for its service, and each intro point's INTRODUCE1 budget
    # (a token bucket, Tor's HiddenServiceEnableIntroDoS defaults: 25/s, bursts of 200).
    max_intro_points: int = 4096
    max_rendezvous_points: int = 4096
    rendezvous_lifetime: float = 60.0
    introduce_rate: float = 25.0
    introduce_burst: int = 200
    # Padding a peer may ask this node to send it (zmesh.padnego): more is refused with PADDING_LIMIT.
    padding_max_rate: float = 250.0  # PADDING cells per second per link (≈ 250 KB/s)
    padding_max_percent: int = 100  # the largest share of a link's cells a peer's machine may make padding

    def __post_init__(self) -> None:
        for name in ("max_links", "max_circuits", "max_circuits_per_link", "max_queued_cells_per_circuit",
                     "max_intro_points", "max_rendezvous_points", "introduce_burst"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_queued_link_cells <= self.max_circuits_per_link:
            raise ConfigError(f"max_queued_link_cells ({self.max_queued_link_cells}) must exceed max_circuits_per_link "
                              f"({self.max_circuits_per_link}): closing a link may DESTROY every circuit on another")
        if self.max_queued_cells_per_link < self.max_queued_link_cells + self.max_queued_cells_per_circuit:
            raise ConfigError(f"max_queued_cells_per_link ({self.max_queued_cells_per_link}) must hold "
                              f"max_queued_link_cells plus one circuit's max_queued_cells_per_circuit")
        if not (self.cc_max_window == 0 or self.cc_max_window >= 64):
            raise ConfigError(f"cc_max_window must be 0 (fixed windows) or at least 64 cells, got {self.cc_max_window}")
        if not 0 <= self.padding_max_rate <= 100_000 or not 0 <= self.padding_max_percent <= 100:
            raise ConfigError(f"padding_max_rate must be 0..100000 cells/s and padding_max_percent 0..100, got "
                              f"{self.padding_max_rate} and {self.padding_max_percent}")
        if self.xoff_cells < 1:
            raise ConfigError(f"xoff_cells must be at least 1, got {self.xoff_cells}")
        for name in ("rendezvous_lifetime", "introduce_rate"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.keepalive_interval > 0:
            raise ConfigError(f"keepalive_interval must be positive, got {self.keepalive_interval}")
        if not self.dead_after > self.keepalive_interval:
            raise ConfigError(f"dead_after ({self.dead_after} s) must be greater than keepalive_interval "
                              f"({self.keepalive_interval} s): a PING needs time to be answered")
