"""SENDME flow control (docs/protocol.md §7): how much any hop may have in flight.

Windows are counted in DATA cells. A sender may have at most ``start`` cells unacknowledged; the
receiver sends a SENDME for every ``increment`` cells it has taken. Circuit windows are acknowledged
on arrival; stream windows only once the application has *consumed* the data, so a stalled reader
stops its sender after one stream window. A peer that exceeds a window is breaking the protocol.
"""

from __future__ import annotations

from .errors import ProtocolError

CIRCUIT_WINDOW = 1000
CIRCUIT_INCREMENT = 100
STREAM_WINDOW = 500
STREAM_INCREMENT = 50


class SendWindow:
    """Cells we may still package before the peer acknowledges."""

    __slots__ = ("value", "start", "increment")

    def __init__(self, start: int, increment: int) -> None:
        self.value = self.start = start
        self.increment = increment

    def take(self, cells: int) -> None:
        self.value -= cells

    def on_sendme(self) -> None:
        """Apply a SENDME. One that would open the window past its start acknowledges cells that
        were never sent: a peer fault (as in Tor), so ``ProtocolError``."""
        if self.value + self.increment > self.start:
            raise ProtocolError("SENDME for data that was never sent")
        self.value += self.increment


class ReceiveWindow:
    """Cells received but not yet acknowledged; ``consume`` says how many SENDMEs are due."""

    __slots__ = ("outstanding", "consumed", "start", "increment")

    def __init__(self, start: int, increment: int) -> None:
        self.start, self.increment = start, increment
        self.outstanding = 0
        self.consumed = 0

    def on_data(self) -> None:
        self.outstanding += 1
        if self.outstanding > self.start:
            raise ProtocolError("peer sent DATA beyond its flow-control window")

    def consume(self, cells: int) -> int:
        self.consumed = min(self.consumed + cells, self.outstanding)
        due = self.consumed // self.increment
        self.consumed -= due * self.increment
        self.outstanding -= due * self.increment
        return due
