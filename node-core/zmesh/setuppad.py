"""The circuit-setup padding machine (docs/protocol.md §16; costs in
docs/anonymity.md "What each defence costs").

Why: on the client's first link an observer (or the first hop itself) counts a circuit's cells. A
general 3-hop build, an introduction (INTRODUCE1 is several cells, INTRODUCE_ACK one) and a
rendezvous (ESTABLISH_RENDEZVOUS, RENDEZVOUS_ESTABLISHED, later RENDEZVOUS2) differ in how many
cells each way follow the first CREATED. In the spirit of Tor's circuit-setup machines (circpad's
client-side intro/rendezvous machines), every circuit this node originates, whatever its purpose,
asks its first hop, right after that hop's CREATED, with ``PADDING_SETUP`` to run a ``SetupPadder``
on the circuit's backward direction, and runs one itself on the forward direction: each direction
then carries at least ``cells`` cells of this circuit within ``window`` seconds of the request —
real cells count, DROP cells (long-range padding for hop 0, discarded there or at the client) make up
the rest at times drawn uniformly over the window. When real cells stay under ``cells`` each way,
every setup shows exactly ``cells`` cells each way in the window. Nothing is blocked or delayed.

The hop answers ``PADDING_SETUP_OK`` (its first backward cell, counted in its share), or destroys the
circuit with ``PADDING_LIMIT`` when ``cells/window`` is over ``NodeLimits.padding_max_rate`` or
``cells`` over ``MAX_SETUP_CELLS``. A newer version is counted and ignored (silence refuses it).
"""

from __future__ import annotations

import bisect
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .cells import DestroyReason, RelayCommand, RelayMessage, encode_relay_body, relay_cells, split_bodies
from .circuit import OriginCircuit
from .errors import ConfigError, ProtocolError
from .links import CircuitFailure
from .relaycrypto import onion_encrypt

if TYPE_CHECKING:
    from .circuit import RelayCircuit

SETUP_VERSION = 1
MAX_SETUP_CELLS = 64  # the most cells each way a request may ask for (within ALLOWANCE of link padders)
_REQUEST = struct.Struct(">BHI")  # version, cells, window (ms)


@dataclass(frozen=True, slots=True)
class SetupSpec:
    """``cells`` each way of a new circuit within ``window`` seconds of its first hop's CREATED."""

    cells: int = 24
    window: float = 2.0

    def __post_init__(self) -> None:
        if not 1 <= self.cells <= MAX_SETUP_CELLS or not 0.05 <= self.window <= 60:
            raise ConfigError(f"circuit-setup padding needs 1..{MAX_SETUP_CELLS} cells and a 0.05..60 s window, "
                              f"got {self.cells} and {self.window}")

    @property
    def rate(self) -> float:
        """Its mean padding rate at most (cells/s), what a relay's ``padding_max_rate`` bounds."""
        return self.cells / self.window


def encode_setup(spec: SetupSpec) -> bytes:
    return _REQUEST.pack(SETUP_VERSION, spec.cells, round(spec.window * 1000))


def decode_setup(data: bytes) -> tuple[int, SetupSpec | None]:
    """(version, spec); None for a version this node does not run. Malformed: ``ProtocolError``."""
    if len(data) != _REQUEST.size:
        raise ProtocolError(f"PADDING_SETUP must be {_REQUEST.size} bytes, got {len(data)}")
    version, cells, window_ms = _REQUEST.unpack(data)
    if version != SETUP_VERSION:
        return version, None
    try:
        return version, SetupSpec(cells, window_ms / 1000)
    except ConfigError as exc:
        raise ProtocolError(f"PADDING_SETUP out of range: {exc}") from None


class SetupPadder:
    """One direction of one circuit on its first link: by the k-th drawn time, k cells were sent."""

    __slots__ = ("link", "sent", "answered", "_times", "_due")

    def __init__(self, link: int, spec: SetupSpec, now: float, uniform: Callable[[float, float], float]) -> None:
        self.link = link  # the link whose cells count (a relay's circuit has two)
        self.sent = 0
        self.answered = False  # the client's: PADDING_SETUP_OK came
        self._times = sorted(uniform(now, now + spec.window) for _ in range(spec.cells))
        self._due = 0  # how many of _times have passed

    @property
    def deadline(self) -> float:
        return self._times[self._due] if self._due < len(self._times) else math.inf

    def tick(self, now: float) -> int:
        """The DROP cells to send now (the caller counts them with ``sent``)."""
        self._due = bisect.bisect_right(self._times, now)
        return max(0, self._due - self.sent)

    @property
    def done(self) -> bool:
        return self._due >= len(self._times)


