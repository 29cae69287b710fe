"""Adaptive repair rate: steer repair symbols per source symbol by the measured loss.

Every data packet carries a packet number; the receiver's window updates report how many packets
it has received and the highest packet number it has seen, so the sender knows exactly how many
of the packets up to that number went missing. Loss is smoothed (EWMA, α = 0.25) and the ratio is
``clamp(min_ratio, max_ratio, margin × loss)`` — RFC 9407 §6 leaves the coding-rate policy as a
research issue; this one keeps a clean link at ``min_ratio`` (0 by default: no overhead) and
overprovisions losses by ``margin`` so that most windows decode without waiting. On top of the
rate, every loss a window update reveals is answered with one immediate repair.
"""

from __future__ import annotations

from zmesh.errors import ConfigError


class RepairRateController:
    def __init__(self, *, min_ratio: float = 0.0, max_ratio: float = 0.5, margin: float = 1.5,
                 alpha: float = 0.25) -> None:
        if not 0.0 <= min_ratio <= max_ratio <= 4.0:
            raise ConfigError("repair ratios must satisfy 0 <= min_ratio <= max_ratio <= 4")
        self.min_ratio, self.max_ratio, self.margin, self.alpha = min_ratio, max_ratio, margin, alpha
        self.loss = 0.0
        self._highest_mark = -1
        self._received_mark = 0

    @property
    def ratio(self) -> float:
        return min(self.max_ratio, max(self.min_ratio, self.margin * self.loss))

    def update(self, highest_packet: int, received: int) -> int:
        """Fold in a window update: packets numbered up to ``highest_packet`` were sent, and the
        receiver has received ``received`` packets in all. Returns how many packets this report
        newly shows as lost, so the sender can send that many repairs at once (feedback-driven
        repair) instead of waiting for the average rate to cover them."""
        sent_delta, received_delta = highest_packet - self._highest_mark, received - self._received_mark
        if sent_delta < 16 or received_delta < 0:
            return 0  # too few packets for a meaningful sample (or a stale report)
        sample = min(1.0, max(0.0, 1.0 - received_delta / sent_delta))
        self.loss += self.alpha * (sample - self.loss)
        self._highest_mark, self._received_mark = highest_packet, received
        return max(0, sent_delta - received_delta)
