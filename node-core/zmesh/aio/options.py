"""``MeshOptions``: the options a ``MeshVPN`` is drawn and built by, validated with messages naming
the key (the Python twin of ``MeshOptions`` in ``web/meshvpn.d.ts``)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from ..circuit import MAX_HOPS, MIN_HOPS
from ..descriptor import EXIT_KINDS
from ..errors import ConfigError
from ..identity import PeerId
from .transport import check_transport

# The exit kinds a circuit may end at (``zmesh.descriptor.EXIT_KINDS``). "cloudflare", the design's name,
# is an alias of "proxy": any relay that exits through an upstream HTTP CONNECT proxy, whoever runs
# the proxy; nothing here talks to, or prefers, one vendor.
EXIT_ALIASES = {"cloudflare": "proxy"}
EXITS = (*EXIT_KINDS, *EXIT_ALIASES)
MAX_EXCLUDED_COUNTRIES = 256  # more than there are ISO 3166 codes
# The options a circuit is drawn by: changing one on a connected MeshVPN rebuilds its circuit.
PATH_OPTIONS = ("hops", "exit", "country", "transport", "entry", "exclude_countries")


@dataclass(frozen=True, slots=True)
class MeshOptions:
    """The ``MeshOptions`` of the design: validated on construction with messages naming the key.

    Values the design names but this build cannot honour yet are refused with a clear error
    rather than silently ignored.
    """

    hops: int = 3
    exit: str = "direct"  # "direct" or "proxy" (alias "cloudflare"): how the circuit's exit reaches targets
    country: str | None = None
    enable_fec: bool = False  # the tab's WebRTC links get a lossy channel with FEC (read when it joins)
    transport: str = "auto"
    entry: str | None = None  # PeerId of the first hop of every circuit (else drawn like the rest)
    exclude_countries: tuple[str, ...] = ()  # two-letter codes: relays declaring one are never drawn
    multipath: bool = False  # streams split over two circuits sharing only the exit (zmesh.aio.multipath)

    def __post_init__(self) -> None:
        if not isinstance(self.hops, int) or not MIN_HOPS <= self.hops <= MAX_HOPS:
            raise ConfigError(f"hops must be an integer {MIN_HOPS}..{MAX_HOPS}, got {self.hops!r}")
        if self.exit not in EXITS:
            raise ConfigError(f"exit must be one of {EXITS}, got {self.exit!r}")
        object.__setattr__(self, "exit", EXIT_ALIASES.get(self.exit, self.exit))  # the kind, as descriptors say it
        check_transport(self.transport)
        if self.entry is not None:
            try:
                PeerId.from_text(self.entry if isinstance(self.entry, str) else "")
            except ConfigError as exc:
                raise ConfigError(f"entry must be a PeerId: {exc}") from exc
        if self.country is not None and (len(self.country) != 2 or not self.country.isalpha()):
            raise ConfigError(f"country must be a two-letter code, got {self.country!r}")
        codes = self.exclude_countries
        if (isinstance(codes, str) or not isinstance(codes, (list, tuple)) or len(codes) > MAX_EXCLUDED_COUNTRIES
                or not all(isinstance(c, str) and len(c) == 2 and c.isascii() and c.isalpha() for c in codes)):
            raise ConfigError(f"exclude_countries must be a list of at most {MAX_EXCLUDED_COUNTRIES} two-letter "
                              f"codes, got {codes!r:.80}")
        object.__setattr__(self, "exclude_countries", tuple(c.upper() for c in codes))
        if not isinstance(self.enable_fec, bool):
            raise ConfigError("enable_fec must be true or false")
        if not isinstance(self.multipath, bool):
            raise ConfigError("multipath must be true or false")
        if self.enable_fec and self.transport == "websocket":
            raise ConfigError("enable_fec needs WebRTC links (a lossy DataChannel); transport is 'websocket'")

    def updated(self, **changes: Any) -> MeshOptions:
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ConfigError(f"unknown option(s): {', '.join(sorted(unknown))}")
        return replace(self, **changes)
