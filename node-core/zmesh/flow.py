"""Fixed-window SENDME flow control (docs/protocol.md §7): how much any hop may have in flight, on a
circuit whose far end did not negotiate congestion control (§10: ``zmesh.congestion``).

Windows are counted in DATA cells. A sender may have at most ``start`` cells unacknowledged; the
receiver sends a SENDME for every ``increment`` cells it has taken. Circuit windows are acknowledged
on arrival; stream windows only once the application has *consumed* the data, so a stalled reader
stops its sender after one stream window. A peer that exceeds a window is breaking the protocol.
"""

from __future__ import annotations

from .cells import RelayCommand
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


class CircuitWindow:
    """A circuit's fixed windows (this section's rule), behind the interface ``Edge.flow`` has in
    either mode (``congestion.VegasFlow`` is the other): for a far end that did not negotiate
    congestion control. Its SENDMEs are empty and any payload in one is ignored, as before."""

    __slots__ = ("send", "recv")

    def __init__(self) -> None:
        self.send = SendWindow(CIRCUIT_WINDOW, CIRCUIT_INCREMENT)
        self.recv = ReceiveWindow(CIRCUIT_WINDOW, CIRCUIT_INCREMENT)

    def room(self) -> int:
        """DATA cells that may be sent now."""
        return self.send.value

    def sent(self, bodies: list[bytearray], now: float) -> None:
        self.send.take(len(bodies))

    def on_sendme(self, data: bytes, now: float) -> None:
        self.send.on_sendme()

    def received(self, tag: bytes) -> bytes | None:
        """A DATA cell arrived: the payload of the SENDME now due, or None."""
        self.recv.on_data()
        return b"" if self.recv.consume(1) else None


class StreamWindow:
    """A stream's fixed windows, behind the interface ``Stream.flow`` has in either mode
    (``streamflow.XonXoff`` is the other). Acknowledged only once the application consumed."""

    __slots__ = ("send", "recv")

    def __init__(self) -> None:
        self.send = SendWindow(STREAM_WINDOW, STREAM_INCREMENT)
        self.recv = ReceiveWindow(STREAM_WINDOW, STREAM_INCREMENT)

    def room(self) -> int:
        return self.send.value

    def sent(self, cells: int) -> None:
        self.send.take(cells)

    def on_sendme(self) -> None:
        self.send.on_sendme()

    def on_xoff(self) -> None:
        raise ProtocolError("XOFF on a stream with fixed windows")

    def on_xon(self, data: bytes) -> None:
        raise ProtocolError("XON on a stream with fixed windows")

    def received(self, now: float) -> bytes | None:
        """A DATA cell for this stream arrived: the XOFF payload now due (never, here), or None."""
        self.recv.on_data()
        return None

    def consume(self, cells: int, now: float) -> list[tuple[int, bytes]]:
        """The application used ``cells``: the (relay command, payload) messages now due."""
        return [(RelayCommand.SENDME, b"")] * self.recv.consume(cells)
