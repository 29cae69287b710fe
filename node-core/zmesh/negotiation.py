"""Negotiating congestion control hop by hop (docs/protocol.md §10), so older peers keep fixed windows.

As soon as a hop has answered its CREATE, the client sends it ``CC_OFFER`` (the window it asks the
hop to buffer, in cells); a hop that runs congestion control answers ``CC_ACCEPT`` with the window
it grants (at most what was offered and what its own limits allow) and from then on lets the
circuit queue that much at it. The client offers each next hop the least any hop before granted,
so what the last hop (the exit) accepts is a window every hop on the path agreed to buffer. The
circuit's two ends then run ``congestion.VegasFlow`` and their streams XON/XOFF
(``streamflow.XonXoff``); otherwise both keep ``flow``'s fixed windows.

No round trip is added: a hop's answer travels back before its EXTENDED (and the exit's before any
CONNECTED), because each hop handles the offer before what follows it on the circuit. An older
relay counts the offer as an unknown command and drops it (§5), so silence is the refusal: a
middle hop that stayed silent caps the window at the fixed ``CIRCUIT_WINDOW`` its queue bound was
made for; an exit that stayed silent (CONNECTED arrived first) leaves the circuit on fixed windows.
An onion-service circuit is handed over before its last hop answers; the answer is still taken
(even from a rendezvous point that a joined circuit's virtual hop now follows), but the end-to-end
hop keeps fixed windows at both ends (docs/onion-services.md, "Flow control end to end").
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .cells import RelayCommand, RelayMessage, encode_relay_body
from .circuit import BuildState, Edge, Purpose
from .congestion import SENDME_EVERY, SENDME_VERSION, VegasFlow
from .errors import ProtocolError
from .flow import CIRCUIT_WINDOW

if TYPE_CHECKING:
    from .circuit import OriginCircuit, RelayCircuit
    from .limits import NodeLimits

MIN_WINDOW = 2 * SENDME_EVERY  # below this a SENDME might never fall due
_OFFER = struct.Struct(">BBI")  # SENDME version, cells per SENDME, window (cells)
_ACCEPT = struct.Struct(">BI")  # SENDME version, window granted (cells)
_SLACK = 64  # control cells beside a window's DATA cells, as for fixed windows


def queue_bound(window: int) -> int:
    """Cells a circuit with ``window`` may queue at a node per link: the window, one SENDME for each
    ``SENDME_EVERY`` cells of the other direction, and the usual control-cell slack."""
    return window + window // SENDME_EVERY + _SLACK


def window_limit(limits: NodeLimits) -> int:
    """The largest window this node offers or grants: ``cc_max_window``, and never one whose queue
    bound would not fit the per-link bound beside the link cells. Below ``MIN_WINDOW``: no cc."""
    room = limits.max_queued_cells_per_link - limits.max_queued_link_cells - _SLACK
    return min(limits.cc_max_window, room * SENDME_EVERY // (SENDME_EVERY + 1))


@dataclass(slots=True)
class PathNegotiation:
    """An origin circuit's negotiation while it is built: the least window granted so far and the
    hop whose answer is awaited."""

    cap: int
    pending: int | None = None


class NegotiationRole:
    """Congestion-control negotiation (the part of ``Node`` that offers, grants and applies windows)."""

    # ------------------------------------------------------------------ origin

    async def _cc_offer(self, circ: OriginCircuit) -> None:
        """A hop has just answered: offer it the window (before anything else is sent to it)."""
        neg = self._cc_paths.get(circ.handle)
        if neg is None:
            limit = window_limit(self.limits)
            if limit < MIN_WINDOW:
                return
            neg = self._cc_paths[circ.handle] = PathNegotiation(limit)
        if neg.pending is not None:  # the hop before stayed silent: an older relay, bounded for fixed windows
            neg.cap = min(neg.cap, CIRCUIT_WINDOW)
        neg.pending = len(circ.hops) - 1
        await self._send_edge(circ, [encode_relay_body(RelayCommand.CC_OFFER, 0,
                                                       _OFFER.pack(SENDME_VERSION, SENDME_EVERY, neg.cap))])

    async def _on_cc_accept(self, circ: OriginCircuit, msg: RelayMessage, hop: int | None = None) -> None:
        """``hop``: the hop that sent it, when not the last (only a service's joined circuit)."""
        neg = self._cc_paths.get(circ.handle)
        hop = len(circ.hops) - 1 if hop is None else hop
        if neg is None or neg.pending != hop or len(msg.data) != _ACCEPT.size:
            raise ProtocolError("CC_ACCEPT that answers no offer")
        version, window = _ACCEPT.unpack(msg.data)
        if version != SENDME_VERSION or not MIN_WINDOW <= window <= neg.cap:
            raise ProtocolError("CC_ACCEPT grants a window that was not offered")
        neg.cap, neg.pending = window, None
        if hop == len(circ.path) - 1 and circ.purpose is not Purpose.GENERAL:
            del self._cc_paths[circ.handle]  # an onion point's answer: its end-to-end hop keeps fixed windows
        elif circ.state is BuildState.OPEN:  # the last hop agreed: both ends switch before any DATA
            del self._cc_paths[circ.handle]
            self._cc_windows[circ.handle] = window
            circ.edge.flow, circ.edge.xoff_cells = VegasFlow(window), self.limits.xoff_cells
            self.metrics["cc_circuits"] += 1

    def _cc_fixed(self, circ: OriginCircuit) -> None:
        """``circ`` becomes an onion-service circuit: whatever its last hop grants, the end-to-end hop
        it leads to runs fixed windows (docs/onion-services.md, "Flow control end to end")."""
        circ.edge = Edge()
        self._cc_windows.pop(circ.handle, None)

    def _cc_settle(self, circ: OriginCircuit) -> None:
        """The last hop answered a stream before it answered the offer: it keeps fixed windows."""
        if self._cc_paths.pop(circ.handle, None) is not None:
            self.metrics["cc_refused_by_exit"] += 1

    # ------------------------------------------------------------------ relay

    async def _on_cc_offer(self, circ: RelayCircuit, msg: RelayMessage) -> None:
        limit = window_limit(self.limits)
        if len(msg.data) != _OFFER.size or limit < MIN_WINDOW:
            self.metrics["relay_unknown_commands"] += 1  # as an older relay: silence keeps fixed windows
            return
        version, every, window = _OFFER.unpack(msg.data)
        if version != SENDME_VERSION or every != SENDME_EVERY:
            self.metrics["relay_unknown_commands"] += 1
            return
        if circ.handle in self._cc_windows or window < MIN_WINDOW:
            raise ProtocolError("a second CC_OFFER, or one too small to work")
        granted = self._cc_windows[circ.handle] = min(window, limit)
        await self._send_edge(circ, [encode_relay_body(RelayCommand.CC_ACCEPT, 0,
                                                       _ACCEPT.pack(SENDME_VERSION, granted))])

    def _new_edge(self, circ: RelayCircuit) -> Edge:
        """The edge of a circuit whose first stream arrived, in the mode its offer settled."""
        window = self._cc_windows.get(circ.handle)
        if window is None:
            return Edge()
        self.metrics["cc_circuits"] += 1
        return Edge(flow=VegasFlow(window), xoff_cells=self.limits.xoff_cells)

    # ------------------------------------------------------------------ both

    def _circuit_queue_bound(self, handle: int) -> int:
        """Cells ``handle`` may queue here per link (``links.LinkTable._enqueue``)."""
        window = self._cc_windows.get(handle)
        bound = self.limits.max_queued_cells_per_circuit
        return bound if window is None else max(bound, queue_bound(window))
