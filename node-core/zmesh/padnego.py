"""Running padding machines on links and negotiating them hop by hop (docs/protocol.md "Padding
negotiation").

``PaddingRole`` is one part of ``node.Node``. Every link gets this node's own keep-alive machine
(``PaddingPolicy.keepalive``); a link this node opened for its own circuits gets its cover machine
instead, and the first circuit over it asks the hop at the other end, right after that hop answered
its CREATE, to run the same machine on its side: ``PADDING_NEGOTIATE``. The hop answers
``PADDING_NEGOTIATED``, or, when the request is over its limits (``NodeLimits.padding_max_rate``,
``padding_max_percent``), destroys the circuit with ``PADDING_LIMIT``, so the client learns at once
that this relay will not give it that cover. A request for an unknown machine or version is counted
and ignored, as an older relay would (silence is a refusal the client survives).
"""

from __future__ import annotations

import math
import random
import struct
from typing import TYPE_CHECKING

from .cells import (
    CELL_SIZE,
    MAX_FRAME_SIZE,
    CellCommand,
    DestroyReason,
    RelayCommand,
    RelayMessage,
    encode_cell,
    encode_relay_body,
)
from .cover import PaddingPolicy
from .errors import ConfigError, ProtocolError
from .link import LinkRole
from .links import CircuitFailure
from .padding import LinkPadder, Machine, PaddingSpec

if TYPE_CHECKING:
    from .circuit import OriginCircuit, RelayCircuit
    from .links import LinkState

PADDING_VERSION = 1
_REQUEST = struct.Struct(">BBIB")  # version, machine, rate (milli-cells/s) or idle (ms), max percent
_ANSWER = struct.Struct(">BB")  # version, machine
_PADDING_CELL = encode_cell(CellCommand.PADDING, 0)


def encode_request(spec: PaddingSpec | None) -> bytes:
    if spec is None:
        return _REQUEST.pack(PADDING_VERSION, Machine.OFF, 0, 0)
    value = spec.idle * 1000 if spec.machine is Machine.KEEPALIVE else spec.rate * 1000
    return _REQUEST.pack(PADDING_VERSION, spec.machine, round(value), spec.max_percent)


def decode_request(data: bytes) -> tuple[int, PaddingSpec | None]:
    """(version, machine) of a request; raises ``ProtocolError`` for one no machine can run."""
    if len(data) != _REQUEST.size:
        raise ProtocolError(f"PADDING_NEGOTIATE must be {_REQUEST.size} bytes, got {len(data)}")
    version, machine, value, percent = _REQUEST.unpack(data)
    if version != PADDING_VERSION or machine not in Machine._value2member_map_:
        return version, None
    machine = Machine(machine)
    if machine is Machine.OFF:
        return version, None
    try:
        if machine is Machine.KEEPALIVE:
            return version, PaddingSpec(machine, idle=value / 1000, max_percent=percent)
        return version, PaddingSpec(machine, rate=value / 1000, max_percent=percent)
    except ConfigError as exc:
        raise ProtocolError(f"PADDING_NEGOTIATE out of range: {exc}") from None


def cells_per_second(spec: PaddingSpec) -> float:
    """The most padding cells per second ``spec`` can send (what a relay's limit is checked against)."""
    return 6 / spec.idle if spec.machine is Machine.KEEPALIVE else spec.rate


