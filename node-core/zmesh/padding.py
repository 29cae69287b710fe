"""Link padding machines (docs/anonymity.md "What each defence costs"; wire format: docs/protocol.md
"Padding negotiation").

A ``LinkPadder`` is a small state machine attached to one link, padding the direction this node
sends (an observer times each direction on its own; the peer pads the other). Its events are
*cells sent* (the node's ``take_frame``) and *timer due*; its timer is a deadline on the node's
injected clock, with gaps drawn from a distribution through an injected random source; its
actions are *send PADDING* (a link cell, command 0) and *block* (hold real cells until the next
tick). Two kinds:

- ``KEEPALIVE``: once this node sent nothing for a gap drawn uniformly from [idle/6, idle], send
  one PADDING cell, so an idle period is not a silent period an observer can time. It costs nothing
  while data flows: a frame sent only adds to a counter, and a timer that finds cells were sent
  since it was armed re-arms; no cell is delayed and no padding is sent.
- ``CONSTANT`` / ``POISSON`` (cover): the link sends exactly one cell per tick, ticks ``1/rate``
  apart (constant) or exponentially distributed with mean ``1/rate`` (Poisson, as in Loopix): the
  next real cell if one waits, else PADDING. Real cells beyond the rate are blocked until a tick,
  so the cell rate on the wire is the same idle or busy. Throughput is capped at ``rate`` cells/s.

A padder never sends more padding than ``max_percent`` of the cells it sent, after a first
``ALLOWANCE`` cells (as Tor's ``max_padding_percent`` with ``allowed_padding_count``), so a machine
cannot turn a link into a padding pump beyond what was agreed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from .errors import ConfigError

ALLOWANCE = 64  # padding cells always allowed before the percentage applies
MAX_CATCH_UP = 64  # ticks a late timer replays at once; older ticks are skipped (no burst after a stall)


class Machine(IntEnum):
    """Machine numbers on the wire (PADDING_NEGOTIATE): 0 turns padding off."""

    OFF = 0
    KEEPALIVE = 1
    CONSTANT = 2
    POISSON = 3


@dataclass(frozen=True, slots=True)
class PaddingSpec:
    """One machine's parameters. ``rate``: ticks per second (cover) ; ``idle``: longest silence (s,
    keep-alive); ``max_percent``: padding cells at most this share of cells sent (after ALLOWANCE)."""

    machine: Machine
    rate: float = 0.0
    idle: float = 0.0
    max_percent: int = 100

    def __post_init__(self) -> None:
        if self.machine in (Machine.CONSTANT, Machine.POISSON) and not 0 < self.rate <= 100_000:
            raise ConfigError(f"a cover rate must be 0 < rate ≤ 100000 cells/s, got {self.rate}")
        if self.machine is Machine.KEEPALIVE and not 0 < self.idle <= 3600:
            raise ConfigError(f"a keep-alive idle time must be 0 < idle ≤ 3600 s, got {self.idle}")
        if not 0 <= self.max_percent <= 100:
            raise ConfigError(f"max_percent must be 0..100, got {self.max_percent}")

    @property
    def shapes(self) -> bool:
        return self.machine in (Machine.CONSTANT, Machine.POISSON)


class LinkPadder:
    """The machine running on one link (see the module doc). The node calls ``allow`` and ``sent``
    from ``take_frame`` and ``tick`` when ``deadline`` is due."""

    __slots__ = ("spec", "_random", "deadline", "tokens", "cells_sent", "padding_sent", "_armed_sent")

    def __init__(self, spec: PaddingSpec, now: float, uniform: Callable[[float, float], float],
                 expovariate: Callable[[float], float]) -> None:
        self.spec = spec
        self._random = (uniform, expovariate)
        self.tokens = 0  # cells a shaping machine lets out before its next tick
        self.cells_sent = 0
        self.padding_sent = 0
        self._armed_sent = 0
        self.deadline = now + self._gap()

    def _gap(self) -> float:
        uniform, expovariate = self._random
        spec = self.spec
        if spec.machine is Machine.KEEPALIVE:
            return uniform(spec.idle / 6, spec.idle)
        if spec.machine is Machine.POISSON:
            return expovariate(spec.rate)
        return 1.0 / spec.rate

    def allow(self, max_cells: int) -> int:
        """How many of ``max_cells`` queued cells may go now: all, unless the machine shapes."""
        return min(max_cells, self.tokens) if self.spec.shapes else max_cells

    def sent(self, cells: int) -> None:
        """Event: ``cells`` left on the link."""
        self.cells_sent += cells
        if self.spec.shapes:
            self.tokens -= cells

    def _may_pad(self) -> bool:
        percent = self.spec.max_percent
        return percent >= 100 or self.padding_sent < ALLOWANCE or self.padding_sent * 100 < percent * self.cells_sent

    def tick(self, now: float, queued: int) -> int:
        """The timer is due: return how many PADDING cells to queue now (the node queues them)."""
        if not self.spec.shapes:
            busy = self.cells_sent != self._armed_sent
            self._armed_sent = self.cells_sent
            self.deadline = now + self._gap()
            if busy or not self._may_pad():
                return 0
            self.padding_sent += 1
            self._armed_sent += 1  # the PADDING cell itself does not make the link busy
            return 1
        ticks = 0
        while self.deadline <= now and ticks < MAX_CATCH_UP:
            self.deadline += self._gap()
            ticks += 1
        if self.deadline <= now:  # a long stall: start afresh rather than burst
            self.deadline = now + self._gap()
        self.tokens = min(self.tokens + ticks, MAX_CATCH_UP)  # one cell per tick
        padding = 0
        while padding < ticks - queued and self._may_pad():  # ticks no real cell waits for
            padding += 1
            self.padding_sent += 1
        return padding