class SetupPaddingRole:
    """The circuit-setup machine (the part of ``Node`` that pads circuit setups; see the module doc)."""

    setup_padding: SetupSpec | None = None  # this node's own circuits' machine; the owner may set it
    _setup_padders: dict[int, SetupPadder]  # circuit handle -> its machine
    _setup_timer: float = math.inf

    def _setup_count(self, link_id: int, handle: int, cells: int) -> None:
        """Event (from ``_enqueue``): ``cells`` of circuit ``handle`` were queued on ``link_id``."""
        padder = self._setup_padders.get(handle)
        if padder is not None and padder.link == link_id:
            padder.sent += cells

    def _setup_start(self, handle: int, link: int, spec: SetupSpec) -> None:
        padder = SetupPadder(link, spec, self.clock(), self.padding_random.uniform)
        self._setup_padders[handle] = padder
        self._setup_timer = min(self._setup_timer, padder.deadline)

    async def _setup_offer(self, circ: OriginCircuit) -> None:
        """The first hop has just answered: ask it to pad this circuit's setup, and pad ours."""
        spec = self.setup_padding
        if spec is None or len(circ.hops) != 1:
            return
        self._setup_start(circ.handle, circ.link, spec)
        await self._send_edge(circ, [encode_relay_body(RelayCommand.PADDING_SETUP, 0, encode_setup(spec))])

    async def _on_setup_ok(self, circ: OriginCircuit, msg: RelayMessage) -> None:
        padder = self._setup_padders.get(circ.handle)
        if padder is None or padder.answered or msg.data:
            raise ProtocolError("PADDING_SETUP_OK that answers no request")
        padder.answered = True
        self.metrics["padding_setup_negotiated"] += 1

    async def _on_setup_request(self, circ: RelayCircuit, msg: RelayMessage) -> None:
        version, spec = decode_setup(msg.data)
        if spec is None:
            self.metrics["relay_unknown_commands"] += 1  # a newer client's machine: silence refuses it
            return
        if circ.handle in self._setup_padders:
            raise ProtocolError("a second PADDING_SETUP on one circuit")
        if spec.rate > self.limits.padding_max_rate:
            self.metrics["padding_refused"] += 1
            raise CircuitFailure(DestroyReason.PADDING_LIMIT,
                                 f"setup padding asked ({spec.rate:g} cells/s) is over this relay's limit "
                                 f"({self.limits.padding_max_rate:g} cells/s)")
        self._setup_start(circ.handle, circ.prev_link, spec)
        self.metrics["padding_setup_negotiated"] += 1
        await self._send_edge(circ, [encode_relay_body(RelayCommand.PADDING_SETUP_OK, 0, b"")])

    async def _send_drops(self, circ: OriginCircuit | RelayCircuit, cells: int) -> None:
        bodies = [encode_relay_body(RelayCommand.DROP, 0, b"") for _ in range(cells)]
        self.metrics["padding_setup_cells_out"] += cells
        self.metrics["padding_cells_out"] += cells
        if isinstance(circ, OriginCircuit):  # long-range padding for hop 0, whichever hop is last
            data = await onion_encrypt(circ.hops, 0, bodies)
            self._enqueue(circ.link, circ.handle, relay_cells(circ.circ_id, split_bodies(data)))
        else:
            await self._send_edge(circ, bodies)

    async def _run_setup_padders(self, now: float) -> None:
        """The setup timer is due: send each due machine's DROP cells; forget finished machines."""
        for handle, padder in list(self._setup_padders.items()):
            circ = self._circuits.get(handle)
            if circ is not None and (cells := padder.tick(now)):
                # a queue over its bound destroys this circuit only, as any send on it would
                await self._guarded(circ, self._send_drops(circ, cells))
            if circ is None or padder.done:
                self._setup_padders.pop(handle, None)
        # from all machines left, also one a circuit built meanwhile started
        self._setup_timer = min((p.deadline for p in self._setup_padders.values()), default=math.inf)
