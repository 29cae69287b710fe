"""One end of a FEC link: Tetrys over any unordered/unreliable link, in order and exactly once above.

``FecEndpoint`` is the sans-IO policy of one end — when to send repairs and window updates, what
to hand the application — with the clock passed in, so tests and ``bench/fec.py`` drive it with a
fake clock. ``zmesh.aio.fec.FecLink`` is its asyncio driver and itself a ``Link`` (``ordered=True``).

Flow: ``send`` → source packet, plus ``ratio`` repairs per source packet on average (adaptive.py).
The receiver sends a window update every ``ack_every`` data packets, at once when a loss shows,
and ``ack_interval`` after any other change; every loss an update reveals is answered by one
repair, within a repair budget (budget.py) that a receiver lying about losses cannot exceed.
While the window is not empty and nothing new is sent, a repair goes out after
``repair_interval``, then at doubling intervals (up to 8×) until an update shows progress: tail
protection, and recovery from lost window updates. The sender's window is released only as the
application *consumes* frames, so at most ``window`` frames are ever buffered on either side. A
symbol still missing ``max_stall`` seconds after the receiver noticed the loss is given up:
``recv`` raises ``LostFrames`` naming the lost frame numbers, and delivery carries on after them.
"""

from __future__ import annotations

import random
from collections import deque

from zmesh.errors import ConfigError, FECError

from .adaptive import RepairRateController
from .budget import RepairBudget, RepairLimits
from .tetrys import ACK, REPAIR_OVERHEAD, Delivered, Gap, TetrysDecoder, TetrysEncoder, packet_type

_MAX_BACKOFF = 8


class LostFrames(FECError):
    """Frames ``first..last`` (numbered from 0 in send order) were lost beyond what repair covered."""

    def __init__(self, first: int, last: int) -> None:
        super().__init__(f"frames {first}..{last} were lost beyond what forward error correction "
                         "could repair; later frames continue")
        self.first, self.last = first, last


