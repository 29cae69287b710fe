"""Per-stream flow control without a window: XON/XOFF (docs/protocol.md §10; Tor proposal 344).

On a congestion-controlled circuit the circuit's window (``zmesh.congestion``) already bounds what
is in flight; a stream needs only to stop when its *reader* falls behind. The receiving end counts
the DATA cells it delivered to the application and the application has not consumed yet; at
``xoff_cells`` it sends XOFF and the sender packages nothing more for that stream (the exit then
stops reading the upstream socket, as its writer waits). Once the application has drained to
``xoff_cells // 2`` the receiver sends XON carrying the rate it drained at, in **bytes per
second** (u32, 0 = unknown), and the sender resumes. The sender records the advisory
(``advised_rate``) and does not pace by it yet.

What an endpoint buffers per stream is therefore at most ``xoff_cells`` plus what arrives after the
XOFF left: cells in flight then, and cells sent before it arrived, which the sender counts in
flight too (no SENDME for them can overtake the XOFF), so the window bounds both together:
``xoff_cells + cap`` cells. A sender that
passes that ignored the XOFF: the circuit is destroyed (``FLOW_VIOLATION``).
"""

from __future__ import annotations

import struct

from .cells import RELAY_DATA_SIZE, DestroyReason, RelayCommand
from .errors import ProtocolError
from .links import CircuitFailure

_XON = struct.Struct(">BI")  # version, rate in bytes/s
XON_VERSION = 0
_UNLIMITED = 1 << 30  # "no stream limit": the circuit's window decides


def encode_xon(rate_bytes_per_s: float) -> bytes:
    return _XON.pack(XON_VERSION, min(int(rate_bytes_per_s), 0xFFFF_FFFF))


def parse_xon(data: bytes) -> int:
    """The rate advisory of an XON payload, in bytes/s; ``ProtocolError`` if malformed."""
    if len(data) != _XON.size or data[0] != XON_VERSION:
        raise ProtocolError("malformed XON")
    return _XON.unpack(data)[1]


class XonXoff:
    """One stream's XON/XOFF state at one end: the sending half (``room``, ``on_xoff``/``on_xon``)
    and the receiving half (``received``/``consume``). Counts are DATA cells."""

    __slots__ = ("xoff_cells", "bound", "stopped", "advised_rate", "buffered", "xoff_sent", "_xoff_at",
                 "_drained")

    def __init__(self, xoff_cells: int, cap: int) -> None:
        self.xoff_cells = xoff_cells
        self.bound = xoff_cells + cap  # more than this unconsumed: the sender ignored our XOFF
        self.stopped = False  # the peer sent XOFF: package nothing for this stream
        self.advised_rate = 0  # bytes/s, from the peer's last XON (0: none or unknown)
        self.buffered = 0  # cells delivered to our application, not yet consumed
        self.xoff_sent = False
        self._xoff_at = 0.0
        self._drained = 0  # cells consumed since our XOFF

    # ------------------------------------------------------------------ sending half

    def room(self) -> int:
        return 0 if self.stopped else _UNLIMITED

    def sent(self, cells: int) -> None:
        """Nothing to count: the circuit's window bounds what is in flight."""

    def on_sendme(self) -> None:
        raise ProtocolError("stream SENDME on a congestion-controlled circuit (streams use XON/XOFF)")

    def on_xoff(self) -> None:
        self.stopped = True

    def on_xon(self, data: bytes) -> None:
        self.advised_rate = parse_xon(data)
        self.stopped = False

    # ------------------------------------------------------------------ receiving half

    def received(self, now: float) -> bytes | None:
        """A DATA cell for the application: the XOFF payload now due, or None."""
        self.buffered += 1
        if self.buffered > self.bound:
            raise CircuitFailure(DestroyReason.FLOW_VIOLATION, "the sender ignored XOFF")
        if self.xoff_sent or self.buffered < self.xoff_cells:
            return None
        self.xoff_sent, self._xoff_at, self._drained = True, now, 0
        return b""

    def consume(self, cells: int, now: float) -> list[tuple[int, bytes]]:
        """The application used ``cells``: the (relay command, payload) messages now due."""
        cells = min(cells, self.buffered)
        self.buffered -= cells
        if not self.xoff_sent:
            return []
        self._drained += cells
        if self.buffered > self.xoff_cells // 2:
            return []
        elapsed = now - self._xoff_at
        rate = self._drained * RELAY_DATA_SIZE / elapsed if elapsed > 0 else 0
        self.xoff_sent = False
        return [(RelayCommand.XON, encode_xon(rate))]
