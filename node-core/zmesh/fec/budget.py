"""Repair budget: how much repair work a peer can make a FEC sender do.

Repairs answer the losses the receiver reports, so the receiver decides how many the sender
computes: one lying 17-byte window update claiming every packet lost used to buy a full window
of repairs (256 × 1215 bytes, each a combination over up to 256 symbols), and the next update
could claim those repairs lost too. Honest losses cost about ``loss × (1 + ratio)`` repairs per
source packet on top of the ratio's own (≈ 0.6 in all at 20 % loss), so the budget sits above
that and far below an attack:

- ``per_ack``: repairs one window update may trigger at once (the endpoint sends the rest of
  what it reveals one per frame sent next, which this budget still bounds);
- ``share``: each source packet sent earns credit for ``share`` repair packets, and credit never
  exceeds ``burst`` bytes, so repair bytes ≤ ``share`` × (source packets × repair packet size)
  over the link's life (sources are counted at the symbol size they occupy in the code: a small
  frame still costs a whole repair symbol to protect), and cannot be saved up for a burst later;
- ``rate``: a token bucket of ``rate`` bytes per second, ``burst`` deep, on the clock passed in,
  which bounds repair CPU per second however much source traffic earned.

The tail timer's probes are exempt: they are spaced by the timer (at most one per
``repair_interval``), and a sender that could not probe would block for good on a lost final update.
"""

from __future__ import annotations

from dataclasses import dataclass

from zmesh.errors import ConfigError


@dataclass(frozen=True, slots=True)
class RepairLimits:
    """Bounds on repairs (see the module docstring); ``ConfigError`` if out of range."""

    per_ack: int = 4
    share: float = 1.0
    rate: float = 2 * 1024 * 1024
    burst: int = 64 * 1024

    def __post_init__(self) -> None:
        if not 0 <= self.per_ack <= 64:
            raise ConfigError(f"fec repair per_ack must be 0..64, got {self.per_ack}")
        if not 0.0 <= self.share <= 8.0:
            raise ConfigError(f"fec repair share must be 0..8 repairs per source packet, got {self.share}")
        if not self.rate > 0 or not self.burst > 0:
            raise ConfigError(f"fec repair rate and burst must be positive, got {self.rate}, {self.burst}")


class RepairBudget:
    """Credit earned by source packets and a token bucket refilled by time; a repair needs both."""

    def __init__(self, limits: RepairLimits, repair_size: int) -> None:
        if limits.burst < repair_size:
            raise ConfigError(f"fec repair burst {limits.burst} is smaller than one repair packet "
                              f"({repair_size} bytes)")
        self.limits, self.repair_size = limits, repair_size
        self.denied = 0  # repairs asked for but refused
        self._credit = 0.0  # bytes of repair the source packets sent so far allow
        self._tokens = float(limits.burst)
        self._refilled: float | None = None  # when the bucket was last topped up

    def earn(self) -> None:
        """One source packet was sent."""
        self._credit = min(self.limits.burst, self._credit + self.limits.share * self.repair_size)

    def take(self, now: float) -> bool:
        """Spend one repair packet's worth if both allow it at ``now``; count a refusal otherwise."""
        if self._refilled is None or now > self._refilled:  # a clock that steps back refills nothing
            elapsed = 0.0 if self._refilled is None else now - self._refilled
            self._tokens = min(self.limits.burst, self._tokens + elapsed * self.limits.rate)
            self._refilled = now
        if self._credit < self.repair_size or self._tokens < self.repair_size:
            self.denied += 1
            return False
        self._credit -= self.repair_size
        self._tokens -= self.repair_size
        return True
