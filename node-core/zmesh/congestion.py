"""Per-circuit congestion control with authenticated SENDMEs (docs/protocol.md §10), sans-IO.

Fixed windows (``zmesh.flow``) let one circuit have 1000 cells in flight whatever the path can
carry, so at 100 ms round trip it cannot pass ~10 MB/s and at 300 ms ~3 MB/s. ``VegasFlow`` instead
sizes the window to the path, in the spirit of Tor-Vegas (proposal 324): slow start doubles the
window every round trip until the queue the circuit keeps on its path (its queue-use estimate)
passes ``gamma``; after that, once per window, it removes ``step`` cells while the queue is above
``beta``, grows while it is below ``alpha`` (by half the gap to ``alpha``, at least ``step``: FAST
TCP's update, quicker than Vegas' one step), and cuts straight back to the estimated
bandwidth-delay product plus ``delta`` when the queue passes ``delta``. Past ``SCALE_FROM`` cells of window the
thresholds and the step grow with the window (one deliberate difference from Tor, see there).

Units, stated once because mixing them is the classic bug (Arti once sent 8× less than allowed by
taking bytes for bits): every window, threshold and count here is in DATA **cells** (each carries
up to ``RELAY_DATA_SIZE`` = 992 bytes of stream data and costs ``CELL_SIZE`` = 1024 bytes on every
link); times are **seconds** on the node's injected clock. ``rate_bytes_per_s`` is the only rate.

The receiver sends a SENDME after every ``SENDME_EVERY`` DATA cells, and that SENDME names the
cell it acknowledges by the cell's digest tag (``cells.RelayMessage.tag``: the sender's running
relay digest after that cell, which only the two ends of the circuit can compute). The sender keeps
the tag and send time of every ``SENDME_EVERY``-th cell it sent; a SENDME must name the oldest one
still expected. One naming anything else — a cell never sent, or one the peer cannot have received
yet, since it could not know its tag — is a forged acknowledgement: the circuit is destroyed
(``BAD_SENDME``), so a client cannot make an exit send faster than it really receives (proposal
289). The same SENDMEs time the round trip, so each one is also an RTT sample.
"""

from __future__ import annotations

import hmac
from collections import deque
from dataclasses import dataclass

from .cells import CELL_SIZE, DestroyReason
from .errors import ConfigError
from .links import CircuitFailure

SENDME_EVERY = 32  # DATA cells per authenticated SENDME (Tor: 31)
# Tor's thresholds are fixed cell counts; a fixed queue allowance shrinks against RTT noise as the
# window grows (at 300 ms and 10 MB/s, 320 cells are 11 % of the window), so past this many cells
# of window they scale with it: alpha is then 19 % of the window, delta 31 %.
SCALE_FROM = 1024
SENDME_VERSION = 1  # an authenticated SENDME's payload: version (1 byte) ‖ tag (8 bytes)
TAG_SIZE = 8


@dataclass(frozen=True, slots=True)
class VegasParams:
    """The controller's constants, all in cells. Defaults follow Tor's exit-circuit values
    (alpha/beta/gamma/delta = 3/4/3/5 × 62 cells), rescaled to ``SENDME_EVERY`` = 32."""

    cwnd_init: int = 4 * SENDME_EVERY
    cwnd_min: int = 2 * SENDME_EVERY
    step: int = SENDME_EVERY  # change per window outside slow start
    alpha: int = 6 * SENDME_EVERY  # queue below this: grow
    beta: int = 8 * SENDME_EVERY  # queue above this: shrink
    gamma: int = 6 * SENDME_EVERY  # queue above this: slow start is over
    delta: int = 10 * SENDME_EVERY  # queue above this: back to the bandwidth-delay product at once

    def __post_init__(self) -> None:
        if not 0 < self.cwnd_min <= self.cwnd_init:
            raise ConfigError(f"VegasParams needs 0 < cwnd_min ({self.cwnd_min}) <= cwnd_init ({self.cwnd_init})")
        if not (self.step > 0 and 0 <= self.alpha <= self.beta < self.delta and 0 <= self.gamma <= self.delta):
            raise ConfigError("VegasParams needs step > 0 and alpha <= beta < delta, gamma <= delta (cells)")


