"""Sequence numbers across legs: the sender's buffer of unacknowledged data and the receiver's
bounded reorder buffer (docs/protocol.md "Multipath").

Every DATA message (and the closing FIN) takes the next sequence number, whatever leg carries it.
The receiver delivers in sequence order and acknowledges (ACK ``next``) what its application has
taken. The sender never sends a sequence number at or past ``acked + window``, so the receiver,
which checks exactly that against the last ACK it sent, never holds more than ``window`` messages
(reorder buffer plus what waits for the application): a peer that sends outside the window is
refused with ``MP_OUT_OF_WINDOW``, never buffered. What the sender holds is the same ``window``:
the data it may have to send again on another leg when the leg that carried it dies.
"""

from __future__ import annotations

from collections import OrderedDict

from ..cells import DestroyReason
from ..errors import InvalidState, MultipathError

DEFAULT_WINDOW = 256  # messages of up to wire.MAX_DATA (~15.5 KiB): ~4 MB either way
FIN = None  # what a FIN is buffered and delivered as


class SendBuffer:
    """The sending half: assigns sequence numbers, remembers which leg carried each message until
    it is acknowledged, and gives back a dead leg's messages to be sent again."""

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        if window < 1:
            raise InvalidState("a multipath window must be at least one message")
        self.window = window
        self.next_seq = 0
        self.acked = 0  # every seq below this was delivered to the far application
        self._unacked: OrderedDict[int, tuple[int, bytes | None]] = OrderedDict()  # seq -> (leg, data or FIN)

    def room(self) -> int:
        """Sequence numbers that may be given out now."""
        return self.acked + self.window - self.next_seq

    def assign(self, data: bytes | None) -> int:
        """Give ``data`` (``FIN`` for the end) the next sequence number; not yet sent on any leg."""
        if self.room() <= 0:
            raise InvalidState("the multipath window is full; wait for an ACK")
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        self._unacked[seq] = (-1, data)
        return seq

    def sent(self, seq: int, leg: int) -> None:
        if seq in self._unacked:
            self._unacked[seq] = (leg, self._unacked[seq][1])

    def on_ack(self, next_seq: int) -> None:
        """The receiver delivered everything below ``next_seq``. An ACK for more than was sent is a
        forged acknowledgement (it would make us forget data that may still be lost)."""
        if next_seq > self.next_seq:
            raise MultipathError(f"ACK for seq {next_seq}, but only {self.next_seq} were sent",
                                 DestroyReason.MP_OUT_OF_WINDOW)
        while self.acked < next_seq:
            self._unacked.pop(self.acked, None)
            self.acked += 1

    def leg_lost(self, leg: int) -> list[tuple[int, bytes | None]]:
        """The messages ``leg`` carried that are not acknowledged, in order: to send on another leg."""
        return [(seq, data) for seq, (on, data) in self._unacked.items() if on == leg]

    def done(self) -> bool:
        return self.acked == self.next_seq


class Reorder:
    """The receiving half: messages from any leg in, in-order data out, at most ``window`` held."""

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        self.window = window
        self.next = 0  # the seq to deliver next
        self.acked = 0  # the last ACK sent: the sender may use seqs below acked + window
        self.finished = False  # the FIN was delivered
        self.duplicates = 0  # messages sent again after a leg died, that had arrived after all
        self._held: dict[int, bytes | None] = {}
        self._fin_at: int | None = None

    def push(self, seq: int, data: bytes | None) -> list[bytes | None]:
        """Take DATA (or ``FIN``) numbered ``seq``; return what is now deliverable, in order."""
        if seq < self.next or seq in self._held:
            self.duplicates += 1  # a resend after a leg loss: harmless, already counted
            return []
        if seq >= self.acked + self.window or self.finished:
            raise MultipathError(f"multipath seq {seq} is outside the window [{self.next}, "
                                 f"{self.acked + self.window})", DestroyReason.MP_OUT_OF_WINDOW)
        if self._fin_at is not None and seq > self._fin_at:
            raise MultipathError("multipath data after the FIN", DestroyReason.MP_PROTOCOL)
        if data is FIN:
            if any(s > seq for s in self._held):
                raise MultipathError("multipath FIN before data it should follow", DestroyReason.MP_PROTOCOL)
            self._fin_at = seq
        self._held[seq] = data
        out = []
        while self.next in self._held:
            item = self._held.pop(self.next)
            self.next += 1
            out.append(item)
            if item is FIN:
                self.finished = True
                break
        return out

    def held(self) -> int:
        return len(self._held)

    def ack_due(self, every: int) -> int | None:
        """After the application took everything delivered: the ACK to send now, if one is due
        (every ``every`` messages, and at once for the FIN)."""
        if self.next - self.acked >= every or (self.finished and self.acked < self.next):
            self.acked = self.next
            return self.next
        return None