class PaddingRole:
    """Padding machines and their negotiation (the part of ``Node`` that pads; see the module doc)."""

    padding_policy: PaddingPolicy = PaddingPolicy()  # this node's own padding; the owner may replace it
    padding_random: random.Random = random.SystemRandom()  # gaps an observer must not predict
    _pad_timer: float = math.inf  # no padder is due before this (may be early, never late)

    # ------------------------------------------------------------------ machines on links

    def _pad_new_link(self, link_id: int, link: LinkState) -> None:
        """A link opened: this node's own machine on it, if it runs one."""
        policy = self.padding_policy
        if policy.cover is not None and link.initiator and link.role is LinkRole.CLIENT:
            self._set_padder(link, policy.cover)
        elif policy.keepalive:
            self._set_padder(link, PaddingSpec(Machine.KEEPALIVE, idle=policy.keepalive))

    def _set_padder(self, link: LinkState, spec: PaddingSpec | None) -> None:
        if spec is None:
            link.padder = None
            return
        rng = self.padding_random
        link.padder = padder = LinkPadder(spec, self.clock(), rng.uniform, rng.expovariate)
        self._pad_timer = min(self._pad_timer, padder.deadline)

    def _jitter_arm(self, link: LinkState) -> None:
        """Timing jitter: a link whose queue was empty holds what is queued now, and whatever joins
        it, for a delay drawn uniformly from [0, jitter]; then all of it leaves as one batch."""
        link.release_at = self.clock() + self.padding_random.uniform(0.0, self.padding_policy.jitter)
        self._pad_timer = min(self._pad_timer, link.release_at)

    def _jitter_holds(self, link: LinkState) -> bool:
        if link.release_at > self.clock():
            return True
        link.release_at = 0.0
        return False

    def _frame_trailer(self, cells: int) -> bytes:
        """Frame padding: zero bytes, fewer than a cell, so frame sizes are not all multiples of 1024
        (``cells.parse_frame`` takes and checks them); a full frame gets none."""
        room = min(CELL_SIZE - 1, MAX_FRAME_SIZE - cells * CELL_SIZE)
        return bytes(self.padding_random.randint(0, room)) if room > 0 else b""

    def _run_padders(self, now: float) -> None:
        """The padding timer is due: tick every due machine, queue the PADDING cells they ask for,
        and let go the batches whose jitter delay is over."""
        timer = math.inf
        for link_id, link in self._links.items():
            padder = link.padder
            if padder is not None and not link.closed:
                if padder.deadline <= now:
                    cells = padder.tick(now, link.queued_cells)
                    if cells:
                        self.metrics["padding_cells_out"] += cells
                        self._enqueue(link_id, 0, [_PADDING_CELL] * cells)  # may arm the jitter
                timer = min(timer, padder.deadline)
            if link.release_at:
                if link.release_at > now:
                    timer = min(timer, link.release_at)
                else:
                    link.release_at = 0.0
        self._pad_timer = timer

    # ------------------------------------------------------------------ origin

    async def _pad_offer(self, circ: OriginCircuit) -> None:
        """The first hop has just answered: ask it to run this link's cover machine on its side."""
        link = self._links.get(circ.link)
        cover = self.padding_policy.cover
        if cover is None or len(circ.hops) != 1 or link is None or link.pad_asked:
            return
        link.pad_asked = True
        await self._send_edge(circ, [encode_relay_body(RelayCommand.PADDING_NEGOTIATE, 0, encode_request(cover))])

    async def _on_pad_negotiated(self, circ: OriginCircuit, msg: RelayMessage) -> None:
        link = self._links.get(circ.link)
        if link is None or not link.pad_asked or len(msg.data) != _ANSWER.size:
            raise ProtocolError("PADDING_NEGOTIATED that answers no request")
        self.metrics["padding_negotiated"] += 1

    # ------------------------------------------------------------------ relay

    async def _on_pad_negotiate(self, circ: RelayCircuit, msg: RelayMessage) -> None:
        version, spec = decode_request(msg.data)
        if version != PADDING_VERSION:
            self.metrics["relay_unknown_commands"] += 1  # a newer client's machine: silence refuses it
            return
        limits = self.limits
        if spec is not None and (cells_per_second(spec) > limits.padding_max_rate
                                 or spec.max_percent > limits.padding_max_percent):
            self.metrics["padding_refused"] += 1
            raise CircuitFailure(DestroyReason.PADDING_LIMIT,
                                 f"padding asked ({cells_per_second(spec):g} cells/s, {spec.max_percent}%) is over "
                                 f"this relay's limit ({limits.padding_max_rate:g} cells/s, "
                                 f"{limits.padding_max_percent}%)")
        link = self._links.get(circ.prev_link)
        if link is None:
            return
        self._set_padder(link, spec)
        self.metrics["padding_negotiated"] += 1
        machine = Machine.OFF if spec is None else spec.machine
        await self._send_edge(circ, [encode_relay_body(RelayCommand.PADDING_NEGOTIATED, 0,
                                                       _ANSWER.pack(PADDING_VERSION, machine))])
