"""What padding a node runs: the ``anonymity.*`` settings in core form (docs/anonymity.md).

``PaddingPolicy.keepalive`` (seconds; 0 off) puts a keep-alive machine on every link this node
has; ``cover`` (``parse_cover("off" | "poisson:RATE" | "constant:RATE")``) shapes the links this
node opens for its own circuits and asks the first hop to shape its side of the same link, so both
directions of the client's first link run at the cover rate; ``jitter`` (seconds; 0 off) holds each
link's output for a random, bounded delay and sends what gathered meanwhile as one batch;
``frame_padding`` ends each frame with a random-length zero trailer.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError
from .padding import Machine, PaddingSpec

_KINDS = {"constant": Machine.CONSTANT, "poisson": Machine.POISSON}


def parse_cover(text: str) -> PaddingSpec | None:
    """``off`` → None; ``poisson:RATE`` / ``constant:RATE`` (cells per second) → the machine."""
    text = str(text).strip().lower()
    if text == "off":
        return None
    kind, sep, rate = text.partition(":")
    if not sep or kind not in _KINDS:
        raise ConfigError(f"cover is 'off', 'poisson:RATE' or 'constant:RATE' (cells per second), got {text!r}")
    try:
        value = float(rate)
    except ValueError:
        raise ConfigError(f"cover rate must be a number of cells per second, got {rate!r}") from None
    if value != value:  # NaN
        raise ConfigError("cover rate must be a number of cells per second, got nan")
    return PaddingSpec(_KINDS[kind], rate=value)


@dataclass(frozen=True, slots=True)
class PaddingPolicy:
    """This node's own padding. The core's default is none (as an older node); the native config
    and MeshVPN turn keep-alive padding on by default (``DEFAULT_KEEPALIVE``)."""

    keepalive: float = 0.0
    cover: PaddingSpec | None = None
    jitter: float = 0.0  # timing jitter: the most (s) a link's batch of cells is held (0: off)
    frame_padding: bool = False  # a random zero trailer on each frame (peers of this version accept it)

    def __post_init__(self) -> None:
        if not 0 <= self.jitter <= MAX_JITTER:
            raise ConfigError(f"jitter must be 0..{MAX_JITTER} s (0: off), got {self.jitter}")
        if self.keepalive:
            PaddingSpec(Machine.KEEPALIVE, idle=self.keepalive)  # checks the range
        if self.cover is not None and not self.cover.shapes:
            raise ConfigError("cover must be a constant or Poisson machine")

    @classmethod
    def of(cls, keepalive: float, cover: str, jitter: float = 0.0, frame_padding: bool = False) -> PaddingPolicy:
        if keepalive < 0:
            raise ConfigError(f"keepalive padding idle time must be ≥ 0 s (0: off), got {keepalive}")
        return cls(keepalive, parse_cover(cover), jitter, frame_padding)


MAX_JITTER = 0.5  # seconds: a bound, so jitter can never stall a circuit into its timeouts
DEFAULT_KEEPALIVE = 9.5  # seconds, the top of Tor's 1.5–9.5 s channel padding window
