"""Tetrys encoder and decoder (RFC 9407), sans-IO: packets in, packets and events out.

Structure follows RFC 9407: the sender keeps an *elastic encoding window* of source symbols not
yet acknowledged (§4, building blocks), sends each source symbol once and, at the chosen rate,
coded (repair) symbols that are random linear combinations over GF(2^8) of the whole window, with
the coefficients derived from a seed carried in the coded packet's header (§5, packet formats:
source, coded and window-update packets). The receiver decodes on the fly by Gaussian elimination
as packets arrive and acknowledges what it has delivered, which shrinks the sender's window.

Our packet formats (big-endian; documented in docs/fec.md):

    source  0x00 ‖ packet u32 ‖ seq u32 ‖ window_start u32 ‖ payload
    repair  0x01 ‖ packet u32 ‖ window_start u32 ‖ count u16 ‖ seed u32 ‖ symbol
    update  0x02 ‖ next_expected u32 ‖ received u32 ‖ highest_packet u32

A symbol is ``u16 length ‖ payload`` zero-padded to ``symbol_size``. Sequence numbers are plain
32-bit counters (a link would rekey long before they wrap).
"""

from __future__ import annotations

import random
import struct
from collections import deque
from dataclasses import dataclass

from zmesh.errors import FECError

from .gf256 import coefficients, inv, mul, scale, scale_bytes

SOURCE, REPAIR, UPDATE = 0, 1, 2
_SOURCE = struct.Struct(">BIII")
_REPAIR = struct.Struct(">BIIHI")
_UPDATE = struct.Struct(">BIII")
_LENGTH = struct.Struct(">H")
MAX_SYMBOL_SIZE = 65535


def _check_limits(symbol_size: int, max_window: int) -> None:
    if not 16 <= symbol_size <= MAX_SYMBOL_SIZE:
        raise FECError(f"symbol_size must be 16..{MAX_SYMBOL_SIZE}, got {symbol_size}")
    if not 1 <= max_window <= 4096:
        raise FECError(f"max_window must be 1..4096, got {max_window}")


@dataclass(frozen=True, slots=True)
class Delivered:
    seq: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Gap:
    """Source symbols ``first..last`` were given up by the sender and will never arrive."""

    first: int
    last: int


class TetrysEncoder:
    def __init__(self, *, symbol_size: int = 1200, max_window: int = 256, rng: random.Random | None = None) -> None:
        _check_limits(symbol_size, max_window)
        self.symbol_size = symbol_size
        self.max_window = max_window
        self.max_payload = symbol_size - _LENGTH.size
        self.window: deque[tuple[int, bytes]] = deque()
        self.next_seq = 0
        self.packets_sent = 0
        self._rng = rng or random.Random()

    @property
    def window_start(self) -> int:
        return self.window[0][0] if self.window else self.next_seq

    @property
    def full(self) -> bool:
        return len(self.window) >= self.max_window

    def source(self, payload: bytes) -> bytes:
        """Add ``payload`` to the window and return its source packet."""
        if len(payload) > self.max_payload:
            raise FECError(f"payload of {len(payload)} bytes exceeds {self.max_payload} (symbol_size - 2)")
        if self.full:
            raise FECError("encoding window is full: wait for a window update (or give up old symbols)")
        symbol = (_LENGTH.pack(len(payload)) + payload).ljust(self.symbol_size, b"\x00")
        seq = self.next_seq
        self.window.append((seq, symbol))
        self.next_seq += 1
        packet = _SOURCE.pack(SOURCE, self.packets_sent, seq, self.window_start) + payload
        self.packets_sent += 1
        return packet

    def repair(self) -> bytes | None:
        """A coded packet over the current window, or None if nothing is unacknowledged."""
        if not self.window:
            return None
        seed = self._rng.getrandbits(32)
        value = 0
        for (_, symbol), coefficient in zip(self.window, coefficients(seed, len(self.window)), strict=True):
            value ^= scale_bytes(symbol, coefficient)
        packet = _REPAIR.pack(REPAIR, self.packets_sent, self.window_start, len(self.window), seed) \
            + value.to_bytes(self.symbol_size, "little")
        self.packets_sent += 1
        return packet

    def acknowledge(self, next_expected: int) -> None:
        """The receiver has everything below ``next_expected``: drop it from the window."""
        if next_expected > self.next_seq:
            raise FECError("window update acknowledges symbols that were never sent")
        while self.window and self.window[0][0] < next_expected:
            self.window.popleft()

    def give_up_oldest(self) -> None:
        """Stop protecting the oldest symbol; the receiver will report it as a gap."""
        if self.window:
            self.window.popleft()