class FecEndpoint:
    """One end of a FEC link, sans-IO: frames and packets in; packets, frames and gaps out."""

    def __init__(self, *, symbol_size: int = 1200, window: int = 256, min_repair: float = 0.0,
                 max_repair: float = 0.5, ack_every: int = 16, ack_interval: float = 0.02,
                 repair_interval: float = 0.05, max_stall: float = 1.0, repair_limits: RepairLimits | None = None,
                 rng: random.Random | None = None) -> None:
        if ack_every < 1 or not ack_interval > 0 or not repair_interval > 0:
            raise ConfigError("fec ack_every must be >= 1 and ack_interval, repair_interval positive")
        limits = repair_limits or RepairLimits()
        if max_repair > limits.share:
            raise ConfigError(f"fec max_repair {max_repair} exceeds the repair share {limits.share} that caps it")
        self.encoder = TetrysEncoder(symbol_size=symbol_size, max_window=window, rng=rng)
        self.decoder = TetrysDecoder(symbol_size=symbol_size, max_window=window, max_stall=max_stall)
        self.controller = RepairRateController(min_ratio=min_repair, max_ratio=max_repair)
        self.budget = RepairBudget(limits, symbol_size + REPAIR_OVERHEAD)
        self.ack_every, self.ack_interval, self.repair_interval = ack_every, ack_interval, repair_interval
        self.repairs_sent = 0
        self._outbox: list[bytes] = []
        self._inbox: deque[Delivered | Gap] = deque()
        self._consumed = 0  # frames (and given-up frames) handed to the application
        self._acked = (0, 0)  # (consumed, packets received) at our last window update
        self._last_ack = float("-inf")
        self._last_data = float("-inf")
        self._backoff = 1  # multiplies repair_interval while the peer shows no progress
        self._credit = 0.0
        self._owed = 0  # reported losses not answered yet (beyond per_ack): one per frame sent

    @property
    def writable(self) -> bool:
        """The encoding window has room for another frame."""
        return not self.encoder.full

    def send(self, frame: bytes, now: float) -> None:
        """Queue one frame (``InvalidState`` if not ``writable`` or too large)."""
        self._outbox.append(self.encoder.source(frame))
        self.budget.earn()
        self._last_data, self._backoff = now, 1
        self._credit += self.controller.ratio
        while self._credit >= 1.0:
            self._credit -= 1.0
            self._repair(now)
        if self._owed:
            self._owed -= 1
            self._repair(now)

    def receive(self, packet: bytes, now: float) -> None:
        """Process one packet from the peer; ``FECError`` if it is malformed or lies."""
        if packet_type(packet) == ACK:
            self._on_ack(packet, now)
            return
        was_stalled = self.decoder.stalled
        self._inbox.extend(self.decoder.receive(packet, now))
        if len(self._inbox) > self.encoder.max_window:  # an honest sender waits for our window updates
            raise FECError("peer sent more frames than the window it was granted")
        received_since_ack = self.decoder.packets_received - self._acked[1]
        if received_since_ack >= self.ack_every or (self.decoder.stalled and not was_stalled):
            self._ack(now)

    def next_event(self) -> Delivered | Gap | None:
        """The next frame or gap for the application, in order, or None."""
        if not self._inbox:
            return None
        event = self._inbox.popleft()
        self._consumed = event.seq + 1 if isinstance(event, Delivered) else event.last + 1
        return event

    def data_to_send(self) -> list[bytes]:
        """Packets to put on the link (empties the buffer)."""
        packets, self._outbox = self._outbox, []
        return packets

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must run next, or None while idle."""
        deadlines = [self.decoder.get_timer()]
        if self._ack_pending:
            deadlines.append(self._last_ack + self.ack_interval)
        if self.encoder.window:
            deadlines.append(self._tail_deadline())
        return min((d for d in deadlines if d is not None), default=None)

    def handle_timer(self, now: float) -> None:
        """Run what is due at ``now``: give up a stall, send a pending ack, send a tail repair."""
        events = self.decoder.handle_timer(now)
        self._inbox.extend(events)
        if events or (self._ack_pending and now >= self._last_ack + self.ack_interval):
            self._ack(now)
        if self.encoder.window and now >= self._tail_deadline():
            self._repair(now, probe=True)
            self._last_data, self._backoff = now, min(2 * self._backoff, _MAX_BACKOFF)

    @property
    def _ack_pending(self) -> bool:
        """Something the peer has not been told: packets received or frames consumed since."""
        return self._acked != (self._consumed, self.decoder.packets_received)

    def _tail_deadline(self) -> float:
        return self._last_data + self.repair_interval * self._backoff

    def _on_ack(self, packet: bytes, now: float) -> None:
        """Apply a window update and answer the losses it reveals, never more than the symbols
        the receiver may lack: ``per_ack`` repairs now, the rest one per frame sent next (a repair
        rebuilds any one missing symbol, so a late one is as good), all within the budget."""
        progress = (self.encoder.window_start, self.encoder.decoded)
        ack = self.encoder.on_ack(packet)
        if ack is None:
            return
        if (self.encoder.window_start, self.encoder.decoded) != progress:
            self._backoff = 1
        owed = min(self._owed + self.controller.on_update(ack.seen, ack.received),
                   self.encoder.next_seq - self.encoder.decoded)
        now_paid = min(owed, self.budget.limits.per_ack)
        self._owed = owed - now_paid
        for _ in range(now_paid):
            self._repair(now)

    def _ack(self, now: float) -> None:
        self._outbox.append(self.decoder.ack(self._consumed))
        self._acked, self._last_ack = (self._consumed, self.decoder.packets_received), now

    def _repair(self, now: float, *, probe: bool = False) -> None:
        """Send a repair if the budget allows (probes are spaced by the tail timer instead)."""
        if not probe and not self.budget.take(now):
            return
        packet = self.encoder.repair(probe=probe)
        if packet is not None:
            self._outbox.append(packet)
            self.repairs_sent += 1
