"""Which leg sends next: the lowest-RTT leg that has congestion window to spare (Tor proposal
329's "MinRTT" scheduler), re-read before every message, so the choice follows the RTTs as they
change. A leg whose window is full is passed over while another has room; when none has, the
lowest-RTT one waits for its window (its writer blocks, and the next message goes elsewhere).
"""

from __future__ import annotations

import math
from typing import NamedTuple


class LegView(NamedTuple):
    """What the scheduler knows of one leg at this moment."""

    leg: int
    rtt: float | None  # the leg circuit's smoothed RTT (s); None before its first sample
    room: int  # DATA cells its congestion window still allows
    idle: bool  # nothing of ours is waiting on this leg's window


def pick_leg(legs: list[LegView]) -> int | None:
    """The leg to send the next message on, or None when every live leg is busy."""
    idle = [view for view in legs if view.idle]
    if not idle:
        return None
    ready = [view for view in idle if view.room > 0] or idle
    return min(ready, key=lambda view: (math.inf if view.rtt is None else view.rtt, view.leg)).leg
