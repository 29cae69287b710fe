"""Tetrys (RFC 9407) encoder and decoder, sans-IO: packets in, packets and events out.

The structure is RFC 9407's: the sender keeps an *elastic encoding window* of the source symbols
the receiver has not yet acknowledged (§3); it sends every source symbol once, with its sequence
number, and *coded* (repair) symbols that are random linear combinations over GF(2^8) of the
window, the coefficients regenerated on both sides from a seed in the coded packet's header (§5.3).
The receiver decodes on the fly by Gaussian elimination as packets arrive and returns *window
updates* (§5.4) that shrink the sender's window. Our packets, big-endian (see docs/fec.md):

    source  hdr ‖ packet u32 ‖ seq u32 ‖ window_start u32 ‖ payload          (hdr = 0x10)
    repair  hdr ‖ packet u32 ‖ first u32 ‖ count u16 ‖ seed u32 ‖ symbol      (hdr = 0x11)
    ack     hdr ‖ consumed u32 ‖ decoded u32 ‖ received u32 ‖ seen u32       (hdr = 0x12)

``hdr`` is version 1 in the high nibble and the packet type in the low one, like §5.1's V and
PKT_TYPE. A symbol is ``u16 length ‖ payload`` zero-padded to ``symbol_size``, so frames of any
size up to ``symbol_size - 2`` travel; a source packet carries only the payload. Sequence and
packet numbers are unbounded ints inside and 32-bit on the wire, unwrapped against the nearest
expected value (as QUIC does), so they never run out.
"""

from __future__ import annotations

import random
import struct
from collections import deque
from dataclasses import dataclass
from itertools import islice

from zmesh.errors import ConfigError, FECError, InvalidState

from .gf256 import SymbolKernel, coefficients, inv, mul

VERSION = 1
SOURCE, REPAIR, ACK = 0, 1, 2
_SOURCE = struct.Struct(">BIII")
_REPAIR = struct.Struct(">BIIHI")
_ACK = struct.Struct(">BIIII")
_LENGTH = struct.Struct(">H")
MAX_SYMBOL_SIZE = 65535
MAX_WINDOW = 4096  # elimination and encoding cost grow with the window: keep it modest
REPAIR_OVERHEAD = _REPAIR.size  # bytes a repair packet adds to one symbol


def _check_limits(symbol_size: int, max_window: int) -> None:
    if not 16 <= symbol_size <= MAX_SYMBOL_SIZE:
        raise ConfigError(f"fec symbol_size must be 16..{MAX_SYMBOL_SIZE}, got {symbol_size}")
    if not 1 <= max_window <= MAX_WINDOW:
        raise ConfigError(f"fec window must be 1..{MAX_WINDOW}, got {max_window}")


