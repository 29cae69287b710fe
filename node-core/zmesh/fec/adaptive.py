"""Adaptive repair rate: how many repair packets to send per source packet on one link.

RFC 9407 §6 leaves the coding rate to research. Our rule, fed by the receiver's window updates
(every data packet is numbered; an update says how many were received of those numbered so far):

- ``loss`` is an EWMA (weight ``alpha``) of the loss fraction, one sample per ``sample_packets``
  packets sent; ``ratio = clamp(min_ratio, max_ratio, margin × loss)``. A clean link decays to
  ``min_ratio`` (0 by default: no repair overhead at all), a lossy one is over-provisioned by
  ``margin`` so most losses are repaired before any feedback could arrive.
- On top of the rate, every loss an update newly reveals is answered by one repair
  (``on_update`` returns how many; ``link.py`` sends them within the repair budget of budget.py):
  one repair rebuilds any one lost symbol of the window, so this is retransmission without naming
  what to resend, and it covers bursts the average rate misses.
"""

from __future__ import annotations

from zmesh.errors import ConfigError


class RepairRateController:
    """Turns window updates into a repair ratio and a count of repairs owed right now."""

    def __init__(self, *, min_ratio: float = 0.0, max_ratio: float = 0.5, margin: float = 1.5,
                 alpha: float = 0.25, sample_packets: int = 16) -> None:
        if not 0.0 <= min_ratio <= max_ratio <= 4.0:
            raise ConfigError(f"fec repair ratios need 0 <= min_repair <= max_repair <= 4, "
                              f"got {min_ratio}, {max_ratio}")
        if margin < 1.0 or not 0.0 < alpha <= 1.0 or sample_packets < 1:
            raise ConfigError("fec rate controller needs margin >= 1, 0 < alpha <= 1, sample_packets >= 1")
        self.min_ratio, self.max_ratio, self.margin, self.alpha = min_ratio, max_ratio, margin, alpha
        self.sample_packets = sample_packets
        self.loss = 0.0
        self._lost_mark = 0  # losses already answered with repairs
        self._sample_seen = 0
        self._sample_lost = 0

    @property
    def ratio(self) -> float:
        return min(self.max_ratio, max(self.min_ratio, self.margin * self.loss))

    def on_update(self, seen: int, received: int) -> int:
        """Fold in a window update newer than the last one (the encoder drops older ones): of the
        ``seen`` data packets numbered so far, the receiver got ``received``. Returns how many
        losses this update newly reveals."""
        lost = max(0, seen - received)  # more received than numbered: duplicates
        newly = max(0, lost - self._lost_mark)
        if seen - self._sample_seen >= self.sample_packets:
            sample = (lost - self._sample_lost) / (seen - self._sample_seen)
            self.loss += self.alpha * (min(1.0, max(0.0, sample)) - self.loss)
            self._sample_seen, self._sample_lost = seen, lost
        self._lost_mark = max(self._lost_mark, lost)
        return newly
