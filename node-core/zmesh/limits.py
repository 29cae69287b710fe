"""``NodeLimits``: every bound on what a peer can make a node hold, with safe defaults, checked once."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError
from .flow import CIRCUIT_WINDOW


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
    # Onion services (zmesh.points): how many intro and rendezvous points this relay serves at once,
    # how long a rendezvous cookie waits for its service, and each intro point's INTRODUCE1 budget
    # (a token bucket, Tor's HiddenServiceEnableIntroDoS defaults: 25/s, bursts of 200).
    max_intro_points: int = 4096
    max_rendezvous_points: int = 4096
    rendezvous_lifetime: float = 60.0
    introduce_rate: float = 25.0
    introduce_burst: int = 200

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
        for name in ("rendezvous_lifetime", "introduce_rate"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.keepalive_interval > 0:
            raise ConfigError(f"keepalive_interval must be positive, got {self.keepalive_interval}")
        if not self.dead_after > self.keepalive_interval:
            raise ConfigError(f"dead_after ({self.dead_after} s) must be greater than keepalive_interval "
                              f"({self.keepalive_interval} s): a PING needs time to be answered")