def _unwrap(wire: int, expected: int) -> int:
    """The non-negative integer ≡ ``wire`` (mod 2^32) nearest to ``expected``."""
    candidate = expected + ((wire - expected + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)
    return candidate if candidate >= 0 else candidate + (1 << 32)


def packet_type(packet: bytes) -> int:
    """SOURCE, REPAIR or ACK; anything else (empty, other version, unknown type) is an FECError."""
    if not packet or packet[0] >> 4 != VERSION or packet[0] & 0x0F not in (SOURCE, REPAIR, ACK):
        raise FECError("not a Tetrys packet of a known version and type")
    return packet[0] & 0x0F


@dataclass(frozen=True, slots=True)
class Delivered:
    """Source symbol ``seq`` is the next in order; ``payload`` is the sender's frame."""

    seq: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Gap:
    """Source symbols ``first..last`` (inclusive) are lost for good; delivery resumes after them."""

    first: int
    last: int

    def __post_init__(self) -> None:
        if not 0 <= self.first <= self.last:
            raise ValueError(f"invalid gap {self.first}..{self.last}")


@dataclass(frozen=True, slots=True)
class Ack:
    """A window update as the sender sees it: everything below ``consumed`` may leave the window,
    everything below ``decoded`` is known to the receiver, which has received ``received`` data
    packets of the ``seen`` numbered up to the highest one it got (more than ``seen`` only if the
    link duplicated some)."""

    consumed: int
    decoded: int
    received: int
    seen: int


def _frame(payload: bytes, size: int) -> bytes:
    return (_LENGTH.pack(len(payload)) + payload).ljust(size, b"\x00")


class TetrysEncoder:
    """The sending half: source packets, repair packets over the window, window updates applied."""

    def __init__(self, *, symbol_size: int = 1200, max_window: int = 256, rng: random.Random | None = None) -> None:
        _check_limits(symbol_size, max_window)
        self.kernel = SymbolKernel(symbol_size)
        self.max_window = max_window
        self.max_payload = symbol_size - _LENGTH.size
        self.window: deque[int] = deque()  # symbols as ints; window[i] has seq window_start + i
        self.window_start = 0
        self.decoded = 0  # the receiver knows everything below this, so repairs start here
        self.packets_sent = 0
        self.stale_acks = 0  # window updates that arrived after a newer one
        self._newest_ack = (0, 0, 0, 0)  # (consumed, decoded, received, seen) of the newest update applied
        self._rng = rng or random.Random()

    @property
    def next_seq(self) -> int:
        return self.window_start + len(self.window)

    @property
    def full(self) -> bool:
        return len(self.window) >= self.max_window

    def source(self, payload: bytes) -> bytes:
        """Add ``payload`` to the window and return its source packet (§5.2)."""
        if len(payload) > self.max_payload:
            raise InvalidState(f"frame of {len(payload)} bytes exceeds {self.max_payload} (symbol_size - 2)")
        if self.full:
            raise InvalidState("encoding window is full: wait for a window update")
        seq = self.next_seq
        self.window.append(self.kernel.to_int(_frame(payload, self.kernel.size)))
        return _SOURCE.pack(0x10 | SOURCE, self._number(), seq & 0xFFFFFFFF, self.window_start & 0xFFFFFFFF) \
            + payload

    def repair(self, *, probe: bool = False) -> bytes | None:
        """A coded packet (§5.3) over the symbols the receiver may lack, or None if it lacks none.
        With ``probe``, a receiver that lacks nothing still gets one (over the newest symbol) as
        long as the window is not empty: it answers with a window update, which recovers from a
        lost one."""
        first = max(self.window_start, self.decoded)
        if probe and first == self.next_seq > self.window_start:
            first -= 1
        count = self.next_seq - first
        if count <= 0:
            return None
        seed = self._rng.getrandbits(32)
        symbols = list(islice(self.window, first - self.window_start, None))
        value = self.kernel.combine(symbols, coefficients(seed, count))
        return _REPAIR.pack(0x10 | REPAIR, self._number(), first & 0xFFFFFFFF, count, seed) \
            + self.kernel.to_bytes(value)

    def _number(self) -> int:
        """The next data packet number (for loss measurement), as sent on the wire."""
        self.packets_sent += 1
        return (self.packets_sent - 1) & 0xFFFFFFFF

    def on_ack(self, packet: bytes) -> Ack | None:
        """Apply a window update (§5.4) and return it, or None if it tells nothing new (an older or
        repeated update: the link reorders, so that is harmless; counted in ``stale_acks``).

        Lies are FECErrors and change nothing: acknowledging symbols or packets never sent, or
        moving some counts forward and others back. Each of the receiver's four counts only grows,
        so of two honest updates one is at or above the other in all four; an update claiming
        fewer packets received than before while more were numbered invents losses."""
        if len(packet) != _ACK.size or packet_type(packet) != ACK:
            raise FECError("malformed window update")
        _, consumed, decoded, received, seen = _ACK.unpack(packet)
        consumed, decoded = _unwrap(consumed, self.window_start), _unwrap(decoded, self.window_start)
        seen = _unwrap(seen, self.packets_sent)
        counts = (consumed, decoded, _unwrap(received, seen), seen)
        if not consumed <= decoded <= self.next_seq or seen > self.packets_sent:
            raise FECError("window update acknowledges symbols or packets that were never sent")
        moves = {(new > old) - (new < old) for new, old in zip(counts, self._newest_ack, strict=True)}
        if {1, -1} <= moves:
            raise FECError("window update moves some of its counts forward and others back")
        if 1 not in moves:
            self.stale_acks += 1
            return None
        self._newest_ack = counts
        while self.window_start < consumed:
            self.window.popleft()
            self.window_start += 1
        self.decoded = max(self.decoded, decoded)
        return Ack(*counts)


class _Row:
    """One reduced equation ``Σ coefficients[seq] × symbol(seq) = value`` over unknown seqs."""

    __slots__ = ("coefficients", "value")

    def __init__(self, coefficients: dict[int, int], value: int) -> None:
        self.coefficients = coefficients
        self.value = value


def _add_scaled(target: dict[int, int], factor: int, row: dict[int, int]) -> None:
    """``target += factor × row`` on sparse coefficient maps (zeros are dropped)."""
    for seq, c in row.items():
        updated = target.get(seq, 0) ^ mul(factor, c)
        if updated:
            target[seq] = updated
        else:
            del target[seq]


class TetrysDecoder:
    """The receiving half: decodes on the fly, delivers in order exactly once, reports gaps.

    Memory is bounded by ``max_window``: known symbols lie in ``[next_deliver - 2 × max_window,
    next_deliver + max_window)`` and there is at most one equation per unknown symbol. Packets
    that would break a bound, or that lie, raise ``FECError`` before any state changes — except a
    decoded symbol whose length field lies, which only shows after decoding: that error is final
    and the decoder refuses further input.

    A missing symbol that stays unrecoverable for ``max_stall`` seconds (clock passed in) is given
    up and reported as a ``Gap``, with every symbol that was already missing when the stall began.
    """

    def __init__(self, *, symbol_size: int = 1200, max_window: int = 256, max_stall: float = 1.0) -> None:
        _check_limits(symbol_size, max_window)
        if not max_stall > 0:
            raise ConfigError(f"fec max_stall must be positive, got {max_stall}")
        self.kernel = SymbolKernel(symbol_size)
        self.max_window = max_window
        self.max_stall = max_stall
        self.next_deliver = 0
        self.packets_received = 0
        self.highest_packet = -1
        self.recovered = 0  # symbols rebuilt from repairs
        self.discarded = 0  # duplicate, redundant or stale packets
        self._floor = 0  # known symbols are kept from here on (repairs may still cover them)
        self._highest_seen = -1  # highest seq any accepted packet referred to
        self._known: dict[int, int] = {}
        self._rows: dict[int, _Row] = {}  # pivot seq -> row, in reduced row echelon form
        self._stall_since: float | None = None
        self._stall_horizon = -1
        self._failed: FECError | None = None

    # ------------------------------------------------------------------ public

    @property
    def stalled(self) -> bool:
        """A later symbol is known to exist but the next one in order is missing."""
        return self._highest_seen >= self.next_deliver

    def ack(self, consumed: int | None = None) -> bytes:
        """A window update. ``consumed`` (default: all decoded) lets a driver hold the sender's
        window back until its application has taken the frames, which bounds the driver's inbox."""
        consumed = self.next_deliver if consumed is None else min(consumed, self.next_deliver)
        return _ACK.pack(0x10 | ACK, consumed & 0xFFFFFFFF, self.next_deliver & 0xFFFFFFFF,
                         self.packets_received & 0xFFFFFFFF, (self.highest_packet + 1) & 0xFFFFFFFF)

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must run next (a stall's deadline), or None."""
        return None if self._stall_since is None else self._stall_since + self.max_stall

    def handle_timer(self, now: float) -> list[Delivered | Gap]:
        """Give up what has been missing since the stall began, if that was ``max_stall`` ago."""
        deadline = self.get_timer()
        if deadline is None or now < deadline:
            return []
        events = self._skip_to(self._stall_horizon + 1)
        self._stall_since = None
        self._watch_stall(now)
        return events

    def receive(self, packet: bytes, now: float) -> list[Delivered | Gap]:
        """Process one source or repair packet; return what became deliverable, in order."""
        if self._failed is not None:
            raise FECError(f"decoder stopped after an earlier error: {self._failed}")
        kind = packet_type(packet)
        if kind == SOURCE:
            number, seq, start, payload = self._parse_source(packet)
            end = seq + 1
        elif kind == REPAIR:
            number, start, count, seed, value = self._parse_repair(packet)
            end = start + count
        else:
            raise FECError("a window update is for the encoder, not the decoder")
        self.packets_received += 1
        self.highest_packet = max(self.highest_packet, number)
        events = self._advance(start)
        if kind == SOURCE:
            if seq >= self.next_deliver and seq not in self._known:
                self._learn(seq, self.kernel.to_int(_frame(payload, self.kernel.size)), recovered=False)
            else:
                self.discarded += 1
        elif not self._add_repair(start, count, seed, value):
            self.discarded += 1
        self._highest_seen = max(self._highest_seen, end - 1)
        events += self._deliver()
        self._watch_stall(now)
        return events

    # ------------------------------------------------------------------ parsing (no state change)

    def _parse_source(self, packet: bytes) -> tuple[int, int, int, bytes]:
        if len(packet) < _SOURCE.size:
            raise FECError("truncated source packet")
        if len(packet) - _SOURCE.size > self.kernel.size - _LENGTH.size:
            raise FECError("source payload larger than the symbol size")
        _, number, seq, start = _SOURCE.unpack_from(packet)
        seq, start = _unwrap(seq, self.next_deliver), _unwrap(start, self.next_deliver)
        if start > seq:
            raise FECError("source packet's window starts after its own symbol")
        self._check_span(start, seq + 1)
        return _unwrap(number, self.highest_packet), seq, start, packet[_SOURCE.size:]

    def _parse_repair(self, packet: bytes) -> tuple[int, int, int, int, int]:
        if len(packet) != _REPAIR.size + self.kernel.size:
            raise FECError("repair packet does not carry exactly one symbol")
        _, number, start, count, seed = _REPAIR.unpack_from(packet)
        if count == 0:
            raise FECError("repair packet covers no symbols")
        start = _unwrap(start, self.next_deliver)
        self._check_span(start, start + count)
        value = self.kernel.to_int(packet[_REPAIR.size:])
        return _unwrap(number, self.highest_packet), start, count, seed, value

    def _check_span(self, start: int, end: int) -> None:
        """Refuse windows that would make us hold more than ``max_window`` symbols ahead."""
        if end - start > self.max_window:
            raise FECError(f"packet spans {end - start} symbols, more than the window of {self.max_window}")
        if end > self.next_deliver + self.max_window:
            raise FECError("packet is further ahead than the window allows")

    # ------------------------------------------------------------------ state

    def _advance(self, start: int) -> list[Delivered | Gap]:
        """The sender's window starts at ``start``: it no longer protects anything older."""
        if start <= self._floor:
            return []
        events = self._skip_to(start)
        self._raise_floor(start)
        return events

    def _raise_floor(self, floor: int) -> None:
        for seq in range(self._floor, floor):  # O(distance): nothing below the old floor is kept
            self._known.pop(seq, None)
        self._floor = floor

    def _skip_to(self, limit: int) -> list[Delivered | Gap]:
        """Deliver or give up everything below ``limit``."""
        events: list[Delivered | Gap] = []
        while self.next_deliver < limit:
            events += self._deliver()
            first = self.next_deliver
            while self.next_deliver < limit and self.next_deliver not in self._known:
                self.next_deliver += 1
            if self.next_deliver > first:
                events.append(Gap(first, self.next_deliver - 1))
        for pivot in [p for p, row in self._rows.items() if min(row.coefficients) < self.next_deliver]:
            del self._rows[pivot]  # equations over given-up symbols can no longer be solved
        return events + self._deliver()

    def _watch_stall(self, now: float) -> None:
        if not self.stalled:
            self._stall_since = None
        elif self._stall_since is None:
            self._stall_since, self._stall_horizon = now, self._highest_seen

    def _add_repair(self, start: int, count: int, seed: int, value: int) -> bool:
        """Fold one coded symbol into the system; False if it told us nothing usable."""
        if start < self._floor:
            return False  # stale: it covers symbols we no longer keep
        known, unknown = [], {}
        for seq, c in zip(range(start, start + count), coefficients(seed, count), strict=True):
            symbol = self._known.get(seq)
            if symbol is not None:
                known.append((symbol, c))
            elif seq < self.next_deliver:
                return False  # it covers a symbol that was given up
            else:
                unknown[seq] = c
        if not unknown:
            return False
        if known:
            symbols, factors = zip(*known, strict=True)
            value ^= self.kernel.combine(symbols, bytes(factors))
        for seq, symbol in self._insert(unknown, value):
            self._learn(seq, symbol, recovered=True)
        return True

    def _insert(self, equation: dict[int, int], value: int) -> list[tuple[int, int]]:
        """Add an equation over unknown symbols, keeping the rows fully reduced; return the
        symbols it solved (rows left with a single unknown), removed from the rows."""
        scale = self.kernel.scale
        for seq in [s for s in equation if s in self._known]:
            value ^= scale(self._known[seq], equation.pop(seq))
        for pivot in [p for p in equation if p in self._rows]:  # row pivots appear in no other row
            row, factor = self._rows[pivot], equation[pivot]
            _add_scaled(equation, factor, row.coefficients)
            value ^= scale(row.value, factor)
        if not equation:
            return []
        pivot = min(equation)
        normalise = inv(equation[pivot])
        new = _Row({seq: mul(c, normalise) for seq, c in equation.items()}, scale(value, normalise))
        for row in self._rows.values():
            factor = row.coefficients.get(pivot)
            if factor:
                _add_scaled(row.coefficients, factor, new.coefficients)
                row.value ^= scale(new.value, factor)
        self._rows[pivot] = new
        solved = [p for p, row in self._rows.items() if len(row.coefficients) == 1]
        return [(p, self._rows.pop(p).value) for p in solved]

    def _learn(self, seq: int, symbol: int, *, recovered: bool) -> None:
        """A symbol became known: substitute it everywhere, cascading whatever that solves."""
        pending, reinsert = [(seq, symbol, recovered)], []
        while pending or reinsert:
            if not pending:
                pending += [(s, v, True) for s, v in self._insert(*reinsert.pop())]
                continue
            seq, symbol, recovered = pending.pop()
            if seq in self._known or seq < self.next_deliver:
                continue
            self._known[seq] = symbol
            self.recovered += recovered
            if seq in self._rows:  # its own row still constrains the other unknowns in it
                row = self._rows.pop(seq)
                del row.coefficients[seq]
                reinsert.append((row.coefficients, row.value ^ symbol))
            for pivot, row in list(self._rows.items()):
                c = row.coefficients.pop(seq, 0)
                if c:
                    row.value ^= self.kernel.scale(symbol, c)
                    if len(row.coefficients) == 1:
                        del self._rows[pivot]
                        pending.append((pivot, row.value, True))

    def _deliver(self) -> list[Delivered | Gap]:
        out: list[Delivered | Gap] = []
        while (symbol := self._known.get(self.next_deliver)) is not None:
            data = self.kernel.to_bytes(symbol)
            (length,) = _LENGTH.unpack_from(data)
            if length > self.kernel.size - _LENGTH.size:
                self._failed = FECError("a decoded symbol's length field is larger than the symbol")
                raise self._failed
            out.append(Delivered(self.next_deliver, data[_LENGTH.size:_LENGTH.size + length]))
            self.next_deliver += 1
        if self.next_deliver - self._floor > 2 * self.max_window:  # the sender's window start lags
            self._raise_floor(self.next_deliver - self.max_window)
        return out