class VegasFlow:
    """One end's congestion control for one circuit: what it may send, and its SENDMEs both ways.

    ``cap`` is the window negotiated with every hop (``zmesh.negotiation``): the least any of them
    agreed to buffer for this circuit, so the window never grows past what the path accepts."""

    __slots__ = ("params", "cap", "cwnd", "inflight", "slow_start", "min_rtt", "ewma_rtt", "_sent", "_expected",
                 "_acked_since_update", "_received")

    def __init__(self, cap: int, params: VegasParams | None = None) -> None:
        self.params = params = params or VegasParams()
        self.cap = cap
        self.cwnd = min(params.cwnd_init, cap)  # cells the sender may have unacknowledged
        self.inflight = 0  # cells sent and not yet acknowledged
        self.slow_start = True
        self.min_rtt = self.ewma_rtt = 0.0  # seconds; 0 until the first SENDME
        self._sent = 0  # DATA cells sent so far
        self._expected: deque[tuple[bytes, float]] = deque()  # (tag, sent at) of each SENDME_EVERY-th cell
        self._acked_since_update = 0
        self._received = 0  # DATA cells received so far (the other direction)

    # ------------------------------------------------------------------ sending

    def room(self) -> int:
        """DATA cells that may be sent now."""
        return max(0, self.cwnd - self.inflight)

    def sent(self, bodies: list[bytearray], now: float) -> None:
        """``bodies`` (sealed: their digest fields hold their tags) were sent at ``now``."""
        first = SENDME_EVERY - 1 - self._sent % SENDME_EVERY
        for index in range(first, len(bodies), SENDME_EVERY):
            self._expected.append((bytes(bodies[index][8:8 + TAG_SIZE]), now))
        self._sent += len(bodies)
        self.inflight += len(bodies)

    def on_sendme(self, data: bytes, now: float) -> None:
        """Check an authenticated SENDME and let it open the window; a forged one raises
        ``CircuitFailure(BAD_SENDME)``, which destroys the circuit."""
        if len(data) != 1 + TAG_SIZE or data[0] != SENDME_VERSION:
            raise CircuitFailure(DestroyReason.BAD_SENDME, "SENDME without an authenticating tag")
        if not self._expected:
            raise CircuitFailure(DestroyReason.BAD_SENDME, "SENDME for cells that were never sent")
        tag, sent_at = self._expected.popleft()
        if not hmac.compare_digest(tag, data[1:]):
            raise CircuitFailure(DestroyReason.BAD_SENDME, "SENDME names a cell that was not sent or not received")
        self.inflight -= SENDME_EVERY
        self._update(max(now - sent_at, 1e-6))

    def _update(self, rtt: float) -> None:
        """One RTT sample: the Vegas step (per SENDME in slow start, once per window after)."""
        params = self.params
        self.min_rtt = rtt if not self.min_rtt else min(self.min_rtt, rtt)
        # an EWMA over about half a window of SENDMEs, as Tor's
        n = max(2, self.cwnd // (2 * SENDME_EVERY))
        self.ewma_rtt = rtt if not self.ewma_rtt else self.ewma_rtt + (rtt - self.ewma_rtt) * 2 / (n + 1)
        self._acked_since_update += SENDME_EVERY
        if not self.slow_start and self._acked_since_update < self.cwnd:
            return
        self._acked_since_update = 0
        bdp = self.bdp()
        queue = self.cwnd - bdp
        scale = max(1.0, self.cwnd / SCALE_FROM)  # the thresholds hold per SCALE_FROM cells of window
        if self.slow_start:
            if queue < params.gamma * scale:
                self.cwnd += SENDME_EVERY  # one per SENDME: the window doubles every round trip
            else:
                self.cwnd, self.slow_start = bdp + int(params.gamma * scale), False
        elif queue > params.delta * scale:
            self.cwnd = bdp + int((params.delta - params.step) * scale)
        elif queue > params.beta * scale:
            self.cwnd -= int(params.step * scale)
        elif queue < params.alpha * scale:
            # FAST TCP's update rather than Vegas' single step: close half the gap to a queue of
            # alpha, so a window that left slow start early (a burst of RTT noise) regains the path
            # in a few round trips instead of one step per round trip.
            self.cwnd += int(max(params.step * scale, (params.alpha * scale - queue) / 2))
        floor = min(params.cwnd_min, self.cap)
        if self.cwnd <= floor and not self.slow_start:
            # As Tor does: at the floor the path's base RTT has probably grown (a new route, a
            # slower hop), so the old minimum would keep the window there. Start over from now.
            self.min_rtt = self.ewma_rtt
        self.cwnd = max(floor, min(self.cwnd, self.cap))
        if self.cwnd >= self.cap:
            self.slow_start = False

    def bdp(self) -> int:
        """The bandwidth-delay product estimate in cells: the window scaled by min RTT ÷ smoothed RTT."""
        return int(self.cwnd * self.min_rtt / self.ewma_rtt) if self.ewma_rtt else self.cwnd

    def rate_bytes_per_s(self) -> float:
        """What the window allows at the smoothed RTT, in bytes of cells per second (0 before a sample)."""
        return self.cwnd * CELL_SIZE / self.ewma_rtt if self.ewma_rtt else 0.0

    # ------------------------------------------------------------------ receiving

    def received(self, tag: bytes) -> bytes | None:
        """A DATA cell with ``tag`` arrived: the authenticated SENDME payload now due, or None."""
        self._received += 1
        if self._received % SENDME_EVERY:
            return None
        return bytes([SENDME_VERSION]) + tag