def window_update(next_expected: int, received: int, highest_packet: int) -> bytes:
    return _UPDATE.pack(UPDATE, next_expected, received & 0xFFFFFFFF, highest_packet & 0xFFFFFFFF)


def parse_update(packet: bytes) -> tuple[int, int, int]:
    if len(packet) != _UPDATE.size or packet[0] != UPDATE:
        raise FECError("malformed window update")
    _, next_expected, received, highest = _UPDATE.unpack(packet)
    return next_expected, received, highest


def _add_scaled(target: dict[int, int], factor: int, row: dict[int, int]) -> None:
    """``target += factor × row`` over GF(2^8) on sparse coefficient rows (zeros are dropped)."""
    for seq, c in row.items():
        updated = target.get(seq, 0) ^ mul(factor, c)
        if updated:
            target[seq] = updated
        else:
            target.pop(seq, None)


class TetrysDecoder:
    """On-the-fly decoder. Memory is bounded by ``max_window`` symbols and equations."""

    def __init__(self, *, symbol_size: int = 1200, max_window: int = 256) -> None:
        _check_limits(symbol_size, max_window)
        self.symbol_size = symbol_size
        self.max_window = max_window
        self.next_deliver = 0
        self.packets_received = 0
        self.highest_packet = -1
        self.recovered = 0
        self._window_start = 0
        self._known: dict[int, int] = {}  # seq -> symbol (as int), for seq >= window start
        self._rows: dict[int, tuple[dict[int, int], int]] = {}  # pivot -> (coefficients, value)

    def update_packet(self) -> bytes:
        return window_update(self.next_deliver, self.packets_received, max(self.highest_packet, 0))

    @property
    def stalled(self) -> bool:
        """Something later than the delivery point has arrived: a symbol is missing."""
        return bool(self._rows) or any(seq > self.next_deliver for seq in self._known)

    def receive(self, packet: bytes) -> list[Delivered | Gap]:
        """Process one data packet; return what became deliverable, in order."""
        if not packet or packet[0] not in (SOURCE, REPAIR):
            raise FECError("unknown FEC packet type")
        if packet[0] == SOURCE:
            if len(packet) < _SOURCE.size:
                raise FECError("truncated source packet")
            _, number, seq, start = _SOURCE.unpack_from(packet)
            payload = packet[_SOURCE.size:]
            if len(payload) > self.symbol_size - _LENGTH.size:
                raise FECError("source payload larger than the symbol size")
            self._check_range(start, seq + 1, seq)
            events = self._advance(start)
            if seq >= self.next_deliver and seq not in self._known:
                symbol = (_LENGTH.pack(len(payload)) + payload).ljust(self.symbol_size, b"\x00")
                self._learn(seq, int.from_bytes(symbol, "little"))
        else:
            if len(packet) != _REPAIR.size + self.symbol_size:
                raise FECError("repair packet does not carry exactly one symbol")
            _, number, start, count, seed = _REPAIR.unpack_from(packet)
            if count == 0:
                raise FECError("repair packet covers no symbols")
            self._check_range(start, start + count, None)
            events = self._advance(start)
            self._add_equation(start, count, seed, int.from_bytes(packet[_REPAIR.size:], "little"))
        self.packets_received += 1
        self.highest_packet = max(self.highest_packet, number)
        return events + self._deliver()

    # ---------------------------------------------------------------- internals

    def _check_range(self, start: int, end: int, seq: int | None) -> None:
        """Refuse headers that would make us hold more than ``max_window`` symbols."""
        if end - start > self.max_window or start > end:
            raise FECError(f"window of {end - start} symbols exceeds max_window {self.max_window}")
        if end > self.next_deliver + self.max_window:
            raise FECError("packet is too far ahead of the delivery point")
        if start + (1 << 31) < self._window_start:
            raise FECError("window start went backwards")

    def _advance(self, start: int) -> list[Delivered | Gap]:
        """The sender's window now starts at ``start``: anything older it gave up on is a gap."""
        events: list[Delivered | Gap] = []
        if start <= self._window_start:
            return events
        self._window_start = start
        while self.next_deliver < start:
            events.extend(self._deliver())
            if self.next_deliver >= start:
                break
            first = self.next_deliver
            while self.next_deliver < start and self.next_deliver not in self._known:
                self.next_deliver += 1
            events.append(Gap(first, self.next_deliver - 1))
        for seq in [s for s in self._known if s < start]:
            del self._known[seq]
        for pivot in [p for p, (coeffs, _) in self._rows.items() if any(s < start for s in coeffs)]:
            del self._rows[pivot]  # equations over abandoned symbols can no longer be solved
        return events

    def _learn(self, seq: int, symbol: int) -> None:
        """A source symbol became known: substitute it everywhere, cascading new solutions."""
        pending = [(seq, symbol)]
        while pending:
            seq, symbol = pending.pop()
            if seq in self._known:
                continue
            self._known[seq] = symbol
            self._rows.pop(seq, None)
            for pivot, (coeffs, value) in list(self._rows.items()):
                c = coeffs.pop(seq, 0)
                if c:
                    value ^= scale(symbol, c, self.symbol_size)
                    self._rows[pivot] = (coeffs, value)
                    if len(coeffs) == 1:  # only the pivot is left, with coefficient 1
                        del self._rows[pivot]
                        self.recovered += 1
                        pending.append((pivot, value))

    def _add_equation(self, start: int, count: int, seed: int, value: int) -> None:
        size = self.symbol_size
        unknown: dict[int, int] = {}
        for seq, c in zip(range(start, start + count), coefficients(seed, count), strict=True):
            symbol = self._known.get(seq)
            if symbol is not None:
                value ^= scale(symbol, c, size)
            elif seq >= self.next_deliver:
                unknown[seq] = c
        for pivot in sorted(self._rows):  # reduce by the existing (reduced) rows
            factor = unknown.get(pivot)
            if factor:
                coeffs, row_value = self._rows[pivot]
                _add_scaled(unknown, factor, coeffs)
                value ^= scale(row_value, factor, size)
        if not unknown:
            return  # redundant: told us nothing new
        pivot = min(unknown)
        scale_by = inv(unknown[pivot])
        unknown = {seq: mul(c, scale_by) for seq, c in unknown.items()}
        value = scale(value, scale_by, size)
        for other, (coeffs, row_value) in list(self._rows.items()):  # keep rows fully reduced
            factor = coeffs.get(pivot)
            if factor:
                _add_scaled(coeffs, factor, unknown)
                self._rows[other] = (coeffs, row_value ^ scale(value, factor, size))
        self._rows[pivot] = (unknown, value)
        for solved in [p for p, (coeffs, _) in self._rows.items() if len(coeffs) == 1]:
            if solved in self._rows:
                _, symbol = self._rows.pop(solved)
                self.recovered += 1
                self._learn(solved, symbol)

    def _deliver(self) -> list[Delivered | Gap]:
        out: list[Delivered | Gap] = []
        while self.next_deliver in self._known:
            symbol = self._known[self.next_deliver].to_bytes(self.symbol_size, "little")
            (length,) = _LENGTH.unpack_from(symbol)
            if length > self.symbol_size - _LENGTH.size:
                raise FECError("decoded symbol has a length field larger than the symbol")
            out.append(Delivered(self.next_deliver, symbol[_LENGTH.size:_LENGTH.size + length]))
            self.next_deliver += 1
        return out
